package rabbitmq

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
)

func init() {
	adapters.Register("amqp", openURL)
	adapters.Register("amqps", openURL)
}

func openURL(ctx context.Context, u *url.URL) (adapters.Broker, error) {
	b, err := Open(ctx, u.String(), Options{})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// Defaults for Options.
const (
	// DefaultConsumerTimeout is RabbitMQ's default consumer_timeout (30
	// minutes since 3.8.15).
	DefaultConsumerTimeout = 30 * time.Minute
	// DefaultMaxBackoff caps the wait between reconnect attempts.
	DefaultMaxBackoff = 5 * time.Second
	// MaxMessageSize is the largest message the adapter accepts. RabbitMQ
	// takes up to 128 MiB, but large messages hurt quorum queues.
	MaxMessageSize = 4 << 20
	// MinLease is the shortest QueueConfig.Lease accepted.
	MinLease = 100 * time.Millisecond
	// MaxDelay is the longest Nack delay accepted.
	MaxDelay = 7 * 24 * time.Hour
)

// Options tune Open. The URL query parameters consumer_timeout and
// max_backoff override the matching fields.
type Options struct {
	// Logger receives reconnects and other events. Nil means slog.Default().
	Logger *slog.Logger
	// ConsumerTimeout must equal the broker's consumer_timeout: how long a
	// delivery may stay unacknowledged before RabbitMQ closes the channel
	// that holds it. It is the MaxLease and bounds Extend. Zero means
	// DefaultConsumerTimeout.
	ConsumerTimeout time.Duration
	// MaxBackoff caps the wait between reconnect attempts. Zero means
	// DefaultMaxBackoff.
	MaxBackoff time.Duration
	// TLS, if set, is used for amqps:// instead of the URL's TLS parameters.
	TLS *tls.Config
}

// Query parameters handed to amqp091-go, and those the adapter reads itself.
var (
	sdkParams     = []string{"auth_mechanism", "cacertfile", "certfile", "channel_max", "connection_timeout", "heartbeat", "keyfile", "server_name_indication"}
	adapterParams = []string{"consumer_timeout", "max_backoff"}
	// tlsAliases are the names every clusterbus adapter takes for TLS
	// files, mapped to amqp091-go's.
	tlsAliases = map[string]string{"ca": "cacertfile", "cert": "certfile", "key": "keyfile"}
)

func acceptedParams() string {
	all := append(append([]string{}, sdkParams...), adapterParams...)
	for k := range tlsAliases {
		all = append(all, k)
	}
	sort.Strings(all)
	return strings.Join(all, ", ")
}

// Broker is a connection to RabbitMQ that reconnects by itself. It
// implements adapters.Broker.
type Broker struct {
	dialURL  string
	redacted string
	amqpCfg  amqp.Config
	opts     Options
	log      *slog.Logger
	caps     adapters.Capabilities
	done     chan struct{}
	wg       sync.WaitGroup
	// consumers counts consumer loops; Close waits for them to confirm the
	// acknowledgements they sent before it closes the connection.
	consumers sync.WaitGroup

	mu         sync.Mutex
	closed     bool
	conn       *amqp.Connection // nil while reconnecting
	gen        uint64           // increases with every connection
	ready      chan struct{}    // closed while conn != nil
	confirmers []*confirmer     // shared confirm-mode channels (of conn when gen matches)
	queues     map[string]adapters.QueueConfig
	// declared remembers exchanges and delay queues declared on a
	// connection generation.
	declared map[string]uint64

	movers movers // one per source queue with a consumer: delayed items back when due
}

var _ adapters.Broker = (*Broker)(nil)

// Open connects to the broker at rawURL (amqp:// or amqps://). It fails with
// ErrInvalidArgument for a malformed URL or unknown parameter and with
// ErrUnavailable if the broker cannot be reached. Once open, the Broker
// reconnects on its own.
func Open(ctx context.Context, rawURL string, opts Options) (*Broker, error) {
	const op = "rabbitmq: open"
	dialURL, err := parseURL(rawURL, &opts)
	if err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ConsumerTimeout == 0 {
		opts.ConsumerTimeout = DefaultConsumerTimeout
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	b := &Broker{
		dialURL:  dialURL,
		redacted: adapters.Redact(rawURL),
		opts:     opts,
		log:      opts.Logger.With("adapter", "rabbitmq", "url", adapters.Redact(rawURL)),
		done:     make(chan struct{}),
		ready:    make(chan struct{}),
		queues:   map[string]adapters.QueueConfig{},
		declared: map[string]uint64{},
	}
	b.amqpCfg = amqp.Config{TLSClientConfig: opts.TLS, Properties: amqp.Table{"connection_name": "clusterbus"}}
	b.caps = adapters.Capabilities{
		Name:           "rabbitmq",
		LeaseExtension: adapters.Emulated,
		DelayedNack:    adapters.Emulated,
		DeadLetter:     adapters.Native,
		Dedupe:         adapters.Unsupported,
		Ordering:       adapters.Unsupported,
		Restart:        adapters.Emulated,
		QueueStats:     adapters.Emulated, // ready and dead-lettered counts only
		MaxMessageSize: MaxMessageSize,
		MaxHeaders:     64,
		MinLease:       MinLease,
		MaxLease:       opts.ConsumerTimeout,
		MaxDelay:       MaxDelay,
	}
	conn, err := b.dial(ctx)
	if err != nil {
		return nil, adapters.Wrap(adapters.ErrUnavailable, op, fmt.Errorf("%s: %w", b.redacted, err))
	}
	b.setConn(conn)
	b.wg.Add(1)
	go b.keepConnected(conn)
	return b, nil
}

// parseURL checks rawURL, moves the adapter's own parameters into opts and
// returns the URL for amqp091-go.
func parseURL(rawURL string, opts *Options) (string, error) {
	const op = "rabbitmq: open"
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", adapters.Errorf(adapters.ErrInvalidArgument, op, "malformed URL %q: %v", adapters.Redact(rawURL), err)
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return "", adapters.Errorf(adapters.ErrInvalidArgument, op, "URL scheme %q: want amqp or amqps (amqp://user:pass@host:5672/vhost)", u.Scheme)
	}
	if u.Hostname() == "" {
		return "", adapters.Errorf(adapters.ErrInvalidArgument, op, "URL %q has no host: want amqp://user:pass@host:5672/vhost", adapters.Redact(rawURL))
	}
	q := u.Query()
	for alias, name := range tlsAliases {
		if v, ok := q[alias]; ok {
			if _, dup := q[name]; dup {
				return "", adapters.Errorf(adapters.ErrInvalidArgument, op, "URL parameters %s and %s: give one", alias, name)
			}
			q[name] = v
			delete(q, alias)
		}
	}
	if f := (adapters.TLSFiles{CA: q.Get("cacertfile"), Cert: q.Get("certfile"), Key: q.Get("keyfile")}); f.Any() {
		if u.Scheme != "amqps" {
			return "", adapters.Errorf(adapters.ErrInvalidArgument, op, "TLS files on an amqp:// URL: use amqps://")
		}
		if _, err := f.Config(op); err != nil {
			return "", err
		}
	}
	for k := range q {
		if !contains(sdkParams, k) && !contains(adapterParams, k) {
			return "", adapters.Errorf(adapters.ErrInvalidArgument, op, "unknown URL parameter %q; accepted: %s", k, acceptedParams())
		}
	}
	for _, k := range adapterParams {
		v := q.Get(k)
		if v == "" {
			q.Del(k)
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return "", adapters.Errorf(adapters.ErrInvalidArgument, op, "URL parameter %s=%q: want a positive Go duration such as 30m", k, v)
		}
		switch k {
		case "consumer_timeout":
			opts.ConsumerTimeout = d
		case "max_backoff":
			opts.MaxBackoff = d
		}
		q.Del(k)
	}
	u.RawQuery = q.Encode()
	if _, err := amqp.ParseURI(u.String()); err != nil {
		return "", adapters.Errorf(adapters.ErrInvalidArgument, op, "URL %q: %v", adapters.Redact(rawURL), err)
	}
	return u.String(), nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Capabilities reports what the adapter provides; see the package doc.
func (b *Broker) Capabilities() adapters.Capabilities { return b.caps }

func (b *Broker) dial(ctx context.Context) (*amqp.Connection, error) {
	cfg := b.amqpCfg
	cfg.Dial = func(network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		deadline := time.Now().Add(15 * time.Second)
		if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
			deadline = dl
		}
		// amqp091-go clears the deadline once the handshake is done.
		if err := c.SetDeadline(deadline); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	return amqp.DialConfig(b.dialURL, cfg)
}

func (b *Broker) setConn(c *amqp.Connection) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.conn = c
	b.gen++
	close(b.ready)
}

// keepConnected watches the connection and redials with backoff when it
// dies, until Close.
func (b *Broker) keepConnected(conn *amqp.Connection) {
	defer b.wg.Done()
	for {
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		select {
		case <-b.done:
			return
		case e := <-closed:
			b.mu.Lock()
			if b.conn == conn { // channel() may have noticed first
				b.conn = nil
				b.ready = make(chan struct{})
				b.confirmers = nil
			}
			b.mu.Unlock()
			b.log.Warn("rabbitmq: connection lost; reconnecting", "err", e)
		}
		var err error
		for attempt := 0; ; attempt++ {
			if !b.sleep(backoff(attempt, b.opts.MaxBackoff)) {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			conn, err = b.dial(ctx)
			cancel()
			if err == nil {
				break
			}
			b.log.Warn("rabbitmq: reconnect failed", "attempt", attempt+1, "err", err)
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			conn.Close()
			return
		}
		b.mu.Unlock()
		b.setConn(conn)
		b.log.Info("rabbitmq: reconnected")
	}
}

// backoff is exponential from 50ms, capped, with jitter.
func backoff(attempt int, max time.Duration) time.Duration {
	d := 50 * time.Millisecond << min(attempt, 10)
	if d > max {
		d = max
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// sleep waits d or until Close; it reports false on Close.
func (b *Broker) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-b.done:
		return false
	}
}

// connection waits for a live connection.
func (b *Broker) connection(ctx context.Context) (*amqp.Connection, uint64, error) {
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, 0, adapters.ErrClosed
		}
		if b.conn != nil {
			c, g := b.conn, b.gen
			b.mu.Unlock()
			return c, g, nil
		}
		ready := b.ready
		b.mu.Unlock()
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-b.done:
			return nil, 0, adapters.ErrClosed
		}
	}
}

// channel opens a channel on the live connection.
func (b *Broker) channel(ctx context.Context) (*amqp.Channel, uint64, error) {
	for {
		conn, gen, err := b.connection(ctx)
		if err != nil {
			return nil, 0, err
		}
		ch, err := conn.Channel()
		if err == nil {
			return ch, gen, nil
		}
		if !conn.IsClosed() {
			return nil, 0, err
		}
		// The connection died under us: wait for the next one.
		b.mu.Lock()
		if b.conn == conn {
			b.conn = nil
			b.ready = make(chan struct{})
			b.confirmers = nil
		}
		b.mu.Unlock()
	}
}

func (b *Broker) isClosed() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// Close closes the connection. Unsettled deliveries return to their queues
// at once (the broker requeues what a closed channel held); subscriptions
// end.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	conn := b.conn
	b.conn = nil
	b.confirmers = nil
	b.mu.Unlock()
	b.consumers.Wait()
	var err error
	if conn != nil {
		err = conn.Close()
	}
	b.wg.Wait()
	if err != nil && err != amqp.ErrClosed {
		return adapters.Wrap(adapters.ErrUnavailable, "rabbitmq: close", err)
	}
	return nil
}
