package mem_test

import (
	"context"
	"errors"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

func TestRetainKeepsLastValuePerKey(t *testing.T) {
	ctx := context.Background()
	srv := mem.NewServer()
	a, b := srv.Client(), srv.Client()
	for _, kv := range [][2]string{{"k1", "v1"}, {"k2", "v2"}, {"k1", "v1b"}} {
		if err := a.Retain(ctx, "log1", kv[0], []byte(kv[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Retain(ctx, "log2", "k1", []byte("other log")); err != nil {
		t.Fatal(err)
	}
	_ = a.Close()
	srv.Restart()
	got, err := b.Retained(ctx, "log1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got["k1"]) != "v1b" || string(got["k2"]) != "v2" {
		t.Fatalf("Retained = %q, want k1=v1b k2=v2", got)
	}
	if err := b.Forget(ctx, "log1", "k2"); err != nil {
		t.Fatal(err)
	}
	if err := b.Forget(ctx, "never", "k2"); err != nil {
		t.Fatalf("Forget in a log never written = %v", err)
	}
	if got, _ := b.Retained(ctx, "log1"); len(got) != 1 || got["k2"] != nil {
		t.Fatalf("after Forget: %q", got)
	}
	if got, _ := b.Retained(ctx, "never"); len(got) != 0 {
		t.Fatalf("a log never retained to = %q, want empty", got)
	}
	if err := b.Retain(ctx, "bad log", "k", nil); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("bad log name = %v", err)
	}
	if err := b.Retain(ctx, "log1", "", nil); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("empty key = %v", err)
	}
	if _, ok := adapters.RetainerOf(b); !ok {
		t.Fatal("mem is not a Retainer")
	}
	b.Disconnect()
	if err := b.Retain(ctx, "log1", "k", nil); !errors.Is(err, adapters.ErrUnavailable) {
		t.Fatalf("Retain while disconnected = %v, want ErrUnavailable", err)
	}
}
