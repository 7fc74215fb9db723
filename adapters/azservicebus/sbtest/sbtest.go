package sbtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Dir is the server directory (adapters/azservicebus/testdata/sbserver),
// found from this package's source file, so it works from any package's
// tests.
func Dir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join("adapters", "azservicebus", "testdata", "sbserver")
	}
	return filepath.Join(filepath.Dir(file), "..", "testdata", "sbserver")
}

// Options configures Start. The zero value picks free ports and a state
// file in a temporary directory that Stop removes.
type Options struct {
	AMQPPort, AdminPort int
	// StateFile is where the server keeps its data across Restart.
	StateFile string
}

// Server is a running test server.
type Server struct {
	mu     sync.Mutex
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	state  string
	tmpDir string // removed by Stop, if Start made it
	amqp   int
	admin  int
}

var npmMu sync.Mutex

// EnsureModules runs `npm ci` in Dir if node_modules/rhea is missing and
// returns why it could not.
func EnsureModules() error {
	npmMu.Lock()
	defer npmMu.Unlock()
	dir := Dir()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "rhea")); err == nil {
		return nil
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return fmt.Errorf("sbtest: %s/node_modules is missing and npm is not installed; install Node.js 20+ and run `npm ci` there", dir)
	}
	cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sbtest: npm ci in %s: %v\n%s", dir, err, out)
	}
	return nil
}

// Start starts the server and waits until it reports its ports.
func Start(opts Options) (*Server, error) {
	s := &Server{state: opts.StateFile, amqp: opts.AMQPPort, admin: opts.AdminPort}
	if s.state == "" {
		dir, err := os.MkdirTemp("", "sbtest-")
		if err != nil {
			return nil, fmt.Errorf("sbtest: %w", err)
		}
		s.tmpDir, s.state = dir, filepath.Join(dir, "state.json")
	}
	if err := s.start(); err != nil {
		if s.tmpDir != "" {
			_ = os.RemoveAll(s.tmpDir)
		}
		return nil, err
	}
	return s, nil
}

// start runs the process on s's ports (0: free ones) and records the ports
// it reports.
func (s *Server) start() error {
	node, err := exec.LookPath("node")
	if err != nil {
		return fmt.Errorf("sbtest: node is not installed (needed for the Service Bus test server in %s)", Dir())
	}
	if err := EnsureModules(); err != nil {
		return err
	}
	cmd := exec.Command(node, "server.js", "--port", strconv.Itoa(s.amqp), "--admin-port", strconv.Itoa(s.admin),
		"--state", s.state, "--exit-on-stdin-close", "true")
	cmd.Dir = Dir()
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("sbtest: %w", err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("sbtest: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("sbtest: starting the test server: %w", err)
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
			_ = cmd.Wait()
			return fmt.Errorf("sbtest: test server said %q, want {\"amqp\":PORT,\"admin\":PORT}", line)
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return errors.New("sbtest: test server did not report its ports within 30s")
	}
	s.cmd, s.stdin, s.amqp, s.admin = cmd, stdin, ports.AMQP, ports.Admin
	return nil
}

// AMQPPort is the AMQP port.
func (s *Server) AMQPPort() int { return s.amqp }

// AdminPort is the HTTP admin port.
func (s *Server) AdminPort() int { return s.admin }

// ConnectionString is the Service Bus connection string of the server.
func (s *Server) ConnectionString() string {
	return fmt.Sprintf("Endpoint=sb://127.0.0.1:%d;SharedAccessKeyName=test;SharedAccessKey=test;UseDevelopmentEmulator=true", s.amqp)
}

// AdminEndpoint is the base URL of the admin endpoint.
func (s *Server) AdminEndpoint() string { return fmt.Sprintf("http://127.0.0.1:%d", s.admin) }

// URL is the azservicebus:// broker URL of the server.
func (s *Server) URL() string {
	return "azservicebus://?connection_string=" + url.QueryEscape(s.ConnectionString()) +
		"&admin_endpoint=" + url.QueryEscape(s.AdminEndpoint())
}

// Stop kills the server and removes the state directory Start made. It is
// safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
	if s.tmpDir != "" {
		_ = os.RemoveAll(s.tmpDir)
		s.tmpDir = ""
	}
}

// Restart stops the server cleanly (SIGTERM: it writes its state file) and
// starts it again on the same ports with the same state.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return errors.New("sbtest: restart: the server is stopped")
	}
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
	return s.startAgain(ctx)
}

// Crash kills the server (SIGKILL) and starts it again on the same ports
// with an empty state, as if the broker had lost everything.
func (s *Server) Crash(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return errors.New("sbtest: crash: the server is stopped")
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.state += ".after-crash"
	_ = os.Remove(s.state)
	return s.startAgain(ctx)
}

// startAgain starts on the same ports, retrying while they are in use.
func (s *Server) startAgain(ctx context.Context) error {
	s.cmd = nil
	var err error
	for range 50 {
		if err = s.start(); err == nil {
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
