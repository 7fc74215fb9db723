package sqs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/google/uuid"

	"github.com/clusterbus/clusterbus/adapters"
)

// Queue tags that record what the adapter cannot read back from SQS's own
// attributes (both Ordered and Dedupe make a FIFO queue).
const (
	tagOrdered = "clusterbus-ordered"
	tagDedupe  = "clusterbus-dedupe"
)

// retention is how long SQS keeps an unreceived item: its maximum, 14 days.
const retention = "1209600"

// queueInfo is what the adapter knows about a declared queue.
type queueInfo struct {
	name        string
	url, dlqURL string
	fifo        bool
	ordered     bool
	dedupe      bool
	lease       time.Duration // whole seconds
	maxAttempts int

	send *batcher[types.SendMessageBatchRequestEntry]
	del  *batcher[string] // of main queue receipt handles
	dlqD *batcher[string] // of dead-letter queue receipt handles
}

type redrivePolicy struct {
	DeadLetterTargetArn string `json:"deadLetterTargetArn"`
	MaxReceiveCount     any    `json:"maxReceiveCount"`
}

func (p redrivePolicy) max() int {
	switch v := p.MaxReceiveCount.(type) {
	case float64:
		return int(v)
	case string:
		n, _ := strconv.Atoi(v)
		return n
	}
	return 0
}

// DeclareQueue creates the queue and its dead-letter queue. A queue that
// is Ordered or Dedupe is a FIFO queue ("NAME.fifo", dead letters in
// "NAME-dlq.fifo"); else a standard queue ("NAME", "NAME-dlq"), all with the
// configured prefix. The lease is rounded up to whole seconds.
func (b *Broker) DeclareQueue(ctx context.Context, cfg adapters.QueueConfig) error {
	op := fmt.Sprintf("sqs: declare queue %q", cfg.Name)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(b.caps); err != nil {
		return err
	}
	if cfg.Dedupe && cfg.DedupeWindow > fifoDedupeWindow {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "QueueConfig.DedupeWindow %s: SQS FIFO queues remember IDs for a fixed %s; want at most that", cfg.DedupeWindow, fifoDedupeWindow)
	}
	fifo := cfg.Ordered || cfg.Dedupe
	mainName, dlqName := b.sqsName(cfg.Name, fifo, false), b.sqsName(cfg.Name, fifo, true)
	if err := checkNameLen(op, dlqName); err != nil {
		return err
	}
	lease := seconds(cfg.Lease)

	existing, err := b.lookup(ctx, op, cfg.Name)
	switch {
	case err == nil:
		var diffs []string
		if existing.fifo != fifo || existing.ordered != cfg.Ordered || existing.dedupe != cfg.Dedupe {
			diffs = append(diffs, fmt.Sprintf("Ordered=%v Dedupe=%v, asked Ordered=%v Dedupe=%v", existing.ordered, existing.dedupe, cfg.Ordered, cfg.Dedupe))
		}
		if existing.lease != time.Duration(lease)*time.Second {
			diffs = append(diffs, fmt.Sprintf("Lease %s, asked %s", existing.lease, time.Duration(lease)*time.Second))
		}
		if existing.maxAttempts != cfg.MaxAttempts {
			diffs = append(diffs, fmt.Sprintf("MaxAttempts %d, asked %d", existing.maxAttempts, cfg.MaxAttempts))
		}
		if len(diffs) > 0 {
			return adapters.Errorf(adapters.ErrInvalidArgument, op, "queue exists with a different config (%s); SQS cannot change it in place: delete it first", strings.Join(diffs, "; "))
		}
		b.remember(existing)
		return nil
	case !errors.Is(err, adapters.ErrNotFound):
		return err
	}

	attrs := map[string]string{
		string(types.QueueAttributeNameVisibilityTimeout):      strconv.Itoa(int(lease)),
		string(types.QueueAttributeNameMessageRetentionPeriod): retention,
	}
	if fifo {
		attrs[string(types.QueueAttributeNameFifoQueue)] = "true"
	}
	dlq, err := b.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(dlqName), Attributes: attrs})
	if err != nil {
		return mapErr(op+": create dead-letter queue "+dlqName, err)
	}
	dlqAttrs, err := b.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: dlq.QueueUrl, AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameQueueArn}})
	if err != nil {
		return mapErr(op+": read dead-letter queue ARN", err)
	}
	policy, _ := json.Marshal(redrivePolicy{DeadLetterTargetArn: dlqAttrs.Attributes[string(types.QueueAttributeNameQueueArn)], MaxReceiveCount: strconv.Itoa(cfg.MaxAttempts)})
	attrs[string(types.QueueAttributeNameRedrivePolicy)] = string(policy)
	tags := map[string]string{"clusterbus-queue": cfg.Name}
	if cfg.Ordered {
		tags[tagOrdered] = "true"
	}
	if cfg.Dedupe {
		tags[tagDedupe] = "true"
	}
	main, err := b.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(mainName), Attributes: attrs, Tags: tags})
	if err != nil {
		var exists *types.QueueNameExists
		if errors.As(err, &exists) {
			return adapters.Wrap(adapters.ErrInvalidArgument, op+": queue exists with a different config", err)
		}
		return mapErr(op+": create queue "+mainName, err)
	}
	b.remember(b.newQueueInfo(cfg.Name, *main.QueueUrl, *dlq.QueueUrl, fifo, cfg.Ordered, cfg.Dedupe, time.Duration(lease)*time.Second, cfg.MaxAttempts))
	b.log.Debug("queue declared", "queue", cfg.Name, "url", *main.QueueUrl, "fifo", fifo)
	return nil
}

