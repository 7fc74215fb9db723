package bus

import (
	"sort"
	"time"
)

// This file keeps what an operator looks at beyond membership itself: the
// history of lead terms, the last run of each lead duty, the per-state
// member gauge and the one log line per lead change. Nothing here decides
// anything.

// TermChange is one lead term as this node saw it begin.
type TermChange struct {
	Term  uint64    `json:"term"`
	Lead  string    `json:"lead"`
	Host  string    `json:"host,omitempty"`
	Since time.Time `json:"since"` // local clock, when this node first heard of it
}

// DutyRun is the last run of a lead duty.
type DutyRun struct {
	Node     string        `json:"node"`
	Term     uint64        `json:"term"`
	At       time.Time     `json:"at"` // when it ended, the runner's clock
	Duration time.Duration `json:"dur"`
	Outcome  string        `json:"outcome"` // "ok", "failed", "interrupted"
	Error    string        `json:"error,omitempty"`
}

// DutyStatus is one registered lead duty.
type DutyStatus struct {
	Name     string   `json:"name"`
	Schedule string   `json:"schedule"` // "every 1m", or "" for once per lead term
	LastRun  *DutyRun `json:"last_run,omitempty"`
	// NextSlot is when the next slot of a scheduled duty begins (zero for
	// a once-per-term duty).
	NextSlot time.Time `json:"next_slot,omitzero"`
}

// Bounds on what a peer's heartbeat may make this node remember.
const (
	maxTermHistory  = 32
	maxDutyRuns     = 64
	maxObservedText = 300
)

type observed struct {
	terms []TermChange
	runs  map[string]DutyRun
}

// recordTermLocked notes that lead holds term (if it is newer than the
// last one noted).
func (n *Node) recordTermLocked(term uint64, lead, host string, now time.Time) {
	if k := len(n.obs.terms); k > 0 && n.obs.terms[k-1].Term >= term {
		return
	}
	n.obs.terms = append(n.obs.terms, TermChange{Term: term, Lead: lead, Host: clip(host), Since: now})
	if len(n.obs.terms) > maxTermHistory {
		n.obs.terms = n.obs.terms[len(n.obs.terms)-maxTermHistory:]
	}
}

// observeHeartbeatLocked takes the term and duty runs a member reports.
func (n *Node) observeHeartbeatLocked(hb heartbeat, now time.Time) {
	if hb.LeadTerm > 0 {
		n.recordTermLocked(hb.LeadTerm, hb.ID, hb.Host, now)
	}
	for name, r := range hb.Runs {
		n.noteDutyRunLocked(name, r)
	}
}

// observeSelfLocked adds this node's HTTP address, reason and duty runs to
// its heartbeat.
func (n *Node) observeSelfLocked(hb *heartbeat) {
	hb.HTTP, hb.Reason = n.cfg.HTTPAddr, clip(n.reason)
	for name, r := range n.obs.runs {
		if r.Node != n.cfg.NodeID {
			continue // only what this node ran
		}
		if hb.Runs == nil {
			hb.Runs = map[string]DutyRun{}
		}
		hb.Runs[name] = r
	}
}

func (n *Node) noteDutyRunLocked(name string, r DutyRun) {
	if n.obs.runs == nil {
		n.obs.runs = map[string]DutyRun{}
	}
	if old, ok := n.obs.runs[name]; ok && !r.At.After(old.At) {
		return
	}
	if _, ok := n.obs.runs[name]; !ok && len(n.obs.runs) >= maxDutyRuns {
		return
	}
	r.Node, r.Outcome, r.Error = clip(r.Node), clip(r.Outcome), clip(r.Error)
	n.obs.runs[name] = r
}

// recordDutyRun notes a run of duty name that this node made.
func (n *Node) recordDutyRun(name string, term uint64, began time.Time, err error, interrupted bool) {
	now := n.clock.Now()
	r := DutyRun{Node: n.cfg.NodeID, Term: term, At: now, Duration: now.Sub(began), Outcome: "ok"}
	switch {
	case interrupted:
		r.Outcome = "interrupted"
	case err != nil:
		r.Outcome, r.Error = "failed", err.Error()
	}
	n.mu.Lock()
	n.noteDutyRunLocked(name, r)
	n.mu.Unlock()
}

// updateMembersMetricLocked sets clusterbus_members{state} and
// clusterbus_broker_connected.
func (n *Node) updateMembersMetricLocked(now time.Time) {
	count := map[string]int{n.state: 1}
	for _, m := range n.ms.members {
		if m.dead {
			count[StateUnreachable]++
		} else {
			count[m.hb.State]++
		}
	}
	for _, st := range memberStates {
		n.m.members.WithLabelValues(st).Set(float64(count[st]))
	}
	conn, _ := n.connectedLocked(now)
	n.m.brokerConnected.Set(b2f(conn))
}

// logLeadChangeLocked writes the one line a lead change gets.
func (n *Node) logLeadChangeLocked(prev string) {
	attrs := []any{"lead", n.lead, "previous", prev}
	switch {
	case n.leading:
		attrs = append(attrs, "term", n.term, "local", "gained")
	case prev == n.cfg.NodeID:
		attrs = append(attrs, "term_lost", n.term, "local", "lost", "state", n.state)
	default:
		if m := n.ms.members[n.lead]; m != nil && m.hb.LeadTerm > 0 {
			attrs = append(attrs, "term", m.hb.LeadTerm)
		}
	}
	if n.lead == "" {
		attrs = append(attrs, "reason", n.reason)
	}
	n.log.Info("lead changed", attrs...)
}

// Terms returns the lead terms this node has seen begin, oldest first
// (at most 32).
func (n *Node) Terms() []TermChange {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]TermChange(nil), n.obs.terms...)
}

// Duties returns the registered lead duties with their last run (as far
// as this node has heard) and next slot, by name.
func (n *Node) Duties() []DutyStatus {
	now := n.clock.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]DutyStatus, 0, len(n.duties))
	for name, d := range n.duties {
		ds := DutyStatus{Name: name}
		if d.every > 0 {
			ds.Schedule = "every " + d.every.String()
			ds.NextSlot = time.Unix(0, (DutySlot(now, d.every)+1)*int64(d.every))
		}
		if r, ok := n.obs.runs[name]; ok {
			ds.LastRun = &r
		}
		out = append(out, ds)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func clip(s string) string {
	if len(s) > maxObservedText {
		return s[:maxObservedText] + "…"
	}
	return s
}
