package flows_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	_ "github.com/clusterbus/clusterbus/adapters/nats"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
	"github.com/clusterbus/clusterbus/adapters/signed"
	"github.com/clusterbus/clusterbus/flows"
)

// BenchmarkFlowStepsEmbeddedNATS measures recorded flow steps per second on
// an embedded NATS server (JetStream, file store): every step enqueues its
// continuation (the checkpoint) and acks its item. Executions have 10
// no-op steps; b.N counts steps. Sub-benchmarks: fsync off/on, and the same
// work as one step checkpointing 10 times.
//
//	go test -run '^$' -bench FlowSteps -benchtime 5000x ./flows/
func BenchmarkFlowStepsEmbeddedNATS(b *testing.B) {
	for _, sync := range []bool{false, true} {
		for _, mode := range []string{"10-steps", "1-step-10-checkpoints"} {
			b.Run(fmt.Sprintf("sync=%v/%s", sync, mode), func(b *testing.B) { benchFlowSteps(b, sync, mode, false) })
		}
	}
}

// BenchmarkFlowStepsSigning is the cost of a cluster key: the same 10-step
// executions on embedded NATS (fsync off), without a key and with every
// item and event signed and verified by adapters/signed, in one run.
//
//	go test -run '^$' -bench FlowStepsSigning -benchtime 5000x ./flows/
func BenchmarkFlowStepsSigning(b *testing.B) {
	for _, key := range []bool{false, true} {
		b.Run(fmt.Sprintf("key=%v", key), func(b *testing.B) { benchFlowSteps(b, false, "10-steps", key) })
	}
}

func benchFlowSteps(b *testing.B, sync bool, mode string, key bool) {
	srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: b.TempDir(), Sync: sync})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	ctx := context.Background()
	br, err := adapters.Open(ctx, srv.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	if key {
		ring, _ := signed.NewKeyRing([]byte("bench-cluster-key-0123456789"))
		sb, err := signed.Wrap(br, signed.Config{Cluster: "bench", Sender: "n1", Keys: ring})
		if err != nil {
			b.Fatal(err)
		}
		br = sb
	}
	const perExec = 10
	var steps, done atomic.Int64
	noop := func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
		steps.Add(1)
		return flows.Outcome{}, nil
	}
	f := &flows.Flow{Name: "bench", Version: 1}
	if mode == "10-steps" {
		for i := 0; i < perExec; i++ {
			f.Steps = append(f.Steps, flows.Step{Name: fmt.Sprint("s", i), Run: noop})
		}
	} else {
		f.Steps = []flows.Step{{Name: "long", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
			steps.Add(1)
			var n int
			sc.Resume(&n)
			if n+1 < perExec {
				return flows.Outcome{Checkpoint: n + 1}, nil
			}
			return flows.Outcome{}, nil
		}}}
	}
	f.Steps = append(f.Steps, flows.Step{Name: "done", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
		done.Add(1)
		return flows.Outcome{}, nil
	}})
	e, err := flows.New(br, flows.Config{Queue: fmt.Sprintf("bench%d", time.Now().UnixNano()%1e9), Concurrency: 32, Lease: 10 * time.Second},
		flows.Options{NodeID: "bench", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Register(f); err != nil {
		b.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer e.Stop(ctx)
	execs := max(b.N/perExec, 1)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < execs; i++ {
		if _, err := e.Submit(ctx, "bench", nil); err != nil {
			b.Fatal(err)
		}
	}
	for done.Load() < int64(execs) {
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	total := float64(steps.Load() + done.Load())
	b.ReportMetric(total/el.Seconds(), "steps/s")
	b.ReportMetric(float64(execs)/el.Seconds(), "executions/s")
	b.ReportMetric(0, "ns/op")
}
