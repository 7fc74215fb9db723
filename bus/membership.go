package bus

import (
	"sort"
	"time"
)

// membership is the pure membership state of a node: the other members as
// their heartbeats describe them, and the incarnations that left or were
// downed. It has no clock, lock or goroutine: Node calls it under its
// mutex with the current time, and tests drive it with plain values.
type membership struct {
	members map[string]*member // by node ID; this node is not in it
	gone    map[string]gone    // by incarnation: left or downed
}

type member struct {
	hb         heartbeat
	lastHeard  time.Time // local clock
	firstHeard time.Time
	skew       time.Duration // sender clock minus local clock at receipt
	dead       bool
	deadAt     time.Time
	// heard counts heartbeats applied from this incarnation: one alone
	// (a replay, a stray) does not make a member live.
	heard int
	// everActive: this incarnation has been heard active at least once.
	// Only such members count toward a quorum, so a node that crashes
	// while starting (a crash loop) never makes the others a minority.
	everActive bool
	// notActiveSince is when it was first heard in a state other than
	// active (zero while active): the lead waits one failure timeout for
	// an older member that is fenced, not longer.
	notActiveSince time.Time
}

// gone is a tombstone: an incarnation that left or was downed. Its
// heartbeats are dropped, so a replay cannot bring it back.
type gone struct {
	id     string
	at     time.Time
	downed bool
}

// Tombstones are kept this long, at most maxGone of them; downed ones
// are advertised in heartbeats so that a downed node learns it.
const (
	goneKeep = time.Hour
	maxGone  = 64
)

func newMembership() *membership {
	return &membership{members: map[string]*member{}, gone: map[string]gone{}}
}

// applyResult says what a heartbeat did to the membership.
type applyResult int

const (
	applyStale     applyResult = iota // older than what is known: dropped
	applyGone                         // from an incarnation that left or was downed: dropped
	applyJoined                       // a new member
	applyRestarted                    // a new incarnation replaced the previous one
	applyUpdated                      // a known member's next heartbeat
	applyLeft                         // the member left
	applyIgnored                      // a leave of an incarnation not known
	applyBack                         // a known member heard again after it had failed
)

// apply records a heartbeat (or leave) received at now. prev is the
// incarnation it replaced or removed, if any; changed says whether the
// view changed in a way worth re-evaluating at once.
func (ms *membership) apply(kind string, hb heartbeat, now time.Time) (res applyResult, prev string, changed bool) {
	if _, ok := ms.gone[hb.Inc]; ok {
		return applyGone, "", false
	}
	m := ms.members[hb.ID]
	if kind == kindLeave {
		if m == nil || m.hb.Inc != hb.Inc {
			return applyIgnored, "", false
		}
		delete(ms.members, hb.ID)
		ms.tombstone(hb.Inc, hb.ID, now, false)
		return applyLeft, hb.Inc, true
	}
	res = applyUpdated
	switch {
	case m == nil:
		m = &member{firstHeard: now}
		ms.members[hb.ID] = m
		res, changed = applyJoined, true
	case m.hb.Inc != hb.Inc:
		if hb.Start < m.hb.Start {
			return applyStale, "", false // an older incarnation after a newer one
		}
		prev = m.hb.Inc
		*m = member{firstHeard: now}
		res, changed = applyRestarted, true
	case hb.Seq <= m.hb.Seq:
		return applyStale, "", false
	}
	if m.dead {
		m.dead = false
		res, changed = applyBack, true
	}
	if m.hb.State != hb.State || m.hb.LeadTerm != hb.LeadTerm || m.heard == 1 {
		changed = true
	}
	switch {
	case hb.State == StateActive:
		// Counted only once heard more than once: one message (a
		// stray, a replay) neither makes a member live nor adds one
		// that the others must then reach.
		m.everActive = m.everActive || m.heard >= 1
		m.notActiveSince = time.Time{}
	case m.notActiveSince.IsZero():
		m.notActiveSince = now
	}
	m.hb = hb
	m.heard++
	m.lastHeard = now
	m.skew = time.Unix(0, hb.Sent).Sub(now)
	return res, prev, changed
}

