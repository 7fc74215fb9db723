package signed_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/signed"
)

const (
	keyA = "key-A-0123456789abcdef"
	keyB = "key-B-0123456789abcdef"
)

type rig struct {
	t     *testing.T
	srv   *mem.Server
	clock *clockwork.FakeClock
}

func newRig(t *testing.T) *rig {
	clock := clockwork.NewFakeClockAt(time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC))
	srv := mem.NewServer(mem.WithClock(clock))
	t.Cleanup(srv.Close)
	return &rig{t: t, srv: srv, clock: clock}
}

func (r *rig) wrap(sender string, reg prometheus.Registerer, keys ...string) *signed.Broker {
	r.t.Helper()
	var kb [][]byte
	for _, k := range keys {
		kb = append(kb, []byte(k))
	}
	ring, err := signed.NewKeyRing(kb...)
	if err != nil {
		r.t.Fatal(err)
	}
	b, err := signed.Wrap(r.srv.Client(), signed.Config{Cluster: "c1", Sender: sender, Keys: ring,
		MaxAge: time.Minute, Clock: r.clock, Registerer: reg})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = b.Close() })
	return b
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// receiveNone asserts that nothing (verified) arrives within a short wait.
func receiveNone(t *testing.T, sub adapters.Subscription) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if m, err := sub.Receive(ctx); err == nil {
		t.Fatalf("received %q, want nothing", m.Body)
	}
}

