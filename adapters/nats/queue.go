package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/clusterbus/clusterbus/adapters"
)

// Headers the adapter adds. The adapters.ReservedHeaderPrefix keeps them
// apart from user headers.
const (
	hdrID       = "cb-id"
	hdrKey      = "cb-key"
	hdrAttempts = "cb-dead-letter-attempts"
	hdrFrom     = "cb-dead-letter-queue"
	// hdrUserPrefix shields user headers whose names start with "nats".
	hdrUserPrefix = "cb-u-"
)

// durable is the name of the durable pull consumer every queue (and every
// dead-letter queue) has; all clusterbus consumers of a queue share it.
const durable = "clusterbus"

// Stream metadata keys that record the QueueConfig.
const (
	mdLease       = "clusterbus.lease"
	mdMaxAttempts = "clusterbus.max_attempts"
	mdDedupe      = "clusterbus.dedupe"
	mdOrdered     = "clusterbus.ordered"
)

// fetchWindowMax bounds one pull request; the loop in Receive issues the next.
const fetchWindowMax = 5 * time.Second

// queueInfo is what Enqueue and Consume need to know about a queue.
type queueInfo struct {
	lease       time.Duration
	maxAttempts int
	dedupe      bool
}

// DeclareQueue implements adapters.Broker. It creates (or updates in place)
// a work-queue stream "<prefix>_Q_<name>" on subject "<prefix>.queue.<name>",
// its dead-letter stream "<prefix>_DLQ_<name>" on "<prefix>.dlq.<name>", and
// a durable pull consumer on each with AckWait = cfg.Lease. A changed
// Lease, MaxAttempts or DedupeWindow is applied in place; consumers opened
// before the change keep the lease and attempt limit they started with.
func (b *Broker) DeclareQueue(ctx context.Context, cfg adapters.QueueConfig) error {
	op := "declare queue " + cfg.Name
	if err := b.checkQueue(ctx, op); err != nil {
		return err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(b.caps); err != nil {
		return err
	}
	main := jetstream.StreamConfig{
		Name:        b.queueStream(cfg.Name),
		Description: "clusterbus queue " + cfg.Name,
		Subjects:    []string{b.queueSubject(cfg.Name)},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    b.opts.Replicas,
		Metadata: map[string]string{
			mdLease:       cfg.Lease.String(),
			mdMaxAttempts: strconv.Itoa(cfg.MaxAttempts),
			mdDedupe:      strconv.FormatBool(cfg.Dedupe),
			mdOrdered:     strconv.FormatBool(cfg.Ordered),
		},
	}
	if cfg.Dedupe {
		main.Duplicates = cfg.DedupeWindow
	}
	dlq := jetstream.StreamConfig{
		Name:        b.dlqStream(cfg.Name),
		Description: "clusterbus dead-letter queue of " + cfg.Name,
		Subjects:    []string{b.dlqSubject(cfg.Name)},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    b.opts.Replicas,
		// The move to the DLQ is deduplicated by the item's stream
		// sequence; a retried move comes at most a lease later.
		Duplicates: max(2*time.Minute, 2*cfg.Lease+time.Minute),
	}
	for _, sc := range []jetstream.StreamConfig{main, dlq} {
		if _, err := b.js.CreateOrUpdateStream(ctx, sc); err != nil {
			return b.mapCtxErr(ctx, op, err)
		}
		maxAckPending := 10000
		if cfg.Ordered && sc.Name == main.Name {
			// One item in flight at a time: the stream's order, hence
			// every key's order, is the delivery order.
			maxAckPending = 1
		}
		if _, err := b.js.CreateOrUpdateConsumer(ctx, sc.Name, jetstream.ConsumerConfig{
			Durable:       durable,
			Description:   "clusterbus workers",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       cfg.Lease,
			MaxDeliver:    -1, // the adapter counts attempts; see doc.go
			MaxAckPending: maxAckPending,
			MaxWaiting:    1024,
		}); err != nil {
			return b.mapCtxErr(ctx, op, err)
		}
	}
	b.mu.Lock()
	b.queues[cfg.Name] = queueInfo{lease: cfg.Lease, maxAttempts: cfg.MaxAttempts, dedupe: cfg.Dedupe}
	b.mu.Unlock()
	return nil
}

// DeleteQueue implements adapters.Broker.
func (b *Broker) DeleteQueue(ctx context.Context, queue string) error {
	op := "delete queue " + queue
	if err := b.checkQueue(ctx, op); err != nil {
		return err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return err
	}
	b.forget(queue)
	if err := b.js.DeleteStream(ctx, b.queueStream(queue)); err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return errf(adapters.ErrNotFound, op, "queue %q does not exist", queue)
		}
		return b.mapCtxErr(ctx, op, err)
	}
	if err := b.js.DeleteStream(ctx, b.dlqStream(queue)); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return b.mapCtxErr(ctx, op, err)
	}
	return nil
}

