package bus

import (
	"strings"
	"testing"
	"time"
)

func TestElectionStandingTable(t *testing.T) {
	self := candidate{ID: "b", Start: 20, State: StateActive, Live: true, Counted: true}
	live := func(id string, start int64) candidate {
		return candidate{ID: id, Start: start, State: StateActive, Live: true, Counted: true}
	}
	dead := func(id string, start int64) candidate {
		return candidate{ID: id, Start: start, State: StateActive, Counted: true}
	}
	neverActive := func(id string, start int64) candidate { // crashed while starting
		return candidate{ID: id, Start: start, State: StateStarting}
	}
	for _, tc := range []struct {
		name    string
		policy  SplitBrain
		quorum  int
		members []candidate
		ok      bool
		why     string
	}{
		{"alone", KeepMajority, 0, nil, true, ""},
		{"2 of 3", KeepMajority, 0, []candidate{live("a", 10), dead("c", 30)}, true, ""},
		{"1 of 3", KeepMajority, 0, []candidate{dead("a", 10), dead("c", 30)}, false, "sees 1 of 3"},
		{"tie with the oldest", KeepMajority, 0, []candidate{live("a", 10), dead("c", 30), dead("d", 40)}, true, ""},
		{"tie without the oldest", KeepMajority, 0, []candidate{dead("a", 10), live("c", 30), dead("d", 40)}, false, "sees 2 of 4"},
		{"crash loop: 3 never-active dead members count for nothing", KeepMajority, 0,
			[]candidate{live("a", 10), neverActive("x1", 30), neverActive("x2", 31), neverActive("x3", 32)}, true, ""},
		{"a live starting member counts", StaticQuorum, 2, []candidate{{ID: "a", Start: 10, State: StateStarting, Live: true}}, true, ""},
		{"panicked members do not count", KeepMajority, 0,
			[]candidate{live("a", 10), {ID: "p1", Start: 1, State: StatePanic, Counted: true}, {ID: "p2", Start: 2, State: StatePanic, Counted: true}}, true, ""},
		{"keep-oldest without the oldest", KeepOldest, 0, []candidate{dead("a", 10), live("c", 30)}, false, "oldest known member a"},
		{"keep-oldest with it", KeepOldest, 0, []candidate{live("a", 10), dead("c", 30), dead("d", 40)}, true, ""},
		{"static quorum short", StaticQuorum, 3, []candidate{live("a", 10), dead("c", 30)}, false, "quorum is 3"},
		{"off", SplitBrainOff, 0, []candidate{dead("a", 10), dead("c", 30)}, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, why := snapshot{Self: self, Members: tc.members, Policy: tc.policy, Quorum: tc.quorum}.standing()
			if ok != tc.ok || !strings.Contains(why, tc.why) {
				t.Fatalf("standing = %v %q, want %v %q", ok, why, tc.ok, tc.why)
			}
		})
	}
}

