package sqs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/google/uuid"

	"github.com/clusterbus/clusterbus/adapters"
)

// subscriberRetention is the MessageRetentionPeriod of subscriber queues,
// SQS's minimum: a queue left behind by a node that died without leaving
// holds at most a minute of messages.
const subscriberRetention = "60"

// subscriptionBuffer bounds the messages a subscription holds for Receive;
// beyond it messages are dropped and Receive reports ErrGap.
const subscriptionBuffer = 1024

// topicARN returns the SNS topic's ARN, creating the topic if needed
// (CreateTopic is idempotent).
func (b *Broker) topicARN(ctx context.Context, op, topic string) (string, error) {
	b.mu.Lock()
	arn, ok := b.topics[topic]
	b.mu.Unlock()
	if ok {
		return arn, nil
	}
	out, err := b.sns.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(b.cfg.Prefix + topic)})
	if err != nil {
		return "", mapErr(op+": create SNS topic "+b.cfg.Prefix+topic, err)
	}
	b.mu.Lock()
	b.topics[topic] = *out.TopicArn
	b.mu.Unlock()
	return *out.TopicArn, nil
}

func (b *Broker) forgetTopic(topic string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.topics, topic)
}

// Publish sends m to the topic's SNS topic, which copies it to every
// subscriber queue. Headers travel as message attributes (raw delivery).
func (b *Broker) Publish(ctx context.Context, topic string, m adapters.Message) error {
	op := fmt.Sprintf("sqs: publish %q", topic)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	if err := adapters.ValidateName("topic", topic); err != nil {
		return err
	}
	w, err := encode(op, m, b.caps)
	if err != nil {
		return err
	}
	for try := 0; ; try++ {
		arn, err := b.topicARN(ctx, op, topic)
		if err != nil {
			return err
		}
		_, err = b.sns.Publish(ctx, &sns.PublishInput{TopicArn: aws.String(arn), Message: aws.String(w.body), MessageAttributes: w.snsAttrs()})
		if err != nil && code(err) == adapters.ErrNotFound && try == 0 {
			b.forgetTopic(topic) // deleted behind our back: create it again
			continue
		}
		return mapErr(op, err)
	}
}

// Subscribe creates a queue for this subscriber, subscribes it to the
// topic's SNS topic with raw message delivery and reads it in the
// background. Close deletes the subscription and the queue.
func (b *Broker) Subscribe(ctx context.Context, topic string) (adapters.Subscription, error) {
	op := fmt.Sprintf("sqs: subscribe %q", topic)
	if err := b.checkOpen(op); err != nil {
		return nil, err
	}
	if err := adapters.ValidateName("topic", topic); err != nil {
		return nil, err
	}
	s := &subscription{b: b, topic: topic, op: op, queueName: b.subscriberQueueName(topic),
		ch: make(chan adapters.Message, subscriptionBuffer), gapc: make(chan struct{}, 1), done: make(chan struct{})}
	if err := s.setup(ctx); err != nil {
		s.teardown()
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(b.ctx)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		s.cancel()
		s.teardown()
		return nil, adapters.Errorf(adapters.ErrClosed, op, "broker closed")
	}
	b.subs[s] = struct{}{}
	b.wg.Add(1)
	b.mu.Unlock()
	go s.loop()
	return s, nil
}

// subscriberQueueName is PREFIX+TOPIC-sub-RANDOM, the topic part cut to
// fit SQS's 80 characters.
func (b *Broker) subscriberQueueName(topic string) string {
	suffix := "-sub-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	base := b.cfg.Prefix + topic
	if len(base)+len(suffix) > maxNameLen {
		base = base[:maxNameLen-len(suffix)]
	}
	return base + suffix
}

type subscription struct {
	b         *Broker
	topic     string
	op        string
	queueName string
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{} // closed when loop ends

	mu       sync.Mutex
	queueURL string
	subARN   string
	gap      bool
	closed   bool

	ch   chan adapters.Message
	gapc chan struct{} // signalled when gap is set, to wake a waiting Receive
}

