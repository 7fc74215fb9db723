package queuestats

import (
	"context"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/adapters"
)

// Stat is the last poll of one queue.
type Stat struct {
	adapters.QueueStats
	// Supported is false when the broker cannot report counts at all.
	Supported bool      `json:"supported"`
	Error     string    `json:"error,omitempty"`
	At        time.Time `json:"at,omitzero"`
}

// Watcher polls the stats of a set of queues.
type Watcher struct {
	b        adapters.Broker
	interval time.Duration
	log      *slog.Logger

	depth, inFlight, dead, oldest *prometheus.GaugeVec

	mu     sync.Mutex
	queues map[string]*Stat
	kick   chan struct{}
}

// New returns a watcher of b's queues that polls every interval (default
// 5s) and registers its gauges with reg (if not nil).
func New(b adapters.Broker, reg prometheus.Registerer, interval time.Duration, log *slog.Logger) *Watcher {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	g := func(name, help string) *prometheus.GaugeVec {
		v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "clusterbus", Subsystem: "queue", Name: name, Help: help}, []string{"queue"})
		if reg != nil {
			reg.MustRegister(v)
		}
		return v
	}
	return &Watcher{b: b, interval: interval, log: log, queues: map[string]*Stat{}, kick: make(chan struct{}, 1),
		depth:    g("depth", "Items waiting in the queue, as the broker reports (NaN: the broker cannot tell)."),
		inFlight: g("in_flight", "Items of the queue held under a lease (NaN: the broker cannot tell)."),
		dead:     g("dead_letters", "Items in the queue's dead-letter queue (NaN: the broker cannot tell)."),
		oldest:   g("oldest_age_seconds", "Age of the queue's oldest unacknowledged item (NaN: the broker cannot tell)."),
	}
}

// Watch adds queues to the watched set; their series appear at once, at
// zero, and are polled from the next poll on.
func (w *Watcher) Watch(queues ...string) {
	w.mu.Lock()
	for _, q := range queues {
		if _, ok := w.queues[q]; ok || q == "" {
			continue
		}
		w.queues[q] = &Stat{QueueStats: adapters.QueueStats{Queue: q}, Supported: w.b.Capabilities().QueueStats.Available()}
		for _, g := range []*prometheus.GaugeVec{w.depth, w.inFlight, w.dead, w.oldest} {
			g.WithLabelValues(q).Set(0)
		}
	}
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Run polls until ctx is done.
func (w *Watcher) Run(ctx context.Context) {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		w.Poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.kick:
		}
	}
}

// Poll asks the broker once for every watched queue.
func (w *Watcher) Poll(ctx context.Context) {
	w.mu.Lock()
	names := make([]string, 0, len(w.queues))
	for q := range w.queues {
		names = append(names, q)
	}
	w.mu.Unlock()
	for _, q := range names {
		pctx, cancel := context.WithTimeout(ctx, w.interval)
		qs, err := adapters.Stats(pctx, w.b, q)
		cancel()
		st := Stat{QueueStats: qs, Supported: w.b.Capabilities().QueueStats.Available(), At: time.Now()}
		st.Queue = q
		if err != nil {
			st.Error = err.Error()
			st.Depth, st.InFlight, st.DeadLetters, st.OldestAge = adapters.Unknown, adapters.Unknown, adapters.Unknown, adapters.Unknown
			if ctx.Err() == nil && st.Supported {
				w.log.Debug("queuestats: poll failed", "queue", q, "err", err)
			}
		}
		w.depth.WithLabelValues(q).Set(count(st.Depth))
		w.inFlight.WithLabelValues(q).Set(count(st.InFlight))
		w.dead.WithLabelValues(q).Set(count(st.DeadLetters))
		if st.OldestAge == adapters.Unknown {
			w.oldest.WithLabelValues(q).Set(math.NaN())
		} else {
			w.oldest.WithLabelValues(q).Set(st.OldestAge.Seconds())
		}
		w.mu.Lock()
		w.queues[q] = &st
		w.mu.Unlock()
	}
}

func count(n int64) float64 {
	if n == adapters.Unknown {
		return math.NaN()
	}
	return float64(n)
}

// Snapshot returns the last poll of each watched queue, by name.
func (w *Watcher) Snapshot() []Stat {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Stat, 0, len(w.queues))
	for _, s := range w.queues {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Queue < out[j].Queue })
	return out
}
