package console

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/bus"
	"github.com/clusterbus/clusterbus/flows"
	"github.com/clusterbus/clusterbus/queuestats"
)

//go:embed static
var static embed.FS

// Config is what the console shows. Node is required; the rest may be nil.
type Config struct {
	Node *bus.Node
	// Flows is the node's flow engine, nil if it runs none.
	Flows *flows.Engine
	// Queues watches the node's queues, nil if none.
	Queues *queuestats.Watcher
	// Gatherer is read for the alert counters (rejected messages,
	// subscription gaps, cache clears).
	Gatherer prometheus.Gatherer
	// Broker names the broker and what it supports, for the header.
	Broker string
	Logger *slog.Logger
	// Interval is how often the snapshot is rebuilt while a page is open.
	// Default 250ms.
	Interval time.Duration
}

// Console serves the page and its data.
type Console struct {
	cfg    Config
	client *http.Client

	flows atomic.Pointer[flows.Engine]

	mu       sync.Mutex
	subs     map[chan []byte]struct{}
	last     []byte
	stop     context.CancelFunc
	lastSig  []byte
	lastPush time.Time
	counter  counterCache
}

// New returns a console for cfg.
func New(cfg Config) *Console {
	if cfg.Interval <= 0 {
		cfg.Interval = 250 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Console{cfg: cfg, client: &http.Client{Timeout: 10 * time.Second}, subs: map[chan []byte]struct{}{}}
	c.flows.Store(cfg.Flows)
	return c
}

// SetFlows sets the flow engine shown, for an engine started after the
// console.
func (c *Console) SetFlows(e *flows.Engine) { c.flows.Store(e) }

// Routes adds the console to mux:
//
//	GET  /                       the page
//	GET  /console/{file}         its script and style
//	GET  /api/console            the snapshot (Snapshot) as JSON
//	GET  /api/console/events     the snapshot as server-sent events, on change
//	POST /api/members/{id}/drain take a member out of service (body {})
func (c *Console) Routes(mux *http.ServeMux) {
	sub, _ := fs.Sub(static, "static")
	files := http.FileServerFS(sub)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:")
		http.ServeFileFS(w, r, sub, "index.html")
	})
	mux.Handle("GET /console/", http.StripPrefix("/console/", cacheable(files)))
	mux.HandleFunc("GET /api/console", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(c.build())
	})
	mux.HandleFunc("GET /api/console/events", c.serveEvents)
	mux.HandleFunc("POST /api/members/{id}/drain", c.serveDrain)
}

// Handler returns the console on its own mux; see Routes.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	c.Routes(mux)
	return mux
}

func cacheable(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache") // revalidate: the binary may have changed
		h.ServeHTTP(w, r)
	})
}

// Snapshot is the console's document.
type Snapshot struct {
	Cluster bus.ClusterJSON   `json:"cluster"`
	Broker  string            `json:"broker,omitempty"`
	Queues  []queuestats.Stat `json:"queues"`
	Flows   *FlowsView        `json:"flows,omitempty"`
	Alerts  []Alert           `json:"alerts"`
	// Counters are the cluster-wide counters that alerts are built from.
	Counters Counters  `json:"counters"`
	Now      time.Time `json:"now"`

	nodeAlerts []string // the node's own (WithAlerts), already in Cluster.Alerts
}

// FlowsView is the flows part of the snapshot.
type FlowsView struct {
	Registered   []string       `json:"registered"`
	Recent       []flows.Status `json:"recent"`        // the latest 100, any state
	DeadLettered []flows.Status `json:"dead_lettered"` // the latest 50
	Counts       map[string]int `json:"counts"`        // by state, among the recent ones
}

// Alert is one thing an operator should look at.
type Alert struct {
	Level string `json:"level"` // "error" or "warn"
	Text  string `json:"text"`
}

// Counters are read from the node's metrics.
type Counters struct {
	Rejected         map[string]float64 `json:"rejected"`
	SubscriptionGaps float64            `json:"subscription_gaps"`
	CacheClears      float64            `json:"cache_clears"`        // sent + received
	CacheClearRate   float64            `json:"cache_clear_per_min"` // over the last minute or so
}

