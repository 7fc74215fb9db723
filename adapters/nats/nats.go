package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
)

// Scheme is the URL scheme this package registers with adapters.Register.
const Scheme = "nats"

// DefaultPrefix starts every subject and stream name the adapter uses.
const DefaultPrefix = "clusterbus"

// Size limits. The adapter reserves room in the server's max_payload for the
// headers it adds (ID, key, dedupe ID, dead-letter reason) and the header
// framing of at most MaxHeaders user headers.
const (
	// MaxHeaders is the most user headers a message may carry.
	MaxHeaders = 64
	// reservedBytes is subtracted from the server's max_payload to give
	// Capabilities.MaxMessageSize.
	reservedBytes = 4096
	// maxReasonLen bounds the dead-letter reason stored with an item.
	maxReasonLen = 1024
)

// Lease bounds reported in Capabilities.
const (
	MinLease = time.Second
	MaxLease = 24 * time.Hour
)

// TLSScheme is nats.go's scheme for a NATS server that must be reached over
// TLS: tls://host:4222 is nats://host:4222 with TLS required.
const TLSScheme = "tls"

func init() {
	open := func(ctx context.Context, u *url.URL) (adapters.Broker, error) {
		opts, err := ParseURL(u)
		if err != nil {
			return nil, err
		}
		return Open(ctx, opts)
	}
	adapters.Register(Scheme, open)
	adapters.Register(TLSScheme, open)
}

// Options configure a connection. Only Servers is required.
type Options struct {
	// Servers are the nats:// URLs of the NATS servers, tried in turn.
	Servers []string
	// User and Password authenticate, if set.
	User, Password string
	// Prefix starts every subject ("<prefix>.topic.<name>",
	// "<prefix>.queue.<name>", "<prefix>.dlq.<name>") and, with '.'
	// replaced by '_', every stream name. Empty means DefaultPrefix.
	Prefix string
	// Replicas is the JetStream replica count of the streams the adapter
	// creates. Zero means 1; use 3 on a three-node NATS cluster.
	Replicas int
	// Name is the connection name the server shows. Empty means
	// "clusterbus".
	Name string
	// ConnectTimeout bounds the first connection. Zero means 5 seconds.
	ConnectTimeout time.Duration
	// TLS, if set, requires TLS with these files (tls:// URLs set it).
	TLS *adapters.TLSFiles
	// Logger receives connection events. Nil means slog.Default().
	Logger *slog.Logger
}

// urlParams are the query parameters ParseURL accepts.
var urlParams = []string{"prefix", "replicas", "name", "connect_timeout", "ca", "cert", "key"}

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)

