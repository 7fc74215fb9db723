package azservicebus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	sb "github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"
	"github.com/google/uuid"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
)

// Application properties the adapter sets on messages. They start with
// adapters.ReservedHeaderPrefix so that they can never clash with
// application headers, and are removed again on receive.
const (
	propKey      = "cb-key"      // Message.Key
	propID       = "cb-id"       // the original Message.ID on a Nack(delay) copy
	propAttempts = "cb-attempts" // deliveries before this copy was scheduled
)

// Service Bus limits (Standard tier) the adapter enforces or reports.
const (
	// maxMessageSize leaves 8 KiB of the 256 KiB Standard-tier message for
	// the system properties and AMQP framing that adapters.Size does not count.
	maxMessageSize   = 248 * 1024
	minLockDuration  = 5 * time.Second
	maxLockDuration  = 5 * time.Minute
	maxDedupeWindow  = 7 * 24 * time.Hour
	maxDeadLetterLen = 4096
)

var caps = adapters.Capabilities{
	Name:           "azservicebus",
	LeaseExtension: adapters.Native,
	DelayedNack:    adapters.Emulated,
	DeadLetter:     adapters.Native,
	Dedupe:         adapters.Native,
	Ordering:       adapters.Unsupported,
	Restart:        adapters.Native,
	MaxMessageSize: maxMessageSize,
	MinLease:       minLockDuration,
	MaxLease:       maxLockDuration,
}

// Broker is a connection to one Service Bus namespace. It implements
// adapters.Broker.
type Broker struct {
	cfg    Config
	log    *slog.Logger
	client *sb.Client
	admin  *admin.Client

	mu        sync.Mutex
	closed    bool
	done      chan struct{}
	queues    map[string]queueInfo // lower-case name
	topics    map[string]bool      // lower-case name
	senders   map[string]*sb.Sender
	consumers map[*consumer]struct{}
	subs      map[*subscription]struct{}
}

type queueInfo struct {
	lease       time.Duration
	maxAttempts int
}

var (
	_ adapters.Broker        = (*Broker)(nil)
	_ adapters.BatchEnqueuer = (*Broker)(nil)
)

// Open connects to the namespace of cfg.ConnectionString. It checks that the
// management API answers (the adapter needs Manage rights: it creates queues,
// topics and subscriptions) and fails with ErrUnavailable if it does not.
func Open(ctx context.Context, cfg Config) (*Broker, error) {
	const op = "azservicebus: open"
	cfg, ci, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	client, err := sb.NewClientFromConnectionString(cfg.ConnectionString, &sb.ClientOptions{
		RetryOptions: sb.RetryOptions{MaxRetries: 3, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: 5 * time.Second},
	})
	if err != nil {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "connection string: %v", err)
	}
	aopts := &admin.ClientOptions{}
	aopts.Retry = policy.RetryOptions{MaxRetries: 2, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: 2 * time.Second}
	if ci.emulator {
		base, _ := url.Parse(cfg.AdminEndpoint) // checked by withDefaults
		aopts.Transport = &rewriteTransport{base: base, client: &http.Client{Timeout: 30 * time.Second}}
	}
	adm, err := admin.NewClientFromConnectionString(cfg.ConnectionString, aopts)
	if err != nil {
		_ = client.Close(context.Background())
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "connection string: %v", err)
	}
	b := &Broker{
		cfg: cfg, log: cfg.Logger.With("adapter", "azservicebus", "namespace", ci.host),
		client: client, admin: adm, done: make(chan struct{}),
		queues: map[string]queueInfo{}, topics: map[string]bool{}, senders: map[string]*sb.Sender{},
		consumers: map[*consumer]struct{}{}, subs: map[*subscription]struct{}{},
	}
	if _, err := adm.GetQueue(ctx, "clusterbus-probe", nil); err != nil {
		_ = client.Close(context.Background())
		return nil, mapErr(op+" (management API of "+ci.host+")", err)
	}
	return b, nil
}

// Capabilities reports what Service Bus does; see the package doc.
func (b *Broker) Capabilities() adapters.Capabilities { return caps }

