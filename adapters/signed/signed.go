package signed

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/adapters"
)

// maxSender bounds Config.Sender, so that every sender's messages have the
// same room.
const maxSender = 128

// DefaultMaxAge is Config.MaxAge when it is zero.
const DefaultMaxAge = time.Minute

// HeaderRejected marks a dead letter, read through a signed consumer with
// ConsumeOptions.DeadLetters, that failed verification: its value is the
// reason and the message is returned as the broker holds it (body and all),
// for an operator to look at. It is never returned by a consumer of the
// queue itself.
const HeaderRejected = adapters.ReservedHeaderPrefix + "signed-rejected"

// Reasons a message is rejected; they label clusterbus_messages_rejected_total.
const (
	// ReasonUnsigned: the body is not a signed envelope.
	ReasonUnsigned = "unsigned"
	// ReasonMalformed: an envelope that does not decode.
	ReasonMalformed = "malformed"
	// ReasonForged: no key of the ring made its MAC (forged, altered, or
	// signed with a key this node does not hold).
	ReasonForged = "forged"
	// ReasonForeignCluster: validly signed for another cluster.
	ReasonForeignCluster = "foreign-cluster"
	// ReasonWrongDestination: validly signed for another topic or queue
	// (or a topic message put on a queue, or the other way round).
	ReasonWrongDestination = "wrong-destination"
	// ReasonStale: sent outside the freshness window (too old, or too far
	// in the future).
	ReasonStale = "stale"
	// ReasonReplay: a sequence number already seen from that sender, or a
	// message from an incarnation of the sender older than one already
	// heard.
	ReasonReplay = "replay"
)

// Reasons lists every rejection reason.
var Reasons = []string{ReasonUnsigned, ReasonMalformed, ReasonForged, ReasonForeignCluster,
	ReasonWrongDestination, ReasonStale, ReasonReplay}

// Config configures Wrap.
type Config struct {
	// Cluster is signed into every message; messages of another cluster
	// are rejected. Required.
	Cluster string
	// Sender names this process (the node ID) in what it sends; receivers
	// keep replay state per sender. Required.
	Sender string
	// Keys signs (the first) and verifies (all). Required.
	Keys *KeyRing
	// MaxAge is the freshness window of topic messages: a message sent
	// more than MaxAge before (or after) the receiver's clock is rejected
	// as stale. Zero means DefaultMaxAge. Choose a few failure timeouts
	// plus the clock skew allowed between nodes.
	MaxAge time.Duration
	// QueueMaxAge, if above zero, rejects queue items enqueued longer ago
	// than that. Zero (the default) accepts queue items of any age: see
	// "Queue items" in the package doc.
	QueueMaxAge time.Duration
	// Clock is the clock freshness is measured on (default: real time).
	Clock clockwork.Clock
	// Logger receives rejection lines, at most one per sender per minute
	// (default: discard).
	Logger *slog.Logger
	// Registerer, if set, gets clusterbus_messages_rejected_total.
	Registerer prometheus.Registerer
}

// Rejection describes one rejected message.
type Rejection struct {
	Time        time.Time
	Reason      string
	Kind        string // "topic", "queue" or "retained"
	Destination string // the topic or queue it came from
	Sender      string // as the message claims; unverified unless the reason says otherwise
	Detail      string
}

// Stats summarises the rejections since Wrap.
type Stats struct {
	Total    uint64
	ByReason map[string]uint64
	// Last is the latest rejection (zero if none).
	Last Rejection
}

// Broker is the decorator returned by Wrap.
type Broker struct {
	inner adapters.Broker
	cfg   Config
	inc   uint64
	seq   atomic.Uint64
	log   *slog.Logger
	met   *prometheus.CounterVec

	mu       sync.Mutex
	stats    Stats
	loggedAt map[string]time.Time
}

var _ adapters.Broker = (*Broker)(nil)
var _ adapters.BatchEnqueuer = (*Broker)(nil)

