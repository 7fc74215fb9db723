package azservicebus_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/azservicebus"
)

// testServer is the Node Service Bus test server of testdata/sbserver,
// started once per test binary by TestMain.
type testServer struct {
	mu    sync.Mutex
	cmd   *exec.Cmd
	stdin io.WriteCloser // the server exits when this closes (or the test binary dies)
	state string         // --state file: a clean restart keeps the data
	amqp  int
	admin int
}

var (
	srv    *testServer
	srvErr error // why srv is nil
)

const serverDir = "testdata/sbserver"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sbserver-")
	if err != nil {
		srvErr = err
	} else {
		srv, srvErr = startServer(filepath.Join(dir, "state.json"), 0, 0)
	}
	code := m.Run()
	if srv != nil {
		srv.stop()
	}
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
	os.Exit(code)
}

// startServer runs `npm ci` if node_modules is missing, then starts the
// server on random ports and reads them from its first output line.
func startServer(state string, amqpPort, adminPort int) (*testServer, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("node is not installed (needed for the Service Bus test server in %s)", serverDir)
	}
	if _, err := os.Stat(filepath.Join(serverDir, "node_modules", "rhea")); err != nil {
		npm, err := exec.LookPath("npm")
		if err != nil {
			return nil, fmt.Errorf("%s/node_modules is missing and npm is not installed; run `npm ci` there", serverDir)
		}
		cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
		cmd.Dir = serverDir
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("npm ci in %s: %v\n%s", serverDir, err, out)
		}
	}
	cmd := exec.Command(node, "server.js", "--port", strconv.Itoa(amqpPort), "--admin-port", strconv.Itoa(adminPort), "--state", state, "--exit-on-stdin-close", "true")
	cmd.Dir = serverDir
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the test server: %v", err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	var ports struct{ AMQP, Admin int }
	select {
	case line := <-lines:
		if err := json.Unmarshal([]byte(line), &ports); err != nil || ports.AMQP == 0 || ports.Admin == 0 {
			_ = cmd.Process.Kill()
			return nil, fmt.Errorf("test server said %q, want {\"amqp\":PORT,\"admin\":PORT}", line)
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		return nil, errors.New("test server did not report its ports within 30s")
	}
	return &testServer{cmd: cmd, stdin: stdin, state: state, amqp: ports.AMQP, admin: ports.Admin}, nil
}

func (s *testServer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// restart stops the server cleanly (SIGTERM: it writes its state file) and
// starts it again on the same ports with the same state.
func (s *testServer) restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	waited := make(chan error, 1)
	go func() { waited <- s.cmd.Wait() }()
	select {
	case <-waited:
	case <-ctx.Done():
		_ = s.cmd.Process.Kill()
		<-waited
		return ctx.Err()
	}
	var err error
	for range 50 { // the ports may take a moment to be free again
		var n *testServer
		if n, err = startServer(s.state, s.amqp, s.admin); err == nil {
			s.cmd, s.stdin = n.cmd, n.stdin
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return err
}

func (s *testServer) connectionString() string {
	return fmt.Sprintf("Endpoint=sb://127.0.0.1:%d;SharedAccessKeyName=test;SharedAccessKey=test;UseDevelopmentEmulator=true", s.amqp)
}

func (s *testServer) config(t testing.TB) azservicebus.Config {
	return azservicebus.Config{
		ConnectionString: s.connectionString(),
		AdminEndpoint:    fmt.Sprintf("http://127.0.0.1:%d", s.admin),
		Logger:           testLogger(t),
	}
}

// URL is the azservicebus:// URL of the test server.
func (s *testServer) URL() string {
	return "azservicebus://?connection_string=" + url.QueryEscape(s.connectionString()) +
		"&admin_endpoint=" + url.QueryEscape(fmt.Sprintf("http://127.0.0.1:%d", s.admin))
}

// needServer returns the test server, or skips the test saying why (fails
// it under CI=true).
func needServer(t testing.TB) *testServer {
	t.Helper()
	if srv == nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Service Bus test server unavailable (CI=true): %v", srvErr)
		}
		t.Skipf("Service Bus test server unavailable: %v", srvErr)
	}
	return srv
}

func openTest(t testing.TB) *azservicebus.Broker {
	t.Helper()
	s := needServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := azservicebus.Open(ctx, s.config(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

var _ adapters.Broker = (*azservicebus.Broker)(nil)

// crash kills the server (SIGKILL) and starts it again on the same ports with
// an empty state, as if the broker had lost everything.
func (s *testServer) crash(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.state += ".after-crash"
	_ = os.Remove(s.state)
	var err error
	for range 50 {
		var n *testServer
		if n, err = startServer(s.state, s.amqp, s.admin); err == nil {
			s.cmd, s.stdin = n.cmd, n.stdin
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return err
}