func (b *Broker) forget(queue string) {
	b.mu.Lock()
	delete(b.queues, queue)
	b.mu.Unlock()
}

// info returns what the queue was declared with, from the cache or from the
// stream's metadata.
func (b *Broker) info(ctx context.Context, op, queue string) (queueInfo, error) {
	b.mu.Lock()
	qi, ok := b.queues[queue]
	b.mu.Unlock()
	if ok {
		return qi, nil
	}
	s, err := b.js.Stream(ctx, b.queueStream(queue))
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return qi, errf(adapters.ErrNotFound, op, "queue %q was never declared", queue)
		}
		return qi, b.mapCtxErr(ctx, op, err)
	}
	md := s.CachedInfo().Config.Metadata
	qi.lease, _ = time.ParseDuration(md[mdLease])
	qi.maxAttempts, _ = strconv.Atoi(md[mdMaxAttempts])
	qi.dedupe, _ = strconv.ParseBool(md[mdDedupe])
	if qi.lease <= 0 || qi.maxAttempts <= 0 {
		return qi, errf(adapters.ErrInvalidArgument, op, "stream %s was not declared by clusterbus (no %s metadata)", b.queueStream(queue), mdLease)
	}
	b.mu.Lock()
	b.queues[queue] = qi
	b.mu.Unlock()
	return qi, nil
}

// Enqueue implements adapters.Broker. It returns once JetStream has
// acknowledged the message (stored it). With Dedupe the message ID is sent
// as Nats-Msg-Id and a duplicate within the window is dropped by the server.
func (b *Broker) Enqueue(ctx context.Context, queue string, m adapters.Message) error {
	op := "enqueue " + queue
	if err := b.checkQueue(ctx, op); err != nil {
		return err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return err
	}
	if err := adapters.ValidateMessage("nats: "+op, m, b.caps); err != nil {
		return err
	}
	qi, err := b.info(ctx, op, queue)
	if err != nil {
		return err
	}
	if m.ID == "" {
		m.ID = nuid.Next()
	}
	msg := encode(b.queueSubject(queue), m)
	if qi.dedupe {
		msg.Header[jetstream.MsgIDHeader] = []string{m.ID}
	}
	ack, err := b.js.PublishMsg(ctx, msg,
		jetstream.WithExpectStream(b.queueStream(queue)),
		jetstream.WithRetryAttempts(20),
		jetstream.WithRetryWait(250*time.Millisecond))
	if err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			// Either the queue was deleted or JetStream is not ready.
			b.forget(queue)
			if _, serr := b.js.Stream(ctx, b.queueStream(queue)); errors.Is(serr, jetstream.ErrStreamNotFound) {
				return errf(adapters.ErrNotFound, op, "queue %q does not exist", queue)
			}
		}
		return b.mapCtxErr(ctx, op, err)
	}
	if ack.Duplicate {
		b.log.Debug("nats: duplicate dropped", "queue", queue, "id", m.ID)
	}
	return nil
}

