package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/bus"
	"github.com/clusterbus/clusterbus/internal/tcpproxy"
)

// Default node timing, which the tests rely on.
const (
	heartbeat      = 500 * time.Millisecond
	failureTimeout = 1500 * time.Millisecond
)

// proc is a clusterbus process started by a test.
type proc struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

// startProc runs the binary with args; stdout and stderr go to a log file
// (kept under CLUSTERBUS_INTEGRATION_LOG_DIR if set) whose tail is printed
// if the test fails. The process is killed at cleanup.
func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startProcOf(t, binPath, name, args...)
}

// startProcOf is startProc for another program (another clusterbus build,
// haproxy).
func startProcOf(t *testing.T, bin, name string, args ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	if d := os.Getenv("CLUSTERBUS_INTEGRATION_LOG_DIR"); d != "" {
		// Kept after the test: one file per process start.
		dir = filepath.Join(d, strings.ReplaceAll(t.Name(), "/", "_"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	logPath := filepath.Join(dir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = nodeEnv()
	cmd.Stdout, cmd.Stderr = f, f
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{t: t, name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Logf("started %s (pid %d): %s %s", name, cmd.Process.Pid, filepath.Base(bin), strings.Join(args, " "))
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("--- log of %s (tail) ---\n%s", name, b)
		}
	})
	return p
}

// nodeEnv is the environment of processes the tests start: this one's
// without its CLUSTERBUS_* variables, which configure the tests, not the
// nodes (a node rejects a CLUSTERBUS_* variable it does not know).
func nodeEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CLUSTERBUS_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL (kill -9) and waits for the process to end.
func (p *proc) kill() {
	if p.running() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-p.done
}

// term sends SIGTERM and waits up to timeout; it returns the exit code.
func (p *proc) term(timeout time.Duration) int {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %s of SIGTERM", p.name, timeout)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		return -1
	}
	return 0
}

// log returns the process output so far.
func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

var brokerURLRE = regexp.MustCompile(`nats://[0-9.]+:[0-9]+`)

// startNATSBroker starts a `clusterbus broker` process (embedded NATS) on
// a free loopback port and returns its URL.
func startNATSBroker(t *testing.T) string {
	t.Helper()
	p := startProc(t, "broker", "broker", "--listen", "127.0.0.1:0", "--data-dir", filepath.Join(t.TempDir(), "broker"), "--sync=false")
	var u string
	waitUntil(t, 30*time.Second, "the broker prints its URL", func() bool {
		if !p.running() {
			t.Fatalf("broker exited: %v\n%s", p.err, p.log())
		}
		sc := bufio.NewScanner(strings.NewReader(p.log()))
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				u = brokerURLRE.FindString(sc.Text())
			}
		}
		return u != ""
	})
	return u
}

// node is a `clusterbus node` process and its HTTP address.
type node struct {
	*proc
	id   string
	addr string // http://127.0.0.1:port
}

// startNode starts a node of cluster with a fixed node ID and waits until
// its HTTP server answers.
func startNode(t *testing.T, brokerURL, cluster, id string, extra ...string) *node {
	t.Helper()
	return startNodeOf(t, binPath, freePort(t), brokerURL, cluster, id, extra...)
}

// startNodeOf is startNode with a given binary and HTTP port.
func startNodeOf(t *testing.T, bin string, port int, brokerURL, cluster, id string, extra ...string) *node {
	t.Helper()
	args := append([]string{"node", "--broker", brokerURL, "--http", fmt.Sprintf("127.0.0.1:%d", port),
		"--cluster", cluster, "--node-id", id, "--drain-timeout", "10s"}, extra...)
	n := &node{proc: startProcOf(t, bin, id, args...), id: id, addr: fmt.Sprintf("http://127.0.0.1:%d", port)}
	// A node waits for its broker before it serves; in the cluster chaos
	// tests its RabbitMQ node may itself be restarting (26 s seen here),
	// and the node's retry backoff adds up to ~5 s.
	waitUntil(t, 60*time.Second, id+" answers HTTP", func() bool {
		if !n.running() {
			t.Fatalf("%s exited: %v\n%s", id, n.err, n.log())
		}
		_, err := n.cluster()
		return err == nil
	})
	return n
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var client = &http.Client{Timeout: 2 * time.Second}

// cluster reads GET /api/cluster.
func (n *node) cluster() (bus.ClusterJSON, error) {
	var c bus.ClusterJSON
	resp, err := client.Get(n.addr + "/api/cluster")
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return c, fmt.Errorf("GET /api/cluster: %s", resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&c)
	return c, err
}

// health sends HEAD /ha/health and returns the status code (0 on error).
func (n *node) health() int {
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodHead, n.addr+"/ha/health", nil)
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// sees reports whether n serves, sees lead as the lead, and lists exactly
// the members ids as live and active (failed members it still remembers
// are listed as "unreachable" and ignored here).
func (n *node) sees(lead string, ids ...string) bool {
	c, err := n.cluster()
	if err != nil || c.Lead != lead {
		return false
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	live := 0
	for _, m := range c.Nodes {
		if m.State == "unreachable" {
			continue
		}
		live++
		if !want[m.ID] || m.State != bus.StateActive {
			return false
		}
	}
	return live == len(ids) && n.health() == http.StatusOK
}

// waitUntil polls cond every 20ms for up to max; it returns the time taken.
func waitUntil(t *testing.T, max time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > max {
			t.Fatalf("%s: not within %s", what, max)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// newProxy starts a TCP proxy to target whose link can be cut and restored
// (tcpproxy), closed at the end of the test.
func newProxy(t *testing.T, target string) *tcpproxy.Proxy {
	t.Helper()
	p, err := tcpproxy.Start(target, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}
