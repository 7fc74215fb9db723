package kafka

import (
	"context"
	"errors"
	"fmt"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// QueueStats implements adapters.QueueStatter from consumer-group lag: for
// the queue's main and retry topics and its dead-letter topic, the end
// offsets minus what the group (named after the topic) has committed. The
// adapter acknowledges per offset and commits the contiguous low-water
// mark, so leased items and items acknowledged above a gap still count in
// Depth; InFlight and OldestAge are Unknown.
func (b *Broker) QueueStats(ctx context.Context, q string) (adapters.QueueStats, error) {
	op := "kafka: queue stats " + q
	st := adapters.QueueStats{Queue: q, InFlight: adapters.Unknown, OldestAge: adapters.Unknown,
		Note: "consumer-group lag: held items count as waiting; no ages"}
	if err := b.checkOpen(op); err != nil {
		return st, err
	}
	if err := adapters.ValidateName("queue", q); err != nil {
		return st, err
	}
	main, err := b.lag(ctx, b.mainTopic(q))
	if errors.Is(err, kafkago.UnknownTopicOrPartition) {
		return st, adapters.Errorf(adapters.ErrNotFound, op, "queue %q was never declared", q)
	}
	if err != nil {
		return st, adapters.Errorf(adapters.ErrUnavailable, op, "%v", err)
	}
	st.Depth = main
	if retry, err := b.lag(ctx, b.retryTopic(q)); err == nil {
		st.Depth += retry
	}
	st.DeadLetters = adapters.Unknown
	if dead, err := b.lag(ctx, b.deadTopic(q)); err == nil {
		st.DeadLetters = dead
	}
	return st, nil
}

// lag is the records of topic its group (of the same name) has not
// committed past.
func (b *Broker) lag(ctx context.Context, topic string) (int64, error) {
	parts, err := b.partitions(ctx, topic)
	if err != nil {
		return 0, err
	}
	reqs := make([]kafkago.OffsetRequest, 0, 2*len(parts))
	for _, p := range parts {
		reqs = append(reqs, kafkago.FirstOffsetOf(p), kafkago.LastOffsetOf(p))
	}
	offs, err := b.client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{topic: reqs}})
	if err != nil {
		return 0, err
	}
	first, last := map[int]int64{}, map[int]int64{}
	for _, po := range offs.Topics[topic] {
		if po.Error != nil {
			return 0, po.Error
		}
		if po.FirstOffset >= 0 {
			first[po.Partition] = po.FirstOffset
		}
		if po.LastOffset >= 0 {
			last[po.Partition] = po.LastOffset
		}
	}
	committed, err := b.client.OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: topic, Topics: map[string][]int{topic: parts}})
	if err != nil {
		return 0, err
	}
	if committed.Error != nil && !errors.Is(committed.Error, kafkago.GroupIdNotFound) {
		return 0, committed.Error
	}
	done := map[int]int64{}
	for _, pc := range committed.Topics[topic] {
		if pc.Error == nil && pc.CommittedOffset >= 0 {
			done[pc.Partition] = pc.CommittedOffset
		}
	}
	var n int64
	for _, p := range parts {
		end, ok := last[p]
		if !ok {
			return 0, fmt.Errorf("no end offset for partition %d of %s", p, topic)
		}
		from := first[p]
		if c, ok := done[p]; ok && c > from {
			from = c
		}
		n += max(end-from, 0)
	}
	return n, nil
}
