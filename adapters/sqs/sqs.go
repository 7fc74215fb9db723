package sqs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/clusterbus/clusterbus/adapters"
)

// Limits of Amazon SQS that the adapter enforces before sending.
const (
	// WireLimit is SQS's (and SNS's) limit on one message: body plus
	// message attribute names, types and values, after encoding.
	WireLimit = 256 * 1024
	// MaxMessageSize is Capabilities.MaxMessageSize: any message whose
	// adapters.Size is at most this fits under WireLimit even when its body
	// is binary and sent base64-encoded (4/3 larger).
	MaxMessageSize = 190 * 1024
	// AttributeLimit is SQS's limit on message attributes per message.
	AttributeLimit = 10
	// ownAttributes is how many attributes the adapter itself uses (the
	// "cb" metadata attribute).
	ownAttributes = 1
	// MaxHeaders is Capabilities.MaxHeaders.
	MaxHeaders = AttributeLimit - ownAttributes
	// MaxLease is SQS's largest visibility timeout.
	MaxLease = 12 * time.Hour
	// fifoDedupeWindow is SQS FIFO's fixed deduplication interval.
	fifoDedupeWindow = 5 * time.Minute
	// maxNameLen is SQS's limit on queue names (".fifo" included).
	maxNameLen = 80
	// maxWait is SQS's longest long poll.
	maxWait = 20 * time.Second
)

