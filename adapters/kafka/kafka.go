package kafka

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol/metadata"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
)

// Scheme is the URL scheme this adapter registers.
const Scheme = "kafka"

func init() {
	adapters.Register(Scheme, func(ctx context.Context, u *url.URL) (adapters.Broker, error) {
		cfg, err := ParseURL(u.String())
		if err != nil {
			return nil, err
		}
		return Open(ctx, cfg)
	})
}

// Config is the adapter's connection settings. ParseURL builds one from a
// kafka:// URL; DefaultConfig fills in the defaults.
type Config struct {
	// Brokers are the bootstrap addresses, host:port.
	Brokers []string
	// Partitions is the partition count of the topics created for a new
	// queue (main, retry and dead-letter). Existing topics keep theirs.
	Partitions int
	// Replication is the replication factor of created topics; -1 means
	// the broker's default.replication.factor.
	Replication int
	// SessionTimeout is the consumer-group session timeout: how long the
	// group coordinator waits for a silent consumer before it gives the
	// consumer's partitions to others.
	SessionTimeout time.Duration
	// HeartbeatInterval is how often consumers tell the coordinator they
	// are alive; it also bounds how fast members notice a rebalance.
	HeartbeatInterval time.Duration
	// Prefix starts the name of every Kafka topic and consumer group this
	// adapter creates, so that several clusters can share one Kafka.
	Prefix string
	// ClientID is sent to Kafka to identify this client in its logs.
	ClientID string
	// TLS, if set, connects over TLS with these files (the zero value:
	// system roots, no client certificate).
	TLS *adapters.TLSFiles
	// SASL is the SASL mechanism: "" (none), "plain", "scram-sha-256" or
	// "scram-sha-512", with User and Password.
	SASL           string
	User, Password string
	// Logger receives the adapter's log lines; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults used for URL parameters that are not set.
func DefaultConfig() Config {
	return Config{
		Partitions:        8,
		Replication:       -1,
		SessionTimeout:    10 * time.Second,
		HeartbeatInterval: time.Second,
		Prefix:            "clusterbus",
		ClientID:          "clusterbus",
	}
}

// acceptedParams lists the URL query parameters, for error messages.
const acceptedParams = "partitions=N, replication=N|-1, session_timeout=DURATION, heartbeat_interval=DURATION, prefix=NAME, client_id=NAME, tls=true, ca=FILE, cert=FILE, key=FILE, sasl=plain|scram-sha-256|scram-sha-512"

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ParseURL parses kafka://host:9092[,host2:9092][?param=value&...]. The
// accepted parameters are partitions, replication, session_timeout,
// heartbeat_interval, prefix and client_id; any other fails with
// ErrInvalidArgument naming the accepted ones.
func ParseURL(raw string) (Config, error) {
	const op = "kafka: parse URL"
	cfg := DefaultConfig()
	// Parsed by hand: net/url rejects a host list such as "k1:9092,k2"
	// (it reads ":9092,k2" as a port).
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok || !strings.EqualFold(scheme, Scheme) {
		return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op, "URL %q: want kafka://host:9092[,host2:9092][?%s]", adapters.Redact(raw), acceptedParams)
	}
	rest, rawQuery, _ := strings.Cut(rest, "?")
	host, path, _ := strings.Cut(rest, "/")
	if at := strings.LastIndex(host, "@"); at >= 0 {
		ui, err := url.Parse("kafka://" + host[:at+1] + "h")
		if err != nil || ui.User == nil {
			return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op, "user info in %q: want user:password@ (percent-encoded)", adapters.Redact(raw))
		}
		cfg.User = ui.User.Username()
		cfg.Password, _ = ui.User.Password()
		host = host[at+1:]
	}
	if path != "" {
		return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op, "path %q: want none (kafka://host:9092[,host2:9092]?%s)", "/"+path, acceptedParams)
	}
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op, "malformed query %q: %v", rawQuery, err)
	}
	for _, h := range strings.Split(host, ",") {
		if h == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(h); err != nil || port == "" {
			h = net.JoinHostPort(h, "9092")
		}
		cfg.Brokers = append(cfg.Brokers, h)
	}
	if len(cfg.Brokers) == 0 {
		return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op, "no broker address in %q: want kafka://host:9092[,host2:9092]", adapters.Redact(raw))
	}
	for key, vals := range query {
		v := vals[len(vals)-1]
		bad := func(want string) error {
			return adapters.Errorf(adapters.ErrInvalidArgument, op, "%s=%q: want %s", key, v, want)
		}
		switch key {
		case "partitions":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1024 {
				return cfg, bad("an integer from 1 to 1024")
			}
			cfg.Partitions = n
		case "replication":
			n, err := strconv.Atoi(v)
			if err != nil || n == 0 || n < -1 || n > 32 {
				return cfg, bad("-1 (broker default) or an integer from 1 to 32")
			}
			cfg.Replication = n
		case "session_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return cfg, bad("a positive duration such as 10s")
			}
			cfg.SessionTimeout = d
		case "heartbeat_interval":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return cfg, bad("a positive duration such as 1s")
			}
			cfg.HeartbeatInterval = d
		case "prefix":
			if !prefixRE.MatchString(v) {
				return cfg, bad("1-64 letters, digits, '.', '_' or '-'")
			}
			cfg.Prefix = v
		case "tls":
			on, err := strconv.ParseBool(v)
			if err != nil {
				return cfg, bad("true or false")
			}
			if on && cfg.TLS == nil {
				cfg.TLS = &adapters.TLSFiles{}
			}
		case "ca", "cert", "key":
			if cfg.TLS == nil {
				cfg.TLS = &adapters.TLSFiles{}
			}
			switch key {
			case "ca":
				cfg.TLS.CA = v
			case "cert":
				cfg.TLS.Cert = v
			case "key":
				cfg.TLS.Key = v
			}
		case "sasl":
			cfg.SASL = strings.ToLower(v)
		case "client_id":
			if v == "" || strings.ContainsAny(v, "\r\n\x00") {
				return cfg, bad("a non-empty name")
			}
			cfg.ClientID = v
		default:
			return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op, "unknown parameter %q; accepted: %s", key, acceptedParams)
		}
	}
	return cfg, cfg.Validate()
}

