package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// Retain keeps the last value per key on a compacted topic: another client
// reads them all, also after the broker restarts.
func TestRetainLastValuePerKey(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := openT(ctx, t, srv)
	r, ok := adapters.RetainerOf(a)
	if !ok {
		t.Fatal("kafka is not a Retainer")
	}
	log := uniqueName("log")
	for i := range 50 {
		if err := r.Retain(ctx, log, fmt.Sprintf("k%02d", i%20), []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatalf("retain %d: %v", i, err)
		}
	}
	if err := r.Retain(ctx, log, "empty", nil); err != nil {
		t.Fatal(err)
	}
	check := func(b adapters.Broker) {
		t.Helper()
		got, err := b.(adapters.Retainer).Retained(ctx, log)
		if err != nil {
			t.Fatalf("Retained: %v", err)
		}
		if len(got) != 21 {
			t.Fatalf("Retained has %d keys, want 21: %q", len(got), got)
		}
		for k := range 20 {
			want := fmt.Sprint("v", 40+k)
			if k >= 10 {
				want = fmt.Sprint("v", 20+k)
			}
			if string(got[fmt.Sprintf("k%02d", k)]) != want {
				t.Fatalf("k%02d = %q, want %s", k, got[fmt.Sprintf("k%02d", k)], want)
			}
		}
		if v, ok := got["empty"]; !ok || len(v) != 0 {
			t.Fatalf("the empty value: %q, %v", v, ok)
		}
	}
	check(openT(ctx, t, srv))
	if err := r.Retain(ctx, log, "gone", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := r.Forget(ctx, log, "gone"); err != nil {
		t.Fatal(err)
	}
	check(openT(ctx, t, srv))
	if got, err := r.Retained(ctx, uniqueName("never")); err != nil || len(got) != 0 {
		t.Fatalf("a log never retained to: %q, %v", got, err)
	}
	if err := r.Retain(ctx, "bad.log", "k", nil); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("bad log name = %v", err)
	}
	if !srv.canRestart() {
		return
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	check(openT(ctx, t, srv))
}
