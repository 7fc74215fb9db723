package rabbitmq

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters/adaptertest"
)

// FuzzCodec: a message the contract accepts survives toPublishing and
// fromDelivery unchanged; decoding any headers never panics.
func FuzzCodec(f *testing.F) {
	f.Add("id-1", "k", "x-h", "v", []byte("body"), int64(3))
	f.Add("", "", "x-death", "", []byte{}, int64(-1))
	f.Fuzz(func(t *testing.T, id, key, hname, hval string, body []byte, n int64) {
		m, ok := adaptertest.FuzzMessage(id, key, hname, hval, body)
		if ok {
			p := toPublishing(m, true)
			d := &amqp.Delivery{MessageId: p.MessageId, Headers: p.Headers, Body: p.Body}
			if got := fromDelivery(d); !adaptertest.SameMessage(m, got) {
				t.Fatalf("round trip: %+v -> %+v", m, got)
			}
		}
		d := &amqp.Delivery{MessageId: id, Body: body, Headers: amqp.Table{hname: hval, headerKey: n, headerAttempts: hval}}
		_ = fromDelivery(d)
		_ = intHeader(d.Headers, headerKey)
	})
}
