package sqstest_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	_ "github.com/clusterbus/clusterbus/adapters/sqs"
	"github.com/clusterbus/clusterbus/adapters/sqs/sqstest"
)

// TestStartServesSQSThroughURLAndEnv checks that the adapter, given only
// URL and Env, can enqueue to and receive from the started fauxqs.
func TestStartServesSQSThroughURLAndEnv(t *testing.T) {
	s, err := sqstest.Start(0)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("fauxqs unavailable (CI=true): %v", err)
		}
		t.Skipf("fauxqs unavailable: %v", err)
	}
	t.Cleanup(s.Stop)
	for _, kv := range sqstest.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := adapters.Open(ctx, s.URL())
	if err != nil {
		t.Fatalf("Open(%s): %v", s.URL(), err)
	}
	defer b.Close()
	q := "sqstest-q"
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
		t.Fatal(err)
	}
	if err := b.Enqueue(ctx, q, adapters.Message{ID: "m1", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Message().ID != "m1" {
		t.Fatalf("received %q, want m1", d.Message().ID)
	}
	_ = d.Ack(ctx)
}
