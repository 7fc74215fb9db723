package bus

import "fmt"

// candidate is one member as the election sees it: a plain value, so the
// split-brain verdict and the lead are pure functions of a snapshot.
type candidate struct {
	ID    string
	Start int64  // unix ns; the oldest (then the smallest ID) leads
	State string // as last heard (this node's own: as just computed)
	// Live: heard within the failure timeout (and more than once).
	Live bool
	// Counted: has been active at least once, so it counts toward a
	// quorum; members that never got that far do not.
	Counted bool
	// WaitFenced: fenced for less than one failure timeout; an older
	// member in that state holds the lead back (it is likely coming back
	// from the same outage), one fenced for longer does not.
	WaitFenced bool
}

func (c candidate) key() memberKey { return memberKey{c.Start, c.ID} }

// snapshot is what the election decides on: this node and the members it
// knows, under a split-brain policy.
type snapshot struct {
	Self    candidate
	Members []candidate
	Policy  SplitBrain
	Quorum  int
}

// standing is the split-brain verdict for this node: may its side serve?
// Known members are those not in panic that have been active or are live
// now (a member that died while starting counts toward nothing); this
// node always counts, as live.
func (s snapshot) standing() (bool, string) {
	live, known := 1, 1
	oldestKnown, oldestLive := s.Self.key(), true
	for _, m := range s.Members {
		if !(m.Counted || m.Live) || m.State == StatePanic {
			continue
		}
		known++
		if m.Live {
			live++
		}
		if m.key().less(oldestKnown) {
			oldestKnown, oldestLive = m.key(), m.Live
		}
	}
	switch s.Policy {
	case KeepMajority:
		if 2*live > known || (2*live == known && oldestLive) {
			return true, ""
		}
		return false, fmt.Sprintf("split-brain: sees %d of %d known members, not a majority (keep-majority); waits to hear the others again", live, known)
	case KeepOldest:
		if oldestLive {
			return true, ""
		}
		return false, fmt.Sprintf("split-brain: the oldest known member %s is not reachable (keep-oldest); waits to hear it again", oldestKnown.id)
	case StaticQuorum:
		if live >= s.Quorum {
			return true, ""
		}
		return false, fmt.Sprintf("split-brain: sees %d live members, quorum is %d (static-quorum)", live, s.Quorum)
	}
	return true, ""
}

// lead is the lead as this node sees it: the oldest live member that is
// active, starting, or fenced for less than one failure timeout (this node
// included if active or starting). If that member is not active yet there
// is no lead until it is: nodes that finish their warm-up together do not
// all claim the lead, and after an outage a younger node does not lead for
// a moment only to hand over to the oldest.
func (s snapshot) lead() string {
	var best candidate
	found := false
	consider := func(c candidate) {
		if !found || c.key().less(best.key()) {
			best, found = c, true
		}
	}
	if s.Self.State == StateActive || s.Self.State == StateStarting {
		consider(s.Self)
	}
	for _, m := range s.Members {
		if !m.Live {
			continue
		}
		if m.State == StateActive || m.State == StateStarting || (m.State == StateFenced && m.WaitFenced) {
			consider(m)
		}
	}
	if !found || best.State != StateActive {
		return ""
	}
	return best.ID
}