// Validate checks cfg and names the field that is wrong.
func (cfg Config) Validate() error {
	const op = "kafka: config"
	switch {
	case len(cfg.Brokers) == 0:
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "Brokers: want at least one host:port")
	case cfg.Partitions < 1:
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "Partitions %d: want at least 1", cfg.Partitions)
	case cfg.Replication == 0 || cfg.Replication < -1:
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "Replication %d: want -1 or at least 1", cfg.Replication)
	case cfg.SessionTimeout <= 0 || cfg.HeartbeatInterval <= 0:
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "SessionTimeout and HeartbeatInterval must be positive")
	case cfg.HeartbeatInterval*3 > cfg.SessionTimeout:
		return adapters.Errorf(adapters.ErrInvalidArgument, op,
			"heartbeat_interval (%s) must be at most a third of session_timeout (%s)", cfg.HeartbeatInterval, cfg.SessionTimeout)
	case !prefixRE.MatchString(cfg.Prefix):
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "Prefix %q: want 1-64 letters, digits, '.', '_' or '-'", cfg.Prefix)
	}
	if _, err := cfg.saslMechanism(); err != nil {
		return err
	}
	if cfg.TLS != nil {
		if _, err := cfg.TLS.Config(op); err != nil {
			return err
		}
	}
	return nil
}

// saslMechanism builds the SASL mechanism of cfg (nil for none).
func (cfg Config) saslMechanism() (sasl.Mechanism, error) {
	const op = "kafka: config"
	if cfg.SASL == "" {
		if cfg.User != "" || cfg.Password != "" {
			return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "a user and password need a SASL mechanism: add sasl=plain, scram-sha-256 or scram-sha-512")
		}
		return nil, nil
	}
	if cfg.User == "" {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "sasl=%s without a user: want kafka://user:password@host:9092?sasl=%s", cfg.SASL, cfg.SASL)
	}
	switch cfg.SASL {
	case "plain":
		return plain.Mechanism{Username: cfg.User, Password: cfg.Password}, nil
	case "scram-sha-256", "scram-sha-512":
		alg := scram.SHA256
		if cfg.SASL == "scram-sha-512" {
			alg = scram.SHA512
		}
		m, err := scram.Mechanism(alg, cfg.User, cfg.Password)
		if err != nil {
			return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "sasl=%s: %v", cfg.SASL, err)
		}
		return m, nil
	}
	return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "sasl=%q: want plain, scram-sha-256 or scram-sha-512", cfg.SASL)
}