func TestElectionLeadTable(t *testing.T) {
	c := func(id string, start int64, state string, live bool) candidate {
		return candidate{ID: id, Start: start, State: state, Live: live, Counted: true}
	}
	for _, tc := range []struct {
		name    string
		self    candidate
		members []candidate
		want    string
	}{
		{"oldest active leads", c("b", 20, StateActive, true), []candidate{c("a", 10, StateActive, true)}, "a"},
		{"self oldest", c("a", 10, StateActive, true), []candidate{c("b", 20, StateActive, true)}, "a"},
		{"tie broken by ID", c("b", 10, StateActive, true), []candidate{c("a", 10, StateActive, true)}, "a"},
		{"dead oldest skipped", c("b", 20, StateActive, true), []candidate{c("a", 10, StateActive, false)}, "b"},
		{"oldest still starting: no lead yet", c("b", 20, StateActive, true), []candidate{c("a", 10, StateStarting, true)}, ""},
		{"oldest fenced for less than a failure timeout: wait", c("b", 20, StateActive, true),
			[]candidate{{ID: "a", Start: 10, State: StateFenced, Live: true, Counted: true, WaitFenced: true}}, ""},
		{"oldest fenced for longer: skip it", c("b", 20, StateActive, true),
			[]candidate{{ID: "a", Start: 10, State: StateFenced, Live: true, Counted: true}}, "b"},
		{"draining oldest skipped", c("b", 20, StateActive, true), []candidate{c("a", 10, StateDraining, true)}, "b"},
		{"panicked oldest skipped", c("b", 20, StateActive, true), []candidate{c("a", 10, StatePanic, true)}, "b"},
		{"self fenced: the oldest active other", c("a", 10, StateFenced, true), []candidate{c("b", 20, StateActive, true)}, "b"},
		{"nobody active", c("a", 10, StateStarting, true), nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := (snapshot{Self: tc.self, Members: tc.members, Policy: KeepMajority}).lead(); got != tc.want {
				t.Fatalf("lead = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestMembershipApplyTable(t *testing.T) {
	t0 := time.Unix(1000, 0)
	hb := func(id, inc string, start int64, seq uint64, state string) heartbeat {
		return heartbeat{ID: id, Inc: inc, Start: start, Seq: seq, State: state, Sent: t0.UnixNano()}
	}
	ms := newMembership()
	steps := []struct {
		name string
		kind string
		hb   heartbeat
		want applyResult
	}{
		{"join", kindHeartbeat, hb("a", "i1", 10, 1, StateStarting), applyJoined},
		{"next", kindHeartbeat, hb("a", "i1", 10, 2, StateActive), applyUpdated},
		{"repeat is stale", kindHeartbeat, hb("a", "i1", 10, 2, StateActive), applyStale},
		{"older incarnation is stale", kindHeartbeat, hb("a", "i0", 5, 9, StateActive), applyStale},
		{"restart replaces", kindHeartbeat, hb("a", "i2", 20, 1, StateStarting), applyRestarted},
		{"leave of an unknown incarnation", kindLeave, hb("a", "i1", 10, 3, StateLeft), applyIgnored},
		{"leave", kindLeave, hb("a", "i2", 20, 2, StateLeft), applyLeft},
		{"replay after leave", kindHeartbeat, hb("a", "i2", 20, 5, StateActive), applyGone},
	}
	for i, s := range steps {
		got, _, _ := ms.apply(s.kind, s.hb, t0.Add(time.Duration(i)*time.Millisecond))
		if got != s.want {
			t.Fatalf("%s: apply = %d, want %d", s.name, got, s.want)
		}
	}
	if len(ms.members) != 0 {
		t.Fatalf("members after leave and replay: %v", ms.members)
	}
}

func TestMembershipExpireWaitsForOwnLink(t *testing.T) {
	ft := 1500 * time.Millisecond
	t0 := time.Unix(1000, 0)
	newMS := func() *membership {
		ms := newMembership()
		for i := uint64(1); i <= 2; i++ {
			ms.apply(kindHeartbeat, heartbeat{ID: "a", Inc: "i", Start: 1, Seq: i, State: StateActive}, t0)
		}
		return ms
	}
	for _, tc := range []struct {
		name      string
		now       time.Duration // after t0
		selfHeard time.Duration
		connSince time.Duration
		failed    bool
	}{
		{"heard recently", ft / 2, ft / 2, -time.Hour, false},
		{"silent while our own echo kept coming", ft + time.Millisecond, ft, -time.Hour, true},
		{"silent, but so is our own echo: our link, not theirs", ft + time.Millisecond, 100 * time.Millisecond, -time.Hour, false},
		{"link back just now: wait one failure timeout", ft + time.Second, ft + time.Second, ft, false},
		{"link back a failure timeout ago", 2*ft + 10*time.Millisecond, 2*ft + 10*time.Millisecond, ft, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms := newMS()
			got := ms.expire(t0.Add(tc.now), ft, t0.Add(tc.selfHeard), t0.Add(tc.connSince))
			if (len(got) == 1) != tc.failed {
				t.Fatalf("expire = %v, want failed %v", got, tc.failed)
			}
		})
	}
}

func TestMembershipForgetTombstonesAndAdvertises(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := newMembership()
	for i := uint64(1); i <= 2; i++ {
		ms.apply(kindHeartbeat, heartbeat{ID: "a", Inc: "ia", Start: 1, Seq: i, State: StateActive}, t0)
	}
	ms.expire(t0.Add(2*time.Second), time.Second, t0.Add(2*time.Second), time.Time{})
	if got := ms.forget(t0.Add(5*time.Second), 10*time.Second); len(got) != 0 {
		t.Fatalf("forgot before forget-after: %v", got)
	}
	if got := ms.forget(t0.Add(11*time.Second), 10*time.Second); len(got) != 1 {
		t.Fatalf("forget after forget-after: %v", got)
	}
	if d := ms.downed(); len(d) != 1 || d[0] != "ia" {
		t.Fatalf("downed = %v", d)
	}
	if res, _, _ := ms.apply(kindHeartbeat, heartbeat{ID: "a", Inc: "ia", Start: 1, Seq: 9, State: StateActive}, t0.Add(12*time.Second)); res != applyGone {
		t.Fatalf("a downed incarnation's heartbeat: %d, want applyGone", res)
	}
	ms.prune(t0.Add(goneKeep + 12*time.Second))
	if len(ms.gone) != 0 {
		t.Fatalf("tombstones after goneKeep: %v", ms.gone)
	}
}
