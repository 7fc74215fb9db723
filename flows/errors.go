package flows

import (
	"errors"
	"fmt"
)

// The package's own errors. They do not match adapters' sentinels: a flow
// that is not registered is not a missing queue (adapters.ErrNotFound), and
// callers can tell the two apart. Errors returned by the engine wrap them
// with the details (errors.Is).
var (
	// ErrFlowNotFound: no flow (or no such version) of that name is
	// registered on this node.
	ErrFlowNotFound = errors.New("flows: flow not found")
	// ErrRuleNotFound: no standalone rule of that name is registered.
	ErrRuleNotFound = errors.New("flows: rule not found")
	// ErrStepNotFound: a step named a next step that its flow lacks.
	ErrStepNotFound = errors.New("flows: step not found")
	// ErrExecutionNotFound: no record of that execution (never submitted,
	// or expired; see Config.Retention).
	ErrExecutionNotFound = errors.New("flows: execution not found")
	// ErrNotCancellable: the execution has already ended.
	ErrNotCancellable = errors.New("flows: execution cannot be cancelled")
	// ErrNotRetryable: only a failed or dead-lettered execution can be
	// retried.
	ErrNotRetryable = errors.New("flows: execution cannot be retried")
	// ErrNotAwaiting: the execution is not parked at an await step for that
	// signal (it has not reached it yet, was signalled already, or timed
	// out).
	ErrNotAwaiting = errors.New("flows: execution is not awaiting that signal")
	// ErrCancelled is the cause of a step's context when its execution is
	// cancelled while the step runs (context.Cause).
	ErrCancelled = errors.New("flows: execution cancelled")
)

// errorf wraps sentinel with a message: "op: message: sentinel".
func errorf(sentinel error, op, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", op, fmt.Sprintf(format, args...), sentinel)
}
