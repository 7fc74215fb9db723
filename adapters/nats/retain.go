package nats

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/clusterbus/clusterbus/adapters"
)

var _ adapters.Retainer = (*Broker)(nil)

// logStream and logSubject name a retained log on the server: stream
// "<prefix>_LOG_<log>" on subjects "<prefix>.log.<log>.<key>", the key
// base64url-encoded (without padding) so that any key is one subject token.
func (b *Broker) logStream(log string) string { return b.streamBase + "_LOG_" + log }
func (b *Broker) logSubject(log, key string) string {
	return b.opts.Prefix + ".log." + log + "." + base64.RawURLEncoding.EncodeToString([]byte(key))
}

// ensureLog creates the log's stream once per connection: file storage,
// Options.Replicas, one message per subject (the last value of each key).
func (b *Broker) ensureLog(ctx context.Context, op, log string) error {
	b.mu.Lock()
	done := b.logs[log]
	b.mu.Unlock()
	if done {
		return nil
	}
	err := retryTransient(ctx, apiTimeout, func(ctx context.Context) error {
		_, err := b.ensureStream(ctx, jetstream.StreamConfig{
			Name:              b.logStream(log),
			Description:       "clusterbus retained log " + log + ": last value per key",
			Subjects:          []string{b.opts.Prefix + ".log." + log + ".>"},
			Storage:           jetstream.FileStorage,
			Replicas:          b.opts.Replicas,
			MaxMsgsPerSubject: 1,
			Discard:           jetstream.DiscardOld,
		}, false)
		return err
	})
	if err != nil {
		return b.mapCtxErr(ctx, op, err)
	}
	b.mu.Lock()
	if b.logs == nil {
		b.logs = map[string]bool{}
	}
	b.logs[log] = true
	b.mu.Unlock()
	return nil
}

// Retain implements adapters.Retainer: a JetStream publish to the key's
// subject of the log's stream, which keeps one message per subject; it
// returns once the stream acknowledged it (stored on a quorum of replicas).
func (b *Broker) Retain(ctx context.Context, log, key string, value []byte) error {
	op := fmt.Sprintf("retain %q", log)
	if err := adapters.ValidateRetained("nats: "+op, log, key); err != nil {
		return err
	}
	if err := b.checkQueue(ctx, op); err != nil {
		return err
	}
	if lim := b.caps.MaxMessageSize; lim > 0 && len(value) > lim-len(key)*2 {
		return errf(adapters.ErrTooLarge, op, "%d bytes, limit %d", len(value), lim-len(key)*2)
	}
	if err := b.ensureLog(ctx, op, log); err != nil {
		return err
	}
	// A try whose acknowledgement does not come within apiTimeout is sent
	// again under the same message ID: if the first one was stored, the
	// stream drops the second as a duplicate, so a later Retain of the key
	// by another node that landed in between is not overwritten.
	id := nuid.Next()
	publish := func() error {
		return retryTransient(ctx, apiTimeout, func(ctx context.Context) error {
			_, err := b.js.Publish(ctx, b.logSubject(log, key), value, jetstream.WithMsgID(id))
			return err
		})
	}
	err := publish()
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
		// The stream was deleted behind our back: create it again once.
		b.mu.Lock()
		delete(b.logs, log)
		b.mu.Unlock()
		if err := b.ensureLog(ctx, op, log); err != nil {
			return err
		}
		err = publish()
	}
	return b.mapCtxErr(ctx, op, err)
}

// Retained implements adapters.Retainer: it reads the log's stream from
// the start with an ordered consumer (one message per key) until nothing is
// pending. A log never retained to is an empty map.
func (b *Broker) Retained(ctx context.Context, log string) (map[string][]byte, error) {
	op := fmt.Sprintf("retained %q", log)
	if err := adapters.ValidateName("log", log); err != nil {
		return nil, adapters.Wrap(adapters.ErrInvalidArgument, "nats: "+op, err)
	}
	if err := b.checkQueue(ctx, op); err != nil {
		return nil, err
	}
	var out map[string][]byte
	// No bound on the whole try: a long log takes many fetches. readLog
	// bounds each of its requests instead.
	err := retryTransient(ctx, 0, func(ctx context.Context) error {
		var err error
		out, err = b.readLog(ctx, op, log)
		return err
	})
	var ae *adapters.Error
	if errors.As(err, &ae) {
		return nil, err
	}
	if err != nil {
		return nil, b.mapCtxErr(ctx, op, err)
	}
	return out, nil
}

// readLog is one try of Retained. Its errors are the client's, unmapped,
// so that Retained can tell "no responders" from the rest.
func (b *Broker) readLog(ctx context.Context, op, log string) (map[string][]byte, error) {
	out := map[string][]byte{}
	st, err := bounded(ctx, func(ctx context.Context) (jetstream.Stream, error) { return b.js.Stream(ctx, b.logStream(log)) })
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	if st.CachedInfo().State.Msgs == 0 {
		return out, nil
	}
	cons, err := bounded(ctx, func(ctx context.Context) (jetstream.Consumer, error) {
		return st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy})
	})
	if err != nil {
		return nil, err
	}
	prefix := b.opts.Prefix + ".log." + log + "."
	// Ask for no more than is pending: a fetch returns once it has its
	// count, and otherwise waits out FetchMaxWait (a start that waited 2 s
	// for a log of a few keys).
	const maxFetch = 1000
	want := maxFetch
	if info, err := bounded(ctx, cons.Info); err == nil && info.NumPending > 0 && info.NumPending < maxFetch {
		want = int(info.NumPending)
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		batch, err := cons.Fetch(want, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		n, done := 0, false
		for m := range batch.Messages() {
			n++
			if k, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(m.Subject(), prefix)); err == nil && len(k) > 0 {
				out[string(k)] = m.Data()
			}
			if md, err := m.Metadata(); err == nil {
				done = md.NumPending == 0
				want = int(min(max(md.NumPending, 1), maxFetch))
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			return nil, err
		}
		if done {
			return out, nil
		}
		if n == 0 {
			return nil, errf(adapters.ErrUnavailable, op, "the stream stopped sending after %d of its %d keys", len(out), st.CachedInfo().State.Msgs)
		}
	}
}

// Forget implements adapters.Retainer: it purges the key's subject from
// the log's stream.
func (b *Broker) Forget(ctx context.Context, log, key string) error {
	op := fmt.Sprintf("forget %q", log)
	if err := adapters.ValidateRetained("nats: "+op, log, key); err != nil {
		return err
	}
	if err := b.checkQueue(ctx, op); err != nil {
		return err
	}
	err := retryTransient(ctx, apiTimeout, func(ctx context.Context) error {
		st, err := b.js.Stream(ctx, b.logStream(log))
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return st.Purge(ctx, jetstream.WithPurgeSubject(b.logSubject(log, key)))
	})
	return b.mapCtxErr(ctx, op, err)
}