// ParseURL turns a nats:// URL into Options:
//
//	nats://[user:password@]host:port[,host2:port2…][?prefix=P&replicas=N&name=S&connect_timeout=D]
//	tls://[user:password@]host:port[,…][?ca=CA.pem&cert=CERT.pem&key=KEY.pem&…]
//
// tls:// requires TLS; ca (a PEM file of the CAs that sign the server's
// certificate; default the system roots), cert and key (a client
// certificate) configure it, and on a nats:// URL they require TLS too.
// Unknown query parameters are an error that names the accepted ones.
func ParseURL(u *url.URL) (Options, error) {
	const op = "nats: parse URL"
	var opts Options
	if !strings.EqualFold(u.Scheme, Scheme) && !strings.EqualFold(u.Scheme, TLSScheme) {
		return opts, adapters.Errorf(adapters.ErrInvalidArgument, op, "scheme %q: want %q or %q", u.Scheme, Scheme, TLSScheme)
	}
	if u.Host == "" {
		return opts, adapters.Errorf(adapters.ErrInvalidArgument, op, "%q has no host; want nats://host:port[,host2:port2]", adapters.Redact(u.String()))
	}
	if u.Path != "" && u.Path != "/" {
		return opts, adapters.Errorf(adapters.ErrInvalidArgument, op, "path %q: a NATS URL has no path", u.Path)
	}
	for _, h := range strings.Split(u.Host, ",") {
		if h == "" {
			return opts, adapters.Errorf(adapters.ErrInvalidArgument, op, "empty host in %q", u.Host)
		}
		if !strings.Contains(h, ":") {
			h += ":4222"
		}
		opts.Servers = append(opts.Servers, "nats://"+h)
	}
	if u.User != nil {
		opts.User = u.User.Username()
		opts.Password, _ = u.User.Password()
	}
	q := u.Query()
	for k, v := range q {
		if !slices.Contains(urlParams, k) {
			return opts, adapters.Errorf(adapters.ErrInvalidArgument, op, "unknown query parameter %q; accepted: %s", k, strings.Join(urlParams, ", "))
		}
		if len(v) != 1 {
			return opts, adapters.Errorf(adapters.ErrInvalidArgument, op, "query parameter %q given %d times; want once", k, len(v))
		}
	}
	opts.Prefix = q.Get("prefix")
	opts.Name = q.Get("name")
	if f := (adapters.TLSFiles{CA: q.Get("ca"), Cert: q.Get("cert"), Key: q.Get("key")}); f.Any() || strings.EqualFold(u.Scheme, TLSScheme) {
		if _, err := f.Config(op); err != nil {
			return opts, err
		}
		opts.TLS = &f
	}
	if s := q.Get("replicas"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 5 {
			return opts, adapters.Errorf(adapters.ErrInvalidArgument, op, "replicas=%q: want a number from 1 to 5", s)
		}
		opts.Replicas = n
	}
	if s := q.Get("connect_timeout"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return opts, adapters.Errorf(adapters.ErrInvalidArgument, op, "connect_timeout=%q: want a positive duration such as 5s", s)
		}
		opts.ConnectTimeout = d
	}
	return opts, opts.validate()
}