// Consume implements adapters.Broker.
func (b *Broker) Consume(ctx context.Context, queue string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	op := "consume " + queue
	if err := b.checkQueue(ctx, op); err != nil {
		return nil, err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return nil, err
	}
	if opts.Prefetch < 0 {
		return nil, errf(adapters.ErrInvalidArgument, op, "ConsumeOptions.Prefetch %d: want >= 0", opts.Prefetch)
	}
	qi, err := b.info(ctx, op, queue)
	if err != nil {
		return nil, err
	}
	stream := b.queueStream(queue)
	if opts.DeadLetters {
		stream = b.dlqStream(queue)
	}
	cons, err := b.js.Consumer(ctx, stream, durable)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, errf(adapters.ErrNotFound, op, "queue %q was never declared (stream %s, consumer %s)", queue, stream, durable)
		}
		return nil, b.mapCtxErr(ctx, op, err)
	}
	c := &consumer{
		b:        b,
		queue:    queue,
		dlq:      opts.DeadLetters,
		cons:     cons,
		lease:    cons.CachedInfo().Config.AckWait,
		prefetch: max(opts.Prefetch, 1),
		closed:   make(chan struct{}),
		held:     map[*delivery]struct{}{},
	}
	if !c.dlq {
		c.maxAttempts = qi.maxAttempts
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, b.closedErr(op)
	}
	b.consumers[c] = struct{}{}
	b.mu.Unlock()
	return c, nil
}

type fetched struct {
	msg jetstream.Msg
	at  time.Time // when the pull request that brought it was sent; the server started the lease later
}

type consumer struct {
	b           *Broker
	queue       string
	dlq         bool
	cons        jetstream.Consumer
	lease       time.Duration
	maxAttempts int // 0 on a dead-letter queue: no limit
	prefetch    int

	mu       sync.Mutex
	isClosed bool
	closed   chan struct{}
	buf      []fetched
	held     map[*delivery]struct{}
}

func (c *consumer) op(verb string) string {
	if c.dlq {
		return verb + " " + c.queue + " (dead letters)"
	}
	return verb + " " + c.queue
}

func (c *consumer) closedErr() error {
	return errf(adapters.ErrClosed, c.op("receive"), "consumer closed")
}

// Receive implements adapters.Consumer. It pulls one item per call (with
// Prefetch > 1, up to Prefetch items that are already waiting) and retries
// connection trouble until ctx is done.
func (c *consumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	backoff := 50 * time.Millisecond
	for {
		select {
		case <-c.closed:
			return nil, c.closedErr()
		default:
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if f, ok := c.pop(); ok {
			if d := c.accept(f); d != nil {
				return d, nil
			}
			continue
		}
		n, err := c.fetch(ctx)
		if n > 0 {
			backoff = 50 * time.Millisecond
			continue
		}
		if err != nil {
			if c.b.isClosed() {
				return nil, c.closedErr()
			}
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
				return nil, errf(adapters.ErrNotFound, c.op("receive"), "queue %q was deleted", c.queue)
			}
			c.b.log.Debug("nats: fetch failed; retrying", "queue", c.queue, "err", err)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-c.closed:
				return nil, c.closedErr()
			}
			backoff = min(2*backoff, time.Second)
		}
	}
}

func (c *consumer) pop() (fetched, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf) == 0 {
		return fetched{}, false
	}
	f := c.buf[0]
	c.buf = c.buf[1:]
	return f, true
}

// fetch pulls into the buffer. It returns how many items arrived.
//
// Each item is stamped with the time its pull request was sent: the server
// starts an item's lease (AckWait) only when it sends the item, which is
// after it got the request, so request time + lease is a local deadline that
// never runs past the server's, however long the item sat in client buffers
// on a loaded machine. The price is that an item arriving late in a pull
// window starts with less lease left, so the window is kept short relative
// to the lease.
func (c *consumer) fetch(ctx context.Context) (int, error) {
	if c.prefetch > 1 {
		reqAt := time.Now()
		batch, err := c.cons.FetchNoWait(c.prefetch)
		if err != nil {
			return 0, err
		}
		if n := c.drain(batch, reqAt); n > 0 {
			return n, nil
		}
	}
	fctx, cancel := context.WithTimeout(ctx, c.fetchWindow())
	defer cancel()
	// A reconnect or Close ends the pull at once: the server forgets pull
	// requests when it restarts.
	rc := c.b.reconnected()
	go func() {
		select {
		case <-rc:
			cancel()
		case <-c.closed:
			cancel()
		case <-fctx.Done():
		}
	}()
	reqAt := time.Now()
	batch, err := c.cons.Fetch(1, jetstream.FetchContext(fctx))
	if err != nil {
		return 0, err
	}
	n := c.drain(batch, reqAt)
	if err := batch.Error(); err != nil && n == 0 && fctx.Err() == nil && !errors.Is(err, nats.ErrTimeout) {
		return 0, err
	}
	return n, nil
}

