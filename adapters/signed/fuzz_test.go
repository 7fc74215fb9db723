package signed

import (
	"bytes"
	"maps"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

var fuzzKey = []byte("fuzz-key-0123456789abcdef")

// FuzzEnvelope: decoding any bytes never panics; what decodes re-encodes
// to an envelope that decodes to the same fields; a receiver never accepts
// an envelope whose MAC no key made.
func FuzzEnvelope(f *testing.F) {
	valid, _ := encode(fuzzKey, &envelope{Kind: kindTopic, Cluster: "c", Destination: "t", Sender: "n1",
		Incarnation: 1, Seq: 1, Sent: time.Now().UnixNano(), ID: "id", Key: "k",
		Headers: map[string]string{"a": "1", "b": ""}, Body: []byte(`{"x":1}`)})
	f.Add(valid)
	f.Add([]byte("CBS1"))
	f.Add([]byte(`{"id":"a","inc":"x"}`))
	f.Add(valid[:len(valid)-3])
	ring, _ := NewKeyRing(fuzzKey)
	b, err := Wrap(mem.New(), Config{Cluster: "c", Sender: "me", Keys: ring, MaxAge: 100 * 365 * 24 * time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := decode(data)
		if err != nil {
			return
		}
		if len(e.Body) > len(data) {
			t.Fatalf("body of %d bytes from %d", len(e.Body), len(data))
		}
		again, err := encode(fuzzKey, e)
		if err != nil {
			return // fields that do not fit (cannot come from decode, but encode checks)
		}
		e2, err := decode(again)
		if err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v", err)
		}
		if e2.Kind != e.Kind || e2.Cluster != e.Cluster || e2.Destination != e.Destination || e2.Sender != e.Sender ||
			e2.Incarnation != e.Incarnation || e2.Seq != e.Seq || e2.Sent != e.Sent || e2.ID != e.ID || e2.Key != e.Key ||
			!bytes.Equal(e2.Body, e.Body) || !maps.Equal(e2.Headers, e.Headers) {
			t.Fatalf("round trip changed the envelope: %+v / %+v", e, e2)
		}
		if !e2.verify([][]byte{fuzzKey}) {
			t.Fatal("a freshly signed envelope does not verify")
		}
		if _, rej := b.open(kindTopic, "t", adapters.Message{Body: data}); rej.Reason == "" && !e.verify([][]byte{fuzzKey}) {
			t.Fatal("accepted an envelope no key signed")
		}
	})
}