func (o *Options) validate() error {
	const op = "nats: options"
	if len(o.Servers) == 0 {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "Servers is empty; want at least one nats://host:port")
	}
	if o.Prefix != "" && !prefixRE.MatchString(o.Prefix) {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "prefix %q: want subject tokens of letters, digits, '-' or '_' joined by '.'", o.Prefix)
	}
	if o.Replicas < 0 || o.Replicas > 5 {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "replicas %d: want 1 to 5 (0 means 1)", o.Replicas)
	}
	if o.ConnectTimeout < 0 {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "connect timeout %s: want > 0 (0 means 5s)", o.ConnectTimeout)
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Name == "" {
		o.Name = "clusterbus"
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Broker is a connection to NATS. It implements adapters.Broker.
type Broker struct {
	opts Options
	log  *slog.Logger
	nc   *nats.Conn
	js   jetstream.JetStream
	caps adapters.Capabilities
	// noJetStream is set at Open if the server has no JetStream.
	noJetStream error
	streamBase  string // prefix with '.' replaced by '_'

	mu        sync.Mutex
	closed    bool
	done      chan struct{}
	reconnect chan struct{} // closed and replaced on every reconnect
	subs      map[*subscription]struct{}
	consumers map[*consumer]struct{}
	queues    map[string]*queueInfo // cache of declared queues
	logs      map[string]bool       // retained logs whose stream exists (Retainer)
}

var _ adapters.Broker = (*Broker)(nil)

// Open connects to NATS. It fails with an error matching
// adapters.ErrUnavailable if no server answers within Options.ConnectTimeout.
// Once connected, the connection is re-established forever with backoff.
func Open(ctx context.Context, opts Options) (*Broker, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	b := &Broker{
		opts:       opts,
		log:        opts.Logger.With("adapter", "nats"),
		streamBase: strings.ReplaceAll(opts.Prefix, ".", "_"),
		done:       make(chan struct{}),
		reconnect:  make(chan struct{}),
		subs:       map[*subscription]struct{}{},
		consumers:  map[*consumer]struct{}{},
		queues:     map[string]*queueInfo{},
	}
	nopts := []nats.Option{
		nats.Name(opts.Name),
		nats.Timeout(opts.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.DisconnectErrHandler(b.onDisconnect),
		nats.ReconnectHandler(b.onReconnect),
		nats.ErrorHandler(b.onAsyncError),
	}
	if opts.User != "" || opts.Password != "" {
		nopts = append(nopts, nats.UserInfo(opts.User, opts.Password))
	}
	if opts.TLS != nil {
		tc, err := opts.TLS.Config("nats: open")
		if err != nil {
			return nil, err
		}
		nopts = append(nopts, nats.Secure(tc))
	}
	type result struct {
		nc  *nats.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(strings.Join(opts.Servers, ","), nopts...)
		ch <- result{nc, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, ctx.Err()
	}
	if r.err != nil {
		code := adapters.ErrUnavailable
		if errors.Is(r.err, nats.ErrAuthorization) || errors.Is(r.err, nats.ErrAuthExpired) {
			code = adapters.ErrInvalidArgument
		}
		return nil, adapters.Wrap(code, "nats: connect to "+redactServers(opts.Servers), r.err)
	}
	b.nc = r.nc
	js, err := jetstream.New(b.nc,
		jetstream.WithPublishAsyncMaxPending(publishWindow),
		jetstream.WithPublishAsyncTimeout(publishAckTimeout))
	if err != nil {
		b.nc.Close()
		return nil, adapters.Wrap(adapters.ErrUnavailable, "nats: jetstream", err)
	}
	b.js = js
	b.caps = capabilities(int(b.nc.MaxPayload()))
	b.ensureKeepalive(ctx)
	return b, nil
}

// Options returns the options the broker was opened with, defaults applied.
func (b *Broker) Options() Options { return b.opts }

// Conn is the underlying NATS connection, for callers that need more (such
// as the benchmark); the Broker still owns it.
func (b *Broker) Conn() *nats.Conn { return b.nc }

func capabilities(maxPayload int) adapters.Capabilities {
	return adapters.Capabilities{
		Name:           "nats",
		LeaseExtension: adapters.Native,
		DelayedNack:    adapters.Native,
		DeadLetter:     adapters.Emulated,
		Dedupe:         adapters.Native,
		Ordering:       adapters.Emulated, // one item in flight per Ordered queue; see doc.go
		Restart:        adapters.Native,
		QueueStats:     adapters.Native,
		// The consumer resizes its pull subscription (see doc.go).
		AdaptivePrefetch: adapters.Emulated,
		MaxMessageSize:   max(maxPayload-reservedBytes, 1024),
		MaxHeaders:       MaxHeaders,
		MinLease:         MinLease,
		MaxLease:         MaxLease,
	}
}

// Capabilities implements adapters.Broker.
func (b *Broker) Capabilities() adapters.Capabilities { return b.caps }

// reconnectDelay backs off from 100ms to 5s with jitter; reconnects never
// stop.
func reconnectDelay(attempts int) time.Duration {
	d := 100 * time.Millisecond << min(attempts, 6)
	d = min(d, 5*time.Second)
	return d/2 + rand.N(d/2+1)
}

func redactServers(servers []string) string {
	out := make([]string, len(servers))
	for i, s := range servers {
		out[i] = adapters.Redact(s)
	}
	return strings.Join(out, ",")
}

// ensureKeepalive creates a tiny stream that is never deleted. nats-server
// can fail to create a stream right after an account's last stream was
// deleted ("could not create storage directory"), because the account's
// store directory is being removed; keeping one stream alive avoids that.
// Failure is logged, not fatal: topics work without JetStream.
func (b *Broker) ensureKeepalive(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := b.js.AccountInfo(ctx); errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		b.noJetStream = err
		b.log.Warn("nats: JetStream is not enabled on the server: topics work, queues fail with ErrUnsupported", "err", err)
		return
	}
	_, err := b.ensureStream(ctx, jetstream.StreamConfig{
		Name:        b.streamBase + "_KEEPALIVE",
		Description: "clusterbus: keeps the account's JetStream store alive; holds nothing",
		Subjects:    []string{b.opts.Prefix + ".keepalive"},
		Storage:     jetstream.FileStorage,
		Replicas:    b.opts.Replicas,
		MaxMsgs:     1,
	}, false)
	if err != nil {
		b.log.Warn("nats: cannot create the keepalive stream; queues may not work", "err", err)
	}
}

func (b *Broker) onDisconnect(_ *nats.Conn, err error) {
	if b.isClosed() {
		return
	}
	b.log.Warn("nats: disconnected", "err", err)
	b.markGaps()
}

func (b *Broker) onReconnect(nc *nats.Conn) {
	b.log.Info("nats: reconnected", "server", nc.ConnectedUrlRedacted())
	b.markGaps()
	b.mu.Lock()
	close(b.reconnect)
	b.reconnect = make(chan struct{})
	b.mu.Unlock()
}

func (b *Broker) onAsyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	b.log.Warn("nats: async error", "err", err)
	if sub == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		if s.sub == sub {
			s.markGap()
		}
	}
}