func (b *Broker) checkOpen(op string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return adapters.Errorf(adapters.ErrClosed, op, "broker is closed")
	}
	return nil
}

// DeclareQueue creates the queue with LockDuration = cfg.Lease,
// MaxDeliveryCount = cfg.MaxAttempts and, with cfg.Dedupe, duplicate
// detection over cfg.DedupeWindow. An existing queue with other settings is
// refused with ErrInvalidArgument (the adapter does not change queues in
// place).
func (b *Broker) DeclareQueue(ctx context.Context, cfg adapters.QueueConfig) error {
	op := fmt.Sprintf("azservicebus: declare queue %q", cfg.Name)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(caps); err != nil {
		return err
	}
	if cfg.Dedupe && (cfg.DedupeWindow < 20*time.Second || cfg.DedupeWindow > maxDedupeWindow) {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "QueueConfig.DedupeWindow %s: Service Bus accepts 20s to %s", cfg.DedupeWindow, maxDedupeWindow)
	}
	if cfg.MaxAttempts > 2000 {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "QueueConfig.MaxAttempts %d: Service Bus accepts at most 2000", cfg.MaxAttempts)
	}
	for range 2 {
		got, err := b.admin.GetQueue(ctx, cfg.Name, nil)
		if err != nil {
			return mapErr(op, err)
		}
		if got != nil {
			return b.adopt(op, cfg, got.QueueProperties)
		}
		props := admin.QueueProperties{
			LockDuration:                     ptr(isoDuration(cfg.Lease)),
			MaxDeliveryCount:                 ptr(int32(cfg.MaxAttempts)),
			RequiresDuplicateDetection:       ptr(cfg.Dedupe),
			DeadLetteringOnMessageExpiration: ptr(false),
		}
		if cfg.Dedupe {
			props.DuplicateDetectionHistoryTimeWindow = ptr(isoDuration(cfg.DedupeWindow))
		}
		_, err = b.admin.CreateQueue(ctx, cfg.Name, &admin.CreateQueueOptions{Properties: &props})
		if err == nil {
			b.mu.Lock()
			b.queues[strings.ToLower(cfg.Name)] = queueInfo{lease: cfg.Lease, maxAttempts: cfg.MaxAttempts}
			b.mu.Unlock()
			b.log.Debug("queue created", "queue", cfg.Name, "lease", cfg.Lease, "max_attempts", cfg.MaxAttempts, "dedupe", cfg.Dedupe)
			return nil
		}
		if !isStatus(err, http.StatusConflict) {
			return mapErr(op, err)
		}
		// Someone else created it in between: compare with theirs.
	}
	return adapters.Errorf(adapters.ErrUnavailable, op, "queue was created and deleted concurrently; try again")
}

// adopt accepts an existing queue if its settings match cfg.
func (b *Broker) adopt(op string, cfg adapters.QueueConfig, p admin.QueueProperties) error {
	var lease time.Duration
	if p.LockDuration != nil {
		d, err := parseISODuration(*p.LockDuration)
		if err != nil {
			return adapters.Errorf(adapters.ErrInvalidArgument, op, "existing queue: LockDuration: %v", err)
		}
		lease = d
	}
	maxAttempts := 0
	if p.MaxDeliveryCount != nil {
		maxAttempts = int(*p.MaxDeliveryCount)
	}
	dedupe := p.RequiresDuplicateDetection != nil && *p.RequiresDuplicateDetection
	var window time.Duration
	if dedupe && p.DuplicateDetectionHistoryTimeWindow != nil {
		window, _ = parseISODuration(*p.DuplicateDetectionHistoryTimeWindow)
	}
	if lease != cfg.Lease || maxAttempts != cfg.MaxAttempts || dedupe != cfg.Dedupe || (dedupe && window != cfg.DedupeWindow) {
		return adapters.Errorf(adapters.ErrInvalidArgument, op,
			"queue exists with lease %s, max attempts %d, dedupe %t (window %s); declared with lease %s, max attempts %d, dedupe %t (window %s); Service Bus queues are not changed in place: delete it first",
			lease, maxAttempts, dedupe, window, cfg.Lease, cfg.MaxAttempts, cfg.Dedupe, cfg.DedupeWindow)
	}
	b.mu.Lock()
	b.queues[strings.ToLower(cfg.Name)] = queueInfo{lease: lease, maxAttempts: maxAttempts}
	b.mu.Unlock()
	return nil
}