// expire marks failed the members not heard for ft. A silence counts only
// if this node's own heartbeat came back at least ft/2 after the member's
// last one (so a silence that is this node's own lost link is not taken
// for the others failing), and only from holdUntil on (so a node that has
// just got its link back gives everyone time to be heard again before it
// decides who is gone). It returns the IDs that failed now.
func (ms *membership) expire(now time.Time, ft time.Duration, selfHeard, holdUntil time.Time) []string {
	var failed []string
	for id, m := range ms.members {
		if m.dead {
			continue
		}
		from := m.lastHeard
		if holdUntil.After(from) {
			from = holdUntil
		}
		if now.Sub(from) > ft && selfHeard.Sub(m.lastHeard) >= ft/2 {
			m.dead, m.deadAt = true, now
			failed = append(failed, id)
		}
	}
	sort.Strings(failed)
	return failed
}

// nextExpiry is the earliest time a live member's failure timeout runs
// out (zero if none): when expire should next be asked.
func (ms *membership) nextExpiry(ft time.Duration, holdUntil time.Time) time.Time {
	var next time.Time
	for _, m := range ms.members {
		if m.dead {
			continue
		}
		from := m.lastHeard
		if holdUntil.After(from) {
			from = holdUntil
		}
		if d := from.Add(ft + time.Millisecond); next.IsZero() || d.Before(next) {
			next = d
		}
	}
	return next
}

// forget downs the members failed for longer than after: they leave the
// membership (and every quorum) and their incarnations are tombstoned.
// Only a node in good standing calls it, so a fenced side never forgets
// its way back to a majority. It returns the downed members.
func (ms *membership) forget(now time.Time, after time.Duration) []*member {
	var out []*member
	for id, m := range ms.members {
		if m.dead && now.Sub(m.lastHeard) > after {
			delete(ms.members, id)
			ms.tombstone(m.hb.Inc, id, now, true)
			out = append(out, m)
		}
	}
	return out
}

// down removes member id at once (an operator's manual down, or a down
// heard from a member in good standing) and tombstones its incarnation.
func (ms *membership) down(id string, now time.Time) (*member, bool) {
	m := ms.members[id]
	if m == nil {
		return nil, false
	}
	delete(ms.members, id)
	ms.tombstone(m.hb.Inc, id, now, true)
	return m, true
}

func (ms *membership) tombstone(inc, id string, now time.Time, downed bool) {
	ms.gone[inc] = gone{id: id, at: now, downed: downed}
	if len(ms.gone) > maxGone {
		ms.prune(now)
	}
}

// prune drops tombstones older than goneKeep, and the oldest beyond
// maxGone.
func (ms *membership) prune(now time.Time) {
	type entry struct {
		inc string
		at  time.Time
	}
	var all []entry
	for inc, g := range ms.gone {
		if now.Sub(g.at) > goneKeep {
			delete(ms.gone, inc)
			continue
		}
		all = append(all, entry{inc, g.at})
	}
	if len(all) <= maxGone {
		return
	}
	sort.Slice(all, func(i, j int) bool { return all[i].at.Before(all[j].at) })
	for _, e := range all[:len(all)-maxGone] {
		delete(ms.gone, e.inc)
	}
}

// downed lists the downed incarnations, sorted, for heartbeats.
func (ms *membership) downed() []string {
	var out []string
	for inc, g := range ms.gone {
		if g.downed {
			out = append(out, inc)
		}
	}
	sort.Strings(out)
	return out
}

// candidates describes the members for the election at now.
func (ms *membership) candidates(now time.Time, ft time.Duration) []candidate {
	out := make([]candidate, 0, len(ms.members))
	for id, m := range ms.members {
		out = append(out, candidate{
			ID: id, Start: m.hb.Start, State: m.hb.State,
			Live:       !m.dead && m.heard >= 2,
			Counted:    m.everActive,
			WaitFenced: m.hb.State == StateFenced && now.Sub(m.notActiveSince) < ft,
		})
	}
	return out
}