// Config configures a Broker.
type Config struct {
	// Region is the AWS region, such as "eu-west-1". Required.
	Region string
	// Endpoint overrides the SQS and SNS endpoint, such as
	// "http://127.0.0.1:4566" for a local emulator. Empty uses AWS.
	Endpoint string
	// Prefix is put in front of every queue and topic name the adapter
	// creates, so that several clusters can share an account. Letters,
	// digits, '-' and '_', at most 40.
	Prefix string
	// WaitTime is the long-poll wait of receive calls, at most 20 s. Zero
	// means 20 s.
	WaitTime time.Duration
	// Credentials, if set, replaces the standard AWS credential chain
	// (environment, shared files, IAM role).
	Credentials aws.CredentialsProvider
	// Logger receives the adapter's log lines. Nil means slog.Default().
	Logger *slog.Logger
}

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9_-]{0,40}$`)

// Validate checks cfg and names the field that is wrong.
func (cfg Config) Validate() error {
	const op = "sqs: config"
	if cfg.Region == "" {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "Region is empty: want an AWS region such as eu-west-1")
	}
	if !prefixRE.MatchString(cfg.Prefix) {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "Prefix %q: want at most 40 letters, digits, '-' or '_'", cfg.Prefix)
	}
	if cfg.WaitTime < 0 || cfg.WaitTime > maxWait {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "WaitTime %s: want 0 to 20s", cfg.WaitTime)
	}
	if cfg.Endpoint != "" {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return adapters.Errorf(adapters.ErrInvalidArgument, op, "Endpoint %q: want an http:// or https:// URL with a host", cfg.Endpoint)
		}
	}
	return nil
}

// URL query parameters accepted by the sqs:// scheme.
var urlParams = []string{"endpoint", "prefix", "wait"}

// ParseURL turns "sqs://REGION?endpoint=…&prefix=…&wait=…" into a Config.
// wait is a Go duration ("5s") or whole seconds ("5").
func ParseURL(u *url.URL) (Config, error) {
	const op = "sqs: url"
	if u.Scheme != "sqs" {
		return Config{}, adapters.Errorf(adapters.ErrInvalidArgument, op, "scheme %q: want sqs://REGION?endpoint=URL&prefix=P&wait=D", u.Scheme)
	}
	if u.User != nil || u.Path != "" && u.Path != "/" {
		return Config{}, adapters.Errorf(adapters.ErrInvalidArgument, op, "%s: want sqs://REGION?endpoint=URL&prefix=P&wait=D (no user, no path)", adapters.Redact(u.String()))
	}
	cfg := Config{Region: u.Host}
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "endpoint":
			cfg.Endpoint = v
		case "prefix":
			cfg.Prefix = v
		case "wait":
			d, err := time.ParseDuration(v)
			if err != nil {
				n, err2 := strconv.Atoi(v)
				if err2 != nil {
					return Config{}, adapters.Errorf(adapters.ErrInvalidArgument, op, "wait=%q: want a duration such as 5s, or whole seconds", v)
				}
				d = time.Duration(n) * time.Second
			}
			cfg.WaitTime = d
		default:
			return Config{}, adapters.Errorf(adapters.ErrInvalidArgument, op, "unknown query parameter %q; accepted: %s", k, strings.Join(urlParams, ", "))
		}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

func init() {
	adapters.Register("sqs", func(ctx context.Context, u *url.URL) (adapters.Broker, error) {
		cfg, err := ParseURL(u)
		if err != nil {
			return nil, err
		}
		return Open(ctx, cfg)
	})
}

// Broker is an adapters.Broker on Amazon SQS (queues) and SNS (topics).
type Broker struct {
	cfg  Config
	log  *slog.Logger
	sqs  *sqs.Client
	sns  *sns.Client
	caps adapters.Capabilities

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	// pollCtx carries consumers' receive calls; Close cancels it only
	// after one long-poll time, so that polls waiting at the server finish
	// and release what they get instead of leaving it hidden for a lease.
	pollCtx    context.Context
	pollCancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	queues map[string]*queueInfo // by adapter queue name
	topics map[string]string     // topic name -> ARN
	subs   map[*subscription]struct{}
	cons   map[*consumer]struct{}
	wg     sync.WaitGroup
}

var _ adapters.Broker = (*Broker)(nil)

// Open connects to SQS and SNS and checks that SQS answers (a ListQueues
// call), so a wrong endpoint or missing credentials fail here.
func Open(ctx context.Context, cfg Config) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.WaitTime == 0 {
		cfg.WaitTime = maxWait
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRegion(cfg.Region)}
	if cfg.Credentials != nil {
		opts = append(opts, awsconfig.WithCredentialsProvider(cfg.Credentials))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, adapters.Wrap(adapters.ErrInvalidArgument, "sqs: open: load AWS config", err)
	}
	sqsClient := sqs.NewFromConfig(awsCfg, func(o *sqs.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	snsClient := sns.NewFromConfig(awsCfg, func(o *sns.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	b := &Broker{
		cfg:    cfg,
		log:    log.With("adapter", "sqs"),
		sqs:    sqsClient,
		sns:    snsClient,
		caps:   capabilities(),
		queues: map[string]*queueInfo{},
		topics: map[string]string{},
		subs:   map[*subscription]struct{}{},
		cons:   map[*consumer]struct{}{},
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.pollCtx, b.pollCancel = context.WithCancel(context.Background())
	pingCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := sqsClient.ListQueues(pingCtx, &sqs.ListQueuesInput{MaxResults: aws.Int32(1), QueueNamePrefix: aws.String(cfg.Prefix + "x")}); err != nil {
		b.cancel()
		b.pollCancel()
		where := cfg.Endpoint
		if where == "" {
			where = "AWS region " + cfg.Region
		}
		return nil, mapErr(fmt.Sprintf("sqs: open %s", where), err)
	}
	return b, nil
}

func capabilities() adapters.Capabilities {
	return adapters.Capabilities{
		Name:           "sqs",
		LeaseExtension: adapters.Native,
		DelayedNack:    adapters.Native,
		DeadLetter:     adapters.Native,
		Dedupe:         adapters.Native,
		Ordering:       adapters.Native,
		Restart:        adapters.Native,
		QueueStats:     adapters.Emulated, // approximate counts, no oldest age
		MaxMessageSize: MaxMessageSize,
		MaxHeaders:     MaxHeaders,
		MinLease:       time.Second,
		MaxLease:       MaxLease,
		MaxDelay:       MaxLease,
	}
}

// Capabilities reports what SQS does; see the package doc.
func (b *Broker) Capabilities() adapters.Capabilities { return b.caps }

// SQS returns the underlying SQS client, for what the contract does not
// cover.
func (b *Broker) SQS() *sqs.Client { return b.sqs }

// SNS returns the underlying SNS client.
func (b *Broker) SNS() *sns.Client { return b.sns }

func (b *Broker) checkOpen(op string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return adapters.Errorf(adapters.ErrClosed, op, "broker closed")
	}
	return nil
}

// Close ends every consumer (their unsettled items become visible again at
// once) and every subscription (their queues and SNS subscriptions are
// deleted), then marks the broker closed. Receive calls still waiting at the
// server are left to finish, for at most the long-poll time, and release
// what they get; they do not delay Close.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	cons := make([]*consumer, 0, len(b.cons))
	for c := range b.cons {
		cons = append(cons, c)
	}
	subs := make([]*subscription, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	// In parallel: each may wait for SQS (release items, delete queues).
	errs := make([]error, len(cons)+len(subs))
	var wg sync.WaitGroup
	for i, c := range cons {
		wg.Go(func() { errs[i] = c.Close() })
	}
	for i, s := range subs {
		wg.Go(func() { errs[len(cons)+i] = s.Close() })
	}
	wg.Wait()
	b.cancel()
	time.AfterFunc(b.cfg.WaitTime+2*time.Second, b.pollCancel)
	b.wg.Wait()
	return errors.Join(errs...)
}

// opCtx returns a context for work that must finish even if the caller
// that started it goes away (a batch shared by several callers, cleanup).
func (b *Broker) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(b.ctx), 30*time.Second)
}

// sqsName is the SQS queue name for an adapter queue name.
func (b *Broker) sqsName(name string, fifo, dlq bool) string {
	n := b.cfg.Prefix + name
	if dlq {
		n += "-dlq"
	}
	if fifo {
		n += ".fifo"
	}
	return n
}

func checkNameLen(op, n string) error {
	if len(n) > maxNameLen {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "SQS queue name %q is %d characters; SQS allows %d (prefix + name + \"-dlq\" + \".fifo\"): use a shorter name or prefix", n, len(n), maxNameLen)
	}
	return nil
}

// seconds rounds d up to whole seconds, SQS's granularity.
func seconds(d time.Duration) int32 {
	s := (d + time.Second - 1) / time.Second
	return int32(s)
}