func (c *Console) snapshot() Snapshot {
	n := c.cfg.Node
	st := n.Status()
	cl := st.JSON()
	cl.Terms, cl.Duties, cl.Alerts = n.Terms(), n.Duties(), n.Alerts()
	s := Snapshot{Cluster: cl, Broker: c.cfg.Broker, Queues: []queuestats.Stat{}, Now: st.Now.UTC()}
	if c.cfg.Queues != nil {
		s.Queues = c.cfg.Queues.Snapshot()
	}
	if e := c.flows.Load(); e != nil {
		recent := e.List(flows.ListOptions{Limit: 100})
		fv := &FlowsView{Registered: e.Flows(), Recent: nonNil(recent), DeadLettered: nonNil(e.List(flows.ListOptions{State: flows.StateDeadLettered, Limit: 50})),
			Counts: map[string]int{}}
		for _, x := range recent {
			fv.Counts[x.State]++
		}
		s.Flows = fv
	}
	s.Counters = c.counters(st.Now)
	s.nodeAlerts = cl.Alerts
	s.Alerts = alerts(st, s)
	return s
}

func alerts(st bus.Status, s Snapshot) []Alert {
	out := []Alert{}
	add := func(level, format string, a ...any) { out = append(out, Alert{level, fmt.Sprintf(format, a...)}) }
	if !st.Connected {
		add("error", "Broker disconnected: %s", st.Reason)
	}
	if !st.Serving {
		add("error", "This node (%s) does not serve: %s", st.Local, st.Reason)
	}
	for _, a := range s.nodeAlerts {
		add("error", "%s", a)
	}
	if st.Lead == "" {
		add("error", "No lead: lead duties do not run")
	}
	for _, m := range st.Members {
		if m.Local {
			continue
		}
		switch m.State {
		case bus.StateActive:
		case bus.StateUnreachable:
			add("error", "Member %s (%s) is unreachable: no heartbeat for %s", m.Host, m.ID, st.Now.Sub(m.LastHeartbeat).Round(time.Second))
		default:
			add("warn", "Member %s (%s) is %s: %s", m.Host, m.ID, m.State, m.Reason)
		}
		if m.ClockSkewed {
			add("warn", "Clock skew: %s (%s) is %s off the cluster", m.Host, m.ID, m.ClockSkew.Round(time.Millisecond))
		}
	}
	var rejected float64
	var reasons []string
	for r, v := range s.Counters.Rejected {
		if v > 0 {
			rejected += v
			reasons = append(reasons, fmt.Sprintf("%s %d", r, int(v)))
		}
	}
	if rejected > 0 {
		sort.Strings(reasons)
		add("warn", "%d coordination messages rejected (%s)", int(rejected), strings.Join(reasons, ", "))
	}
	if s.Counters.SubscriptionGaps > 0 {
		add("warn", "The cluster topic reported %d gaps: caches were cleared", int(s.Counters.SubscriptionGaps))
	}
	for _, q := range s.Queues {
		if q.DeadLetters > 0 {
			add("warn", "Queue %s has %d dead letters", q.Queue, q.DeadLetters)
		}
	}
	if s.Counters.CacheClearRate > 600 {
		add("warn", "Cache clears at %.0f a minute", s.Counters.CacheClearRate)
	}
	return out
}

// counterCache rereads the registry at most every 2s: gathering runs every
// collector (Go runtime, process), which a 250ms page refresh need not pay.
type counterCache struct {
	at       time.Time
	c        Counters
	prevAt   time.Time
	prevClrs float64
}

func (c *Console) counters(now time.Time) Counters {
	c.mu.Lock()
	defer c.mu.Unlock()
	cc := &c.counter
	if c.cfg.Gatherer == nil || now.Sub(cc.at) < 2*time.Second {
		return cc.c
	}
	out := Counters{Rejected: map[string]float64{}, CacheClearRate: cc.c.CacheClearRate}
	mfs, err := c.cfg.Gatherer.Gather()
	if err != nil {
		c.cfg.Logger.Debug("console: gather metrics", "err", err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			label := func(name string) string {
				for _, l := range m.GetLabel() {
					if l.GetName() == name {
						return l.GetValue()
					}
				}
				return ""
			}
			switch mf.GetName() {
			case "clusterbus_heartbeats_rejected_total", "clusterbus_messages_rejected_total":
				out.Rejected[label("reason")] += m.GetCounter().GetValue()
			case "clusterbus_subscription_gaps_total":
				out.SubscriptionGaps = m.GetCounter().GetValue()
			case "clusterbus_cache_invalidations_total":
				if k := label("kind"); k == "sent" || k == "received" {
					out.CacheClears += m.GetCounter().GetValue()
				}
			}
		}
	}
	if !cc.prevAt.IsZero() && now.Sub(cc.prevAt) >= 30*time.Second {
		out.CacheClearRate = (out.CacheClears - cc.prevClrs) / now.Sub(cc.prevAt).Minutes()
		cc.prevAt, cc.prevClrs = now, out.CacheClears
	}
	if cc.prevAt.IsZero() {
		cc.prevAt, cc.prevClrs = now, out.CacheClears
	}
	cc.at, cc.c = now, out
	return out
}