// batchInflight bounds the batch requests (sends to a standard queue,
// deletes) a queue's batcher runs at once; see batcher.
const batchInflight = 8

func (b *Broker) newQueueInfo(name, url, dlqURL string, fifo, ordered, dedupe bool, lease time.Duration, maxAttempts int) *queueInfo {
	q := &queueInfo{name: name, url: url, dlqURL: dlqURL, fifo: fifo, ordered: ordered, dedupe: dedupe, lease: lease, maxAttempts: maxAttempts}
	// Sends to a FIFO queue go one request at a time: two in flight could
	// store a key's items out of order.
	sends := batchInflight
	if fifo {
		sends = 1
	}
	q.send = &batcher[types.SendMessageBatchRequestEntry]{maxN: 10, maxBytes: WireLimit, maxInflight: sends, eager: true, opCtx: b.opCtx,
		flush: func(ctx context.Context, es []types.SendMessageBatchRequestEntry) []error {
			return b.sendBatch(ctx, url, es)
		}}
	q.del = &batcher[string]{maxN: 10, maxBytes: 1 << 30, maxInflight: batchInflight, opCtx: b.opCtx,
		flush: func(ctx context.Context, hs []string) []error { return b.deleteBatch(ctx, url, hs) }}
	q.dlqD = &batcher[string]{maxN: 10, maxBytes: 1 << 30, maxInflight: batchInflight, opCtx: b.opCtx,
		flush: func(ctx context.Context, hs []string) []error { return b.deleteBatch(ctx, dlqURL, hs) }}
	return q
}

func (b *Broker) remember(q *queueInfo) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.queues[q.name]; ok && old.url == q.url && old.dlqURL == q.dlqURL && old.lease == q.lease && old.maxAttempts == q.maxAttempts {
		return // keep the old one and its batchers
	}
	b.queues[q.name] = q
}

func (b *Broker) forget(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.queues, name)
}

// queue returns the cached queueInfo or looks the queue up in SQS (it may
// have been declared by another node).
func (b *Broker) queue(ctx context.Context, op, name string) (*queueInfo, error) {
	if err := adapters.ValidateName("queue", name); err != nil {
		return nil, err
	}
	b.mu.Lock()
	q, ok := b.queues[name]
	b.mu.Unlock()
	if ok {
		return q, nil
	}
	q, err := b.lookup(ctx, op, name)
	if err != nil {
		return nil, err
	}
	b.remember(q)
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.queues[name], nil
}

