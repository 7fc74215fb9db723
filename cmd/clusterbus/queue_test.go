package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// replay moves every dead letter back onto its queue with body, key and
// application headers intact, and empties the dead-letter queue: on mem and
// on an embedded NATS server.
func TestQueueReplayMovesDeadLettersBack(t *testing.T) {
	t.Run("mem", func(t *testing.T) { testQueueReplay(t, fmt.Sprintf("mem://replay-%d", time.Now().UnixNano())) })
	t.Run("nats", func(t *testing.T) { testQueueReplay(t, startTestNATS(t).ClientURL()) })
}

func testQueueReplay(t *testing.T, url string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := adapters.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const q = "orders"
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: time.Second, MaxAttempts: 3}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		m := adapters.Message{ID: fmt.Sprint("o", i), Key: "k", Body: []byte{0xff, byte(i)}, Headers: map[string]string{"tenant": "t1"}}
		if err := b.Enqueue(ctx, q, m); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.DeadLetter(ctx, "bad total in "+d.Message().ID); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	n, err := runReplay(ctx, &out, url, q, 0, 300*time.Millisecond)
	t.Logf("\n%s", out.String())
	if err != nil || n != 3 {
		t.Fatalf("replay: %d, %v; want 3 items", n, err)
	}
	if !strings.Contains(out.String(), "bad total in o1") {
		t.Errorf("the output does not give the reasons")
	}
	got := map[string]bool{}
	for range 3 {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := d.Message()
		if !strings.HasPrefix(m.ID, "o") || !strings.Contains(m.ID, "~replay-") || m.Key != "k" || m.Headers["tenant"] != "t1" || len(m.Body) != 2 || m.Body[0] != 0xff {
			t.Errorf("replayed item %+v", m)
		}
		if _, ok := m.Headers[adapters.HeaderDeadLetterReason]; ok || d.Attempt() != 1 {
			t.Errorf("replayed item keeps its dead-letter state: headers %v, attempt %d", m.Headers, d.Attempt())
		}
		got[string(m.Body)] = true
		_ = d.Ack(ctx)
	}
	if len(got) != 3 {
		t.Errorf("%d distinct items back, want 3", len(got))
	}
	dl, err := b.Consume(ctx, q, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	rctx, rcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer rcancel()
	if d, err := dl.Receive(rctx); err == nil {
		t.Errorf("dead-letter queue still holds %q", d.Message().ID)
	}
	// An undeclared queue is an error, not an empty replay.
	if _, err := runReplay(ctx, &bytes.Buffer{}, url, "nope", 0, 100*time.Millisecond); !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("replay of an undeclared queue: %v, want ErrNotFound", err)
	}
}
