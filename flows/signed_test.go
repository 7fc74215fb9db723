package flows_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	_ "github.com/clusterbus/clusterbus/adapters/nats"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
	"github.com/clusterbus/clusterbus/adapters/signed"
	"github.com/clusterbus/clusterbus/catalog"
	"github.com/clusterbus/clusterbus/flows"
)

const payFlow = `flow: pay
version: 1
steps:
  - name: hold
    wait: 300ms
    next: charge
  - name: charge
    set:
      total: "input.amount * 2"
`

func signedOn(t *testing.T, b adapters.Broker, sender, key string) *signed.Broker {
	t.Helper()
	ring, err := signed.NewKeyRing([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := signed.Wrap(b, signed.Config{Cluster: "flows-test", Sender: sender, Keys: ring})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })
	return sb
}

// TestSignedForgedRecordsAndItemsChangeNoExecution: forged execution
// records and a forged cancel request in the executions catalog, and items
// put straight on the flows queue (unsigned, or signed with another key)
// change nothing: the real execution runs every step and reports its own
// output, the forged items are dead letters.
//
// It runs on the in-memory broker and on an embedded NATS server; on each
// the attacker is a plain client of the same broker (no signing, or
// signing with another key) that writes forged records on the catalog
// topic and forged items straight onto the flows queue.
func TestSignedForgedRecordsAndItemsChangeNoExecution(t *testing.T) {
	for _, bk := range []struct {
		name string
		open func(t *testing.T) func() adapters.Broker
	}{
		{"mem", func(t *testing.T) func() adapters.Broker {
			srv := mem.NewServer()
			t.Cleanup(srv.Close)
			return func() adapters.Broker {
				b := srv.Client()
				t.Cleanup(func() { b.Close() })
				return b
			}
		}},
		{"nats", func(t *testing.T) func() adapters.Broker {
			srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
			if err != nil {
				t.Fatalf("embedded NATS: %v", err)
			}
			t.Cleanup(srv.Shutdown)
			return func() adapters.Broker {
				b, err := adapters.Open(context.Background(), srv.ClientURL())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { b.Close() })
				return b
			}
		}},
	} {
		t.Run(bk.name, func(t *testing.T) { testSignedForgedRecordsAndItems(t, bk.open(t)) })
	}
}

func testSignedForgedRecordsAndItems(t *testing.T, client func() adapters.Broker) {
	const key = "flows-test-key-0123456789"
	defs, err := flows.Parse("pay.yaml", []byte(payFlow))
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	reg := func(e *flows.Engine) {
		if err := e.Register(defs.Flows[0]); err != nil {
			t.Fatal(err)
		}
	}
	b1 := signedOn(t, client(), "n1", key)
	b2 := signedOn(t, client(), "n2", key)
	e1 := newEngine(t, b1, cfg, "n1", reg)
	e2 := newEngine(t, b2, cfg, "n2", reg)

	ctx := context.Background()
	id, err := e1.Submit(ctx, "pay", map[string]any{"amount": 21})
	if err != nil {
		t.Fatal(err)
	}
	raw := client()
	foreign := signedOn(t, client(), "n1", "another-key-0123456789")
	now := time.Now()
	item := func(exec, step string) adapters.Message {
		b, _ := json.Marshal(map[string]any{"v": 1, "exec": exec, "flow": "pay", "version": 1, "step": step, "seq": 1,
			"input": map[string]any{"amount": 1000000}, "started": now})
		return adapters.Message{ID: exec + ":1", Key: exec, Body: b}
	}
	forgedRecord, _ := json.Marshal(map[string]any{"execution": id, "flow": "pay", "version": 1, "state": "completed",
		"seq": 9, "retries": 9, "updated": now.Add(time.Hour), "output": map[string]any{"total": 666}})
	forgedCancel, _ := json.Marshal(map[string]any{"execution": id, "reason": "forged", "at": now})
	for i, p := range []adapters.Broker{raw, foreign} {
		c, err := catalog.Open(p, catalog.Config{Cluster: cfg.Queue, NodeID: fmt.Sprintf("n%d", i+1), Name: "executions"})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Stop(context.Background()) })
		for k, v := range map[string][]byte{"x/" + id: forgedRecord, "c/" + id: forgedCancel} {
			if _, err := c.Put(ctx, k, v); err != nil {
				t.Fatal(err)
			}
		}
		for _, m := range []adapters.Message{item(id, "charge"), item("evil-exec", "charge")} {
			if err := p.Enqueue(ctx, cfg.Queue, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	// While it runs, no node ever reports the forged output.
	deadline := time.Now().Add(20 * time.Second)
	for {
		s1, err1 := e1.Status(ctx, id)
		s2, err2 := e2.Status(ctx, id)
		for _, s := range []flows.Status{s1, s2} {
			if fmt.Sprint(s.Output["total"]) == "666" {
				t.Fatalf("a node reports the forged output: %+v", s)
			}
		}
		if err1 == nil && err2 == nil && s1.State == flows.StateCompleted && s2.State == flows.StateCompleted {
			if fmt.Sprint(s1.Output["total"]) != "42" || fmt.Sprint(s2.Output["total"]) != "42" || s1.Seq != 1 {
				t.Fatalf("completed with %+v / %+v, want total 42 at seq 1", s1, s2)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("execution did not complete: %+v %v / %+v %v", s1, err1, s2, err2)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := e1.Status(ctx, "evil-exec"); err == nil {
		t.Fatal("the forged item started an execution")
	}
	got := results(t, b1, cfg.ResultsQueue, 1)
	if len(got) != 1 || got[id] != 1 {
		t.Fatalf("results %v, want one for %s", got, id)
	}
	// The four forged items are dead letters, each marked unauthenticated.
	dl, err := raw.Consume(ctx, cfg.Queue, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		d, err := dl.Receive(rctx)
		cancel()
		if err != nil {
			t.Fatalf("dead letter %d: %v", i, err)
		}
		if r := d.Message().Headers[adapters.HeaderDeadLetterReason]; !strings.HasPrefix(r, "unauthenticated") {
			t.Errorf("dead-letter reason %q", r)
		}
	}
	st := b1.Stats()
	st2 := b2.Stats()
	if st.Total+st2.Total < 12 {
		t.Errorf("rejections counted: n1 %+v n2 %+v; want the forged catalog writes on both nodes and 4 items", st, st2)
	}
}