// setup creates (or re-creates) the subscriber queue and its SNS
// subscription.
func (s *subscription) setup(ctx context.Context) error {
	b := s.b
	s.mu.Lock()
	s.subARN, s.queueURL = "", ""
	s.mu.Unlock()
	arn, err := b.topicARN(ctx, s.op, s.topic)
	if err != nil {
		return err
	}
	q, err := b.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(s.queueName),
		Attributes: map[string]string{string(types.QueueAttributeNameMessageRetentionPeriod): subscriberRetention},
		Tags:       map[string]string{"clusterbus-subscriber": s.topic}})
	if err != nil {
		return mapErr(s.op+": create subscriber queue "+s.queueName, err)
	}
	s.mu.Lock()
	s.queueURL = *q.QueueUrl
	s.mu.Unlock()
	qa, err := b.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: q.QueueUrl, AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameQueueArn}})
	if err != nil {
		return mapErr(s.op+": read subscriber queue ARN", err)
	}
	queueARN := qa.Attributes[string(types.QueueAttributeNameQueueArn)]
	policy, _ := json.Marshal(map[string]any{
		"Version": "2012-10-17",
		"Statement": []any{map[string]any{
			"Effect": "Allow", "Principal": map[string]string{"Service": "sns.amazonaws.com"},
			"Action": "sqs:SendMessage", "Resource": queueARN,
			"Condition": map[string]any{"ArnEquals": map[string]string{"aws:SourceArn": arn}},
		}},
	})
	if _, err := b.sqs.SetQueueAttributes(ctx, &sqs.SetQueueAttributesInput{QueueUrl: q.QueueUrl,
		Attributes: map[string]string{string(types.QueueAttributeNamePolicy): string(policy)}}); err != nil {
		return mapErr(s.op+": allow SNS to send to the subscriber queue", err)
	}
	sub, err := b.sns.Subscribe(ctx, &sns.SubscribeInput{TopicArn: aws.String(arn), Protocol: aws.String("sqs"),
		Endpoint: aws.String(queueARN), Attributes: map[string]string{"RawMessageDelivery": "true"}, ReturnSubscriptionArn: true})
	if err != nil {
		if code(err) == adapters.ErrNotFound {
			b.forgetTopic(s.topic)
		}
		return mapErr(s.op+": subscribe queue to SNS topic", err)
	}
	s.mu.Lock()
	s.subARN = aws.ToString(sub.SubscriptionArn)
	s.mu.Unlock()
	return nil
}

// teardown removes the SNS subscription and the subscriber queue.
func (s *subscription) teardown() error {
	ctx, cancel := s.b.opCtx()
	defer cancel()
	s.mu.Lock()
	subARN, url := s.subARN, s.queueURL
	s.mu.Unlock()
	var errs []error
	if subARN != "" {
		if _, err := s.b.sns.Unsubscribe(ctx, &sns.UnsubscribeInput{SubscriptionArn: aws.String(subARN)}); err != nil && code(err) != adapters.ErrNotFound {
			errs = append(errs, mapErr(s.op+": unsubscribe", err))
		}
	}
	if url != "" {
		if _, err := s.b.sqs.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: aws.String(url)}); err != nil && code(err) != adapters.ErrNotFound {
			errs = append(errs, mapErr(s.op+": delete subscriber queue", err))
		}
	}
	return errors.Join(errs...)
}

func (s *subscription) setGap() {
	s.mu.Lock()
	s.gap = true
	s.mu.Unlock()
	select {
	case s.gapc <- struct{}{}:
	default:
	}
}