func (b *Broker) markGaps() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		s.markGap()
	}
}

func (b *Broker) reconnected() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reconnect
}

func (b *Broker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

func (b *Broker) closedErr(op string) error {
	return &adapters.Error{Code: adapters.ErrClosed, Op: "nats: " + op, Err: errors.New("broker closed")}
}

// check runs the checks every operation starts with.
func (b *Broker) check(ctx context.Context, op string) error {
	if b.isClosed() {
		return b.closedErr(op)
	}
	return ctx.Err()
}

// queueReady reports whether checkQueue passes, without building the op
// string its errors need (Enqueue asks it first, on every call).
func (b *Broker) queueReady(ctx context.Context) bool {
	return !b.isClosed() && ctx.Err() == nil && b.noJetStream == nil
}

// checkQueue runs the checks every queue operation starts with.
func (b *Broker) checkQueue(ctx context.Context, op string) error {
	if err := b.check(ctx, op); err != nil {
		return err
	}
	if b.noJetStream != nil {
		return b.mapErr(op, b.noJetStream)
	}
	return nil
}

// Close implements adapters.Broker. Unsettled deliveries are released at
// once (negatively acknowledged); subscriptions end.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	subs := make([]*subscription, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	cons := make([]*consumer, 0, len(b.consumers))
	for c := range b.consumers {
		cons = append(cons, c)
	}
	b.mu.Unlock()
	for _, c := range cons {
		_ = c.Close()
	}
	for _, s := range subs {
		_ = s.Close()
	}
	b.mu.Lock()
	b.closed = true
	close(b.done)
	b.mu.Unlock()
	// Flush pending naks and acks before closing.
	_ = b.nc.FlushTimeout(2 * time.Second)
	b.nc.Close()
	return nil
}

// mapErr turns a nats.go error into an adapters error.
func (b *Broker) mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	op = "nats: " + op
	var ae *adapters.Error
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.As(err, &ae):
		return adapters.Wrap(ae.Code, op, err)
	case errors.Is(err, nats.ErrConnectionClosed) && b.isClosed():
		return adapters.Wrap(adapters.ErrClosed, op, err)
	case errors.Is(err, jetstream.ErrStreamNotFound), errors.Is(err, jetstream.ErrConsumerNotFound),
		errors.Is(err, jetstream.ErrConsumerDeleted):
		return adapters.Wrap(adapters.ErrNotFound, op, err)
	case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum):
		return adapters.Wrap(adapters.ErrTooLarge, op, err)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return adapters.Wrap(adapters.ErrUnsupported, op,
			fmt.Errorf("queues need JetStream; enable it on the server (nats-server -js, or `clusterbus broker`): %w", err))
	case errors.Is(err, nats.ErrBadSubject), errors.Is(err, jetstream.ErrInvalidOption):
		return adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch {
		case apiErr.ErrorCode == jsErrCodeNoSuitablePeers:
			// A replica's server is offline or not caught up (a
			// restart in a JetStream cluster): declaring again later
			// works, so this is not the caller's mistake.
			return adapters.Wrap(adapters.ErrUnavailable, op, err)
		case apiErr.Code == 400:
			return adapters.Wrap(adapters.ErrInvalidArgument, op, err)
		case apiErr.Code == 404:
			return adapters.Wrap(adapters.ErrNotFound, op, err)
		}
	}
	// Timeouts, no responders, disconnections and everything unknown:
	// retrying later may work.
	return adapters.Wrap(adapters.ErrUnavailable, op, err)
}