// Broker is a connection to a Kafka cluster. It implements adapters.Broker.
type Broker struct {
	cfg       Config
	log       *slog.Logger
	transport *kafkago.Transport
	client    *kafkago.Client
	dialer    *kafkago.Dialer
	writer    *kafkago.Writer
	// async is the writer of EnqueueAsync: the same settings, Async, and
	// a Completion that settles each message's Pending (see enqueue.go);
	// asyncSlots bounds the messages it has in flight.
	async      *kafkago.Writer
	asyncSlots chan struct{}

	mu        sync.Mutex
	closed    bool
	done      chan struct{}
	topics    map[string]bool                 // Kafka topics known to exist
	queues    map[string]adapters.QueueConfig // queues known to be declared
	subs      map[*subscription]struct{}
	consumers map[*consumer]struct{}
}

var (
	_ adapters.Broker        = (*Broker)(nil)
	_ adapters.BatchEnqueuer = (*Broker)(nil)
	_ adapters.AsyncEnqueuer = (*Broker)(nil)
)

// Open connects to the Kafka cluster of cfg and checks that it answers.
// An unreachable cluster fails with ErrUnavailable.
func Open(ctx context.Context, cfg Config) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("adapter", "kafka")
	mech, err := cfg.saslMechanism()
	if err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	if cfg.TLS != nil {
		if tlsCfg, err = cfg.TLS.Config("kafka: open"); err != nil {
			return nil, err
		}
	}
	dialer := &kafkago.Dialer{Timeout: 10 * time.Second, DualStack: true, ClientID: cfg.ClientID, TLS: tlsCfg, SASLMechanism: mech}
	transport := &kafkago.Transport{
		DialTimeout: 10 * time.Second,
		IdleTimeout: time.Minute,
		MetadataTTL: 5 * time.Second,
		ClientID:    cfg.ClientID,
		TLS:         tlsCfg,
		SASL:        mech,
	}
	b := &Broker{
		cfg:       cfg,
		log:       log,
		transport: transport,
		dialer:    dialer,
		client:    &kafkago.Client{Addr: kafkago.TCP(cfg.Brokers...), Transport: transport, Timeout: 10 * time.Second},
		done:      make(chan struct{}),
		topics:    map[string]bool{},
		queues:    map[string]adapters.QueueConfig{},
		subs:      map[*subscription]struct{}{},
		consumers: map[*consumer]struct{}{},
	}
	// The synchronous writer of Enqueue and EnqueueBatch, and the
	// asynchronous one of EnqueueAsync, whose Completion settles each
	// message's Pending (see queue.go); both with these settings.
	newWriter := func() *kafkago.Writer {
		return &kafkago.Writer{
			Addr:         kafkago.TCP(cfg.Brokers...),
			Transport:    transport,
			Balancer:     &balancer{},
			RequiredAcks: kafkago.RequireAll,
			// The default of 1 s makes every synchronous send take a
			// second, and each Enqueue waits out the window: 2 ms capped 8
			// producers at 2.8k items/s in BenchmarkQueueThroughput, 200 µs
			// gives 7.9k. Concurrent sends share batches within it.
			BatchTimeout:    200 * time.Microsecond,
			BatchSize:       256,
			BatchBytes:      maxBatchBytes,
			MaxAttempts:     5,
			WriteBackoffMin: 50 * time.Millisecond,
			WriteBackoffMax: time.Second,
			ErrorLogger:     kafkago.LoggerFunc(func(f string, a ...any) { log.Debug("writer: " + fmt.Sprintf(f, a...)) }),
		}
	}
	b.writer = newWriter()
	b.async = newWriter()
	b.async.Async, b.async.Completion = true, b.completed
	b.asyncSlots = make(chan struct{}, asyncWindow)
	if _, err := b.client.Metadata(ctx, &kafkago.MetadataRequest{}); err != nil {
		transport.CloseIdleConnections()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, adapters.Errorf(adapters.ErrUnavailable, "kafka: open",
			"no answer from %s: %v", strings.Join(cfg.Brokers, ","), err)
	}
	return b, nil
}

