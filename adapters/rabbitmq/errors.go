package rabbitmq

import (
	"errors"
	"fmt"
	"regexp"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// mapErr turns an amqp091-go error into an adapters error for op.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, adapters.ErrClosed) {
		return adapters.Wrap(adapters.ErrClosed, op, err)
	}
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp.NotFound:
			return adapters.Wrap(adapters.ErrNotFound, op, err)
		case amqp.PreconditionFailed:
			return adapters.Wrap(adapters.ErrInvalidArgument, op, err)
		case amqp.AccessRefused, amqp.NotAllowed:
			return adapters.Wrap(adapters.ErrInvalidArgument, op, fmt.Errorf("access refused (check user, password, vhost and permissions): %w", err))
		case amqp.FrameError:
			return adapters.Wrap(adapters.ErrTooLarge, op, err)
		}
	}
	return adapters.Wrap(adapters.ErrUnavailable, op, err)
}

func isCode(err error, code int) bool {
	var ae *amqp.Error
	return errors.As(err, &ae) && ae.Code == code
}

var inequivalentRE = regexp.MustCompile(`inequivalent arg '([^']+)'`)

// argHints say which QueueConfig field, or what else, a queue argument
// comes from, for errors about redeclaring a queue.
var argHints = map[string]string{
	"x-delivery-limit":          "QueueConfig.MaxAttempts (x-delivery-limit = MaxAttempts-1)",
	"x-queue-type":              "the queue type (the adapter declares quorum queues)",
	"x-dead-letter-exchange":    "dead-letter routing (the adapter dead-letters through the default exchange)",
	"x-dead-letter-routing-key": "dead-letter routing (the adapter routes to the queue's .dlq)",
	"x-dead-letter-strategy":    upgradeHint,
	"x-overflow":                upgradeHint,
	"x-message-ttl":             "the delay queue's delay",
	"x-expires":                 "the delay queue's expiry",
	"x-max-length":              "the config queue's length",
}

// upgradeHint explains the arguments of at-least-once dead-lettering, which
// queues declared by earlier versions of the adapter (or by hand) lack.
const upgradeHint = "at-least-once dead-lettering (the adapter declares x-dead-letter-strategy=at-least-once with x-overflow=reject-publish; queues declared by earlier versions of the adapter lack both)"

// redeclareErr explains a 406 PRECONDITION_FAILED from a queue declare.
func redeclareErr(op, queue string, err error) error {
	if !isCode(err, amqp.PreconditionFailed) {
		return mapErr(op, err)
	}
	if m := inequivalentRE.FindStringSubmatch(err.Error()); m != nil {
		hint := argHints[m[1]]
		if hint == "" {
			hint = "an argument this adapter does not set"
		}
		return adapters.Wrap(adapters.ErrInvalidArgument, op, fmt.Errorf(
			"queue %q exists with another value of argument %s, from %s; RabbitMQ cannot change it in place: drain and delete the queue, or use a new queue name (or declare it as it was): %w",
			queue, m[1], hint, err))
	}
	return adapters.Wrap(adapters.ErrInvalidArgument, op, fmt.Errorf(
		"queue %q exists with other arguments or properties than this QueueConfig derives; RabbitMQ cannot change them in place: drain and delete the queue, or use a new queue name: %w", queue, err))
}