// fetchWindow bounds one pull request: at most fetchWindowMax, and a quarter
// of the lease, so an item that arrives at the end of a window keeps at least
// three quarters of its lease.
func (c *consumer) fetchWindow() time.Duration {
	return max(min(fetchWindowMax, c.lease/4), 50*time.Millisecond)
}

func (c *consumer) drain(batch jetstream.MessageBatch, reqAt time.Time) int {
	n := 0
	for msg := range batch.Messages() {
		c.mu.Lock()
		c.buf = append(c.buf, fetched{msg: msg, at: reqAt})
		c.mu.Unlock()
		n++
	}
	return n
}

// accept turns a fetched message into a delivery, or handles it and returns
// nil: an item whose lease ran out in the buffer is left to come back; an
// item past MaxAttempts is moved to the dead-letter queue.
func (c *consumer) accept(f fetched) *delivery {
	md, err := f.msg.Metadata()
	if err != nil {
		c.b.log.Warn("nats: not a JetStream message; dropped", "queue", c.queue, "err", err)
		return nil
	}
	deadline := f.at.Add(c.lease)
	d := &delivery{
		c:        c,
		msg:      f.msg,
		md:       md,
		m:        decode(f.msg, c.dlq),
		attempt:  int(md.NumDelivered),
		deadline: deadline,
	}
	last := c.maxAttempts > 0 && d.attempt >= c.maxAttempts
	switch {
	case c.maxAttempts > 0 && d.attempt > c.maxAttempts:
		// The last attempt's lease expired (its holder died, or its
		// expiry timer could not move it): dead-letter it now.
		d.moveDetached(reasonExpired(c.maxAttempts))
		return nil
	case !time.Now().Before(deadline):
		// The lease ran out while buffered.
		if last {
			d.moveDetached(reasonExpired(c.maxAttempts))
		}
		// Otherwise it comes back by itself.
		return nil
	case last:
		// If this last lease expires unsettled, dead-letter the item at
		// once rather than when some consumer next pulls.
		d.mu.Lock()
		d.timer = time.AfterFunc(time.Until(deadline), d.expireLast)
		d.mu.Unlock()
	}
	c.mu.Lock()
	c.held[d] = struct{}{}
	c.mu.Unlock()
	return d
}

// Close implements adapters.Consumer. Buffered and unsettled deliveries are
// negatively acknowledged, so they come back at once; settling them
// afterwards returns ErrLeaseLost.
func (c *consumer) Close() error {
	c.mu.Lock()
	if c.isClosed {
		c.mu.Unlock()
		return nil
	}
	c.isClosed = true
	close(c.closed)
	buf := c.buf
	c.buf = nil
	held := c.held
	c.held = map[*delivery]struct{}{}
	c.mu.Unlock()
	for _, f := range buf {
		_ = f.msg.Nak()
	}
	for d := range held {
		d.release()
	}
	c.b.mu.Lock()
	delete(c.b.consumers, c)
	c.b.mu.Unlock()
	return nil
}

func (c *consumer) done(d *delivery) {
	c.mu.Lock()
	delete(c.held, d)
	c.mu.Unlock()
}

func reasonExpired(maxAttempts int) string {
	return fmt.Sprintf("max attempts (%d) exceeded: the lease of the last attempt expired without ack", maxAttempts)
}

type delivery struct {
	c       *consumer
	timer   *time.Timer // expiry of the last attempt's lease
	msg     jetstream.Msg
	md      *jetstream.MsgMetadata
	m       adapters.Message
	attempt int

	mu       sync.Mutex // held during settlement I/O
	deadline time.Time
	settled  bool
}

func (d *delivery) Message() adapters.Message { return d.m }
func (d *delivery) Attempt() int              { return d.attempt }
func (d *delivery) Queue() string             { return d.c.queue }
func (d *delivery) LeaseDeadline() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.deadline
}