// lookup reads a queue's settings from SQS. It returns ErrNotFound if
// neither the standard nor the FIFO queue of that name exists.
func (b *Broker) lookup(ctx context.Context, op, name string) (*queueInfo, error) {
	fifo := false
	out, err := b.sqs.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(b.sqsName(name, false, false))})
	if code(err) == adapters.ErrNotFound {
		fifo = true
		out, err = b.sqs.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(b.sqsName(name, true, false))})
	}
	if err != nil {
		if code(err) == adapters.ErrNotFound {
			return nil, adapters.Errorf(adapters.ErrNotFound, op, "queue %q was never declared (no SQS queue %q or %q)", name, b.sqsName(name, false, false), b.sqsName(name, true, false))
		}
		return nil, mapErr(op, err)
	}
	url := *out.QueueUrl
	attrs, err := b.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url), AttributeNames: []types.QueueAttributeName{
		types.QueueAttributeNameVisibilityTimeout, types.QueueAttributeNameRedrivePolicy,
	}})
	if err != nil {
		return nil, mapErr(op+": read queue attributes", err)
	}
	vis, _ := strconv.Atoi(attrs.Attributes[string(types.QueueAttributeNameVisibilityTimeout)])
	var rp redrivePolicy
	if err := json.Unmarshal([]byte(attrs.Attributes[string(types.QueueAttributeNameRedrivePolicy)]), &rp); err != nil {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "SQS queue %s has no usable redrive policy (%v): it was not declared by clusterbus", url, err)
	}
	dlq, err := b.sqs.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(b.sqsName(name, fifo, true))})
	if err != nil {
		return nil, mapErr(op+": find dead-letter queue", err)
	}
	tags, err := b.sqs.ListQueueTags(ctx, &sqs.ListQueueTagsInput{QueueUrl: aws.String(url)})
	if err != nil {
		return nil, mapErr(op+": read queue tags", err)
	}
	return b.newQueueInfo(name, url, *dlq.QueueUrl, fifo, tags.Tags[tagOrdered] == "true", tags.Tags[tagDedupe] == "true",
		time.Duration(vis)*time.Second, rp.max()), nil
}

// DeleteQueue deletes the queue and its dead-letter queue. Amazon SQS
// refuses to create a queue of the same name for 60 seconds afterwards.
func (b *Broker) DeleteQueue(ctx context.Context, queue string) error {
	op := fmt.Sprintf("sqs: delete queue %q", queue)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return err
	}
	q, err := b.lookup(ctx, op, queue)
	b.forget(queue)
	if err != nil {
		return err
	}
	if _, err := b.sqs.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: aws.String(q.url)}); err != nil {
		return mapErr(op, err)
	}
	if _, err := b.sqs.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: aws.String(q.dlqURL)}); err != nil && code(err) != adapters.ErrNotFound {
		return mapErr(op+": dead-letter queue", err)
	}
	return nil
}

// Enqueue sends m to the queue in a SendMessageBatch request (shared with
// concurrent calls when eight requests are in flight already; see batcher)
// and returns once SQS has stored its item. On a Dedupe queue the message ID is the
// MessageDeduplicationId; on an Ordered queue the key is the MessageGroupId.
func (b *Broker) Enqueue(ctx context.Context, queue string, m adapters.Message) error {
	return b.EnqueueBatch(ctx, queue, []adapters.Message{m})
}

var _ adapters.BatchEnqueuer = (*Broker)(nil)

// EnqueueBatch implements adapters.BatchEnqueuer: every message goes to the
// queue's send batcher at once, so they share SendMessageBatch requests (ten
// to a request) with each other and with concurrent Enqueue calls, and it
// returns once SQS has answered for all of them. Nothing is sent if one
// message is invalid.
func (b *Broker) EnqueueBatch(ctx context.Context, queue string, ms []adapters.Message) error {
	op := fmt.Sprintf("sqs: enqueue %q", queue)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return err
	}
	ms = slices.Clone(ms) // IDs are filled in without touching the caller's slice
	wires := make([]wire, len(ms))
	for i := range ms {
		if ms[i].ID == "" {
			ms[i].ID = uuid.NewString()
		}
		w, err := encode(op, ms[i], b.caps)
		if err != nil {
			return err
		}
		wires[i] = w
	}
	q, err := b.queue(ctx, op, queue)
	if err != nil {
		return err
	}
	entries := make([]types.SendMessageBatchRequestEntry, len(ms))
	sizes := make([]int, len(ms))
	for i, w := range wires {
		e := types.SendMessageBatchRequestEntry{MessageBody: aws.String(w.body), MessageAttributes: w.sqsAttrs()}
		if q.fifo {
			e.MessageGroupId = aws.String(q.group(ms[i]))
			if q.dedupe {
				e.MessageDeduplicationId = aws.String(dedupeID(ms[i].ID))
			} else {
				e.MessageDeduplicationId = aws.String(uuid.NewString())
			}
		}
		entries[i], sizes[i] = e, w.size()
	}
	for _, err := range q.send.doAll(ctx, entries, sizes) {
		if err == nil {
			continue
		}
		if code(err) == adapters.ErrNotFound {
			b.forget(queue)
		}
		return adapters.Wrap(adapters.ErrUnavailable, op, err)
	}
	return nil
}

