package kafka

import (
	"testing"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/clusterbus/clusterbus/adapters/adaptertest"
)

// FuzzCodec: a message the contract accepts survives encode and decode
// unchanged; decoding any record never panics.
func FuzzCodec(f *testing.F) {
	f.Add("id-1", "k", "x-h", "v", []byte("body"), "cb-attempt", "7")
	f.Add("", "", "", "", []byte{}, "cb-attempt", "-1")
	f.Fuzz(func(t *testing.T, id, key, hname, hval string, body []byte, rawName, rawVal string) {
		m, ok := adaptertest.FuzzMessage(id, key, hname, hval, body)
		if ok {
			got, attempt, _ := decode(encode("t", m))
			if !adaptertest.SameMessage(m, got) || attempt != 1 {
				t.Fatalf("round trip: %+v -> %+v (attempt %d)", m, got, attempt)
			}
		}
		km := kafkago.Message{Key: []byte(key), Value: body, Headers: []kafkago.Header{{Key: rawName, Value: []byte(rawVal)}, {Key: hname, Value: []byte(hval)}}}
		if _, attempt, _ := decode(km); attempt < 1 {
			t.Fatalf("attempt %d from headers %q=%q", attempt, rawName, rawVal)
		}
	})
}