// begin checks that the lease is still held. d.mu must be held.
func (d *delivery) begin(op string) error {
	if d.c.b.isClosed() {
		return &adapters.Error{Code: adapters.ErrClosed, Op: "nats: " + op, Err: adapters.ErrLeaseLost}
	}
	if d.settled {
		return errf(adapters.ErrLeaseLost, op, "already settled or released")
	}
	if !time.Now().Before(d.deadline) {
		if d.timer == nil {
			// (A last attempt is settled by expireLast, which moves it.)
			d.settled = true
			d.c.done(d)
		}
		return errf(adapters.ErrLeaseLost, op, "lease expired at %s", d.deadline.Format(time.RFC3339Nano))
	}
	return nil
}

func (d *delivery) finish() {
	d.settled = true
	if d.timer != nil {
		d.timer.Stop()
	}
	d.c.done(d)
}

// expireLast runs when the lease of a last attempt may have expired.
func (d *delivery) expireLast() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settled {
		return
	}
	if left := time.Until(d.deadline); left > 0 {
		d.timer.Reset(left) // extended
		return
	}
	d.finish()
	if d.c.b.isClosed() {
		return // it comes back as attempt MaxAttempts+1 and is moved then
	}
	d.moveDetached(reasonExpired(d.c.maxAttempts))
}

// moveDetached moves the item to the dead-letter queue on the adapter's own
// account. If that fails the item stays in the queue (unacked) and the next
// delivery, past MaxAttempts, moves it.
func (d *delivery) moveDetached(reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.moveToDLQ(ctx, reason, d.c.maxAttempts); err != nil {
		d.c.b.log.Warn("nats: cannot dead-letter an item past its attempts; it comes back and is retried", "queue", d.c.queue, "err", err)
	}
}

// reply sends an acknowledgement verb and waits for the server to confirm.
func (d *delivery) reply(ctx context.Context, op string, body []byte) error {
	rctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	_, err := d.c.b.nc.RequestWithContext(rctx, d.msg.Reply(), body)
	return d.c.b.mapCtxErr(ctx, op, err)
}

// Ack implements adapters.Delivery.
func (d *delivery) Ack(ctx context.Context) error {
	op := d.c.op("ack")
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(op); err != nil {
		return err
	}
	if err := d.reply(ctx, op, []byte("+ACK")); err != nil {
		return err
	}
	d.finish()
	return nil
}

// Nack implements adapters.Delivery with NakWithDelay; on the last attempt
// it dead-letters the item instead.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	op := d.c.op("nack")
	if err := adapters.ValidateDelay("nats: "+op, delay, d.c.b.caps); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(op); err != nil {
		return err
	}
	if d.c.maxAttempts > 0 && d.attempt >= d.c.maxAttempts {
		reason := fmt.Sprintf("max attempts (%d) exceeded: nacked on the last attempt", d.c.maxAttempts)
		if err := d.moveToDLQ(ctx, reason, d.attempt); err != nil {
			return err
		}
		d.finish()
		return nil
	}
	body := []byte("-NAK")
	if delay > 0 {
		body = fmt.Appendf(nil, `-NAK {"delay": %d}`, delay.Nanoseconds())
	}
	if err := d.reply(ctx, op, body); err != nil {
		return err
	}
	d.finish()
	return nil
}

// Extend implements adapters.Delivery with InProgress, which restarts the
// server's AckWait timer: the lease is renewed by the queue's full lease,
// whatever d is.
func (d *delivery) Extend(ctx context.Context, dur time.Duration) error {
	op := d.c.op("extend")
	if err := adapters.ValidateExtend("nats: "+op, dur, d.c.lease); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(op); err != nil {
		return err
	}
	start := time.Now()
	if err := d.reply(ctx, op, []byte("+WPI")); err != nil {
		return err
	}
	d.deadline = start.Add(d.c.lease)
	return nil
}

