package signed_test

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/signed"
)

// Retained values are signed; unsigned, forged, foreign and moved ones are
// left out and counted.
func TestRetainSignsAndVerifies(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	reg := prometheus.NewRegistry()
	a := r.wrap("a", reg, keyA)
	other := r.wrap("x", nil, keyB)
	raw := r.srv.Client()
	if _, ok := adapters.RetainerOf(a); !ok {
		t.Fatal("signed over mem is not a Retainer")
	}
	if err := a.Retain(ctx, "log", "good", []byte("value")); err != nil {
		t.Fatal(err)
	}
	if err := a.Retain(ctx, "log", "moved", []byte("value")); err != nil {
		t.Fatal(err)
	}
	if err := a.Retain(ctx, "otherlog", "k", []byte("value")); err != nil {
		t.Fatal(err)
	}
	if err := other.Retain(ctx, "log", "forged", []byte("evil")); err != nil {
		t.Fatal(err)
	}
	if err := raw.Retain(ctx, "log", "unsigned", []byte("evil")); err != nil {
		t.Fatal(err)
	}
	// The envelope of "good" stored under another key, and of otherlog's
	// k stored in log.
	vals, _ := raw.Retained(ctx, "log")
	if err := raw.Retain(ctx, "log", "moved", vals["good"]); err != nil {
		t.Fatal(err)
	}
	ov, _ := raw.Retained(ctx, "otherlog")
	if err := raw.Retain(ctx, "log", "k", ov["k"]); err != nil {
		t.Fatal(err)
	}
	got, err := a.Retained(ctx, "log")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || string(got["good"]) != "value" {
		t.Fatalf("Retained = %q, want only good=value", got)
	}
	if err := a.Forget(ctx, "log", "unsigned"); err != nil {
		t.Fatal(err)
	}
	if vals, _ := raw.Retained(ctx, "log"); vals["unsigned"] != nil {
		t.Fatal("Forget did not reach the inner broker")
	}
	rej := rejectedSeries(t, reg)
	if rej[signed.ReasonForged] != 1 || rej[signed.ReasonUnsigned] != 1 || rej[signed.ReasonWrongDestination] != 2 {
		t.Fatalf("rejections = %v, want forged 1, unsigned 1, wrong-destination 2", rej)
	}
	// A value signed for retention is not a topic message.
	sub, err := a.Subscribe(ctx, "log")
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Publish(ctx, "log", adapters.Message{Body: vals["good"]}); err != nil {
		t.Fatal(err)
	}
	receiveNone(t, sub)
}

// A decorator over a broker that keeps nothing is not a Retainer.
func TestRetainUnsupportedInner(t *testing.T) {
	ring := mustRing(t, keyA)
	b, err := signed.Wrap(noRetain{mem.New()}, signed.Config{Cluster: "c1", Sender: "a", Keys: ring})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := adapters.RetainerOf(b); ok {
		t.Fatal("RetainerOf(signed over a broker without retention) = true")
	}
	if err := b.Retain(ctxT(t), "log", "k", nil); !errors.Is(err, adapters.ErrUnsupported) {
		t.Fatalf("Retain = %v, want ErrUnsupported", err)
	}
}

// noRetain hides mem's Retainer.
type noRetain struct{ adapters.Broker }