func TestTopicRoundTripAndRejections(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	reg := prometheus.NewRegistry()
	a := r.wrap("a", reg, keyA)
	b := r.wrap("b", nil, keyA)
	raw := r.srv.Client()
	sub, err := a.Subscribe(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	want := adapters.Message{ID: "id1", Key: "k", Headers: map[string]string{"x-h": "v"}, Body: []byte("hello")}
	if err := b.Publish(ctx, "t1", want); err != nil {
		t.Fatal(err)
	}
	got, err := sub.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != "id1" || got.Key != "k" || got.Headers["x-h"] != "v" || string(got.Body) != "hello" {
		t.Fatalf("got %+v", got)
	}

	// Capture what b sends, to replay and alter it.
	rawSub, _ := raw.Subscribe(ctx, "t1")
	if err := b.Publish(ctx, "t1", adapters.Message{Body: []byte("second")}); err != nil {
		t.Fatal(err)
	}
	captured, err := rawSub.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := sub.Receive(ctx); err != nil || string(m.Body) != "second" {
		t.Fatalf("second: %v %q", err, m.Body)
	}
	foreign := r.wrap("b", nil, keyB) // another key
	otherCluster, _ := signed.Wrap(r.srv.Client(), signed.Config{Cluster: "c2", Sender: "b",
		Keys: mustRing(t, keyA), Clock: r.clock})
	altered := captured
	altered.Body = append([]byte(nil), captured.Body...)
	altered.Body[len(altered.Body)-1] ^= 1

	cases := []struct {
		name, reason string
		send         func() error
	}{
		{"unsigned", signed.ReasonUnsigned, func() error {
			return raw.Publish(ctx, "t1", adapters.Message{Body: []byte(`{"id":"x"}`)})
		}},
		{"foreign key", signed.ReasonForged, func() error {
			return foreign.Publish(ctx, "t1", adapters.Message{Body: []byte("evil")})
		}},
		{"altered", signed.ReasonForged, func() error { return raw.Publish(ctx, "t1", altered) }},
		{"truncated", signed.ReasonMalformed, func() error {
			return raw.Publish(ctx, "t1", adapters.Message{Body: captured.Body[:40]})
		}},
		{"replayed", signed.ReasonReplay, func() error { return raw.Publish(ctx, "t1", captured) }},
		{"other cluster", signed.ReasonForeignCluster, func() error {
			return otherCluster.Publish(ctx, "t1", adapters.Message{Body: []byte("x")})
		}},
		{"other topic", signed.ReasonWrongDestination, func() error {
			s2, _ := raw.Subscribe(ctx, "t2")
			defer s2.Close()
			if err := b.Publish(ctx, "t2", adapters.Message{Body: []byte("for t2")}); err != nil {
				return err
			}
			m, err := s2.Receive(ctx)
			if err != nil {
				return err
			}
			return raw.Publish(ctx, "t1", m)
		}},
	}
	for _, c := range cases {
		before := a.Stats().ByReason[c.reason]
		if err := c.send(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		receiveNone(t, sub)
		if got := a.Stats().ByReason[c.reason]; got != before+1 {
			t.Errorf("%s: %s count %d, want %d", c.name, c.reason, got, before+1)
		}
	}
	series := rejectedSeries(t, reg)
	if series[signed.ReasonUnsigned] != 1 {
		t.Errorf("metric unsigned = %v, want 1", series[signed.ReasonUnsigned])
	}
	// Every reason is exported from the start.
	if len(series) != len(signed.Reasons) {
		t.Errorf("%d series, want %d", len(series), len(signed.Reasons))
	}
	// The subscription still works after all that.
	if err := b.Publish(ctx, "t1", adapters.Message{Body: []byte("still")}); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.Receive(ctx); err != nil || string(m.Body) != "still" {
		t.Fatalf("after rejections: %v %q", err, m.Body)
	}
}

func mustRing(t *testing.T, keys ...string) *signed.KeyRing {
	var kb [][]byte
	for _, k := range keys {
		kb = append(kb, []byte(k))
	}
	ring, err := signed.NewKeyRing(kb...)
	if err != nil {
		t.Fatal(err)
	}
	return ring
}

// rejectedSeries reads clusterbus_messages_rejected_total by reason.
func rejectedSeries(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "clusterbus_messages_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// TestStaleAndFuture: a message delivered outside the freshness window is
// dropped, whichever way the clocks differ.
func TestStaleAndFuture(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	a := r.wrap("a", nil, keyA)
	raw := r.srv.Client()
	capture := func(sender string) adapters.Message {
		t.Helper()
		s, _ := raw.Subscribe(ctx, "t1")
		defer s.Close()
		if err := r.wrap(sender, nil, keyA).Publish(ctx, "t1", adapters.Message{Body: []byte(sender)}); err != nil {
			t.Fatal(err)
		}
		m, err := s.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	old := capture("old")
	r.clock.Advance(2 * time.Minute)
	future := capture("future")
	r.clock.Advance(-2 * time.Minute)
	sub, _ := a.Subscribe(ctx, "t1")
	r.clock.Advance(61 * time.Second) // old is 61 s old now
	if err := raw.Publish(ctx, "t1", old); err != nil {
		t.Fatal(err)
	}
	receiveNone(t, sub)
	r.clock.Advance(-61 * time.Second) // future is 2 min ahead now
	if err := raw.Publish(ctx, "t1", future); err != nil {
		t.Fatal(err)
	}
	receiveNone(t, sub)
	if n := a.Stats().ByReason[signed.ReasonStale]; n != 2 {
		t.Fatalf("stale = %d, want 2", n)
	}
}

// TestEarlierIncarnationIsReplay: a node's previous run, replayed at it
// within the window, is dropped (it would otherwise look like another live
// node with this node's ID).
func TestEarlierIncarnationIsReplay(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	raw := r.srv.Client()
	s, _ := raw.Subscribe(ctx, "t1")
	prev := r.wrap("n1", nil, keyA)
	if err := prev.Publish(ctx, "t1", adapters.Message{Body: []byte("previous run")}); err != nil {
		t.Fatal(err)
	}
	captured, _ := s.Receive(ctx)
	time.Sleep(time.Millisecond) // incarnations are wall-clock start times
	cur := r.wrap("n1", nil, keyA)
	sub, _ := cur.Subscribe(ctx, "t1")
	if err := raw.Publish(ctx, "t1", captured); err != nil {
		t.Fatal(err)
	}
	receiveNone(t, sub)
	if n := cur.Stats().ByReason[signed.ReasonReplay]; n != 1 {
		t.Fatalf("replay = %d, want 1", n)
	}
	// Another receiver that heard the current run drops the earlier one too.
	other := r.wrap("n2", nil, keyA)
	osub, _ := other.Subscribe(ctx, "t1")
	if err := cur.Publish(ctx, "t1", adapters.Message{Body: []byte("current")}); err != nil {
		t.Fatal(err)
	}
	if m, err := osub.Receive(ctx); err != nil || string(m.Body) != "current" {
		t.Fatalf("%v %q", err, m.Body)
	}
	if err := raw.Publish(ctx, "t1", captured); err != nil {
		t.Fatal(err)
	}
	receiveNone(t, osub)
}

// TestOutOfOrderWithinWindow: concurrent publishers may reorder; each
// sequence number is accepted once.
func TestOutOfOrderWithinWindow(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	raw := r.srv.Client()
	s, _ := raw.Subscribe(ctx, "t1")
	b := r.wrap("b", nil, keyA)
	var msgs []adapters.Message
	for i := range 5 {
		if err := b.Publish(ctx, "t1", adapters.Message{Body: []byte{byte('0' + i)}}); err != nil {
			t.Fatal(err)
		}
		m, _ := s.Receive(ctx)
		msgs = append(msgs, m)
	}
	a := r.wrap("a", nil, keyA)
	sub, _ := a.Subscribe(ctx, "t1")
	for _, i := range []int{3, 0, 4, 1, 2, 4, 0} {
		if err := raw.Publish(ctx, "t1", msgs[i]); err != nil {
			t.Fatal(err)
		}
	}
	var got string
	for range 5 {
		m, err := sub.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got += string(m.Body)
	}
	if got != "30412" {
		t.Fatalf("got %q, want 30412", got)
	}
	receiveNone(t, sub)
	if n := a.Stats().ByReason[signed.ReasonReplay]; n != 2 {
		t.Fatalf("replay = %d, want 2", n)
	}
}

func TestQueueVerifiesAndDeadLetters(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	a := r.wrap("a", nil, keyA)
	raw := r.srv.Client()
	for _, q := range []string{"qa", "qb"} {
		if err := a.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
			t.Fatal(err)
		}
	}
	// A valid item, captured raw from queue qa.
	if err := a.Enqueue(ctx, "qa", adapters.Message{Key: "k", Headers: map[string]string{"h": "1"}, Body: []byte("valid")}); err != nil {
		t.Fatal(err)
	}
	rc, _ := raw.Consume(ctx, "qa", adapters.ConsumeOptions{})
	d, err := rc.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	captured := d.Message()
	if err := d.Nack(ctx, 0); err != nil {
		t.Fatal(err)
	}
	_ = rc.Close()
	// Even an old item on its own queue is accepted: queue items have no
	// freshness window by default.
	r.clock.Advance(24 * time.Hour)
	con, _ := a.Consume(ctx, "qa", adapters.ConsumeOptions{})
	d, err = con.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m := d.Message(); string(m.Body) != "valid" || m.Headers["h"] != "1" || m.Key != "k" || m.ID == "" {
		t.Fatalf("got %+v", m)
	}
	_ = d.Ack(ctx)

	foreign := r.wrap("x", nil, keyB)
	bad := []struct {
		reason string
		queue  string
		send   func() error
	}{
		{signed.ReasonUnsigned, "qb", func() error {
			return raw.Enqueue(ctx, "qb", adapters.Message{Body: []byte(`{"exec":"e","step":"s"}`)})
		}},
		{signed.ReasonForged, "qb", func() error { return foreign.Enqueue(ctx, "qb", adapters.Message{Body: []byte("evil")}) }},
		{signed.ReasonWrongDestination, "qb", func() error { return raw.Enqueue(ctx, "qb", captured) }},
	}
	cb, _ := a.Consume(ctx, "qb", adapters.ConsumeOptions{})
	for _, c := range bad {
		if err := c.send(); err != nil {
			t.Fatal(err)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if d, err := cb.Receive(rctx); err == nil {
		t.Fatalf("consumer got %q, want nothing", d.Message().Body)
	}
	cancel()
	st := a.Stats()
	for _, c := range bad {
		if st.ByReason[c.reason] != 1 {
			t.Errorf("%s = %d, want 1", c.reason, st.ByReason[c.reason])
		}
	}
	// All three are dead letters with the reason; read raw.
	dl, _ := raw.Consume(ctx, "qb", adapters.ConsumeOptions{DeadLetters: true})
	for range bad {
		d, err := dl.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if reason := d.Message().Headers[adapters.HeaderDeadLetterReason]; !strings.HasPrefix(reason, "unauthenticated: ") {
			t.Errorf("dead-letter reason %q", reason)
		}
		_ = d.Nack(ctx, 0)
	}
	_ = dl.Close()
	// Through the decorator, dead letters that fail are marked, not trusted.
	sdl, _ := a.Consume(ctx, "qb", adapters.ConsumeOptions{DeadLetters: true})
	d, err = sdl.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Message().Headers[signed.HeaderRejected] == "" {
		t.Fatalf("dead letter not marked: %+v", d.Message().Headers)
	}
}

// TestKeyRotation: add a key, switch the signer, drop the old key; no
// message is rejected at any step.
func TestKeyRotation(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	a := r.wrap("a", nil, keyA)
	b := r.wrap("b", nil, keyA)
	sa, _ := a.Subscribe(ctx, "t")
	sb, _ := b.Subscribe(ctx, "t")
	step := func(name string) {
		t.Helper()
		for _, p := range []*signed.Broker{a, b} {
			if err := p.Publish(ctx, "t", adapters.Message{Body: []byte(name)}); err != nil {
				t.Fatal(err)
			}
		}
		for _, s := range []adapters.Subscription{sa, sb} {
			for range 2 {
				if m, err := s.Receive(ctx); err != nil || string(m.Body) != name {
					t.Fatalf("%s: %v %q", name, err, m.Body)
				}
			}
		}
	}
	step("before")
	_ = a.Keys().Set([]byte(keyA), []byte(keyB)) // add on a
	step("added on a")
	_ = b.Keys().Set([]byte(keyA), []byte(keyB))
	_ = a.Keys().Set([]byte(keyB), []byte(keyA)) // a signs with B
	step("a signs with B")
	_ = b.Keys().Set([]byte(keyB), []byte(keyA))
	step("both sign with B")
	_ = a.Keys().Set([]byte(keyB))
	_ = b.Keys().Set([]byte(keyB))
	step("A removed")
	if a.Stats().Total != 0 || b.Stats().Total != 0 {
		t.Fatalf("rejections during rotation: %+v %+v", a.Stats(), b.Stats())
	}
	if err := a.Keys().Set([]byte("short")); err == nil {
		t.Fatal("a 5-byte key was accepted")
	}
}

func TestWrapValidates(t *testing.T) {
	r := newRig(t)
	ring := mustRing(t, keyA)
	for _, cfg := range []signed.Config{
		{Sender: "a", Keys: ring},
		{Cluster: "c", Keys: ring},
		{Cluster: "c", Sender: "a"},
		{Cluster: "c", Sender: "a", Keys: ring, MaxAge: -1},
	} {
		if _, err := signed.Wrap(r.srv.Client(), cfg); !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("%+v: %v, want ErrInvalidArgument", cfg, err)
		}
	}
}

func TestTooLarge(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	a := r.wrap("a", nil, keyA)
	lim := a.Capabilities().MaxMessageSize
	if err := a.Publish(ctx, "t", adapters.Message{Body: make([]byte, lim)}); err != nil {
		t.Fatalf("a message of the advertised limit: %v", err)
	}
	if err := a.Publish(ctx, "t", adapters.Message{Body: make([]byte, r.srv.Client().Capabilities().MaxMessageSize)}); !errors.Is(err, adapters.ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
}
