package sqstest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Region is the region of URL; fauxqs accepts any.
const Region = "us-east-1"

// Dir is the fauxqs directory (adapters/sqs/testdata/fauxqs), found from
// this package's source file, so it works from any package's tests.
func Dir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join("adapters", "sqs", "testdata", "fauxqs")
	}
	return filepath.Join(filepath.Dir(file), "..", "testdata", "fauxqs")
}

// Server is a running fauxqs process.
type Server struct {
	port   int
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{}
}

var listeningRE = regexp.MustCompile(`fauxqs listening on http://127\.0\.0\.1:(\d+)`)

var (
	npmMu  sync.Mutex
	npmRan bool
	npmErr error
)

// EnsureModules runs `npm ci` in Dir if node_modules/fauxqs is missing.
// It runs at most once per process and returns why it could not.
func EnsureModules() error {
	npmMu.Lock()
	defer npmMu.Unlock()
	dir := Dir()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "fauxqs", "package.json")); err == nil {
		return nil
	}
	if npmRan {
		return npmErr
	}
	npmRan = true
	npm, err := exec.LookPath("npm")
	if err != nil {
		npmErr = fmt.Errorf("sqstest: node_modules missing in %s and npm not found: install Node.js 20+ and run `npm ci` there", dir)
		return npmErr
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		npmErr = fmt.Errorf("sqstest: npm ci in %s: %v\n%s", dir, err, out)
	}
	return npmErr
}

// Start starts fauxqs on 127.0.0.1:port (0: a free port) and waits until
// it answers /health. Its standard error goes to os.Stderr.
func Start(port int) (*Server, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, errors.New("sqstest: node not found: install Node.js 20+ (fauxqs runs on it)")
	}
	if err := EnsureModules(); err != nil {
		return nil, err
	}
	cmd := exec.Command(node, "server.mjs")
	cmd.Dir = Dir()
	cmd.Env = append(os.Environ(), "FAUXQS_PORT="+strconv.Itoa(port))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("sqstest: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("sqstest: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("sqstest: start fauxqs: %w", err)
	}
	s := &Server{cmd: cmd, stdin: stdin, exited: make(chan struct{})}
	portc := make(chan int, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				p, _ := strconv.Atoi(m[1])
				select {
				case portc <- p:
				default:
				}
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	select {
	case s.port = <-portc:
	case <-s.exited:
		return nil, fmt.Errorf("sqstest: fauxqs exited at start: %v", cmd.ProcessState)
	case <-time.After(60 * time.Second):
		s.Stop()
		return nil, errors.New("sqstest: fauxqs did not report listening within 60s")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.Endpoint() + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("sqstest: fauxqs at %s not healthy: %v", s.Endpoint(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Port is the port fauxqs listens on.
func (s *Server) Port() int { return s.port }

// Endpoint is fauxqs's base URL, http://127.0.0.1:PORT.
func (s *Server) Endpoint() string { return fmt.Sprintf("http://127.0.0.1:%d", s.port) }

// URL is the sqs:// broker URL of this server.
func (s *Server) URL() string { return "sqs://" + Region + "?endpoint=" + s.Endpoint() }

// Env is the environment, as KEY=VALUE, the AWS SDK needs to talk to
// fauxqs: placeholder credentials, and no session token or profile that
// would override them. Set it in the test process (os.Setenv, t.Setenv)
// and in the processes it starts.
func Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=test",
		"AWS_SECRET_ACCESS_KEY=test",
		"AWS_SESSION_TOKEN=",
		"AWS_PROFILE=",
	}
}

// Setenv sets Env for the test t and the processes it starts.
func Setenv(t testing.TB) {
	for _, kv := range Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// Stop ends the process: standard input closed (fauxqs exits), then
// SIGKILL if it lingers. It is safe to call more than once.
func (s *Server) Stop() {
	_ = s.stdin.Close()
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// Restart stops fauxqs and starts a new one on the same port, retrying
// while the port is still in use. fauxqs keeps nothing across it.
func (s *Server) Restart() (*Server, error) {
	s.Stop()
	var err error
	for range 50 {
		var n *Server
		if n, err = Start(s.port); err == nil {
			return n, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, err
}