// Capabilities reports what this adapter provides; see the package doc for
// how the emulated features work.
func (b *Broker) Capabilities() adapters.Capabilities { return capabilities }

// maxBatchBytes is the writer's batch limit, a little under Kafka's default
// message.max.bytes (1048588).
const maxBatchBytes = 1 << 20

var capabilities = adapters.Capabilities{
	Name:           "kafka",
	LeaseExtension: adapters.Emulated,
	DelayedNack:    adapters.Emulated,
	DeadLetter:     adapters.Emulated,
	Dedupe:         adapters.Unsupported,
	Ordering:       adapters.Emulated,
	Restart:        adapters.Native,
	QueueStats:     adapters.Emulated, // consumer-group lag; see stats.go
	// Room under maxBatchBytes for the adapter's own headers and record
	// framing.
	MaxMessageSize: 1_000_000,
	MinLease:       100 * time.Millisecond,
}

// Close ends every subscription and consumer of b and releases its
// connections. Held deliveries are re-queued at once where Kafka answers.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	subs := make([]*subscription, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	cons := make([]*consumer, 0, len(b.consumers))
	for c := range b.consumers {
		cons = append(cons, c)
	}
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cons {
		wg.Go(func() { _ = c.Close() })
	}
	for _, s := range subs {
		wg.Go(func() { _ = s.Close() })
	}
	wg.Wait()
	// Close flushes what EnqueueAsync queued; every Pending is settled.
	err := errors.Join(b.writer.Close(), b.async.Close())
	b.transport.CloseIdleConnections()
	if err != nil {
		return adapters.Wrap(adapters.ErrUnavailable, "kafka: close", err)
	}
	return nil
}

func (b *Broker) checkOpen(op string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return adapters.Errorf(adapters.ErrClosed, op, "broker is closed")
	}
	return nil
}

// Kafka names. The kind sits before the user's name, which holds no '.', so
// no two names this adapter makes collide even under Kafka's rule that '.'
// and '_' clash in topic names.
func (b *Broker) topicName(t string) string { return b.cfg.Prefix + ".t." + t }
func (b *Broker) mainTopic(q string) string { return b.cfg.Prefix + ".q." + q }
func (b *Broker) retryTopic(q string) string {
	return b.cfg.Prefix + ".r." + q
}
func (b *Broker) deadTopic(q string) string { return b.cfg.Prefix + ".d." + q }
func (b *Broker) metaTopic(q string) string { return b.cfg.Prefix + ".m." + q }

// createTopics creates the topics that do not exist yet; existing ones are
// left as they are.
func (b *Broker) createTopics(ctx context.Context, op string, topics ...kafkago.TopicConfig) error {
	b.mu.Lock()
	topics = slices.DeleteFunc(slices.Clone(topics), func(t kafkago.TopicConfig) bool { return b.topics[t.Topic] })
	b.mu.Unlock()
	if len(topics) == 0 {
		return nil
	}
	resp, err := b.client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: topics})
	if err != nil {
		return mapCtxErr(ctx, op, err)
	}
	var existed []string
	for _, t := range topics {
		e := resp.Errors[t.Topic]
		switch {
		case e == nil:
		case errors.Is(e, kafkago.TopicAlreadyExists):
			existed = append(existed, t.Topic)
		default:
			return mapCtxErr(ctx, op, fmt.Errorf("create topic %q: %w", t.Topic, e))
		}
	}
	// kafka-go refreshes its cached metadata for the topics it created,
	// not for those another client created.
	if err := b.refresh(ctx, existed...); err != nil {
		return mapCtxErr(ctx, op, err)
	}
	b.mu.Lock()
	for _, t := range topics {
		b.topics[t.Topic] = true
	}
	b.mu.Unlock()
	return nil
}

