package traced_test

import (
	"context"
	"errors"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/traced"
)

func TestRetainPassesThrough(t *testing.T) {
	ctx := context.Background()
	b := traced.New(mem.New(), traced.Options{})
	r, ok := adapters.RetainerOf(b)
	if !ok {
		t.Fatal("traced over mem is not a Retainer")
	}
	if err := r.Retain(ctx, "log", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if got, err := r.Retained(ctx, "log"); err != nil || string(got["k"]) != "v" {
		t.Fatalf("Retained = %q, %v", got, err)
	}
	n := traced.New(struct{ adapters.Broker }{mem.New()}, traced.Options{})
	if _, ok := adapters.RetainerOf(n); ok {
		t.Fatal("traced over a broker without retention is a Retainer")
	}
	if err := n.Retain(ctx, "log", "k", nil); !errors.Is(err, adapters.ErrUnsupported) {
		t.Fatalf("Retain = %v, want ErrUnsupported", err)
	}
}
