package flows

import (
	"encoding/json"
	"sort"
	"sync"
	"time"
)

// EventType names what happened to an execution.
type EventType string

// Execution events, published on the engine's events topic.
const (
	EventStarted      EventType = "started"
	EventStepDone     EventType = "step_done"
	EventRetried      EventType = "retried"
	EventCompleted    EventType = "completed"
	EventFailed       EventType = "failed"
	EventDeadLettered EventType = "dead_lettered"
	// EventReplayed: a dead-lettered execution was put back on its queue.
	EventReplayed EventType = "replayed"
)

// Execution states reported by Status.
const (
	StateRunning      = "running"
	StateCompleted    = "completed"
	StateFailed       = "failed"
	StateDeadLettered = "dead_lettered"
	StateCancelled    = "cancelled"
	// StateAwaiting: parked at an await step until a signal or its timeout.
	StateAwaiting = "awaiting"
)

// Event is one execution event.
type Event struct {
	// ID identifies the event, so that a node counts it once although it
	// both records and receives its own events.
	ID        string         `json:"id"`
	Type      EventType      `json:"type"`
	Execution string         `json:"execution"`
	Flow      string         `json:"flow"`
	Version   int            `json:"version"`
	Step      string         `json:"step,omitempty"`
	Seq       int            `json:"seq"`
	Attempt   int            `json:"attempt,omitempty"`
	Next      string         `json:"next,omitempty"`
	Node      string         `json:"node,omitempty"`
	Time      time.Time      `json:"time"`
	Error     string         `json:"error,omitempty"`
	Output    map[string]any `json:"output,omitempty"`
	// Duration is how long the step ran (step_done, retried, failed,
	// dead_lettered).
	Duration time.Duration `json:"duration,omitempty"`
}

// StepRecord is one attempt of one step, as its events tell.
type StepRecord struct {
	Step     string        `json:"step"`
	Seq      int           `json:"seq"`
	Attempt  int           `json:"attempt,omitempty"`
	Node     string        `json:"node,omitempty"`
	Outcome  EventType     `json:"outcome"` // step_done, retried, failed, dead_lettered
	Duration time.Duration `json:"duration"`
	Error    string        `json:"error,omitempty"`
	Time     time.Time     `json:"time"`
}

// maxStepRecords bounds the step history kept per execution (the latest).
const maxStepRecords = 64

// Status is where an execution is, as far as this node has heard.
type Status struct {
	Execution string         `json:"execution"`
	Flow      string         `json:"flow"`
	Version   int            `json:"version"`
	State     string         `json:"state"`
	Step      string         `json:"step,omitempty"`
	Seq       int            `json:"seq"`
	Attempt   int            `json:"attempt,omitempty"`
	Node      string         `json:"node,omitempty"`
	Started   time.Time      `json:"started,omitzero"`
	Updated   time.Time      `json:"updated"`
	Error     string         `json:"error,omitempty"`
	Output    map[string]any `json:"output,omitempty"`
	// Completions counts completed events heard for this execution; more
	// than one means a completion was repeated (see the package doc).
	Completions int `json:"completions,omitempty"`
	// Steps are the step attempts this node heard of, oldest first (the
	// latest 64).
	Steps []StepRecord `json:"steps,omitempty"`

	completionIDs map[string]bool
	// recordedBelow: every sequence number below it has had its
	// continuation (or completion) recorded, as step_done and completed
	// events say. A queue item below it is a repeat.
	recordedBelow int
}

func rank(t EventType) int {
	switch t {
	case EventStarted:
		return 0
	case EventRetried:
		return 1
	case EventStepDone:
		return 2
	default:
		return 3
	}
}

// index is a bounded map of execution statuses fed by events. When full,
// the execution updated least recently is forgotten.
type index struct {
	mu    sync.Mutex
	max   int
	m     map[string]*Status
	order []string // insertion order, for eviction
}

func newIndex(max int) *index { return &index{max: max, m: map[string]*Status{}} }