// Wrap returns b with every message signed on Publish and Enqueue and
// verified on receipt. It validates cfg.
func Wrap(b adapters.Broker, cfg Config) (*Broker, error) {
	const op = "signed: wrap"
	switch {
	case b == nil:
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "nil broker")
	case cfg.Cluster == "":
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "Config.Cluster is empty")
	case cfg.Sender == "" || len(cfg.Sender) > maxSender:
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "Config.Sender %q: want 1 to %d bytes", cfg.Sender, maxSender)
	case cfg.Keys == nil || cfg.Keys.Len() == 0:
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "Config.Keys holds no key")
	case cfg.MaxAge < 0 || cfg.QueueMaxAge < 0:
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "Config.MaxAge %s, QueueMaxAge %s: want >= 0", cfg.MaxAge, cfg.QueueMaxAge)
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Broker{
		inner: b, cfg: cfg,
		// The incarnation orders a sender's runs: a later run has a
		// higher one, so replays of an earlier run are told apart. Wall
		// time (not cfg.Clock, which tests fake) at start.
		inc:      uint64(time.Now().UnixNano()),
		log:      cfg.Logger,
		stats:    Stats{ByReason: map[string]uint64{}},
		loggedAt: map[string]time.Time{},
	}
	s.met = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "clusterbus", Name: "messages_rejected_total",
		Help: "Messages dropped (topics) or dead-lettered (queues) because they failed verification, by reason."},
		[]string{"reason"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(s.met); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("%s: register metrics: %w", op, err)
			}
			s.met = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	for _, r := range Reasons {
		s.met.WithLabelValues(r)
		s.stats.ByReason[r] = 0
	}
	return s, nil
}

// Unwrap returns the broker underneath.
func (s *Broker) Unwrap() adapters.Broker { return s.inner }

// Keys is the key ring in use (Set it to rotate).
func (s *Broker) Keys() *KeyRing { return s.cfg.Keys }

// Stats returns the rejections so far.
func (s *Broker) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.ByReason = maps.Clone(s.stats.ByReason)
	return st
}

// overhead bounds what the envelope adds to a message of at most
// maxHeaders headers, as counted by adapters.Size.
func (s *Broker) overhead(headers int) int {
	return fixedOverhead + len(s.cfg.Cluster) + 64 + maxSender + 2*128 + 4*headers
}

// Capabilities are the inner broker's, with MaxMessageSize reduced by what
// the envelope adds.
func (s *Broker) Capabilities() adapters.Capabilities {
	c := s.inner.Capabilities()
	if c.MaxMessageSize > 0 {
		h := c.MaxHeaders
		if h == 0 || h > maxHeaders {
			h = 64
		}
		c.MaxMessageSize = max(0, c.MaxMessageSize-s.overhead(h))
	}
	return c
}

func (s *Broker) seal(op string, kind byte, dest string, m adapters.Message) (adapters.Message, error) {
	// The advertised limit bounds what callers send, so that a message
	// is refused the same whatever its headers.
	caps := s.Capabilities()
	if err := adapters.ValidateMessage(op, m, caps); err != nil {
		return adapters.Message{}, err
	}
	keys := s.cfg.Keys.Keys()
	if len(keys) == 0 {
		return adapters.Message{}, adapters.Errorf(adapters.ErrInvalidArgument, op, "no signing key")
	}
	body, err := encode(keys[0], &envelope{
		Kind: kind, Cluster: s.cfg.Cluster, Destination: dest, Sender: s.cfg.Sender,
		Incarnation: s.inc, Seq: s.seq.Add(1), Sent: s.cfg.Clock.Now().UnixNano(),
		ID: m.ID, Key: m.Key, Headers: m.Headers, Body: m.Body,
	})
	if err != nil {
		return adapters.Message{}, adapters.Errorf(adapters.ErrInvalidArgument, op, "%v", err)
	}
	out := adapters.Message{ID: m.ID, Key: m.Key, Body: body}
	if kind == kindQueue {
		out.ID = brokerID(keys[0], dest, m.ID)
	}
	if lim := s.inner.Capabilities().MaxMessageSize; lim > 0 && adapters.Size(out) > lim {
		return adapters.Message{}, adapters.Errorf(adapters.ErrTooLarge, op, "%d bytes signed (%d unsigned), limit %d (%s)",
			adapters.Size(out), adapters.Size(m), lim, s.inner.Capabilities().Name)
	}
	return out, nil
}

