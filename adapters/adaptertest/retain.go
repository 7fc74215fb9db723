package adaptertest

import (
	"errors"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
)

func (s *suite) retainCases() []testCase {
	return []testCase{
		{"RetainedLastValuePerKeyAcrossClients", s.testRetain},
	}
}

// retainer returns b's Retainer, or skips: retention is optional.
func retainer(t *testing.T, b adapters.Broker) adapters.Retainer {
	t.Helper()
	r, ok := adapters.RetainerOf(b)
	if !ok {
		t.Skipf("%s keeps nothing: not an adapters.Retainer (optional)", b.Capabilities().Name)
	}
	return r
}

// A Retainer keeps the last value of each key of a log, for another
// client to read: overwritten keys show their last value, forgotten keys
// are gone, an empty value is kept as empty, logs are separate, a log
// never written is an empty map, and a bad log name or key is
// ErrInvalidArgument.
func (s *suite) testRetain(t *testing.T) {
	r := retainer(t, s.open(t))
	ctx := s.ctx(t)
	log, other := unique("log"), unique("log")
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("Retain k1", r.Retain(ctx, log, "k1", []byte("first")))
	must("Retain k2", r.Retain(ctx, log, "k2", []byte("two")))
	must("Retain k1 again", r.Retain(ctx, log, "k1", []byte("last")))
	must("Retain empty", r.Retain(ctx, log, "empty", nil))
	must("Retain gone", r.Retain(ctx, log, "gone", []byte("x")))
	must("Forget gone", r.Forget(ctx, log, "gone"))
	must("Forget never", r.Forget(ctx, log, "never-retained"))
	must("Retain other", r.Retain(ctx, other, "k1", []byte("other log")))

	got, err := retainer(t, s.open(t)).Retained(ctx, log)
	must("Retained", err)
	want := map[string]string{"k1": "last", "k2": "two", "empty": ""}
	if len(got) != len(want) {
		t.Fatalf("Retained = %q, want %q", got, want)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || string(g) != v {
			t.Fatalf("Retained[%q] = %q (present %v), want %q", k, g, ok, v)
		}
	}
	if got, err := r.Retained(ctx, unique("never")); err != nil || len(got) != 0 {
		t.Errorf("Retained of a log never written = %q, %v; want empty, nil", got, err)
	}
	if err := r.Retain(ctx, "bad log", "k", nil); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Errorf("Retain to a bad log name = %v, want ErrInvalidArgument", err)
	}
	if err := r.Retain(ctx, log, "", nil); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Errorf("Retain of an empty key = %v, want ErrInvalidArgument", err)
	}
}