// signature is the snapshot without what changes on every heartbeat (the
// members' last heartbeat, the clock).
func signature(s Snapshot) []byte {
	s.Now = time.Time{}
	s.Cluster.Now = time.Time{}
	s.Cluster.Nodes = append([]bus.NodeJSON(nil), s.Cluster.Nodes...)
	for i := range s.Cluster.Nodes {
		s.Cluster.Nodes[i].LastHeartbeat = time.Time{}
		s.Cluster.Nodes[i].ClockSkewMS = 0
	}
	s.Queues = append([]queuestats.Stat(nil), s.Queues...)
	for i := range s.Queues {
		s.Queues[i].At = time.Time{}
		s.Queues[i].OldestAge = 0
	}
	b, _ := json.Marshal(s)
	return b
}

func (c *Console) build() []byte {
	b, err := json.Marshal(c.snapshot())
	if err != nil {
		return []byte(`{"error":` + fmt.Sprintf("%q", err.Error()) + `}`)
	}
	return b
}

// serveEvents streams the snapshot: at once, then whenever it changes.
func (c *Console) serveEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "console: streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	ch := c.subscribe()
	defer c.unsubscribe(ch)
	// The server's WriteTimeout would end the stream: each write gets its
	// own deadline instead.
	rc := http.NewResponseController(w)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		fl.Flush()
		return true
	}
	if !write(c.build()) {
		return
	}
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case b := <-ch:
			if !write(b) {
				return
			}
		case <-keepalive.C:
			_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.WriteString(w, ": keepalive\n\n"); err != nil {
				return
			}
			fl.Flush()
		}
	}
}

func (c *Console) subscribe() chan []byte {
	ch := make(chan []byte, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs[ch] = struct{}{}
	if c.stop == nil {
		ctx, cancel := context.WithCancel(context.Background())
		c.stop = cancel
		go c.produce(ctx)
	}
	return ch
}

func (c *Console) unsubscribe(ch chan []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.subs, ch)
	if len(c.subs) == 0 && c.stop != nil {
		c.stop()
		c.stop, c.last, c.lastSig = nil, nil, nil
	}
}

// produce rebuilds the snapshot every Interval while pages are open and
// hands it to each of them when it changed; a page that has not taken the
// previous one gets the newer instead.
func (c *Console) produce(ctx context.Context) {
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		snap := c.snapshot()
		sig := signature(snap)
		b, err := json.Marshal(snap)
		if err != nil {
			continue
		}
		c.mu.Lock()
		// A change that matters goes out at once; the heartbeat ages
		// and the clock alone refresh the page once a second.
		if ctx.Err() != nil || (bytes.Equal(sig, c.lastSig) && time.Since(c.lastPush) < time.Second) || bytes.Equal(b, c.last) {
			c.mu.Unlock()
			continue
		}
		c.last, c.lastSig, c.lastPush = b, sig, time.Now()
		for ch := range c.subs {
			select {
			case <-ch:
			default:
			}
			ch <- b
		}
		c.mu.Unlock()
	}
}

// serveDrain takes a member out of service: this node drains itself; for
// another member the request goes to the HTTP address it announces.
func (c *Console) serveDrain(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	n := c.cfg.Node
	if id == n.ID() {
		c.cfg.Logger.Warn("console: draining this node on an operator's request", "remote", r.RemoteAddr)
		n.Drain()
		writeJSON(w, http.StatusOK, map[string]string{"drained": id})
		return
	}
	if r.Header.Get("X-Clusterbus-Forwarded") != "" {
		writeJSON(w, http.StatusMisdirectedRequest, map[string]string{"error": fmt.Sprintf("console: this node is %s, not %s", n.ID(), id)})
		return
	}
	var addr string
	for _, m := range n.Status().Members {
		if m.ID == id {
			addr = m.HTTPAddr
		}
	}
	if addr == "" || !(strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://")) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("console: member %q is unknown here or announces no HTTP address", id)})
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, strings.TrimRight(addr, "/")+"/api/members/"+id+"/drain", strings.NewReader("{}"))
	if err != nil {
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Clusterbus-Forwarded", n.ID())
	if a := r.Header.Get("Authorization"); a != "" {
		req.Header.Set("Authorization", a)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": fmt.Sprintf("console: forward to %s at %s: %v", id, addr, err)})
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, io.LimitReader(resp.Body, 64<<10))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
