package driver

import (
	"context"
	"errors"

	"github.com/clusterbus/clusterbus/adapters"
)

// MapCtx maps an error of a call made with the caller's ctx: a context
// error while ctx is still live did not come from the caller. It came from
// the client itself (its own default timeout, or an operation it abandoned
// while recovering its link), so it is reported as ErrUnavailable, with
// why: retrying may work and the caller's context is not to blame. Every
// other error, and a context error of ctx itself, goes to mapErr.
func MapCtx(ctx context.Context, op string, err error, why string, mapErr func(op string, err error) error) error {
	if err != nil && ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		return adapters.Errorf(adapters.ErrUnavailable, op, "%s (%v)", why, err)
	}
	return mapErr(op, err)
}
