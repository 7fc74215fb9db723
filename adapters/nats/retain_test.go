package nats_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
)

// Retain keeps the last value per key in a JetStream stream: a new
// connection, after a server restart, reads every key's last value.
func TestRetainSurvivesServerRestart(t *testing.T) {
	srv := startServer(t, false)
	ctx := testCtx(t)
	a := open(t, srv)
	keys := []string{"plain", "with.dots", "slash/and space", "ünïcode", "*>", string(make([]byte, 300))}
	for i, k := range keys {
		if err := a.Retain(ctx, "catlog", k, []byte(fmt.Sprint("old", i))); err != nil {
			t.Fatalf("retain %q: %v", k, err)
		}
		if err := a.Retain(ctx, "catlog", k, []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatalf("retain %q again: %v", k, err)
		}
	}
	for i := range 1500 { // more than one fetch batch
		if err := a.Retain(ctx, "big", fmt.Sprintf("k%04d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := a.Retained(ctx, "never"); err != nil || len(got) != 0 {
		t.Fatalf("Retained of a log never written = %q, %v; want empty, nil", got, err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	b := open(t, srv)
	got, err := b.Retained(ctx, "catlog")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(keys) {
		t.Fatalf("Retained has %d keys, want %d: %q", len(got), len(keys), got)
	}
	for i, k := range keys {
		if string(got[k]) != fmt.Sprint("v", i) {
			t.Fatalf("Retained[%q] = %q, want v%d", k, got[k], i)
		}
	}
	big, err := b.Retained(ctx, "big")
	if err != nil || len(big) != 1500 {
		t.Fatalf("Retained(big) = %d keys, %v; want 1500", len(big), err)
	}
	if err := b.Forget(ctx, "catlog", "with.dots"); err != nil {
		t.Fatal(err)
	}
	if err := b.Forget(ctx, "never", "x"); err != nil {
		t.Fatalf("Forget in a log never written = %v", err)
	}
	if got, err := b.Retained(ctx, "catlog"); err != nil || len(got) != len(keys)-1 || got["with.dots"] != nil {
		t.Fatalf("after Forget: %d keys, %v", len(got), err)
	}
	if err := b.Retain(ctx, "bad.log", "k", nil); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("Retain to a bad log name = %v", err)
	}
}