// queueInfo returns the lease and max attempts of a queue, asking the
// management API the first time. ErrNotFound if the queue does not exist.
func (b *Broker) queueInfo(ctx context.Context, op, queue string) (queueInfo, error) {
	b.mu.Lock()
	qi, ok := b.queues[strings.ToLower(queue)]
	b.mu.Unlock()
	if ok {
		return qi, nil
	}
	got, err := b.admin.GetQueue(ctx, queue, nil)
	if err != nil {
		return qi, mapErr(op, err)
	}
	if got == nil {
		return qi, adapters.Errorf(adapters.ErrNotFound, op, "queue %q does not exist (declare it first)", queue)
	}
	if got.LockDuration != nil {
		qi.lease, _ = parseISODuration(*got.LockDuration)
	}
	if got.MaxDeliveryCount != nil {
		qi.maxAttempts = int(*got.MaxDeliveryCount)
	}
	b.mu.Lock()
	b.queues[strings.ToLower(queue)] = qi
	b.mu.Unlock()
	return qi, nil
}

// DeleteQueue deletes the queue; its dead-letter sub-queue goes with it.
func (b *Broker) DeleteQueue(ctx context.Context, queue string) error {
	op := fmt.Sprintf("azservicebus: delete queue %q", queue)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return err
	}
	b.forget(queue)
	got, err := b.admin.GetQueue(ctx, queue, nil)
	if err != nil {
		return mapErr(op, err)
	}
	if got == nil {
		return adapters.Errorf(adapters.ErrNotFound, op, "queue does not exist")
	}
	if _, err := b.admin.DeleteQueue(ctx, queue, nil); err != nil {
		if isStatus(err, http.StatusNotFound) {
			return adapters.Errorf(adapters.ErrNotFound, op, "queue does not exist")
		}
		return mapErr(op, err)
	}
	return nil
}

// forget drops cached state of an entity (after delete, or not-found).
func (b *Broker) forget(name string) {
	key := strings.ToLower(name)
	b.mu.Lock()
	delete(b.queues, key)
	delete(b.topics, key)
	s := b.senders[key]
	delete(b.senders, key)
	b.mu.Unlock()
	if s != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.Close(ctx)
		cancel()
	}
}

// forgetTopic makes the next Publish or Subscribe check the topic again.
func (b *Broker) forgetTopic(name string) {
	b.mu.Lock()
	delete(b.topics, strings.ToLower(name))
	b.mu.Unlock()
}

func (b *Broker) sender(op, entity string) (*sb.Sender, error) {
	key := strings.ToLower(entity)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, adapters.Errorf(adapters.ErrClosed, op, "broker is closed")
	}
	if s := b.senders[key]; s != nil {
		return s, nil
	}
	s, err := b.client.NewSender(entity, nil)
	if err != nil {
		return nil, mapErr(op, err)
	}
	b.senders[key] = s
	return s, nil
}

// Enqueue sends m to the queue. It is durable once Service Bus accepted the
// transfer, which is when SendMessage returns.
func (b *Broker) Enqueue(ctx context.Context, queue string, m adapters.Message) error {
	op := fmt.Sprintf("azservicebus: enqueue %q", queue)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return err
	}
	if err := adapters.ValidateMessage(op, m, caps); err != nil {
		return err
	}
	if _, err := b.queueInfo(ctx, op, queue); err != nil {
		return err
	}
	return b.send(ctx, op, queue, toSB(m))
}

