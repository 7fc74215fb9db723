package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// composeFile is the part of docker-compose.yml the invariants look at.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Restart     string            `yaml:"restart"`
	Profiles    []string          `yaml:"profiles"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	Volumes []string `yaml:"volumes"`
}

// repoFile reads a file at the module root (tests run in integration/).
func repoFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestComposeFileWorksAsWritten checks docker-compose.yml, the Dockerfile
// and deploy/haproxy.cfg for what makes them work when run (no Docker
// engine runs here; CI also runs `docker-compose config` on the file, and
// so does this test when docker-compose is installed): nodes wait for a
// healthy broker and restart unless stopped, every broker and node has a
// health check, Kafka advertises its address on the compose network,
// images are the versions the tests run, HAProxy resolves nodes at run
// time and checks HEAD /ha/health, flows are mounted, a 3-server NATS
// profile exists, the image runs as non-root with its version set, and a
// .dockerignore keeps .git out of the build context.
func TestComposeFileWorksAsWritten(t *testing.T) {
	var cf composeFile
	if err := yaml.Unmarshal([]byte(repoFile(t, "docker-compose.yml")), &cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	gomod := repoFile(t, "go.mod")
	natsVersion := regexp.MustCompile(`github.com/nats-io/nats-server/v2 v([0-9.]+)`).FindStringSubmatch(gomod)
	if natsVersion == nil {
		t.Fatal("go.mod: no nats-server version")
	}
	brokers := map[string]string{ // service -> image the tests' versions give
		"nats":       "nats:" + natsVersion[1] + "-alpine",
		"nats1":      "nats:" + natsVersion[1] + "-alpine",
		"nats2":      "nats:" + natsVersion[1] + "-alpine",
		"nats3":      "nats:" + natsVersion[1] + "-alpine",
		"rabbitmq":   "rabbitmq:3.10.8-management", // .ci/rabbitmq.sh: Debian 12's 3.10.8
		"kafka":      "",
		"localstack": "",
		"servicebus": "",
		"sqledge":    "",
	}
	for name, want := range brokers {
		s, ok := cf.Services[name]
		if !ok {
			t.Errorf("service %s missing", name)
			continue
		}
		if want != "" && s.Image != want {
			t.Errorf("service %s: image %q, want %q (the version the tests run)", name, s.Image, want)
		}
		if s.Healthcheck == nil || len(s.Healthcheck.Test) == 0 {
			t.Errorf("broker %s has no healthcheck: nodes cannot wait for it to be healthy", name)
		}
		if s.Restart != "unless-stopped" {
			t.Errorf("service %s: restart %q, want unless-stopped", name, s.Restart)
		}
	}
	for _, name := range []string{"node1", "node2", "node3"} {
		s, ok := cf.Services[name]
		if !ok {
			t.Errorf("service %s missing", name)
			continue
		}
		if s.Restart != "unless-stopped" {
			t.Errorf("%s: restart %q, want unless-stopped", name, s.Restart)
		}
		if s.Healthcheck == nil || len(s.Healthcheck.Test) == 0 {
			t.Errorf("%s has no healthcheck", name)
		}
		healthyBroker := false
		for dep, d := range s.DependsOn {
			if _, isBroker := brokers[dep]; isBroker && d.Condition == "service_healthy" {
				healthyBroker = true
			}
		}
		if !healthyBroker {
			t.Errorf("%s: depends_on %v: want a broker with condition: service_healthy", name, s.DependsOn)
		}
		cmd := strings.Join(s.Command, " ")
		m := regexp.MustCompile(`--flows\.dir (\S+)`).FindStringSubmatch(cmd)
		if m == nil {
			t.Errorf("%s: command %q has no --flows.dir", name, cmd)
		} else {
			mounted := false
			for _, v := range s.Volumes {
				if parts := strings.Split(v, ":"); len(parts) >= 2 && parts[1] == m[1] {
					mounted = true
				}
			}
			if !mounted {
				t.Errorf("%s: --flows.dir %s is not a mounted volume (%v)", name, m[1], s.Volumes)
			}
		}
		if !strings.Contains(cmd, "--data-dir") {
			t.Errorf("%s: no --data-dir: the node ID would not survive a container restart", name)
		}
		if s.Build == nil {
			t.Errorf("%s: not built from this repository", name)
		}
	}
	kafka := cf.Services["kafka"].Environment
	if adv := kafka["KAFKA_ADVERTISED_LISTENERS"]; !strings.Contains(adv, "//kafka:") {
		t.Errorf("kafka advertises %q: containers cannot reach localhost of the kafka container; want kafka:PORT on the compose network", adv)
	}
	// The 3-server NATS profile routes to all three.
	for _, name := range []string{"nats1", "nats2", "nats3"} {
		s := cf.Services[name]
		cmd := strings.Join(s.Command, " ")
		if len(s.Profiles) == 0 || s.Profiles[0] != "nats-cluster" || !strings.Contains(cmd, "--routes") ||
			!strings.Contains(cmd, "nats1:6222") || !strings.Contains(cmd, "nats3:6222") || !strings.Contains(cmd, "--server_name "+name) {
			t.Errorf("%s: profiles %v, command %q: want profile nats-cluster, its own server name, routes to nats1-3", name, s.Profiles, cmd)
		}
	}
	hp := cf.Services["haproxy"]
	if hp.Image != "haproxy:2.6" {
		t.Errorf("haproxy image %q, want haproxy:2.6 (Debian 12's, which TestRollingRestartBehindHAProxy runs)", hp.Image)
	}
	if _, ok := hp.DependsOn["node1"]; ok {
		t.Errorf("haproxy depends on the nodes: with init-addr none it need not, and a missing node would hold it back")
	}
	cfg := repoFile(t, "deploy/haproxy.cfg")
	for _, want := range []string{"option httpchk HEAD /ha/health", "init-addr none", "resolvers docker", "nameserver dns 127.0.0.11:53", "option redispatch", "retry-on"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("deploy/haproxy.cfg lacks %q", want)
		}
	}
	docker := repoFile(t, "Dockerfile")
	if !regexp.MustCompile(`(?m)^USER (65532|nonroot)`).MatchString(docker) {
		t.Error("Dockerfile: the image does not run as non-root (want USER 65532:65532)")
	}
	if !strings.Contains(docker, "-X main.version=${VERSION}") || !strings.Contains(docker, "ARG VERSION") {
		t.Error("Dockerfile: the version is not set (want ARG VERSION and -ldflags -X main.version=${VERSION})")
	}
	ignore := repoFile(t, ".dockerignore")
	if !regexp.MustCompile(`(?m)^\.git$`).MatchString(ignore) {
		t.Error(".dockerignore does not exclude .git")
	}

	// docker-compose's own validation, where it is installed.
	dc, err := exec.LookPath("docker-compose")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("docker-compose is required under CI=true (apt-get install docker-compose; .ci/run does)")
		}
		t.Log("docker-compose not installed: `docker-compose config` not run")
		return
	}
	for _, args := range [][]string{{"config", "-q"}, {"--profile", "nats-cluster", "--profile", "servicebus", "config", "-q"}} {
		cmd := exec.Command(dc, append([]string{"-f", filepath.Join("..", "docker-compose.yml")}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if p, err := exec.LookPath("haproxy"); err == nil {
		// The resolvers section names Docker's DNS; the check only parses.
		if out, err := exec.Command(p, "-c", "-q", "-f", filepath.Join("..", "deploy", "haproxy.cfg")).CombinedOutput(); err != nil {
			t.Errorf("haproxy -c deploy/haproxy.cfg: %v\n%s", err, out)
		}
	}
}