// Publish signs m for topic and publishes it.
func (s *Broker) Publish(ctx context.Context, topic string, m adapters.Message) error {
	out, err := s.seal(fmt.Sprintf("signed: publish %q", topic), kindTopic, topic, m)
	if err != nil {
		return err
	}
	return s.inner.Publish(ctx, topic, out)
}

// Enqueue signs m for queue and enqueues it. An empty m.ID is replaced by a
// random one first, so that the ID is signed too.
func (s *Broker) Enqueue(ctx context.Context, queue string, m adapters.Message) error {
	out, err := s.sealItem(fmt.Sprintf("signed: enqueue %q", queue), queue, m)
	if err != nil {
		return err
	}
	return s.inner.Enqueue(ctx, queue, out)
}

// EnqueueBatch implements adapters.BatchEnqueuer: every message is signed
// as Enqueue signs one (nothing is sent if one cannot be), then the inner
// broker's batch (or its Enqueue per message) carries them.
func (s *Broker) EnqueueBatch(ctx context.Context, queue string, ms []adapters.Message) error {
	op := fmt.Sprintf("signed: enqueue %q", queue)
	out := make([]adapters.Message, len(ms))
	for i, m := range ms {
		sealed, err := s.sealItem(op, queue, m)
		if err != nil {
			return err
		}
		out[i] = sealed
	}
	return adapters.EnqueueBatch(ctx, s.inner, queue, out)
}

// EnqueueAsync implements adapters.AsyncEnqueuer: m is signed as Enqueue
// signs it, then the inner broker's EnqueueAsync (or its Enqueue on a
// goroutine) carries it.
func (s *Broker) EnqueueAsync(ctx context.Context, queue string, m adapters.Message) (adapters.Pending, error) {
	out, err := s.sealItem(fmt.Sprintf("signed: enqueue %q", queue), queue, m)
	if err != nil {
		return nil, err
	}
	return adapters.EnqueueAsync(ctx, s.inner, queue, out)
}

// sealItem signs a queue item, giving it a random ID first if it has none,
// so that the ID is signed too.
func (s *Broker) sealItem(op, queue string, m adapters.Message) (adapters.Message, error) {
	if m.ID == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		m.ID = hex.EncodeToString(b[:])
	}
	return s.seal(op, kindQueue, queue, m)
}

// DeclareQueue passes through.
func (s *Broker) DeclareQueue(ctx context.Context, cfg adapters.QueueConfig) error {
	return s.inner.DeclareQueue(ctx, cfg)
}

// DeleteQueue passes through.
func (s *Broker) DeleteQueue(ctx context.Context, queue string) error {
	return s.inner.DeleteQueue(ctx, queue)
}

// Close closes the inner broker.
func (s *Broker) Close() error { return s.inner.Close() }

// Subscribe returns a subscription that yields only verified messages of
// topic; the others are dropped and counted.
func (s *Broker) Subscribe(ctx context.Context, topic string) (adapters.Subscription, error) {
	sub, err := s.inner.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	return &subscription{s: s, inner: sub, topic: topic, peers: map[string]*peer{
		// Our own earlier runs are older than this one.
		s.cfg.Sender: {inc: s.inc, pinned: true},
	}}, nil
}

// Consume returns a consumer that yields only verified items; the others
// are dead-lettered with the reason "unauthenticated: ...". With
// opts.DeadLetters, items that fail verification are returned as they are,
// marked with HeaderRejected.
func (s *Broker) Consume(ctx context.Context, queue string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	c, err := s.inner.Consume(ctx, queue, opts)
	if err != nil {
		return nil, err
	}
	return &consumer{s: s, inner: c, queue: queue, dead: opts.DeadLetters}, nil
}

