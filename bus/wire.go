package bus

import (
	"encoding/json"
	"fmt"

	"github.com/clusterbus/clusterbus/adapters"
)

// Message kinds on the cluster topic.
const (
	kindHeartbeat  = "hb"
	kindLeave      = "leave"
	kindInvalidate = "inv"
)

// Header names. They carry what a receiver needs before it decodes the
// body. Authentication is the broker's job (adapters/signed wraps it when
// the cluster has a key): a message that reaches the node has passed it.
const (
	hdrKind    = "clusterbus.kind"
	hdrCluster = "clusterbus.cluster"
	hdrNode    = "clusterbus.node"
)

// heartbeat is the body of a heartbeat or leave message.
type heartbeat struct {
	ID      string `json:"id"`
	Inc     string `json:"inc"` // incarnation: random per process
	Host    string `json:"host,omitempty"`
	IP      string `json:"ip,omitempty"`
	Start   int64  `json:"start"` // unix ns, sender's clock
	Version string `json:"ver,omitempty"`
	State   string `json:"state"`
	Seq     uint64 `json:"seq"`
	Sent    int64  `json:"sent"` // unix ns, sender's clock
	// Term is the highest lead term the sender knows of; LeadTerm is the
	// term it holds while it is the lead (0 otherwise); Lead is who it
	// thinks the lead is.
	Term     uint64 `json:"term"`
	LeadTerm uint64 `json:"lterm,omitempty"`
	Lead     string `json:"lead,omitempty"`
	// CSeq is the sequence number of the last cache invalidation the
	// sender has published.
	CSeq uint64 `json:"cseq"`
	// Duties maps scheduled duties to the last slot known done.
	Duties map[string]int64 `json:"duties,omitempty"`
	// Down lists the incarnations the sender has downed (removed while
	// unreachable); a node that finds its own here rejoins as a new one.
	Down []string `json:"down,omitempty"`
	// HTTP is the sender's HTTP address (Config.HTTPAddr); Reason says
	// why it is in State; Runs are the last runs of the duties it ran as
	// the lead. For the status page only: nothing decides on them.
	HTTP   string             `json:"http,omitempty"`
	Reason string             `json:"rsn,omitempty"`
	Runs   map[string]DutyRun `json:"runs,omitempty"`
	// Probe is the sender's last queue probe: probeReportOK,
	// probeReportFailing, or empty while it has no probe or no answer yet.
	// A node whose own probe fails fences only if some member's passes
	// (probe.go).
	Probe string `json:"probe,omitempty"`
}

// invalidation is the body of a cache-clear message.
type invalidation struct {
	ID     string   `json:"id"`
	Inc    string   `json:"inc"`
	CSeq   uint64   `json:"cseq"`
	Region string   `json:"region"`
	Keys   []string `json:"keys,omitempty"`
	Sent   int64    `json:"sent"`
}

// encode builds the message for kind with body v.
func encode(kind, cluster, node string, v any) (adapters.Message, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return adapters.Message{}, fmt.Errorf("bus: encode %s: %w", kind, err)
	}
	h := map[string]string{hdrKind: kind, hdrCluster: cluster, hdrNode: node}
	return adapters.Message{Headers: h, Body: body}, nil
}

// Reasons a message is rejected; they label the rejected counter.
const (
	rejectMalformed = "malformed"
	rejectForeign   = "foreign-cluster"
	rejectStale     = "stale"
	rejectDeparted  = "departed" // from an incarnation that left or was downed
)

// checkHeaders checks the headers. It returns the kind and node, or a
// reject reason.
func checkHeaders(cluster string, m adapters.Message) (kind, node, reject string) {
	kind, node = m.Headers[hdrKind], m.Headers[hdrNode]
	if kind == "" || node == "" {
		return "", "", rejectMalformed
	}
	if m.Headers[hdrCluster] != cluster {
		return "", "", rejectForeign
	}
	return kind, node, ""
}
