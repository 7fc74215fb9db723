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
// parent context; "hold" makes a timer per lease, "keeper" re-arms one
// Keeper's timer per goroutine, as each workqueue handler does.
//
//	go test -run '^$' -bench HoldRelease -benchmem ./leasing
func BenchmarkHoldRelease(b *testing.B) {
	cfg := leasing.Config{Length: 30 * time.Second}.WithDefaults()
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := fixedDelivery{deadline: time.Now().Add(time.Hour)}
	hold := map[string]func() func(context.Context, adapters.Delivery) (context.Context, *leasing.Lease){
		"hold": func() func(context.Context, adapters.Delivery) (context.Context, *leasing.Lease) {
			return func(ctx context.Context, d adapters.Delivery) (context.Context, *leasing.Lease) {
				return leasing.Hold(ctx, d, cfg, leasing.Options{})
			}
		},
		"keeper": func() func(context.Context, adapters.Delivery) (context.Context, *leasing.Lease) {
			return leasing.NewKeeper(cfg, leasing.Options{}).Hold
		},
	}
	for _, name := range []string{"hold", "keeper"} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				h := hold[name]() // one Keeper per goroutine
				for pb.Next() {
					_, l := h(parent, d)
					l.Release()
				}
			})
		})
	}
}
