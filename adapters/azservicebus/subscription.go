package azservicebus

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	sb "github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"

	"github.com/clusterbus/clusterbus/adapters"
)

// subscription is one subscriber's own Service Bus subscription on a topic,
// read in receive-and-delete mode.
type subscription struct {
	b     *Broker
	topic string
	name  string

	mu  sync.Mutex // one Receive at a time; guards rcv and buf
	rcv *sb.Receiver
	buf []*sb.ReceivedMessage

	closeOnce sync.Once
	done      chan struct{}
}

// create makes the Service Bus subscription and its receiver.
func (s *subscription) create(ctx context.Context) error {
	op := fmt.Sprintf("azservicebus: subscribe %q", s.topic)
	_, err := s.b.admin.CreateSubscription(ctx, s.topic, s.name, &admin.CreateSubscriptionOptions{
		Properties: &admin.SubscriptionProperties{
			AutoDeleteOnIdle:                 ptr(isoDuration(s.b.cfg.SubscriptionIdle)),
			DeadLetteringOnMessageExpiration: ptr(false),
		},
	})
	if err != nil && !isStatus(err, http.StatusConflict) {
		return mapErr(op, err)
	}
	rcv, err := s.b.client.NewReceiverForSubscription(s.topic, s.name, &sb.ReceiverOptions{ReceiveMode: sb.ReceiveModeReceiveAndDelete})
	if err != nil {
		return mapErr(op, err)
	}
	s.rcv = rcv
	return nil
}

func (s *subscription) isClosed() bool {
	select {
	case <-s.done:
		return true
	case <-s.b.done:
		return true
	default:
		return false
	}
}

// Receive returns the next message. After a fault that the SDK recovered
// from (ReceiveMessages returning nothing and no error), after a transient
// error, and after the subscription had to be made again (it was deleted:
// auto-delete on idle, or a restarted test server) it returns ErrGap once.
func (s *subscription) Receive(ctx context.Context) (adapters.Message, error) {
	op := fmt.Sprintf("azservicebus: receive topic %q", s.topic)
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.isClosed() {
			return adapters.Message{}, adapters.Errorf(adapters.ErrClosed, op, "subscription is closed")
		}
		if err := ctx.Err(); err != nil {
			return adapters.Message{}, err
		}
		if len(s.buf) > 0 {
			rm := s.buf[0]
			s.buf = s.buf[1:]
			return fromSB(rm, false), nil
		}
		rctx, cancel := context.WithCancel(ctx)
		stop := make(chan struct{})
		go func() {
			select {
			case <-s.done:
			case <-s.b.done:
			case <-stop:
			}
			cancel()
		}()
		msgs, err := s.rcv.ReceiveMessages(rctx, 64, &sb.ReceiveMessagesOptions{TimeAfterFirstMessage: time.Millisecond})
		close(stop)
		cancel()
		if s.isClosed() {
			return adapters.Message{}, adapters.Errorf(adapters.ErrClosed, op, "subscription is closed")
		}
		if ctx.Err() != nil {
			return adapters.Message{}, ctx.Err()
		}
		if len(msgs) > 0 {
			s.buf = msgs
			continue
		}
		cause := "the connection recovered from a fault"
		if err != nil {
			err = mapErrCtx(ctx, op, err)
			switch {
			case errors.Is(err, adapters.ErrNotFound):
				// The subscription (or topic) is gone: make it again.
				s.b.forgetTopic(s.topic)
				if rerr := s.recreate(ctx, op); rerr != nil {
					return adapters.Message{}, rerr
				}
				cause = "the subscription was deleted and made again"
			case adapters.IsRetryable(err):
				cause = err.Error()
			default:
				return adapters.Message{}, err
			}
		}
		select {
		case <-ctx.Done():
			return adapters.Message{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		return adapters.Message{}, adapters.Errorf(adapters.ErrGap, op, "%s", cause)
	}
}

func (s *subscription) recreate(ctx context.Context, op string) error {
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = s.rcv.Close(cctx)
	cancel()
	if err := s.b.ensureTopic(ctx, op, s.topic); err != nil {
		return err
	}
	return s.create(ctx)
}

// Close closes the receiver and deletes the Service Bus subscription.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.mu.Lock()
		defer s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.rcv.Close(ctx)
		s.deleteRemote()
		s.b.drop(nil, s)
	})
	return nil
}

func (s *subscription) deleteRemote() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.b.admin.DeleteSubscription(ctx, s.topic, s.name, nil); err != nil && !isStatus(err, http.StatusNotFound) {
		s.b.log.Warn("deleting the subscription failed; Service Bus deletes it when idle", "topic", s.topic, "subscription", s.name, "err", err)
	}
}