// open checks m, received from dest, and returns the message it carries.
func (s *Broker) open(kind byte, dest string, m adapters.Message) (*envelope, Rejection) {
	rej := func(reason, sender, detail string) Rejection {
		return Rejection{Reason: reason, Kind: kindName(kind), Destination: dest, Sender: sender, Detail: detail}
	}
	e, err := decode(m.Body)
	switch {
	case errors.Is(err, errNotEnvelope):
		return nil, rej(ReasonUnsigned, "", fmt.Sprintf("%d bytes without a signature", len(m.Body)))
	case err != nil:
		return nil, rej(ReasonMalformed, "", err.Error())
	case !e.verify(s.cfg.Keys.Keys()):
		return nil, rej(ReasonForged, e.Sender, "no cluster key made its MAC (another key, or altered)")
	case e.Cluster != s.cfg.Cluster:
		return nil, rej(ReasonForeignCluster, e.Sender, fmt.Sprintf("signed for cluster %q", e.Cluster))
	case e.Kind != kind || e.Destination != dest:
		return nil, rej(ReasonWrongDestination, e.Sender, fmt.Sprintf("signed for %s %q", kindName(e.Kind), e.Destination))
	}
	now := s.cfg.Clock.Now()
	age := now.Sub(time.Unix(0, e.Sent))
	switch {
	case kind == kindTopic && (age > s.cfg.MaxAge || age < -s.cfg.MaxAge):
		return nil, rej(ReasonStale, e.Sender, fmt.Sprintf("sent %s ago, window %s", age.Round(time.Millisecond), s.cfg.MaxAge))
	case kind == kindQueue && s.cfg.QueueMaxAge > 0 && age > s.cfg.QueueMaxAge:
		return nil, rej(ReasonStale, e.Sender, fmt.Sprintf("enqueued %s ago, limit %s", age.Round(time.Millisecond), s.cfg.QueueMaxAge))
	}
	return e, Rejection{}
}

// brokerID is the ID a queue item carries at the broker: the item's ID
// (shortened) and a tag only key holders can compute. A broker that drops
// repeated IDs then drops repeats of genuine items as before, but a client
// without the key cannot take a future item's ID first (an unsigned item
// enqueued with the ID of the next step of an execution would otherwise
// make the broker drop the real one as a duplicate).
func brokerID(key []byte, queue, id string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte("clusterbus/signed/broker-id\n" + queue + "\n" + id))
	tag := base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:16])
	return id[:min(len(id), 100)] + "~" + tag
}

func kindName(k byte) string {
	switch k {
	case kindQueue:
		return "queue"
	case kindRetained:
		return "retained"
	}
	return "topic"
}

func (s *Broker) reject(r Rejection) {
	r.Time = s.cfg.Clock.Now()
	s.met.WithLabelValues(r.Reason).Inc()
	s.mu.Lock()
	s.stats.Total++
	s.stats.ByReason[r.Reason]++
	s.stats.Last = r
	logKey := r.Sender
	if logKey == "" {
		logKey = "(unsigned)"
	}
	last, seen := s.loggedAt[logKey]
	logIt := !seen || r.Time.Sub(last) >= time.Minute
	if logIt {
		if len(s.loggedAt) >= 1024 { // claimed senders are attacker-chosen: bound the map
			for k, t := range s.loggedAt {
				if r.Time.Sub(t) >= time.Minute {
					delete(s.loggedAt, k)
				}
			}
			if len(s.loggedAt) >= 1024 {
				logKey = "(many senders)"
				last, seen = s.loggedAt[logKey]
				logIt = !seen || r.Time.Sub(last) >= time.Minute
			}
		}
		if logIt {
			s.loggedAt[logKey] = r.Time
		}
	}
	total := s.stats.ByReason[r.Reason]
	s.mu.Unlock()
	if logIt {
		s.log.Warn("rejected a message that failed verification (logged at most once a minute per sender)",
			"reason", r.Reason, "kind", r.Kind, "destination", r.Destination, "sender", r.Sender,
			"detail", r.Detail, "rejected_for_this_reason", total)
	}
}

func (e *envelope) message(outer adapters.Message) adapters.Message {
	m := adapters.Message{ID: e.ID, Key: e.Key, Headers: e.Headers, Body: e.Body}
	// Headers the adapter sets on receipt (dead-letter reason) are outside
	// the envelope: carry them over.
	for k, v := range outer.Headers {
		if strings.HasPrefix(strings.ToLower(k), adapters.ReservedHeaderPrefix) {
			if m.Headers == nil {
				m.Headers = map[string]string{}
			}
			m.Headers[k] = v
		}
	}
	return m
}

type subscription struct {
	s     *Broker
	inner adapters.Subscription
	topic string

	mu        sync.Mutex
	peers     map[string]*peer
	lastSweep time.Time
}

// replayWindow is how many sequence numbers below a sender's highest are
// still accepted once each (messages published concurrently may arrive out
// of order).
const replayWindow = 1024

