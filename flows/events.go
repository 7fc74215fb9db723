package flows

import (
	"encoding/json"
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
)

// Execution states reported by Status.
const (
	StateRunning      = "running"
	StateCompleted    = "completed"
	StateFailed       = "failed"
	StateDeadLettered = "dead_lettered"
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
}

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
	if s.Output != nil {
		// Copy through JSON so callers cannot touch the index.
		b, _ := json.Marshal(s.Output)
		out.Output = nil
		_ = json.Unmarshal(b, &out.Output)
	}
	return out, true
}
