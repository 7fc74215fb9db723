package leasing_test

import (
	"context"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/leasing"
)

// fixedDelivery is a delivery whose lease never needs renewing within the
// benchmark: Hold only arms its timer.
type fixedDelivery struct{ deadline time.Time }

func (d fixedDelivery) Message() adapters.Message                   { return adapters.Message{ID: "x"} }
func (d fixedDelivery) Attempt() int                                { return 1 }
func (d fixedDelivery) Queue() string                               { return "q" }
func (d fixedDelivery) LeaseDeadline() time.Time                    { return d.deadline }
func (d fixedDelivery) Ack(context.Context) error                   { return nil }
func (d fixedDelivery) Nack(context.Context, time.Duration) error   { return nil }
func (d fixedDelivery) Extend(context.Context, time.Duration) error { return nil }
func (d fixedDelivery) DeadLetter(context.Context, string) error    { return nil }

// The cost a short handler pays for its lease: Hold then Release, as the
// workqueue does around every item, from parallel workers sharing one
// parent context.
//
//	go test -run '^$' -bench HoldRelease -benchmem ./leasing
func BenchmarkHoldRelease(b *testing.B) {
	cfg := leasing.Config{Length: 30 * time.Second}.WithDefaults()
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := fixedDelivery{deadline: time.Now().Add(time.Hour)}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, l := leasing.Hold(parent, d, cfg, leasing.Options{})
			l.Release()
		}
	})
}

// The same with a Keeper per goroutine, as each workqueue handler has: one
// timer re-armed per item instead of one made per item.
func BenchmarkKeeperHoldRelease(b *testing.B) {
	cfg := leasing.Config{Length: 30 * time.Second}.WithDefaults()
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := fixedDelivery{deadline: time.Now().Add(time.Hour)}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		k := leasing.NewKeeper(cfg, leasing.Options{})
		for pb.Next() {
			_, l := k.Hold(parent, d)
			l.Release()
		}
	})
}
