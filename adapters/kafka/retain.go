package kafka

import (
	"context"
	"errors"
	"fmt"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/clusterbus/clusterbus/adapters"
)

var _ adapters.Retainer = (*Broker)(nil)

// logTopic is the compacted topic of a retained log: <prefix>.l.<log>.
func (b *Broker) logTopic(log string) string { return b.cfg.Prefix + ".l." + log }

// Retain implements adapters.Retainer: a record keyed by key on the log's
// one-partition compacted topic (cleanup.policy=compact, created on first
// use), written with acks=all.
func (b *Broker) Retain(ctx context.Context, log, key string, value []byte) error {
	op := fmt.Sprintf("kafka: retain %q", log)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	if err := adapters.ValidateRetained(op, log, key); err != nil {
		return err
	}
	if n := len(key) + len(value); n > capabilities.MaxMessageSize {
		return adapters.Errorf(adapters.ErrTooLarge, op, "%d bytes, limit %d", n, capabilities.MaxMessageSize)
	}
	topic := b.logTopic(log)
	if err := b.createTopics(ctx, op, b.topicConfig(topic, 1, kafkago.ConfigEntry{ConfigName: "cleanup.policy", ConfigValue: "compact"})); err != nil {
		return err
	}
	if value == nil {
		value = []byte{} // a nil value would be a tombstone, which compaction deletes
	}
	return b.write(ctx, op, kafkago.Message{Topic: topic, Key: []byte(key), Value: value})
}

// Retained implements adapters.Retainer: it reads the log's topic from its
// first offset to its end and keeps the last value per key (compaction
// keeps at least that). A log never retained to is an empty map.
func (b *Broker) Retained(ctx context.Context, log string) (map[string][]byte, error) {
	op := fmt.Sprintf("kafka: retained %q", log)
	if err := b.checkOpen(op); err != nil {
		return nil, err
	}
	if err := adapters.ValidateName("log", log); err != nil {
		return nil, adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	topic := b.logTopic(log)
	out := map[string][]byte{}
	resp, err := b.client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{
		topic: {kafkago.FirstOffsetOf(0), kafkago.LastOffsetOf(0)}}})
	if errors.Is(err, kafkago.UnknownTopicOrPartition) {
		return out, nil
	}
	if err != nil {
		return nil, mapCtxErr(ctx, op, err)
	}
	var first, end int64 = -1, -1
	for _, po := range resp.Topics[topic] {
		if errors.Is(po.Error, kafkago.UnknownTopicOrPartition) {
			return out, nil
		}
		if po.Error != nil {
			return nil, mapCtxErr(ctx, op, po.Error)
		}
		if po.Partition == 0 {
			first, end = po.FirstOffset, po.LastOffset
		}
	}
	if end < 0 {
		return out, nil // no such topic
	}
	if first < 0 {
		first = 0
	}
	if end <= first {
		return out, nil
	}
	if err := b.refresh(ctx, topic); err != nil {
		return nil, mapCtxErr(ctx, op, err)
	}
	off, empty := first, 0
	for off < end {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fr, err := b.client.Fetch(ctx, &kafkago.FetchRequest{Topic: topic, Partition: 0, Offset: off,
			MinBytes: 1, MaxBytes: 4 << 20, MaxWait: time.Second})
		if err != nil {
			return nil, mapCtxErr(ctx, op, err)
		}
		if fr.Error != nil {
			return nil, mapCtxErr(ctx, op, fr.Error)
		}
		got := 0
		for {
			rec, err := fr.Records.ReadRecord()
			if err != nil {
				break
			}
			if rec.Offset < off {
				continue
			}
			off = rec.Offset + 1
			got++
			if rec.Key == nil {
				continue
			}
			k := make([]byte, rec.Key.Len())
			if _, err := readFull(rec.Key, k); err != nil {
				return nil, mapCtxErr(ctx, op, err)
			}
			if rec.Value == nil {
				delete(out, string(k))
				continue
			}
			v := make([]byte, rec.Value.Len())
			if _, err := readFull(rec.Value, v); err != nil {
				return nil, mapCtxErr(ctx, op, err)
			}
			out[string(k)] = v
		}
		if got == 0 {
			if empty++; empty >= 5 {
				return nil, adapters.Errorf(adapters.ErrUnavailable, op, "no records at offset %d of %d", off, end)
			}
		}
	}
	return out, nil
}

// Forget implements adapters.Retainer: a tombstone (a record with a null
// value) for the key, which compaction removes with the key's earlier
// records.
func (b *Broker) Forget(ctx context.Context, log, key string) error {
	op := fmt.Sprintf("kafka: forget %q", log)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	if err := adapters.ValidateRetained(op, log, key); err != nil {
		return err
	}
	topic := b.logTopic(log)
	if err := b.createTopics(ctx, op, b.topicConfig(topic, 1, kafkago.ConfigEntry{ConfigName: "cleanup.policy", ConfigValue: "compact"})); err != nil {
		return err
	}
	return b.write(ctx, op, kafkago.Message{Topic: topic, Key: []byte(key)})
}
