package signed

import (
	"context"
	"fmt"

	"github.com/clusterbus/clusterbus/adapters"
)

var _ adapters.Retainer = (*Broker)(nil)

// Retain signs value for key of log (kind "retained": the MAC covers the
// cluster, the log and the key, so a value cannot be moved to another key or
// log) and retains the envelope in the inner broker. It fails with
// adapters.ErrUnsupported if the inner broker keeps nothing (see
// adapters.RetainerOf).
func (s *Broker) Retain(ctx context.Context, log, key string, value []byte) error {
	op := fmt.Sprintf("signed: retain %q", log)
	r, ok := adapters.RetainerOf(s.inner)
	if !ok {
		return adapters.Errorf(adapters.ErrUnsupported, op, "%s retains nothing", s.inner.Capabilities().Name)
	}
	if err := adapters.ValidateRetained(op, log, key); err != nil {
		return err
	}
	keys := s.cfg.Keys.Keys()
	if len(keys) == 0 {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "no signing key")
	}
	body, err := encode(keys[0], &envelope{
		Kind: kindRetained, Cluster: s.cfg.Cluster, Destination: log, Sender: s.cfg.Sender,
		Incarnation: s.inc, Seq: s.seq.Add(1), Sent: s.cfg.Clock.Now().UnixNano(),
		Key: key, Body: value,
	})
	if err != nil {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "%v", err)
	}
	return r.Retain(ctx, log, key, body)
}

// Retained returns the values of log that verify (signed by a key of the
// ring, for this cluster, this log and the key they are stored under); the
// others are left out, counted in clusterbus_messages_rejected_total and
// logged like rejected messages. Retained values have no freshness limit.
func (s *Broker) Retained(ctx context.Context, log string) (map[string][]byte, error) {
	op := fmt.Sprintf("signed: retained %q", log)
	r, ok := adapters.RetainerOf(s.inner)
	if !ok {
		return nil, adapters.Errorf(adapters.ErrUnsupported, op, "%s retains nothing", s.inner.Capabilities().Name)
	}
	raw, err := r.Retained(ctx, log)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(raw))
	for k, v := range raw {
		e, rej := s.open(kindRetained, log, adapters.Message{Body: v})
		if rej.Reason == "" && e.Key != k {
			rej = Rejection{Reason: ReasonWrongDestination, Kind: kindName(kindRetained), Destination: log, Sender: e.Sender,
				Detail: fmt.Sprintf("signed for key %q, stored under %q", e.Key, k)}
		}
		if rej.Reason != "" {
			s.reject(rej)
			continue
		}
		out[k] = e.Body
	}
	return out, nil
}

// Forget passes through: removing a key needs no signature (whoever can
// write to the broker can delete from it anyway; a forgotten value is
// simply missing at the next Retained).
func (s *Broker) Forget(ctx context.Context, log, key string) error {
	r, ok := adapters.RetainerOf(s.inner)
	if !ok {
		return adapters.Errorf(adapters.ErrUnsupported, fmt.Sprintf("signed: forget %q", log), "%s retains nothing", s.inner.Capabilities().Name)
	}
	return r.Forget(ctx, log, key)
}