// refresh makes kafka-go's metadata cache learn topics that exist but
// that another client created: the transport serves metadata from a cache
// that it reloads every few seconds, and until then a send or fetch to such
// a topic fails with "topic not found". Only a metadata request that allows
// auto-creation goes to the broker and updates the cache, so call refresh
// only for topics known to exist (a broker with auto.create.topics.enable
// would create a missing one).
func (b *Broker) refresh(ctx context.Context, topics ...string) error {
	if len(topics) == 0 {
		return nil
	}
	b.mu.Lock()
	fresh := slices.DeleteFunc(slices.Clone(topics), func(t string) bool { return b.topics[t] })
	b.mu.Unlock()
	if len(fresh) == 0 {
		return nil
	}
	_, err := b.transport.RoundTrip(ctx, kafkago.TCP(b.cfg.Brokers...), &metadata.Request{TopicNames: fresh, AllowAutoTopicCreation: true})
	if err != nil {
		return err
	}
	b.mu.Lock()
	for _, t := range fresh {
		b.topics[t] = true
	}
	b.mu.Unlock()
	return nil
}

func (b *Broker) topicConfig(name string, partitions int, entries ...kafkago.ConfigEntry) kafkago.TopicConfig {
	return kafkago.TopicConfig{Topic: name, NumPartitions: partitions, ReplicationFactor: b.cfg.Replication, ConfigEntries: entries}
}

// partitions lists the partitions of a topic.
func (b *Broker) partitions(ctx context.Context, topic string) ([]int, error) {
	resp, err := b.client.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, err
	}
	for _, t := range resp.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return nil, t.Error
		}
		ps := make([]int, 0, len(t.Partitions))
		for _, p := range t.Partitions {
			ps = append(ps, p.ID)
		}
		slices.Sort(ps)
		return ps, nil
	}
	return nil, kafkago.UnknownTopicOrPartition
}

// endOffsets returns the next offset to be written of each partition.
func (b *Broker) endOffsets(ctx context.Context, topic string, parts []int) (map[int]int64, error) {
	reqs := make([]kafkago.OffsetRequest, 0, len(parts))
	for _, p := range parts {
		reqs = append(reqs, kafkago.LastOffsetOf(p))
	}
	resp, err := b.client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, err
	}
	out := map[int]int64{}
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			return nil, po.Error
		}
		out[po.Partition] = po.LastOffset
	}
	for _, p := range parts {
		if _, ok := out[p]; !ok {
			return nil, kafkago.UnknownTopicOrPartition
		}
	}
	return out, nil
}

// write sends messages and waits for all in-sync replicas.
func (b *Broker) write(ctx context.Context, op string, msgs ...kafkago.Message) error {
	err := b.writer.WriteMessages(ctx, msgs...)
	if err == nil {
		return nil
	}
	var we kafkago.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil {
				err = e
				break
			}
		}
	}
	return mapCtxErr(ctx, op, err)
}

// mapCtxErr is mapErr for calls made with the caller's ctx: a context
// error while ctx is live comes from kafka-go's own timeouts (Client.Timeout,
// the writer's) and is reported as ErrUnavailable.
func mapCtxErr(ctx context.Context, op string, err error) error {
	return driver.MapCtx(ctx, op, err, "no answer from the brokers in time", mapErr)
}

// mapErr wraps a kafka-go error with the matching adapters code.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var tooLarge kafkago.MessageTooLargeError
	switch {
	case errors.As(err, &tooLarge), errors.Is(err, kafkago.MessageSizeTooLarge):
		return adapters.Wrap(adapters.ErrTooLarge, op, err)
	case errors.Is(err, kafkago.UnknownTopicOrPartition):
		return adapters.Wrap(adapters.ErrNotFound, op, err)
	case errors.Is(err, kafkago.InvalidTopic), errors.Is(err, kafkago.InvalidReplicationFactor),
		errors.Is(err, kafkago.InvalidPartitionNumber), errors.Is(err, kafkago.InvalidConfiguration):
		return adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	case errors.Is(err, kafkago.RebalanceInProgress), errors.Is(err, kafkago.IllegalGeneration),
		errors.Is(err, kafkago.UnknownMemberId), errors.Is(err, kafkago.FencedInstanceID):
		return adapters.Wrap(adapters.ErrLeaseLost, op, err)
	}
	return adapters.Wrap(adapters.ErrUnavailable, op, err)
}
