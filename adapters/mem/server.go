package mem

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/clusterbus/clusterbus/adapters"
)

// Defaults of a Server's limits.
const (
	DefaultMaxMessageSize     = 1 << 20
	DefaultMaxHeaders         = 64
	DefaultSubscriptionBuffer = 4096
	DefaultMinLease           = time.Millisecond
	DefaultMaxLease           = 24 * time.Hour
)

// Option tunes a Server.
type Option func(*Server)

// WithClock drives leases, nack delays and dedupe windows from c, for
// example a clockwork.NewFakeClock() that a test advances.
func WithClock(c clockwork.Clock) Option { return func(s *Server) { s.clock = c } }

// WithCapabilities lets fn change the capabilities the server reports and
// enforces, to stand for a weaker broker: a feature set to
// adapters.Unsupported is refused with ErrUnsupported (Extend, Nack with a
// delay, DeadLetter, Ordered and Dedupe queues, reading dead letters; without
// DeadLetter, MaxAttempts is not enforced and items are redelivered
// forever), and the limits are enforced as set.
func WithCapabilities(fn func(*adapters.Capabilities)) Option {
	return func(s *Server) { fn(&s.caps) }
}

// WithMaxMessageSize sets Capabilities.MaxMessageSize (default 1 MiB).
func WithMaxMessageSize(n int) Option { return func(s *Server) { s.caps.MaxMessageSize = n } }

// WithMaxHeaders sets Capabilities.MaxHeaders (default 64).
func WithMaxHeaders(n int) Option { return func(s *Server) { s.caps.MaxHeaders = n } }

// WithSubscriptionBuffer sets how many undelivered messages a subscription
// holds before it drops further ones and reports ErrGap (default 4096).
func WithSubscriptionBuffer(n int) Option { return func(s *Server) { s.subBuf = max(n, 1) } }

// WithSeed seeds the random source behind DropRate, so a test that drops
// messages at random drops the same ones on every run.
func WithSeed(seed uint64) Option {
	return func(s *Server) { s.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }
}

// Server is one in-memory broker that several clients (Brokers) share, the
// way the nodes of a cluster share one real broker. Its fault hooks
// (Disconnect, Partition, DropNext, DropRate, Restart) let tests of the
// layers above break it on purpose. All methods are safe for concurrent use.
type Server struct {
	clock  clockwork.Clock
	caps   adapters.Capabilities
	subBuf int

	mu        sync.Mutex
	rng       *rand.Rand
	queues    map[string]*queue
	topics    map[string]map[*subscription]struct{}
	clients   map[*Broker]struct{}
	drops     map[string]int     // topic -> messages still to drop for everyone
	dropRate  map[string]float64 // topic -> probability a message is dropped
	nextGroup int
	seq       uint64 // item sequence, for enqueue order
	token     uint64 // lease tokens
	clientSeq uint64
	retained  map[string]map[string][]byte // log -> key -> last value (Retainer)
}

// NewServer returns an empty in-memory broker server.
func NewServer(opts ...Option) *Server {
	s := &Server{
		clock: clockwork.NewRealClock(),
		caps: adapters.Capabilities{
			Name:           "mem",
			LeaseExtension: adapters.Native,
			DelayedNack:    adapters.Native,
			DeadLetter:     adapters.Native,
			Dedupe:         adapters.Native,
			Ordering:       adapters.Native,
			Restart:        adapters.Native,
			QueueStats:     adapters.Emulated, // no oldest-item age
			MaxMessageSize: DefaultMaxMessageSize,
			MaxHeaders:     DefaultMaxHeaders,
			MinLease:       DefaultMinLease,
			MaxLease:       DefaultMaxLease,
		},
		subBuf:   DefaultSubscriptionBuffer,
		rng:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		queues:   map[string]*queue{},
		topics:   map[string]map[*subscription]struct{}{},
		clients:  map[*Broker]struct{}{},
		drops:    map[string]int{},
		dropRate: map[string]float64{},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// New returns a client of a new private Server: the quickest way to get a
// Broker for a single-node test.
func New(opts ...Option) *Broker { return NewServer(opts...).Client() }

// Clock is the clock the server runs on.
func (s *Server) Clock() clockwork.Clock { return s.clock }

// Capabilities of every client of this server.
func (s *Server) Capabilities() adapters.Capabilities { return s.caps }

// Client connects a new client. Each client stands for one node's
// connection: its own subscriptions, consumers and leases.
func (s *Server) Client() *Broker {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clientSeq++
	b := &Broker{
		srv:       s,
		id:        s.clientSeq,
		connected: true,
		state:     make(chan struct{}),
		subs:      map[*subscription]struct{}{},
		cons:      map[*consumer]struct{}{},
	}
	s.clients[b] = struct{}{}
	return b
}

// Disconnect cuts c off, like a dropped connection: its operations fail
// with ErrUnavailable, its consumers' Receive returns ErrUnavailable, the
// items it holds go back to their queues at once (their leases are lost),
// its subscriptions miss every message published meanwhile and report ErrGap
// after Reconnect.
func (s *Server) Disconnect(c *Broker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.disconnectLocked(c)
}

// Reconnect ends a Disconnect of c.
func (s *Server) Reconnect(c *Broker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.closed || c.connected {
		return
	}
	c.connected = true
	c.signal()
}

func (s *Server) disconnectLocked(c *Broker) {
	if c.closed || !c.connected {
		return
	}
	c.connected = false
	now := s.clock.Now()
	for con := range c.cons {
		con.q.releaseHolder(s, con, now, "connection lost")
	}
	for sub := range c.subs {
		sub.gap = true
		sub.signal()
	}
	c.signal()
}

// Partition puts clients into a new group that only sees itself: topic
// messages published by a client reach only subscribers of clients in the
// same group. Clients never named by Partition form one group. Queues are
// not partitioned: every client still reaches every queue (to cut a client
// off from queues too, Disconnect it).
func (s *Server) Partition(clients ...*Broker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextGroup++
	for _, c := range clients {
		c.group = s.nextGroup
	}
}

// Heal ends every partition.
func (s *Server) Heal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		c.group = 0
	}
}

