package rabbitmq

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// Headers the adapter sets itself.
const (
	headerKey      = "cb-key"      // Message.Key
	headerAttempts = "cb-attempts" // deliveries before a delayed nack
)

// HeaderDeadLetterAttempts is set on items the adapter dead-letters: the
// attempt that was dead-lettered.
const HeaderDeadLetterAttempts = "cb-dead-letter-attempts"

// headerUserX prefixes an application header that starts with "x-" (a
// fuzz test found such headers dropped on receipt: fromDelivery skips x-
// headers, which RabbitMQ sets itself).
const headerUserX = "cb-user-"

// toPublishing encodes m. Queue items are persistent.
func toPublishing(m adapters.Message, persistent bool) amqp.Publishing {
	h := amqp.Table{}
	for k, v := range m.Headers {
		if strings.HasPrefix(k, "x-") {
			// RabbitMQ owns x- headers (x-death, x-delivery-count...):
			// carry the application's under a name of the adapter's.
			k = headerUserX + k
		}
		h[k] = v
	}
	if m.Key != "" {
		h[headerKey] = m.Key
	}
	p := amqp.Publishing{
		Headers:   h,
		MessageId: m.ID,
		Timestamp: time.Now(),
		Body:      m.Body,
	}
	if persistent {
		p.DeliveryMode = amqp.Persistent
	}
	return p
}

// fromDelivery decodes a delivery: user headers (string values, no x-
// headers, none of the adapter's bookkeeping except the dead-letter reason).
func fromDelivery(d *amqp.Delivery) adapters.Message {
	m := adapters.Message{ID: d.MessageId, Body: d.Body}
	if m.Body == nil {
		m.Body = []byte{}
	}
	for k, v := range d.Headers {
		s, ok := v.(string)
		switch {
		case k == headerKey:
			m.Key = s
		case ok && strings.HasPrefix(k, headerUserX+"x-"):
			if m.Headers == nil {
				m.Headers = map[string]string{}
			}
			m.Headers[k[len(headerUserX):]] = s
		case !ok, strings.HasPrefix(k, "x-"), k == headerAttempts:
		default:
			if m.Headers == nil {
				m.Headers = map[string]string{}
			}
			m.Headers[k] = s
		}
	}
	return m
}

// intHeader reads an integer header of any AMQP integer type.
func intHeader(h amqp.Table, name string) int {
	switch v := h[name].(type) {
	case int:
		return v
	case int8:
		return int(v)
	case int16:
		return int(v)
	case int32:
		return int(v)
	case int64:
		return int(v)
	case uint8:
		return int(v)
	case uint16:
		return int(v)
	case uint32:
		return int(v)
	case string:
		n, _ := strconv.Atoi(v)
		return n
	}
	return 0
}

// deadLetterReason is the reason of an item RabbitMQ dead-lettered by
// itself (delivery limit, expiry), from its x-death headers. The newest
// death comes first in x-death; x-first-death-reason is the oldest, which
// for an item that went through a delay queue is that queue's "expired".
func deadLetterReason(h amqp.Table, maxAttempts int) string {
	r := ""
	if deaths, ok := h["x-death"].([]interface{}); ok && len(deaths) > 0 {
		if last, ok := deaths[0].(amqp.Table); ok {
			r, _ = last["reason"].(string)
		}
	}
	if r == "" {
		r, _ = h["x-first-death-reason"].(string)
	}
	switch r {
	case "":
		return ""
	case "delivery_limit":
		return fmt.Sprintf("max attempts (%d) exceeded: RabbitMQ delivery limit reached", maxAttempts)
	default:
		return "dead-lettered by RabbitMQ: " + r
	}
}

func newID() string { return uuid.NewString() }
