package nats_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/nats"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

// The crash test runs the embedded server in a child process (this test
// binary, re-executed) so that it can be killed with SIGKILL.
const (
	envChildDir    = "CLUSTERBUS_NATS_TEST_CHILD_DIR"
	envChildListen = "CLUSTERBUS_NATS_TEST_CHILD_LISTEN"
	envChildSync   = "CLUSTERBUS_NATS_TEST_CHILD_SYNC"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(envChildDir); dir != "" {
		srv, err := natsserver.Start(natsserver.Config{
			Listen: os.Getenv(envChildListen), DataDir: dir, Sync: os.Getenv(envChildSync) == "1",
		})
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Println("READY", srv.Addr())
		select {} // until killed
	}
	os.Exit(m.Run())
}

// startChild starts the server in a child process and returns it with its
// address.
func startChild(t *testing.T, dir, listen string, sync bool) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	syncEnv := "0"
	if sync {
		syncEnv = "1"
	}
	cmd.Env = append(os.Environ(), envChildDir+"="+dir, envChildListen+"="+listen, envChildSync+"="+syncEnv)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "READY ") {
		t.Fatalf("child server: %q %v", line, err)
	}
	return cmd, strings.TrimSpace(strings.TrimPrefix(line, "READY "))
}

// Every item whose Enqueue returned is there after the server process is
// killed with SIGKILL and started again on the same store, with and without
// fsync. (A power loss, which only fsync survives, cannot be simulated
// here.)
func TestAcknowledgedEnqueuesSurviveServerKill(t *testing.T) {
	for _, sync := range []bool{false, true} {
		t.Run(fmt.Sprintf("sync=%v", sync), func(t *testing.T) {
			dir := t.TempDir()
			child, addr := startChild(t, dir, "127.0.0.1:0", sync)
			ctx := testCtx(t)
			b, err := nats.Open(ctx, nats.Options{Servers: []string{"nats://" + addr}, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			q := uniqueName(t)
			if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
				t.Fatal(err)
			}
			const n = 200
			for i := range n {
				if err := b.Enqueue(ctx, q, adapters.Message{ID: fmt.Sprint(i), Body: []byte("x")}); err != nil {
					t.Fatalf("Enqueue %d: %v", i, err)
				}
			}
			if err := child.Process.Kill(); err != nil { // SIGKILL: no shutdown, no flush
				t.Fatal(err)
			}
			child.Wait()
			startChild(t, dir, addr, sync)

			c, err := b.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: 32})
			for err != nil && adapters.IsRetryable(err) && ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
				c, err = b.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: 32})
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			seen := map[string]bool{}
			for len(seen) < n {
				rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				d, err := c.Receive(rctx)
				cancel()
				if err != nil {
					t.Fatalf("after the kill, %d of %d items came back; Receive: %v", len(seen), n, err)
				}
				seen[d.Message().ID] = true
				if err := d.Ack(ctx); err != nil {
					t.Fatal(err)
				}
			}
			t.Logf("all %d acknowledged items survived SIGKILL", n)
		})
	}
}
