package flows

import (
	"context"
	"encoding/json"
	"sort"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// Catch-up: a starting engine asks the other nodes, on the events topic, for
// what they know of recent executions, and merges their answers into its
// index. Without it a node that (re)starts knows nothing of executions in
// flight: it answers Status with not found and, on a broker without dedupe,
// runs again a step whose continuation was recorded before a crash (see
// "Not guaranteed" in the package doc).
const (
	headerSync     = "flows-sync"      // "request" or "reply"
	headerSyncFrom = "flows-sync-from" // the sender's node ID
	headerSyncTo   = "flows-sync-to"   // a reply's addressee

	syncRequest = "request"
	syncReply   = "reply"

	// catchUpAge: a reply carries the executions updated this recently
	// (running or ended); redeliveries after a crash come within a lease
	// or a broker's session timeout of it.
	catchUpAge = 15 * time.Minute
	// catchUpChunk bounds one reply message; smaller if the broker's
	// message size limit is.
	catchUpChunk = 128 << 10
)

// syncEntry is one execution in a catch-up reply.
type syncEntry struct {
	Status
	RecordedBelow int `json:"recorded_below"`
}

// requestCatchUp asks the other nodes for their recent executions.
func (e *Engine) requestCatchUp(ctx context.Context) {
	err := e.b.Publish(ctx, e.cfg.EventsTopic, adapters.Message{
		Headers: map[string]string{headerSync: syncRequest, headerSyncFrom: e.opts.NodeID},
		Body:    []byte("{}"),
	})
	if err != nil {
		e.log.Warn("flows: cannot ask the other nodes for recent executions; this node learns of them from new events only", "err", err)
	}
}

// catchUpGap is the least time between two catch-ups after gaps: a
// flapping link asks once per period, not once per gap.
const catchUpGap = 2 * time.Second

// catchUpAfterGap asks the other nodes for their recent executions again
// after the events subscription may have missed some (a gap, a
// reconnect), at most once per catchUpGap; a gap inside the period is
// covered by a request at its end.
func (e *Engine) catchUpAfterGap(ctx context.Context) {
	e.gapMu.Lock()
	defer e.gapMu.Unlock()
	if e.gapPending {
		return
	}
	wait := catchUpGap - e.opts.Clock.Since(e.gapLast)
	if wait <= 0 {
		e.gapLast = e.opts.Clock.Now()
		e.requestCatchUp(ctx)
		return
	}
	e.gapPending = true
	e.answers.Add(1)
	go func() {
		defer e.answers.Done()
		t := e.opts.Clock.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.Chan():
			e.gapMu.Lock()
			e.gapPending = false
			e.gapLast = e.opts.Clock.Now()
			e.gapMu.Unlock()
			e.requestCatchUp(ctx)
		}
	}()
}

// answerCatchUp sends this node's recent executions to node to, in as many
// messages as the broker's size limit needs.
func (e *Engine) answerCatchUp(ctx context.Context, to string) {
	entries := e.idx.recent(e.opts.Clock.Now().Add(-catchUpAge))
	limit := catchUpChunk
	if m := e.b.Capabilities().MaxMessageSize; m > 0 && m-1024 < limit {
		limit = m - 1024
	}
	send := func(chunk []json.RawMessage) bool {
		body, _ := json.Marshal(chunk)
		err := e.b.Publish(ctx, e.cfg.EventsTopic, adapters.Message{
			Headers: map[string]string{headerSync: syncReply, headerSyncFrom: e.opts.NodeID, headerSyncTo: to},
			Body:    body,
		})
		if err != nil {
			e.log.Warn("flows: answering a catch-up request", "to", to, "err", err)
			return false
		}
		return true
	}
	var chunk []json.RawMessage
	size, sent := 2, 0
	for _, se := range entries {
		b, _ := json.Marshal(se)
		if len(b)+1 > limit-2 {
			se.Output = nil // too large to send whole: the status without its output
			if b, _ = json.Marshal(se); len(b)+1 > limit-2 {
				continue
			}
		}
		if size+len(b)+1 > limit && len(chunk) > 0 {
			if !send(chunk) {
				return
			}
			chunk, size = nil, 2
		}
		chunk = append(chunk, b)
		size += len(b) + 1
		sent++
	}
	if len(chunk) > 0 && !send(chunk) {
		return
	}
	if sent > 0 {
		e.log.Debug("flows: answered a catch-up request", "to", to, "executions", sent)
	}
}

// handleSync handles a catch-up message of the events topic.
func (e *Engine) handleSync(ctx context.Context, m adapters.Message) {
	from := m.Headers[headerSyncFrom]
	if from == "" || from == e.opts.NodeID {
		return
	}
	switch m.Headers[headerSync] {
	case syncRequest:
		e.answers.Add(1)
		go func() {
			defer e.answers.Done()
			e.answerCatchUp(ctx, from)
		}()
	case syncReply:
		if m.Headers[headerSyncTo] != e.opts.NodeID {
			return
		}
		var entries []syncEntry
		if err := json.Unmarshal(m.Body, &entries); err != nil {
			e.log.Warn("flows: dropping a catch-up reply that does not decode", "from", from, "err", err)
			return
		}
		n := e.idx.merge(entries)
		e.log.Info("flows: caught up on executions from another node", "from", from, "executions", len(entries), "new", n)
	}
}

// recent returns the executions updated at or after since, newest first.
func (x *index) recent(since time.Time) []syncEntry {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []syncEntry
	for _, s := range x.m {
		if s.Updated.Before(since) && s.Started.Before(since) {
			continue
		}
		st := *s
		st.completionIDs, st.Steps = nil, nil // step histories stay local: replies keep their size
		out = append(out, syncEntry{Status: st, RecordedBelow: s.recordedBelow})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Updated.After(out[j].Updated) })
	return out
}

// merge adds what another node knows: an execution this node does not know
// is added; for one it knows, the later state wins and the recorded mark and
// the completion count only grow. It returns how many were new.
func (x *index) merge(entries []syncEntry) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	added := 0
	for _, in := range entries {
		if in.Execution == "" {
			continue
		}
		s, ok := x.m[in.Execution]
		if !ok {
			s = x.addLocked(in.Execution)
			*s = in.Status
			s.completionIDs = nil
			s.recordedBelow = in.RecordedBelow
			added++
			continue
		}
		s.recordedBelow = max(s.recordedBelow, in.RecordedBelow)
		s.Completions = max(s.Completions, in.Completions)
		if s.Started.IsZero() || (!in.Started.IsZero() && in.Started.Before(s.Started)) {
			s.Started = in.Started
		}
		if s.State != StateRunning {
			continue // an ended execution stays ended
		}
		if in.State != StateRunning || in.Seq > s.Seq {
			keep := *s
			*s = in.Status
			s.completionIDs, s.recordedBelow, s.Completions, s.Started = keep.completionIDs, keep.recordedBelow, keep.Completions, keep.Started
			s.Steps = keep.Steps
		}
	}
	return added
}