// loop long-polls the subscriber queue, deletes what it received (topics
// are at-most-once) and hands the messages to Receive.
func (s *subscription) loop() {
	defer s.b.wg.Done()
	defer close(s.done)
	backoff := 100 * time.Millisecond
	failing := false
	for s.ctx.Err() == nil {
		s.mu.Lock()
		url := s.queueURL
		s.mu.Unlock()
		out, err := s.b.sqs.ReceiveMessage(s.ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(url), MaxNumberOfMessages: 10,
			WaitTimeSeconds: seconds(s.b.cfg.WaitTime), VisibilityTimeout: 30, MessageAttributeNames: []string{"All"}})
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			if !failing {
				s.b.log.Warn("subscription receive failed; retrying, messages may be missed", "topic", s.topic, "err", err)
			}
			failing = true
			s.setGap()
			if code(err) == adapters.ErrNotFound {
				// The queue is gone (the broker lost it, or someone deleted
				// it): make it and the subscription again.
				s.teardown() // the old SNS subscription, if the topic survived
				// A new name: SQS refuses a deleted queue's name for 60 s.
				s.queueName = s.b.subscriberQueueName(s.topic)
				ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
				err = s.setup(ctx)
				cancel()
				if err == nil {
					s.b.log.Info("subscription re-created", "topic", s.topic, "queue", s.queueName)
					continue
				}
			}
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		if failing {
			s.b.log.Info("subscription receiving again", "topic", s.topic)
		}
		failing, backoff = false, 100*time.Millisecond
		if len(out.Messages) == 0 {
			continue
		}
		es := make([]types.DeleteMessageBatchRequestEntry, 0, len(out.Messages))
		for i, m := range out.Messages {
			es = append(es, types.DeleteMessageBatchRequestEntry{Id: aws.String(fmt.Sprint(i)), ReceiptHandle: m.ReceiptHandle})
			d, err := decode(s.op, aws.ToString(m.Body), m.MessageAttributes)
			if err != nil {
				s.b.log.Warn("dropping undecodable topic message", "topic", s.topic, "err", err)
				continue
			}
			select {
			case s.ch <- d.msg:
			default:
				s.setGap()
			}
		}
		if _, err := s.b.sqs.DeleteMessageBatch(s.ctx, &sqs.DeleteMessageBatchInput{QueueUrl: aws.String(url), Entries: es}); err != nil && s.ctx.Err() == nil {
			s.b.log.Warn("deleting received topic messages failed; they may be delivered twice", "topic", s.topic, "err", err)
		}
	}
}

// Receive returns the next message, or an ErrGap error once after
// messages may have been missed (receive failures, a re-created queue, a
// full buffer).
func (s *subscription) Receive(ctx context.Context) (adapters.Message, error) {
	for {
		m, ok, err := s.receive(ctx)
		if ok {
			return m, err
		}
	}
}

// receive returns ok false when it was woken by a gap report that an
// earlier call already took.
func (s *subscription) receive(ctx context.Context) (adapters.Message, bool, error) {
	s.mu.Lock()
	closed, gap := s.closed, s.gap
	s.gap = false
	s.mu.Unlock()
	if closed {
		return adapters.Message{}, true, adapters.Errorf(adapters.ErrClosed, s.op, "subscription closed")
	}
	if gap {
		return adapters.Message{}, true, adapters.Errorf(adapters.ErrGap, s.op, "SQS receive failed, the queue was re-created or the buffer was full")
	}
	select {
	case m := <-s.ch:
		return m, true, nil
	case <-s.gapc:
		return adapters.Message{}, false, nil
	case <-ctx.Done():
		return adapters.Message{}, true, ctx.Err()
	case <-s.done:
		return adapters.Message{}, true, adapters.Errorf(adapters.ErrClosed, s.op, "subscription closed")
	}
}

// Close stops receiving and deletes the SNS subscription and the
// subscriber queue.
func (s *subscription) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	<-s.done
	s.b.mu.Lock()
	delete(s.b.subs, s)
	s.b.mu.Unlock()
	return s.teardown()
}