// DeadLetter implements adapters.Delivery.
func (d *delivery) DeadLetter(ctx context.Context, reason string) error {
	op := d.c.op("dead-letter")
	if d.c.dlq {
		return errf(adapters.ErrInvalidArgument, op, "the item is already in the dead-letter queue; Ack removes it, Nack returns it to the dead-letter queue")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(op); err != nil {
		return err
	}
	if err := d.moveToDLQ(ctx, reason, d.attempt); err != nil {
		return err
	}
	d.finish()
	return nil
}

// moveToDLQ publishes the item to the dead-letter stream (deduplicated by
// its stream sequence, so a repeated move after a crash stores it once),
// waits for the store, then acks the original.
func (d *delivery) moveToDLQ(ctx context.Context, reason string, attempts int) error {
	b := d.c.b
	op := d.c.op("dead-letter")
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	reason = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, reason)
	msg := encode(b.dlqSubject(d.c.queue), d.m)
	msg.Header[adapters.HeaderDeadLetterReason] = []string{escapeValue(reason)}
	msg.Header[hdrAttempts] = []string{strconv.Itoa(attempts)}
	msg.Header[hdrFrom] = []string{d.c.queue}
	msg.Header[jetstream.MsgIDHeader] = []string{fmt.Sprintf("%s:%d", d.md.Stream, d.md.Sequence.Stream)}
	if _, err := b.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(b.dlqStream(d.c.queue))); err != nil {
		return b.mapCtxErr(ctx, op, err)
	}
	return d.reply(ctx, op, []byte("+ACK"))
}

// release gives the item back at once (Consumer.Close); on its last attempt
// it goes to the dead-letter queue instead.
func (d *delivery) release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settled {
		return
	}
	d.finish()
	if d.c.maxAttempts > 0 && d.attempt >= d.c.maxAttempts {
		d.moveDetached(fmt.Sprintf("max attempts (%d) exceeded: the consumer holding the last attempt closed", d.c.maxAttempts))
		return
	}
	_ = d.msg.Nak()
}

// encode builds a NATS message. User headers keep their names; ID and key
// travel in reserved headers.
func encode(subject string, m adapters.Message) *nats.Msg {
	msg := nats.NewMsg(subject)
	for k, v := range m.Headers {
		if strings.HasPrefix(strings.ToLower(k), "nats") {
			// The server acts on Nats-* headers; keep user ones apart.
			k = hdrUserPrefix + k
		}
		msg.Header[k] = []string{escapeValue(v)}
	}
	if m.ID != "" {
		msg.Header[hdrID] = []string{escapeValue(m.ID)}
	}
	if m.Key != "" {
		msg.Header[hdrKey] = []string{escapeValue(m.Key)}
	}
	msg.Data = m.Body
	return msg
}

// decode is the inverse of encode. On a dead-letter queue the reason header
// is kept.
type headerMsg interface {
	Headers() nats.Header
	Data() []byte
}

func decode(raw any, keepReason bool) adapters.Message {
	var hdr nats.Header
	var data []byte
	switch v := raw.(type) {
	case *nats.Msg:
		hdr, data = v.Header, v.Data
	case headerMsg:
		hdr, data = v.Headers(), v.Data()
	}
	m := adapters.Message{Body: data}
	for k, vs := range hdr {
		if len(vs) == 0 {
			continue
		}
		v := unescapeValue(vs[0])
		switch {
		case k == hdrID:
			m.ID = v
		case k == hdrKey:
			m.Key = v
		case strings.HasPrefix(k, hdrUserPrefix):
			setHeader(&m, k[len(hdrUserPrefix):], v)
		case k == adapters.HeaderDeadLetterReason && keepReason:
			setHeader(&m, k, v)
		case strings.HasPrefix(strings.ToLower(k), adapters.ReservedHeaderPrefix),
			strings.HasPrefix(k, "Nats-"), strings.HasPrefix(k, "NATS-"):
		default:
			setHeader(&m, k, v)
		}
	}
	return m
}

func setHeader(m *adapters.Message, k, v string) {
	if m.Headers == nil {
		m.Headers = map[string]string{}
	}
	m.Headers[k] = v
}

// NATS trims leading blanks from header values; a value that starts with a
// blank or the escape byte '~' is sent with a '~' in front.
func escapeValue(v string) string {
	if v != "" && (v[0] == ' ' || v[0] == '\t' || v[0] == '~') {
		return "~" + v
	}
	return v
}

func unescapeValue(v string) string {
	if v != "" && v[0] == '~' {
		return v[1:]
	}
	return v
}
