package sqs

import (
	"errors"
	"strings"

	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/smithy-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// mapErr wraps an SDK error with the adapters code it stands for. Context
// errors pass through unchanged.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	return adapters.Wrap(code(err), op, err)
}

func code(err error) error {
	var (
		notExist   *types.QueueDoesNotExist
		snsNotFnd  *snstypes.NotFoundException
		badHandle  *types.ReceiptHandleIsInvalid
		notFlight  *types.MessageNotInflight
		tooLong    *types.BatchRequestTooLong
		badContent *types.InvalidMessageContents
	)
	switch {
	case errors.As(err, &notExist), errors.As(err, &snsNotFnd):
		return adapters.ErrNotFound
	case errors.As(err, &badHandle), errors.As(err, &notFlight):
		return adapters.ErrLeaseLost
	case errors.As(err, &tooLong):
		return adapters.ErrTooLarge
	case errors.As(err, &badContent):
		return adapters.ErrInvalidArgument
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		c := api.ErrorCode()
		switch {
		case strings.Contains(c, "NonExistentQueue"), c == "QueueDoesNotExist", c == "NotFound", c == "ResourceNotFoundException":
			return adapters.ErrNotFound
		case strings.Contains(c, "ReceiptHandle"), strings.Contains(c, "MessageNotInflight"):
			return adapters.ErrLeaseLost
		case strings.Contains(c, "TooLong"), strings.Contains(c, "TooLarge"):
			return adapters.ErrTooLarge
		case strings.Contains(c, "Throttl"), strings.Contains(c, "RequestThrottled"), c == "ServiceUnavailable", c == "InternalError", c == "InternalFailure":
			return adapters.ErrUnavailable
		}
		if api.ErrorFault() == smithy.FaultClient {
			return adapters.ErrInvalidArgument
		}
		return adapters.ErrUnavailable
	}
	// Transport failures (connection refused, timeouts): retry may work.
	return adapters.ErrUnavailable
}