// EnqueueBatch implements adapters.BatchEnqueuer: every message is
// validated first (nothing is sent if one is invalid), then they go out in
// Service Bus message batches (Sender.NewMessageBatch, as many messages
// per batch as the link's batch size allows, one transfer each), in order.
// It returns once Service Bus accepted every batch. A message too large to
// share a batch (near MaxMessageSize) is sent on its own. On an error the
// batches sent before it are stored and the rest are not.
func (b *Broker) EnqueueBatch(ctx context.Context, queue string, ms []adapters.Message) error {
	op := fmt.Sprintf("azservicebus: enqueue batch %q", queue)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return err
	}
	for _, m := range ms {
		if err := adapters.ValidateMessage(op, m, caps); err != nil {
			return err
		}
	}
	if _, err := b.queueInfo(ctx, op, queue); err != nil {
		return err
	}
	if len(ms) == 0 {
		return nil
	}
	s, err := b.sender(op, queue)
	if err != nil {
		return err
	}
	var batch *sb.MessageBatch
	flush := func() error {
		if batch == nil || batch.NumMessages() == 0 {
			return nil
		}
		err := s.SendMessageBatch(ctx, batch, nil)
		batch = nil
		return b.sendErr(ctx, op, queue, err)
	}
	for _, m := range ms {
		msg := toSB(m)
		for {
			if batch == nil {
				if batch, err = s.NewMessageBatch(ctx, nil); err != nil {
					return b.sendErr(ctx, op, queue, err)
				}
			}
			err := batch.AddMessage(msg, nil)
			if err == nil {
				break
			}
			if !errors.Is(err, sb.ErrMessageTooLarge) {
				return mapErr(op, err)
			}
			if batch.NumMessages() == 0 {
				// Too large for a batch of its own: a plain send.
				if err := b.sendErr(ctx, op, queue, s.SendMessage(ctx, msg, nil)); err != nil {
					return err
				}
				break
			}
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func (b *Broker) send(ctx context.Context, op, entity string, msg *sb.Message) error {
	s, err := b.sender(op, entity)
	if err != nil {
		return err
	}
	return b.sendErr(ctx, op, entity, s.SendMessage(ctx, msg, nil))
}

// sendErr maps the error of a send to entity; nil stays nil.
func (b *Broker) sendErr(ctx context.Context, op, entity string, err error) error {
	if err != nil {
		err = mapErrCtx(ctx, op, err)
		if errors.Is(err, adapters.ErrNotFound) {
			b.forget(entity)
		}
		if b.checkOpen(op) != nil {
			return adapters.Errorf(adapters.ErrClosed, op, "broker is closed")
		}
		if errors.Is(err, adapters.ErrClosed) {
			// The SDK's link was closed under us (entity deleted, connection
			// recovery): not the broker. A new sender is made next time.
			b.forget(entity)
			return &adapters.Error{Code: adapters.ErrUnavailable, Op: op, Err: err}
		}
		return err
	}
	return nil
}

// toSB maps a Message to a Service Bus message. An empty ID becomes a random
// UUID.
func toSB(m adapters.Message) *sb.Message {
	id := m.ID
	if id == "" {
		id = uuid.NewString()
	}
	props := make(map[string]any, len(m.Headers)+1)
	for k, v := range m.Headers {
		props[k] = v
	}
	if m.Key != "" {
		props[propKey] = m.Key
	}
	body := m.Body
	if body == nil {
		body = []byte{}
	}
	return &sb.Message{MessageID: &id, Body: body, ApplicationProperties: props}
}

// fromSB maps a received message back. deadLetter (a message from the
// dead-letter queue) adds the dead-letter reason header and drops the
// DeadLetterReason and DeadLetterErrorDescription properties, which
// Service Bus set there; elsewhere properties of those names are
// application headers like any other.
func fromSB(rm *sb.ReceivedMessage, deadLetter bool) adapters.Message {
	m := adapters.Message{ID: rm.MessageID, Body: rm.Body}
	for k, v := range rm.ApplicationProperties {
		s, ok := v.(string)
		switch {
		case k == propKey:
			m.Key = s
		case k == propID:
			m.ID = s
		case strings.HasPrefix(strings.ToLower(k), adapters.ReservedHeaderPrefix),
			deadLetter && (k == "DeadLetterReason" || k == "DeadLetterErrorDescription"):
		case ok:
			if m.Headers == nil {
				m.Headers = map[string]string{}
			}
			m.Headers[k] = s
		}
	}
	if deadLetter {
		reason := ""
		if rm.DeadLetterReason != nil {
			reason = *rm.DeadLetterReason
		}
		if rm.DeadLetterErrorDescription != nil && *rm.DeadLetterErrorDescription != "" {
			reason += ": " + *rm.DeadLetterErrorDescription
		}
		if m.Headers == nil {
			m.Headers = map[string]string{}
		}
		m.Headers[adapters.HeaderDeadLetterReason] = reason
	}
	return m
}

// Publish sends m to the topic, creating the Service Bus topic if needed.
// Subscribers get it through their own subscriptions.
func (b *Broker) Publish(ctx context.Context, topic string, m adapters.Message) error {
	op := fmt.Sprintf("azservicebus: publish %q", topic)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	if err := adapters.ValidateName("topic", topic); err != nil {
		return err
	}
	if err := adapters.ValidateMessage(op, m, caps); err != nil {
		return err
	}
	msg := toSB(m)
	entity := topicEntity(topic)
	if err := b.ensureTopic(ctx, op, entity); err != nil {
		return err
	}
	err := b.send(ctx, op, entity, msg)
	if errors.Is(err, adapters.ErrNotFound) {
		// The topic was deleted (or the broker lost it) since we cached it:
		// make it again, once.
		if err := b.ensureTopic(ctx, op, entity); err != nil {
			return err
		}
		err = b.send(ctx, op, entity, msg)
	}
	return err
}

// topicEntity is the Service Bus entity behind a clusterbus topic. Queues and
// topics share one namespace in Service Bus, while clusterbus keeps them
// apart (a topic and a queue may have the same name), so topics get a prefix
// that no queue name can have: queue names never contain a period.
func topicEntity(topic string) string { return "t." + topic }

func (b *Broker) ensureTopic(ctx context.Context, op, topic string) error {
	key := strings.ToLower(topic)
	b.mu.Lock()
	ok := b.topics[key]
	b.mu.Unlock()
	if ok {
		return nil
	}
	got, err := b.admin.GetTopic(ctx, topic, nil)
	if err != nil {
		return mapErr(op, err)
	}
	if got == nil {
		_, err = b.admin.CreateTopic(ctx, topic, &admin.CreateTopicOptions{Properties: &admin.TopicProperties{
			// Broadcast messages are for connected subscribers; bound how long
			// an unread one is kept.
			DefaultMessageTimeToLive: ptr("PT1H"),
		}})
		if err != nil && !isStatus(err, http.StatusConflict) {
			return mapErr(op, err)
		}
	}
	b.mu.Lock()
	b.topics[key] = true
	b.mu.Unlock()
	return nil
}

// Subscribe creates a subscription of its own on the topic (auto-deleted
// after Config.SubscriptionIdle without a receiver) and receives from it.
func (b *Broker) Subscribe(ctx context.Context, topic string) (adapters.Subscription, error) {
	op := fmt.Sprintf("azservicebus: subscribe %q", topic)
	if err := b.checkOpen(op); err != nil {
		return nil, err
	}
	if err := adapters.ValidateName("topic", topic); err != nil {
		return nil, err
	}
	entity := topicEntity(topic)
	if err := b.ensureTopic(ctx, op, entity); err != nil {
		return nil, err
	}
	s := &subscription{b: b, topic: entity, name: "cb-" + randomHex(8), done: make(chan struct{})}
	if err := s.create(ctx); err != nil {
		if errors.Is(err, adapters.ErrNotFound) { // topic deleted under our cache
			b.forgetTopic(entity)
		}
		return nil, err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		s.deleteRemote()
		return nil, adapters.Errorf(adapters.ErrClosed, op, "broker is closed")
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s, nil
}

// Consume opens a peek-lock receiver on the queue or its dead-letter
// sub-queue.
func (b *Broker) Consume(ctx context.Context, queue string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	op := fmt.Sprintf("azservicebus: consume %q", queue)
	if err := b.checkOpen(op); err != nil {
		return nil, err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return nil, err
	}
	if err := opts.Validate(op, 0); err != nil {
		return nil, err
	}
	qi, err := b.queueInfo(ctx, op, queue)
	if err != nil {
		return nil, err
	}
	ropts := &sb.ReceiverOptions{ReceiveMode: sb.ReceiveModePeekLock}
	if opts.DeadLetters {
		ropts.SubQueue = sb.SubQueueDeadLetter
	}
	rcv, err := b.client.NewReceiverForQueue(queue, ropts)
	if err != nil {
		return nil, mapErr(op, err)
	}
	prefetch := max(opts.Prefetch, 1)
	c := &consumer{b: b, queue: queue, dead: opts.DeadLetters, info: qi, rcv: rcv, prefetch: min(prefetch, 5000), done: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		_ = rcv.Close(context.Background())
		return nil, adapters.Errorf(adapters.ErrClosed, op, "broker is closed")
	}
	b.consumers[c] = struct{}{}
	b.mu.Unlock()
	return c, nil
}

// Close closes every consumer and subscription (deleting the subscriptions)
// and the connection. The consumers abandon the deliveries they hold, which
// return to their queues at once.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	consumers, subs, senders := b.consumers, b.subs, b.senders
	b.consumers, b.subs, b.senders = map[*consumer]struct{}{}, map[*subscription]struct{}{}, map[string]*sb.Sender{}
	b.mu.Unlock()
	var wg sync.WaitGroup
	for c := range consumers {
		wg.Go(func() { _ = c.Close() })
	}
	for s := range subs {
		wg.Go(func() { _ = s.Close() })
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range senders {
		_ = s.Close(ctx)
	}
	if err := b.client.Close(ctx); err != nil {
		return mapErr("azservicebus: close", err)
	}
	return nil
}

func (b *Broker) drop(c *consumer, s *subscription) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c != nil {
		delete(b.consumers, c)
	}
	if s != nil {
		delete(b.subs, s)
	}
}

// mapErrCtx is mapErr for calls made with the caller's ctx: a context error
// while ctx is still live comes from inside the SDK (it cancels its own
// operations while recovering a link) and is reported as ErrUnavailable, not
// as the caller's cancellation.
func mapErrCtx(ctx context.Context, op string, err error) error {
	return driver.MapCtx(ctx, op, err, "the SDK abandoned the operation while recovering its link; its outcome is unknown", mapErr)
}

// mapErr classifies an SDK or management error into the adapters codes.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var ae *adapters.Error
	if errors.As(err, &ae) {
		return adapters.Wrap(ae.Code, op, err)
	}
	var se *sb.Error
	if errors.As(err, &se) {
		switch se.Code {
		case sb.CodeLockLost:
			return adapters.Wrap(adapters.ErrLeaseLost, op, err)
		case sb.CodeNotFound:
			return adapters.Wrap(adapters.ErrNotFound, op, err)
		case sb.CodeClosed:
			return adapters.Wrap(adapters.ErrClosed, op, err)
		case sb.CodeUnauthorizedAccess:
			return adapters.Wrap(adapters.ErrInvalidArgument, op, fmt.Errorf("credentials refused: %w", err))
		}
		return adapters.Wrap(adapters.ErrUnavailable, op, err)
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		switch {
		case re.StatusCode == http.StatusNotFound:
			return adapters.Wrap(adapters.ErrNotFound, op, err)
		case re.StatusCode == http.StatusUnauthorized || re.StatusCode == http.StatusForbidden:
			return adapters.Wrap(adapters.ErrInvalidArgument, op, fmt.Errorf("credentials refused (the adapter needs Manage rights): %w", err))
		case re.StatusCode == http.StatusTooManyRequests || re.StatusCode >= 500:
			return adapters.Wrap(adapters.ErrUnavailable, op, err)
		default:
			return adapters.Wrap(adapters.ErrInvalidArgument, op, err)
		}
	}
	if strings.Contains(err.Error(), "amqp:not-found") {
		return adapters.Wrap(adapters.ErrNotFound, op, err)
	}
	return adapters.Wrap(adapters.ErrUnavailable, op, err)
}

func isStatus(err error, code int) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == code
}

func ptr[T any](v T) *T { return &v }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
