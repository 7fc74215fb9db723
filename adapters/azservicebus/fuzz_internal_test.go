package azservicebus

import (
	"maps"
	"testing"

	sb "github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
)

// FuzzCodec: a message the contract accepts survives toSB and fromSB
// unchanged (an empty ID comes back as the random one toSB gave it); on
// the dead-letter queue it comes back with the reason header added and
// without the two properties Service Bus sets there; a Nack(delay) copy
// (delayedCopy) comes back as the original with the attempts so far plus
// its delivery count. Decoding any received message (forged cb-
// properties, non-string values, any delivery count) never panics and
// gives an attempt of at least 1.
func FuzzCodec(f *testing.F) {
	f.Add("id-1", "k", "x-h", "v", []byte("body"), "3", uint32(1), false)
	f.Add("", "", "", "", []byte{}, "-1", uint32(0), true)
	f.Add("i", "", "DeadLetterReason", "mine", []byte{0}, "9223372036854775807", uint32(4294967295), false)
	f.Add("i", "k", "DeadLetterErrorDescription", "", []byte("b"), "x", uint32(2), true)
	f.Fuzz(func(t *testing.T, id, key, hname, hval string, body []byte, attempts string, count uint32, dead bool) {
		if m, ok := adaptertest.FuzzMessage(id, key, hname, hval, body); ok {
			sm := toSB(m)
			if sm.MessageID == nil || *sm.MessageID == "" || (m.ID != "" && *sm.MessageID != m.ID) {
				t.Fatalf("toSB(%+v) has message ID %v", m, sm.MessageID)
			}
			want := m
			want.ID = *sm.MessageID
			rm := &sb.ReceivedMessage{MessageID: *sm.MessageID, Body: sm.Body, ApplicationProperties: sm.ApplicationProperties, DeliveryCount: 1}
			if got := fromSB(rm, false); !adaptertest.SameMessage(want, got) || attemptOf(rm) != 1 {
				t.Fatalf("round trip: %+v -> %+v (attempt %d)", want, got, attemptOf(rm))
			}

			// On the dead-letter queue, with the properties Service Bus adds.
			props := maps.Clone(sm.ApplicationProperties)
			props["DeadLetterReason"], props["DeadLetterErrorDescription"] = "why", hval
			rm = &sb.ReceivedMessage{MessageID: *sm.MessageID, Body: sm.Body, ApplicationProperties: props, DeliveryCount: 1,
				DeadLetterReason: ptr("why"), DeadLetterErrorDescription: &hval}
			want.Headers = maps.Clone(m.Headers)
			if want.Headers == nil {
				want.Headers = map[string]string{}
			}
			delete(want.Headers, "DeadLetterReason")
			delete(want.Headers, "DeadLetterErrorDescription")
			want.Headers[adapters.HeaderDeadLetterReason] = "why"
			if hval != "" {
				want.Headers[adapters.HeaderDeadLetterReason] = "why: " + hval
			}
			if got := fromSB(rm, true); !adaptertest.SameMessage(want, got) {
				t.Fatalf("dead-letter round trip: %+v -> %+v", want, got)
			}

			// A Nack(delay) copy after n attempts, delivered once.
			n := int(count >> 1)
			cp := delayedCopy(m, n)
			if cp.MessageID == nil || *cp.MessageID == "" || *cp.MessageID == m.ID {
				t.Fatalf("delayed copy of %q has message ID %v", m.ID, cp.MessageID)
			}
			rm = &sb.ReceivedMessage{MessageID: *cp.MessageID, Body: cp.Body, ApplicationProperties: cp.ApplicationProperties, DeliveryCount: 1}
			if got := fromSB(rm, false); !adaptertest.SameMessage(m, got) || attemptOf(rm) != max(n, 0)+1 {
				t.Fatalf("delayed copy after %d attempts: %+v -> %+v (attempt %d)", n, m, got, attemptOf(rm))
			}
		}
		rm := &sb.ReceivedMessage{
			MessageID: id, Body: body, DeliveryCount: count, DeadLetterReason: &hval, DeadLetterErrorDescription: &attempts,
			ApplicationProperties: map[string]any{hname: hval, propKey: key, propAttempts: attempts, propID: 5, "nil": nil, "bin": body},
		}
		_ = fromSB(rm, dead)
		if a := attemptOf(rm); a < 1 {
			t.Fatalf("attempt %d from %s=%q and delivery count %d", a, propAttempts, attempts, count)
		}
		rm.ApplicationProperties[propID] = id
		rm.ApplicationProperties[propKey] = []byte(key)
		rm.ApplicationProperties[propAttempts] = count
		_ = fromSB(rm, dead)
		if a := attemptOf(rm); a < 1 {
			t.Fatalf("attempt %d from a non-string %s and delivery count %d", a, propAttempts, count)
		}
	})
}