// peer is the replay state of one sender on one subscription.
type peer struct {
	inc    uint64
	max    uint64
	seen   [replayWindow / 64]uint64
	last   time.Time
	pinned bool
}

func (p *peer) bit(seq uint64) (word int, mask uint64) {
	i := seq % replayWindow
	return int(i / 64), 1 << (i % 64)
}

// accept records seq; false if it was seen or is below the window.
func (p *peer) accept(seq uint64) bool {
	if seq > p.max {
		if seq-p.max >= replayWindow {
			p.seen = [replayWindow / 64]uint64{}
		} else {
			for q := p.max + 1; q < seq; q++ {
				w, m := p.bit(q)
				p.seen[w] &^= m
			}
		}
		w, m := p.bit(seq)
		p.seen[w] |= m
		p.max = seq
		return true
	}
	if p.max-seq >= replayWindow {
		return false
	}
	w, m := p.bit(seq)
	if p.seen[w]&m != 0 {
		return false
	}
	p.seen[w] |= m
	return true
}

func (u *subscription) Receive(ctx context.Context) (adapters.Message, error) {
	for {
		m, err := u.inner.Receive(ctx)
		if err != nil {
			return m, err
		}
		e, rej := u.s.open(kindTopic, u.topic, m)
		if rej.Reason == "" {
			rej = u.fresh(e)
		}
		if rej.Reason != "" {
			u.s.reject(rej)
			continue
		}
		return e.message(m), nil
	}
}

// fresh applies replay protection to a verified topic message.
func (u *subscription) fresh(e *envelope) Rejection {
	now := u.s.cfg.Clock.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	if now.Sub(u.lastSweep) > u.s.cfg.MaxAge {
		// A sender silent for twice the window can only be replayed
		// with messages that are stale anyway.
		for k, p := range u.peers {
			if !p.pinned && now.Sub(p.last) > 2*u.s.cfg.MaxAge {
				delete(u.peers, k)
			}
		}
		u.lastSweep = now
	}
	r := Rejection{Reason: ReasonReplay, Kind: "topic", Destination: u.topic, Sender: e.Sender}
	p := u.peers[e.Sender]
	switch {
	case e.Seq == 0:
		r.Reason, r.Detail = ReasonMalformed, "sequence 0"
		return r
	case p == nil:
		p = &peer{inc: e.Incarnation}
		u.peers[e.Sender] = p
	case e.Incarnation < p.inc:
		r.Detail = "from an earlier run of the sender than one already heard"
		return r
	case e.Incarnation > p.inc:
		*p = peer{inc: e.Incarnation, pinned: p.pinned}
	}
	if !p.accept(e.Seq) {
		r.Detail = fmt.Sprintf("sequence %d already seen or too old (highest %d)", e.Seq, p.max)
		return r
	}
	p.last = now
	return Rejection{}
}

func (u *subscription) Close() error { return u.inner.Close() }

type consumer struct {
	s     *Broker
	inner adapters.Consumer
	queue string
	dead  bool
}

func (c *consumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	for {
		d, err := c.inner.Receive(ctx)
		if err != nil {
			return d, err
		}
		m := d.Message()
		e, rej := c.s.open(kindQueue, c.queue, m)
		if rej.Reason == "" {
			return delivery{Delivery: d, m: e.message(m)}, nil
		}
		c.s.reject(rej)
		if c.dead {
			h := maps.Clone(m.Headers)
			if h == nil {
				h = map[string]string{}
			}
			h[HeaderRejected] = rej.Reason
			m.Headers = h
			return delivery{Delivery: d, m: m}, nil
		}
		reason := "unauthenticated: " + rej.Reason + ": " + rej.Detail
		if err := d.DeadLetter(context.WithoutCancel(ctx), reason); err != nil {
			c.s.log.Warn("could not dead-letter an item that failed verification", "queue", c.queue, "err", err)
		}
	}
}

func (c *consumer) Close() error { return c.inner.Close() }

// Pause implements adapters.Pauser when the inner consumer does.
func (c *consumer) Pause() {
	if p, ok := c.inner.(adapters.Pauser); ok {
		p.Pause()
	}
}

type delivery struct {
	adapters.Delivery
	m adapters.Message
}

func (d delivery) Message() adapters.Message { return d.m }
