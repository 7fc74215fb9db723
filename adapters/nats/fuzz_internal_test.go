package nats

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/clusterbus/clusterbus/adapters/adaptertest"
)

// FuzzCodec: a message the contract accepts survives encode and decode
// unchanged; decoding any headers never panics.
func FuzzCodec(f *testing.F) {
	f.Add("id-1", "k", "x-h", " leading space", []byte("body"))
	f.Add("", "", "Nats-Msg-Id", "~tilde", []byte{})
	f.Add("i", "", "cb-dead-letter-reason", "r", []byte{0, 1})
	f.Fuzz(func(t *testing.T, id, key, hname, hval string, body []byte) {
		m, ok := adaptertest.FuzzMessage(id, key, hname, hval, body)
		if ok {
			if got := decode(encode("s", m), false); !adaptertest.SameMessage(m, got) {
				t.Fatalf("round trip: %+v -> %+v", m, got)
			}
		}
		raw := nats.NewMsg("s")
		raw.Header[hname] = []string{hval}
		raw.Header[hdrID] = []string{id}
		raw.Data = body
		_ = decode(raw, true)
	})
}
