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

// probeVerdictLocked is the probe's part of connectedLocked.
func (n *Node) probeVerdictLocked() (bool, string) {
	switch {
	case n.probe == nil:
		return true, ""
	case n.probeFails >= probeFailures:
		return false, "the broker cannot do what this node serves: " + n.probeErr.Error()
	case !n.probeOK:
		return false, "the broker has not yet answered this node's queue probe"
	}
	return true, ""
}