// DropNext drops the next n messages published to topic, for every
// subscriber, without telling anyone: Publish succeeds and no subscription
// reports ErrGap, as when a real broker loses an at-most-once message.
func (s *Server) DropNext(topic string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drops[topic] += n
}

// DropRate drops each message published to topic with probability p (0
// stops dropping), silently like DropNext. Use WithSeed for repeatable runs.
func (s *Server) DropRate(topic string, p float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p <= 0 {
		delete(s.dropRate, topic)
		return
	}
	s.dropRate[topic] = p
}

// Restart simulates a broker restart that keeps durable data: every client
// is disconnected and reconnected, so held leases are lost (the items are
// redelivered as new attempts), subscriptions report ErrGap and messages in
// flight on topics are lost; queue items, dead letters and dedupe memory
// survive.
func (s *Server) Restart() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var was []*Broker
	for c := range s.clients {
		if c.connected {
			was = append(was, c)
			s.disconnectLocked(c)
		}
	}
	for topic := range s.topics {
		for sub := range s.topics[topic] {
			sub.buf = nil
		}
	}
	for _, c := range was {
		c.connected = true
		c.signal()
	}
}

// Close closes every client of the server.
func (s *Server) Close() {
	s.mu.Lock()
	clients := make([]*Broker, 0, len(s.clients))
	for c := range s.clients {
		clients = append(clients, c)
	}
	s.mu.Unlock()
	for _, c := range clients {
		c.Close()
	}
}

// QueueStats counts a queue's items.
type QueueStats struct {
	Ready   int // available for delivery now
	Delayed int // waiting out a Nack delay
	Leased  int // held under a lease
	Dead    int // in the dead-letter queue (any state)
}

// Stats counts the items of a queue, after expiring leases that are due.
// It returns ErrNotFound if the queue does not exist.
func (s *Server) Stats(queue string) (QueueStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, ok := s.queues[queue]
	if !ok {
		return QueueStats{}, adapters.Errorf(adapters.ErrNotFound, "mem: stats", "queue %q was never declared", queue)
	}
	now := s.clock.Now()
	q.sweep(s, now)
	var st QueueStats
	for _, it := range q.items {
		switch {
		case it.gone:
		case it.holder != nil:
			st.Leased++
		case it.availableAt.After(now):
			st.Delayed++
		default:
			st.Ready++
		}
	}
	st.Dead = len(q.dead) - q.goneDead
	return st, nil
}

// wait blocks until one of the channels is closed, the clock reaches next
// (if not zero) or ctx is done; it returns ctx.Err() in the last case.
func (s *Server) wait(ctx context.Context, next time.Time, a, b, c <-chan struct{}) error {
	var tc <-chan time.Time
	if !next.IsZero() {
		t := s.timerAt(next)
		defer t.Stop()
		tc = t.Chan()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-a:
	case <-b:
	case <-c:
	case <-tc:
	}
	return nil
}

// timerAt returns a timer that fires when the clock reaches at. clockwork
// only takes durations, so on a fake clock an Advance between reading Now
// and creating the timer would make it fire late; a timer whose creation
// straddled a change of Now is made again.
func (s *Server) timerAt(at time.Time) clockwork.Timer {
	_, fake := s.clock.(*clockwork.FakeClock)
	for {
		before := s.clock.Now()
		t := s.clock.NewTimer(at.Sub(before))
		if !fake || s.clock.Now().Equal(before) {
			return t
		}
		t.Stop()
	}
}