// group is the FIFO MessageGroupId of m: its key on an Ordered queue (one
// group "-" for items without a key), else its ID so that items of a
// Dedupe-only queue are not held behind each other.
func (q *queueInfo) group(m adapters.Message) string {
	g := m.ID
	if q.ordered {
		g = m.Key
		if g == "" {
			g = "-"
		}
	}
	return fifoToken(g)
}

// dedupeID makes an ID usable as MessageDeduplicationId (at most 128
// characters of ASCII punctuation, letters and digits).
func dedupeID(id string) string { return fifoToken(id) }

func fifoToken(s string) string {
	ok := len(s) <= 128
	for i := 0; ok && i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			ok = false
		}
	}
	if ok {
		return s
	}
	return "h-" + uuid.NewSHA1(uuid.NameSpaceOID, []byte(s)).String()
}

func (b *Broker) sendBatch(ctx context.Context, url string, es []types.SendMessageBatchRequestEntry) []error {
	errs := make([]error, len(es))
	if len(es) == 1 {
		e := es[0]
		_, err := b.sqs.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: aws.String(url), MessageBody: e.MessageBody,
			MessageAttributes: e.MessageAttributes, MessageGroupId: e.MessageGroupId, MessageDeduplicationId: e.MessageDeduplicationId})
		errs[0] = mapErr("send", err)
		return errs
	}
	for i := range es {
		es[i].Id = aws.String(strconv.Itoa(i))
	}
	out, err := b.sqs.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: aws.String(url), Entries: es})
	if err != nil {
		err = mapErr("send batch", err)
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	for _, f := range out.Failed {
		if i, err := strconv.Atoi(aws.ToString(f.Id)); err == nil && i < len(errs) {
			errs[i] = batchEntryErr("send", f)
		}
	}
	return errs
}

func (b *Broker) deleteBatch(ctx context.Context, url string, hs []string) []error {
	errs := make([]error, len(hs))
	if len(hs) == 1 {
		_, err := b.sqs.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(url), ReceiptHandle: aws.String(hs[0])})
		errs[0] = mapErr("delete", err)
		return errs
	}
	es := make([]types.DeleteMessageBatchRequestEntry, len(hs))
	for i, h := range hs {
		es[i] = types.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: aws.String(h)}
	}
	out, err := b.sqs.DeleteMessageBatch(ctx, &sqs.DeleteMessageBatchInput{QueueUrl: aws.String(url), Entries: es})
	if err != nil {
		err = mapErr("delete batch", err)
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	for _, f := range out.Failed {
		if i, err := strconv.Atoi(aws.ToString(f.Id)); err == nil && i < len(errs) {
			errs[i] = batchEntryErr("delete", f)
		}
	}
	return errs
}

func batchEntryErr(op string, f types.BatchResultErrorEntry) error {
	c := aws.ToString(f.Code)
	var codeErr error
	switch {
	case strings.Contains(c, "ReceiptHandle"), strings.Contains(c, "NotInflight"):
		codeErr = adapters.ErrLeaseLost
	case strings.Contains(c, "TooLong"), strings.Contains(c, "TooLarge"):
		codeErr = adapters.ErrTooLarge
	case f.SenderFault:
		codeErr = adapters.ErrInvalidArgument
	default:
		codeErr = adapters.ErrUnavailable
	}
	return adapters.Errorf(codeErr, op, "%s: %s", c, aws.ToString(f.Message))
}
