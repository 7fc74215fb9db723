package bus

import (
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

// FuzzHandle: any message on the cluster topic (heartbeat, leave,
// cache-clear or anything else, with any body) is handled without a panic,
// and a message naming another cluster changes nothing.
func FuzzHandle(f *testing.F) {
	hb, _ := encode(kindHeartbeat, "fz", "b", heartbeat{ID: "b", Inc: "i1", Seq: 1, State: StateActive, Term: 3,
		Duties: map[string]int64{"d": 5}})
	inv, _ := encode(kindInvalidate, "fz", "b", invalidation{ID: "b", Inc: "i1", CSeq: 2, Region: "r", Keys: []string{"k"}})
	f.Add(kindHeartbeat, "b", "fz", hb.Body)
	f.Add(kindLeave, "b", "fz", hb.Body)
	f.Add(kindInvalidate, "b", "fz", inv.Body)
	f.Add(kindHeartbeat, "a", "fz", []byte(`{"id":"a","inc":"x","seq":18446744073709551615,"term":18446744073709551615}`))
	f.Add("duty", "b", "other", []byte(`null`))
	cfg := testConfig("fz")
	cfg.NodeID = "a"
	f.Fuzz(func(t *testing.T, kind, node, cluster string, body []byte) {
		n, err := New(mem.New(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		n.handle(adapters.Message{Headers: map[string]string{hdrKind: kind, hdrNode: node, hdrCluster: cluster}, Body: body})
		if cluster != "fz" && len(n.Status().Members) != 1 {
			t.Fatalf("a message of cluster %q added a member", cluster)
		}
	})
}
