package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
	"github.com/clusterbus/clusterbus/adapters/rabbitmq/rabbittest"
)

// envNATSServer makes this test binary run one embedded NATS server of a
// cluster instead of the tests (natsProcCluster starts it so that it can be
// killed with SIGKILL): the value is its natsserver.Config as JSON. The
// process writes, every 100ms, "meta=<0|1> stream=<0|1>" to
// <DataDir>/leader, where stream is whether it leads the stream named in
// <DataDir>/../watch.
const envNATSServer = "CLUSTERBUS_IT_NATS_SERVER"

func init() {
	raw := os.Getenv(envNATSServer)
	if raw == "" {
		return
	}
	var cfg natsserver.Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "nats server helper:", err)
		os.Exit(2)
	}
	s, err := natsserver.Start(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats server helper:", err)
		os.Exit(1)
	}
	fmt.Println("READY", s.ClientURL())
	for {
		watch, _ := os.ReadFile(filepath.Join(cfg.DataDir, "..", "watch"))
		stream := "0"
		if w := strings.TrimSpace(string(watch)); w != "" && s.IsStreamLeader("", w) {
			stream = "1"
		}
		meta := "0"
		if s.IsMetaLeader() {
			meta = "1"
		}
		tmp := filepath.Join(cfg.DataDir, "leader.tmp")
		if os.WriteFile(tmp, []byte("meta="+meta+" stream="+stream), 0o644) == nil {
			_ = os.Rename(tmp, filepath.Join(cfg.DataDir, "leader"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// natsProcCluster is an N-server NATS cluster (JetStream, routes on
// loopback; N = 1 is a single server) with each server in a process of its
// own, so that a test can kill one with SIGKILL.
type natsProcCluster struct {
	t     *testing.T
	dir   string
	cfgs  []natsserver.Config
	mu    sync.Mutex
	procs []*proc
}

func startNATSProcCluster(t *testing.T, size int) *natsProcCluster {
	t.Helper()
	c := &natsProcCluster{t: t, dir: t.TempDir()}
	var client, route []string
	for range size {
		client = append(client, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
		route = append(route, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	}
	for i := range size {
		cfg := natsserver.Config{Listen: client[i], DataDir: filepath.Join(c.dir, "s"+strconv.Itoa(i+1)),
			Name: "s" + strconv.Itoa(i+1), ReadyTimeout: 30 * time.Second}
		if size > 1 {
			cfg.ClusterName, cfg.ClusterListen = "it", route[i]
		}
		for j := range size {
			if j != i && size > 1 {
				cfg.Routes = append(cfg.Routes, route[j])
			}
		}
		c.cfgs = append(c.cfgs, cfg)
	}
	c.procs = make([]*proc, size)
	for i := range size {
		c.start(i)
	}
	for i := range size {
		c.waitReady(i)
	}
	return c
}

func (c *natsProcCluster) start(i int) {
	c.t.Helper()
	raw, _ := json.Marshal(c.cfgs[i])
	cmd := exec.Command(os.Args[0])
	cmd.Env = nodeEnv(envNATSServer + "=" + string(raw))
	logPath := filepath.Join(c.dir, fmt.Sprintf("s%d-%d.log", i+1, time.Now().UnixNano()))
	f, err := os.Create(logPath)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	p := &proc{t: c.t, name: c.cfgs[i].Name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); f.Close(); close(p.done) }()
	c.t.Cleanup(p.kill)
	c.mu.Lock()
	c.procs[i] = p
	c.mu.Unlock()
}

func (c *natsProcCluster) waitReady(i int) {
	c.t.Helper()
	waitUntil(c.t, 60*time.Second, c.cfgs[i].Name+" ready", func() bool {
		c.mu.Lock()
		p := c.procs[i]
		c.mu.Unlock()
		if !p.running() {
			c.t.Fatalf("%s exited: %v\n%s", p.name, p.err, p.log())
		}
		return strings.Contains(p.log(), "READY")
	})
}

// url is a client URL listing every server, server first first.
func (c *natsProcCluster) url(first int, query string) string {
	var hosts []string
	for k := range c.cfgs {
		hosts = append(hosts, c.cfgs[(first+k)%len(c.cfgs)].Listen)
	}
	return "nats://" + strings.Join(hosts, ",") + query
}

// watch names the stream whose leader the servers report.
func (c *natsProcCluster) watch(stream string) {
	if err := os.WriteFile(filepath.Join(c.dir, "watch"), []byte(stream), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// leader returns the index of the running server whose report says it
// leads what (meta or stream), or -1.
func (c *natsProcCluster) leader(what string) int {
	for i, cfg := range c.cfgs {
		c.mu.Lock()
		p := c.procs[i]
		c.mu.Unlock()
		if !p.running() {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(cfg.DataDir, "leader"))
		if strings.Contains(string(b), what+"=1") {
			return i
		}
	}
	return -1
}

func (c *natsProcCluster) kill(i int) {
	c.mu.Lock()
	p := c.procs[i]
	c.mu.Unlock()
	p.kill()
	_ = os.Remove(filepath.Join(c.cfgs[i].DataDir, "leader"))
}

// leadWatch polls every live node and records how many serve as the lead
// (their /api/cluster names themselves and /ha/health is 200) at once.
type leadWatch struct {
	mu        sync.Mutex
	polls     int
	multi     []string  // polls with more than one serving lead
	longMulti []string  // such polls more than the detection window after it began
	since     time.Time // start of the current run of multi-lead polls
}

func (w *leadWatch) poll(live []*node) {
	var serving []string
	for _, n := range live {
		c, err := n.cluster()
		if err == nil && c.Lead == c.Local && n.health() == http.StatusOK {
			serving = append(serving, n.id)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.polls++
	if len(serving) <= 1 {
		w.since = time.Time{}
		return
	}
	now := time.Now()
	if w.since.IsZero() {
		w.since = now
	}
	what := fmt.Sprintf("%s: %d leads serving %v", now.Format("15:04:05.000"), len(serving), serving)
	w.multi = append(w.multi, what)
	// The detection window: a lead that lost its broker stops serving
	// within the failure timeout; one more for the poll and scheduling.
	if now.Sub(w.since) > 2*failureTimeout+margin {
		w.longMulti = append(w.longMulti, what)
	}
}

// TestNATSClusterServerLoss runs 5 nodes on a 3-server NATS cluster (each
// server its own process, streams R3; nodes list every server, each a
// different one first), submits 500 executions of a 4-step flow with a wait
// step, and kills with SIGKILL, besides a node every few seconds (the
// clusterbus lead every third time), the NATS server that leads the flows
// stream, then later the JetStream meta leader, each restarted after 5 s.
// Checks (the chaos checker): no execution lost, exactly one completion
// record each (JetStream deduplicates), no step run while another holder's
// lease held; and at most one lead serving at any poll outside the
// detection window. Logs the stall after each server kill (time to the next
// step call) and the resume times.
func TestNATSClusterServerLoss(t *testing.T) {
	needBinary(t)
	c := startNATSProcCluster(t, 3)
	tb := testBroker{kind: "nats-cluster", url: c.url(0, "?replicas=3")}
	var watch leadWatch
	type serverKill struct {
		what   string
		server string
		at     time.Time
		stall  time.Duration
	}
	var kills []serverKill
	runChaos(t, tb, chaosSetup{
		nodes:      5,
		executions: 500,
		nodeURL:    func(i int) string { return c.url(i%3, "?replicas=3") },
		flowYAML:   waitFlowYAML,
		during: func(t *testing.T, env chaosEnv) {
			c.watch("clusterbus_Q_" + env.queue)
			polls := time.NewTicker(200 * time.Millisecond)
			defer polls.Stop()
			plan := []struct {
				after time.Duration
				what  string
			}{{8 * time.Second, "stream"}, {22 * time.Second, "meta"}}
			start := time.Now()
			for _, step := range plan {
				for time.Since(start) < step.after {
					select {
					case <-env.stop:
						return
					case <-polls.C:
						watch.poll(env.live())
					}
				}
				i := c.leader(step.what)
				if i < 0 {
					t.Logf("no server reports leading the %s; killing s1", step.what)
					i = 0
				}
				before := len(env.calls())
				c.kill(i)
				env.brokerKilled(time.Now())
				k := serverKill{what: step.what, server: c.cfgs[i].Name, at: time.Now()}
				t.Logf("kill -9 of NATS server %s (%s leader)", k.server, step.what)
				restartAt := time.Now().Add(5 * time.Second)
				for time.Now().Before(restartAt) {
					select {
					case <-env.stop:
					case <-polls.C:
					}
					watch.poll(env.live())
					if k.stall == 0 {
						for _, call := range env.calls()[before:] {
							if call.At.After(k.at) {
								k.stall = call.At.Sub(k.at)
								break
							}
						}
					}
				}
				c.start(i)
				c.waitReady(i)
				t.Logf("NATS server %s restarted", k.server)
				kills = append(kills, k)
			}
			for {
				select {
				case <-env.stop:
					return
				case <-polls.C:
					watch.poll(env.live())
				}
			}
		},
	})
	for _, k := range kills {
		if k.stall > 0 {
			t.Logf("stall after kill -9 of %s (%s leader): next step call %s later", k.server, k.what, k.stall.Round(time.Millisecond))
		} else {
			t.Logf("stall after kill -9 of %s (%s leader): no step call within the 5 s it was down", k.server, k.what)
		}
	}
	if len(kills) < 2 {
		t.Errorf("%d NATS servers killed, want 2 (stream leader, meta leader)", len(kills))
	}
	watch.report(t)
}

// TestRabbitMQClusterNodeLoss runs 5 nodes on the 3-node RabbitMQ test
// cluster (rabbittest: cb1-3@localhost; node i connects to RabbitMQ node
// i mod 3), submits 500 executions of a flow with a wait step, and kills
// with SIGKILL, besides a clusterbus node every few seconds (the lead every
// third time), the RabbitMQ node that leads the flows queue, restarted
// once it is down 5 s. Checks as the chaos test: nothing lost; RabbitMQ has
// no dedupe, so a repeated completion is reported, not failed (see package
// flows); at most one lead serving beyond the detection window.
func TestRabbitMQClusterNodeLoss(t *testing.T) {
	needBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rc, err := rabbittest.StartCluster(ctx)
	if err != nil {
		brokerUnavailable(t, "rabbitmq cluster", err)
	}
	if !rc.Owned() {
		t.Skip("external RabbitMQ cluster: its nodes cannot be killed from here")
	}
	var watch leadWatch
	var stall time.Duration
	killed := ""
	runChaos(t, testBroker{kind: "rabbitmq-cluster", url: rc.URL(0)}, chaosSetup{
		nodes:      5,
		executions: 500,
		nodeURL:    func(i int) string { return rc.URL(i % 3) },
		flowYAML:   waitFlowYAML,
		during: func(t *testing.T, env chaosEnv) {
			polls := time.NewTicker(200 * time.Millisecond)
			defer polls.Stop()
			start := time.Now()
			for time.Since(start) < 10*time.Second {
				select {
				case <-env.stop:
					return
				case <-polls.C:
					watch.poll(env.live())
				}
			}
			i, err := rc.QueueLeader(context.Background(), "cb.q."+env.queue)
			if err != nil || i < 0 {
				t.Logf("leader of cb.q.%s unknown (%v); killing %s", env.queue, err, rc.NodeName(0))
				i = 0
			}
			before := len(env.calls())
			if err := rc.Kill(i); err != nil {
				t.Errorf("kill -9 %s: %v", rc.NodeName(i), err)
				return
			}
			at := time.Now()
			env.brokerKilled(at)
			killed = rc.NodeName(i)
			t.Logf("kill -9 of RabbitMQ node %s (leads the flows queue)", killed)
			for time.Since(at) < 5*time.Second {
				<-polls.C
				watch.poll(env.live())
				if stall == 0 {
					for _, call := range env.calls()[before:] {
						if call.At.After(at) {
							stall = call.At.Sub(at)
							break
						}
					}
				}
			}
			if err := rc.Start(context.Background(), i); err != nil {
				t.Errorf("restart %s: %v", killed, err)
			}
			t.Logf("RabbitMQ node %s back %s after the kill", killed, time.Since(at).Round(time.Millisecond))
			for {
				select {
				case <-env.stop:
					return
				case <-polls.C:
					watch.poll(env.live())
				}
			}
		},
	})
	if killed == "" {
		t.Fatal("no RabbitMQ node was killed")
	}
	t.Logf("stall after kill -9 of %s: next step call %s later (0: none while it was down)", killed, stall.Round(time.Millisecond))
	watch.report(t)
}

// waitFlowYAML is the chaos flow with a wait step between reserve and
// charge: three http steps the checker follows, four steps in all.
func waitFlowYAML(url string) string {
	return fmt.Sprintf(`flow: chaos
version: 1
steps:
  - name: reserve
    http: {method: POST, url: "%[1]s/reserve", timeout: 10s, retries: 0}
  - name: settle
    wait: 200ms
  - name: charge
    http: {method: POST, url: "%[1]s/charge", timeout: 10s, retries: 0}
  - name: confirm
    http: {method: POST, url: "%[1]s/confirm", timeout: 10s, retries: 0}
`, url)
}

// report logs the polls and fails on more than one lead serving beyond the
// detection window.
func (w *leadWatch) report(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	t.Logf("lead polls: %d; %d with two leads serving (all within the detection window unless listed below)", w.polls, len(w.multi))
	if len(w.longMulti) > 0 {
		t.Errorf("%d polls with more than one lead serving beyond the detection window (%s), e.g.:\n%s",
			len(w.longMulti), 2*failureTimeout+margin, strings.Join(chaosFirst(w.longMulti, 10), "\n"))
	}
}
