package bus

import (
	"context"
	"time"
)

// "Connected" means the broker can do what this node serves. The heartbeat
// echo proves the topic; a node that also serves queues (flows, work)
// sets a probe, a queue round trip, so that a broker that still relays
// topic messages but cannot store work (a NATS server cut off from its
// JetStream quorum) does not leave the node answering 200.

// probeFailures is how many probes in a row must fail before the node
// counts itself not connected: one slow answer on a loaded broker is not
// an outage.
const probeFailures = 2

// SetProbe makes fn part of "connected": the node calls it every
// FailureTimeout (with a timeout of 2 × FailureTimeout) from its own
// goroutine, and while it has failed probeFailures times in a row, or has
// not yet succeeded, the node is not connected (fenced, or degraded under
// OnBrokerLoss "degrade"). Call it before or after Start; nil removes it.
func (n *Node) SetProbe(fn func(ctx context.Context) error) {
	n.mu.Lock()
	n.probe = fn
	n.probeOK, n.probeErr, n.probeFails = false, nil, 0
	n.mu.Unlock()
	select {
	case n.probeKick <- struct{}{}:
	default:
	}
}

// probeLoop runs the probe while the node runs.
func (n *Node) probeLoop() {
	defer n.loopWG.Done()
	t := n.clock.NewTicker(n.cfg.FailureTimeout)
	defer t.Stop()
	for {
		n.mu.Lock()
		fn := n.probe
		n.mu.Unlock()
		if fn != nil {
			ctx, cancel := context.WithTimeout(n.stopCtx, 2*n.cfg.FailureTimeout)
			start := time.Now()
			err := fn(ctx)
			cancel()
			if n.stopCtx.Err() != nil {
				return
			}
			n.mu.Lock()
			changed := false
			if err == nil {
				changed = !n.probeOK || n.probeFails >= probeFailures
				n.probeOK, n.probeErr, n.probeFails = true, nil, 0
			} else {
				n.probeFails++
				n.probeErr = err
				changed = n.probeFails == probeFailures
			}
			n.mu.Unlock()
			if err != nil {
				n.log.Warn("broker probe failed", "err", err, "took", time.Since(start).Round(time.Millisecond))
			}
			if changed {
				n.poke()
			}
		}
		select {
		case <-n.stopCtx.Done():
			return
		case <-t.Chan():
		case <-n.probeKick:
		}
	}
}

// What a node reports of its probe in its heartbeats (heartbeat.Probe).
const (
	probeReportOK      = "ok"
	probeReportFailing = "failing"
)

func (n *Node) probeReportLocked() string {
	switch {
	case n.probe == nil:
		return ""
	case n.probeFails > 0:
		return probeReportFailing
	case n.probeOK:
		return probeReportOK
	}
	return ""
}

// probeVerdictLocked is the probe's part of connectedLocked.
//
// A failing probe says this node's side of the broker cannot store work.
// It fences the node only if it is not the whole cluster's problem: while
// at least one other live member probes too and none of them reports its
// probe passing, the broker's queues are out for everyone this node can
// hear (a JetStream re-election after a partition heals, a broker-wide
// outage), and fencing every node would only take the whole cluster out of
// the load balancer and leave it without a lead, with nowhere better for
// the work to go. The node then stays in service and says why in its
// alerts. A node that hears one member whose probe passes while its own
// fails is on the wrong side and fences; a node alone cannot tell, and
// fences.
func (n *Node) probeVerdictLocked(now time.Time) (bool, string) {
	switch {
	case n.probe == nil:
		return true, ""
	case n.probeFails >= probeFailures:
		if n.probeOutageEverywhereLocked(now) {
			return true, ""
		}
		return false, "the broker cannot do what this node serves: " + n.probeErr.Error()
	case !n.probeOK:
		return false, "the broker has not yet answered this node's queue probe"
	}
	return true, ""
}

// probeOutageEverywhereLocked: some other live member reports its probe,
// and every one that does reports it failing.
func (n *Node) probeOutageEverywhereLocked(now time.Time) bool {
	failing := 0
	for _, m := range n.ms.members {
		if m.dead || m.heard < 2 || now.Sub(m.lastHeard) > n.cfg.FailureTimeout {
			continue
		}
		switch m.hb.Probe {
		case probeReportOK:
			return false
		case probeReportFailing:
			failing++
		}
	}
	return failing > 0
}

// probeAlert is the alert a node shows while it stays in service with
// its probe failing because every member's fails.
func (n *Node) probeAlert() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.probe == nil || n.probeFails < probeFailures || !n.probeOutageEverywhereLocked(n.clock.Now()) {
		return ""
	}
	return "the broker cannot store work for any member (queue probe failing on every live member that probes); nodes stay in service until it recovers: " + n.probeErr.Error()
}
