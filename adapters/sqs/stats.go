package sqs

import (
	"context"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/clusterbus/clusterbus/adapters"
)

// QueueStats implements adapters.QueueStatter from the SQS attributes
// ApproximateNumberOfMessages (+ Delayed) and NotVisible of the queue and
// ApproximateNumberOfMessages of its dead-letter queue. SQS says these are
// approximate; the oldest item's age is a CloudWatch metric, not an
// attribute (Unknown).
func (b *Broker) QueueStats(ctx context.Context, queue string) (adapters.QueueStats, error) {
	op := "sqs: queue stats " + queue
	st := adapters.QueueStats{Queue: queue, OldestAge: adapters.Unknown,
		Note: "SQS counts are approximate; the oldest age is only in CloudWatch"}
	if err := b.checkOpen(op); err != nil {
		return st, err
	}
	q, err := b.queue(ctx, op, queue)
	if err != nil {
		return st, err
	}
	attrs := func(url string) (map[string]string, error) {
		out, err := b.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url), AttributeNames: []types.QueueAttributeName{
			types.QueueAttributeNameApproximateNumberOfMessages,
			types.QueueAttributeNameApproximateNumberOfMessagesDelayed,
			types.QueueAttributeNameApproximateNumberOfMessagesNotVisible,
		}})
		if err != nil {
			return nil, mapErr(op, err)
		}
		return out.Attributes, nil
	}
	num := func(m map[string]string, k types.QueueAttributeName) int64 {
		n, err := strconv.ParseInt(m[string(k)], 10, 64)
		if err != nil {
			return adapters.Unknown
		}
		return n
	}
	a, err := attrs(q.url)
	if err != nil {
		return st, err
	}
	st.Depth = num(a, types.QueueAttributeNameApproximateNumberOfMessages)
	if d := num(a, types.QueueAttributeNameApproximateNumberOfMessagesDelayed); st.Depth != adapters.Unknown && d > 0 {
		st.Depth += d
	}
	st.InFlight = num(a, types.QueueAttributeNameApproximateNumberOfMessagesNotVisible)
	st.DeadLetters = adapters.Unknown
	if d, err := attrs(q.dlqURL); err == nil {
		st.DeadLetters = num(d, types.QueueAttributeNameApproximateNumberOfMessages)
	}
	return st, nil
}