// mapCtxErr is mapErr for calls made with ctx: a timeout that is not the
// caller's (nats.go's own default timeout) is reported as ErrUnavailable.
func (b *Broker) mapCtxErr(ctx context.Context, op string, err error) error {
	return driver.MapCtx(ctx, "nats: "+op, err, "no reply from the server in time", func(string, error) error { return b.mapErr(op, err) })
}

func (b *Broker) topicSubject(topic string) string { return b.opts.Prefix + ".topic." + topic }
func (b *Broker) queueSubject(q string) string     { return b.opts.Prefix + ".queue." + q }
func (b *Broker) dlqSubject(q string) string       { return b.opts.Prefix + ".dlq." + q }
func (b *Broker) queueStream(q string) string      { return b.streamBase + "_Q_" + q }
func (b *Broker) dlqStream(q string) string        { return b.streamBase + "_DLQ_" + q }

// jsErrCodeNoSuitablePeers is nats-server's JSClusterNoPeersErrF ("no
// suitable peers for placement"), which nats.go does not name.
const jsErrCodeNoSuitablePeers jetstream.ErrorCode = 10005

func errf(code error, op, format string, args ...any) error {
	return adapters.Errorf(code, "nats: "+op, format, args...)
}

// transientBudget bounds how long retryTransient tries again.
const transientBudget = 30 * time.Second

// apiTimeout bounds one try of a JetStream API request or a publish made
// through retryTransient. JetStream answers those in milliseconds; a request
// sent while the meta or stream group is between leaders can go unanswered
// (every server subscribes to the API subjects, so there is no "no
// responders", and no server answers), and without a bound the call would
// wait out the caller's whole context (CI: a DeclareQueue on a 3-server
// cluster right after its meta leader restarted timed out after 16 s).
var apiTimeout = 5 * time.Second

// transientJS reports whether a JetStream API call failed only because the
// cluster is between leaders: "no responders" (a meta or stream leader
// being elected, or the client's server just restarted), "no suitable
// peers" (a replica's server offline or not caught up after a restart), or
// no answer within its own apiTimeout while the caller's ctx is still live.
func transientJS(ctx context.Context, err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, nats.ErrNoResponders) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrCodeNoSuitablePeers ||
		ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout))
}

// retryTransient runs an idempotent JetStream API call again, with a
// backoff from 50 ms doubling to 1 s, while it fails with a transientJS
// error (CI saw Retained fail with "no responders" on a 3-server cluster
// whose Retains had just succeeded). Each try gets a context bounded by
// perTry (0: ctx itself, for a call that bounds its own requests). Other
// errors, the end of ctx, or transientBudget end it.
func retryTransient(ctx context.Context, perTry time.Duration, call func(ctx context.Context) error) error {
	wait, deadline := 50*time.Millisecond, time.Now().Add(transientBudget)
	for {
		err := tryOnce(ctx, perTry, call)
		if err == nil || !transientJS(ctx, err) || time.Now().Add(wait).After(deadline) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// bounded makes one JetStream API request with its answer awaited for at
// most apiTimeout (see there).
func bounded[T any](ctx context.Context, call func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	return call(ctx)
}

func tryOnce(ctx context.Context, perTry time.Duration, call func(ctx context.Context) error) error {
	if perTry <= 0 {
		return call(ctx)
	}
	tctx, cancel := context.WithTimeout(ctx, perTry)
	defer cancel()
	return call(tctx)
}
