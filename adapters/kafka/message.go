package kafka

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// Record headers the adapter writes. They start with the reserved prefix, so
// no application header can clash with them.
const (
	hdrID        = "cb-id"        // Message.ID
	hdrAttempt   = "cb-attempt"   // the attempt number of the next delivery; absent means 1
	hdrDue       = "cb-due"       // retry topic: Unix milliseconds before which the item must not return
	hdrTarget    = "cb-target"    // retry topic: "q" (main topic) or "d" (dead-letter topic)
	hdrPartition = "cb-partition" // the partition a re-queued copy must go to (see balancer)
)

// encode turns m into a Kafka record for topic. extra headers are appended
// after the application's.
func encode(topic string, m adapters.Message, extra ...kafkago.Header) kafkago.Message {
	km := kafkago.Message{Topic: topic, Value: m.Body}
	if m.Key != "" {
		km.Key = []byte(m.Key)
	}
	km.Headers = make([]kafkago.Header, 0, len(m.Headers)+1+len(extra))
	km.Headers = append(km.Headers, kafkago.Header{Key: hdrID, Value: []byte(m.ID)})
	for k, v := range m.Headers {
		km.Headers = append(km.Headers, kafkago.Header{Key: k, Value: []byte(v)})
	}
	km.Headers = append(km.Headers, extra...)
	return km
}

// decode turns a record back into the Message as enqueued. The adapter's
// own headers are removed, except HeaderDeadLetterReason. It returns the
// attempt number of this delivery and the raw internal headers.
func decode(km kafkago.Message) (m adapters.Message, attempt int, internal map[string]string) {
	m.Key = string(km.Key)
	m.Body = km.Value
	if m.Body == nil {
		m.Body = []byte{}
	}
	attempt = 1
	for _, h := range km.Headers {
		if strings.HasPrefix(h.Key, adapters.ReservedHeaderPrefix) && h.Key != adapters.HeaderDeadLetterReason {
			if internal == nil {
				internal = map[string]string{}
			}
			internal[h.Key] = string(h.Value)
			continue
		}
		if m.Headers == nil {
			m.Headers = map[string]string{}
		}
		m.Headers[h.Key] = string(h.Value)
	}
	m.ID = internal[hdrID]
	if n, err := strconv.Atoi(internal[hdrAttempt]); err == nil && n > 0 {
		attempt = n
	}
	return m, attempt, internal
}

// requeue copies a received record for topic: same key, value and
// application headers, the adapter's attempt/due/target/reason headers
// replaced by set.
func requeue(topic string, km kafkago.Message, set ...kafkago.Header) kafkago.Message {
	out := kafkago.Message{Topic: topic, Key: km.Key, Value: km.Value}
	out.Headers = make([]kafkago.Header, 0, len(km.Headers)+len(set))
	for _, h := range km.Headers {
		switch h.Key {
		case hdrAttempt, hdrDue, hdrTarget, hdrPartition:
			continue
		case adapters.HeaderDeadLetterReason:
			if hasHeader(set, h.Key) {
				continue
			}
		}
		out.Headers = append(out.Headers, h)
	}
	out.Headers = append(out.Headers, set...)
	return out
}

func hasHeader(hs []kafkago.Header, key string) bool {
	for _, h := range hs {
		if h.Key == key {
			return true
		}
	}
	return false
}

func header(key, value string) kafkago.Header { return kafkago.Header{Key: key, Value: []byte(value)} }

func attemptHeader(n int) kafkago.Header { return header(hdrAttempt, strconv.Itoa(n)) }

func dueHeader(t time.Time) kafkago.Header {
	return header(hdrDue, strconv.FormatInt(t.UnixMilli(), 10))
}

func headerValue(km kafkago.Message, key string) string {
	for _, h := range km.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func newID() string { return uuid.NewString() }

// balancer places records by key (kafka-go's Hash), except re-queued copies
// that name their partition in hdrPartition.
type balancer struct{ hash kafkago.Hash }

func (b *balancer) Balance(km kafkago.Message, partitions ...int) int {
	if v := headerValue(km, hdrPartition); v != "" {
		if p, err := strconv.Atoi(v); err == nil && slices.Contains(partitions, p) {
			return p
		}
	}
	return b.hash.Balance(km, partitions...)
}
