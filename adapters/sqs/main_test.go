package sqs_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/sqs"
)

// The tests run against fauxqs (an SQS/SNS emulator on Node, pinned in
// testdata/fauxqs) started here on a random loopback port, or against real
// AWS when CLUSTERBUS_TEST_SQS_LIVE=1 (with the standard AWS environment:
// AWS_REGION and credentials).

var (
	server     *fauxqs // nil when live or when fauxqs could not start
	skipReason string  // why tests that need a broker skip
	live       = os.Getenv("CLUSTERBUS_TEST_SQS_LIVE") == "1"
)

const fauxqsDir = "testdata/fauxqs"

// testPrefix is the queue and topic name prefix of live runs on AWS.
var testPrefix = func() string {
	if live {
		return "cbtest-"
	}
	return ""
}()

func TestMain(m *testing.M) {
	if live {
		if os.Getenv("AWS_REGION") == "" && os.Getenv("AWS_DEFAULT_REGION") == "" {
			skipReason = "CLUSTERBUS_TEST_SQS_LIVE=1 but AWS_REGION is not set"
		}
	} else {
		// fauxqs accepts any credentials; the adapter still needs some
		// from the standard chain.
		os.Setenv("AWS_ACCESS_KEY_ID", "test")
		os.Setenv("AWS_SECRET_ACCESS_KEY", "test")
		os.Unsetenv("AWS_SESSION_TOKEN")
		os.Unsetenv("AWS_PROFILE")
		var err error
		server, err = startFauxqs(0)
		if err != nil {
			skipReason = "fauxqs (SQS/SNS emulator) not available: " + err.Error()
			server = nil
		}
	}
	if skipReason != "" && os.Getenv("CI") == "true" {
		fmt.Fprintln(os.Stderr, "adapters/sqs:", skipReason, "(CI=true: failing instead of skipping)")
		os.Exit(1)
	}
	code := m.Run()
	if server != nil {
		server.stop()
	}
	os.Exit(code)
}

// needBroker skips the test when no broker is available (fails under CI,
// which TestMain already made exit).
func needBroker(t testing.TB) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

// fauxqs is a running fauxqs process.
type fauxqs struct {
	port     int
	endpoint string
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	exited   chan struct{}
}

var listeningRE = regexp.MustCompile(`fauxqs listening on http://127\.0\.0\.1:(\d+)`)

var npmOnce sync.Once
var npmErr error

// ensureModules runs `npm ci` in testdata/fauxqs if node_modules is
// missing.
func ensureModules() error {
	npmOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(fauxqsDir, "node_modules", "fauxqs", "package.json")); err == nil {
			return
		}
		npm, err := exec.LookPath("npm")
		if err != nil {
			npmErr = fmt.Errorf("node_modules missing in %s and npm not found: install Node.js 20+ and run `npm ci` there", fauxqsDir)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
		cmd.Dir = fauxqsDir
		out, err := cmd.CombinedOutput()
		if err != nil {
			npmErr = fmt.Errorf("npm ci in %s: %v\n%s", fauxqsDir, err, out)
		}
	})
	return npmErr
}

// startFauxqs starts fauxqs on port (0: a free one) and waits until it
// answers.
func startFauxqs(port int) (*fauxqs, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, errors.New("node not found: install Node.js 20+")
	}
	if err := ensureModules(); err != nil {
		return nil, err
	}
	cmd := exec.Command(node, "server.mjs")
	cmd.Dir = fauxqsDir
	cmd.Env = append(os.Environ(), "FAUXQS_PORT="+strconv.Itoa(port))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start fauxqs: %w", err)
	}
	f := &fauxqs{cmd: cmd, stdin: stdin, exited: make(chan struct{})}
	portc := make(chan int, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				p, _ := strconv.Atoi(m[1])
				portc <- p
			}
		}
	}()
	go func() {
		cmd.Wait()
		close(f.exited)
	}()
	select {
	case f.port = <-portc:
	case <-f.exited:
		return nil, fmt.Errorf("fauxqs exited at start: %v", cmd.ProcessState)
	case <-time.After(60 * time.Second):
		f.stop()
		return nil, errors.New("fauxqs did not report listening within 60s")
	}
	f.endpoint = fmt.Sprintf("http://127.0.0.1:%d", f.port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(f.endpoint + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return f, nil
			}
		}
		if time.Now().After(deadline) {
			f.stop()
			return nil, fmt.Errorf("fauxqs at %s not healthy: %v", f.endpoint, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the process: stdin closed (server.mjs exits), then SIGKILL if
// it lingers.
func (f *fauxqs) stop() {
	f.stdin.Close()
	select {
	case <-f.exited:
	case <-time.After(5 * time.Second):
		f.cmd.Process.Kill()
		<-f.exited
	}
}

// restart stops fauxqs and starts it again on the same port. fauxqs keeps
// everything in memory: queues, topics and items are gone afterwards.
func (f *fauxqs) restart() (*fauxqs, error) {
	f.stop()
	var err error
	for range 50 { // the port may take a moment to be free again
		var g *fauxqs
		if g, err = startFauxqs(f.port); err == nil {
			return g, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, err
}

// testLogger returns a logger that writes to t.Log until the test ends.
func testLogger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// config is the adapter config for the broker under test.
func config(t testing.TB, endpoint string) sqs.Config {
	cfg := sqs.Config{Region: "us-east-1", Endpoint: endpoint, Logger: testLogger(t)}
	if live {
		cfg.Region = os.Getenv("AWS_REGION")
		if cfg.Region == "" {
			cfg.Region = os.Getenv("AWS_DEFAULT_REGION")
		}
		cfg.Endpoint = ""
		cfg.Prefix = testPrefix
	}
	return cfg
}

// open opens a broker client on the test server (or AWS) and closes it at
// the end of the test.
func open(t testing.TB) *sqs.Broker {
	t.Helper()
	needBroker(t)
	endpoint := ""
	if server != nil {
		endpoint = server.endpoint
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := sqs.Open(ctx, config(t, endpoint))
	if err != nil {
		t.Fatalf("sqs.Open: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

var nameSeq atomic.Int64

// uniqueName returns a queue or topic name no other test uses.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1e9, nameSeq.Add(1))
}

// declare declares a queue with a unique name and deletes it at the end.
func declare(t testing.TB, b *sqs.Broker, cfg adapters.QueueConfig) adapters.QueueConfig {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = uniqueName("q")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.DeclareQueue(ctx, cfg); err != nil {
		t.Fatalf("DeclareQueue(%+v): %v", cfg, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := b.DeleteQueue(ctx, cfg.Name); err != nil && !errors.Is(err, adapters.ErrNotFound) && !errors.Is(err, adapters.ErrClosed) {
			t.Logf("cleanup: DeleteQueue(%q): %v", cfg.Name, err)
		}
	})
	return cfg
}