func (x *index) apply(e Event) {
	x.mu.Lock()
	defer x.mu.Unlock()
	s, ok := x.m[e.Execution]
	if !ok {
		s = x.addLocked(e.Execution)
		s.Flow, s.Version = e.Flow, e.Version
	}
	if e.Type == EventStarted && (s.Started.IsZero() || e.Time.Before(s.Started)) {
		s.Started = e.Time
	}
	if e.Type == EventCompleted && !s.completionIDs[e.ID] {
		if s.completionIDs == nil {
			s.completionIDs = map[string]bool{}
		}
		s.completionIDs[e.ID] = true
		s.Completions++
	}
	switch e.Type {
	case EventStepDone, EventRetried, EventFailed, EventDeadLettered:
		if e.Step != "" {
			s.addStep(e)
		}
	case EventReplayed:
		if s.State == StateDeadLettered {
			s.State, s.Error, s.Updated, s.Node = StateRunning, "", e.Time, e.Node
		}
		return
	}
	if (e.Type == EventStepDone || e.Type == EventCompleted) && e.Seq+1 > s.recordedBelow {
		s.recordedBelow = e.Seq + 1
	}
	terminal := s.State != StateRunning
	newer := e.Seq > s.Seq || (e.Seq == s.Seq && rank(e.Type) >= rank(statusType(s)))
	if terminal && rank(e.Type) < 3 {
		return // a late event of an execution that has ended
	}
	if !newer && rank(e.Type) < 3 {
		return
	}
	s.Step, s.Seq, s.Attempt, s.Node, s.Updated = e.Step, e.Seq, e.Attempt, e.Node, e.Time
	if e.Type == EventStepDone && e.Next != "" {
		s.Step = e.Next
		s.Seq = e.Seq + 1
		s.Attempt = 0
	}
	s.Error = e.Error
	switch e.Type {
	case EventCompleted:
		s.State, s.Output = StateCompleted, e.Output
	case EventFailed:
		s.State, s.Output = StateFailed, e.Output
	case EventDeadLettered:
		s.State = StateDeadLettered
	}
}

// addStep records a step attempt once (an event is applied once per ID by
// the caller's dedupe of its own echo; a repeat here is harmless).
func (s *Status) addStep(e Event) {
	for _, r := range s.Steps {
		if r.Seq == e.Seq && r.Attempt == e.Attempt && r.Node == e.Node && r.Outcome == e.Type && r.Time.Equal(e.Time) {
			return
		}
	}
	s.Steps = append(s.Steps, StepRecord{Step: e.Step, Seq: e.Seq, Attempt: e.Attempt, Node: e.Node, Outcome: e.Type,
		Duration: e.Duration, Error: e.Error, Time: e.Time})
	if len(s.Steps) > maxStepRecords {
		s.Steps = append([]StepRecord(nil), s.Steps[len(s.Steps)-maxStepRecords:]...)
	}
}

// running counts the running executions by flow.
func (x *index) running() map[string]int {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := map[string]int{}
	for _, s := range x.m {
		if s.State == StateRunning {
			out[s.Flow]++
		}
	}
	return out
}

// list returns up to limit executions in state (any if ""), most recently
// updated first, without their outputs and steps.
func (x *index) list(state string, limit int) []Status {
	x.mu.Lock()
	var out []Status
	for _, s := range x.m {
		if state != "" && s.State != state {
			continue
		}
		c := *s
		c.completionIDs, c.Output, c.Steps = nil, nil, nil
		out = append(out, c)
	}
	x.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Updated.Equal(out[j].Updated) {
			return out[i].Updated.After(out[j].Updated)
		}
		return out[i].Execution < out[j].Execution
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// addLocked adds a running execution, forgetting the oldest if full.
func (x *index) addLocked(id string) *Status {
	for len(x.m) >= x.max && len(x.order) > 0 {
		delete(x.m, x.order[0])
		x.order = x.order[1:]
	}
	s := &Status{Execution: id, State: StateRunning}
	x.m[id] = s
	x.order = append(x.order, id)
	if len(x.order) > 2*x.max { // compact after evictions of re-added keys
		x.order = append([]string(nil), x.order[len(x.order)-x.max:]...)
	}
	return s
}

func statusType(s *Status) EventType {
	switch s.State {
	case StateCompleted:
		return EventCompleted
	case StateFailed:
		return EventFailed
	case StateDeadLettered:
		return EventDeadLettered
	}
	return EventStarted
}

// recorded reports whether this node has heard that the step at sequence
// seq of execution id (or a later one) recorded its continuation or the
// completion: a queue item for it is then a repeat (see handle).
func (x *index) recorded(id string, seq int) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	s, ok := x.m[id]
	return ok && seq < s.recordedBelow
}

func (x *index) get(id string) (Status, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	s, ok := x.m[id]
	if !ok {
		return Status{}, false
	}
	out := *s
	out.completionIDs = nil
	out.Steps = append([]StepRecord(nil), s.Steps...)
	if s.Output != nil {
		// Copy through JSON so callers cannot touch the index.
		b, _ := json.Marshal(s.Output)
		out.Output = nil
		_ = json.Unmarshal(b, &out.Output)
	}
	return out, true
}
