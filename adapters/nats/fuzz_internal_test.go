package nats

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/clusterbus/clusterbus/adapters"
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

// FuzzHasPrefixFold: hasPrefixFold agrees with strings.HasPrefix on
// strings.ToLower for the prefixes the codec uses, whatever the header.
func FuzzHasPrefixFold(f *testing.F) {
	for _, s := range []string{"Nats-Msg-Id", "NATS", "nat", "CB-id", "cB-", "Ǌats", "\u212aats", "İnats", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, p := range []string{"nats", adapters.ReservedHeaderPrefix} {
			if got, want := hasPrefixFold(s, p), strings.HasPrefix(strings.ToLower(s), p); got != want {
				t.Fatalf("hasPrefixFold(%q, %q) = %v, want %v", s, p, got, want)
			}
		}
	})
}
