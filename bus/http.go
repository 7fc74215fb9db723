package bus

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/clusterbus/clusterbus/adapters"
)

// ClusterJSON is the body of GET /api/cluster.
type ClusterJSON struct {
	Cluster string     `json:"cluster"`
	Local   string     `json:"local"`
	Lead    string     `json:"lead"`
	Term    uint64     `json:"term"`
	Nodes   []NodeJSON `json:"nodes"`
	// The local node's standing: its state, why, whether it serves and
	// whether its broker link works.
	State     string `json:"local_state,omitempty"`
	Reason    string `json:"local_reason,omitempty"`
	Serving   bool   `json:"serving"`
	Connected bool   `json:"broker_connected"`
	// Terms are the lead terms this node saw begin, oldest first; Duties
	// the lead duties registered here.
	Terms  []TermChange `json:"terms,omitempty"`
	Duties []DutyStatus `json:"duties,omitempty"`
	Now    time.Time    `json:"now,omitzero"`
	// Alerts are conditions an operator should look at that do not
	// change the node's state (see WithAlerts).
	Alerts []string `json:"alerts,omitempty"`
}

// NodeJSON is one member in ClusterJSON.
type NodeJSON struct {
	ID            string    `json:"id"`
	Host          string    `json:"host"`
	IP            string    `json:"ip"`
	StartedAt     time.Time `json:"started_at"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	Lead          bool      `json:"lead"`
	Local         bool      `json:"local"`
	State         string    `json:"state"`
	Version       string    `json:"version"`
	ClockSkewMS   int64     `json:"clock_skew_ms"`
	ClockSkewed   bool      `json:"clock_skewed,omitempty"`
	HTTPAddr      string    `json:"http_addr,omitempty"`
	Reason        string    `json:"reason,omitempty"`
}

// JSON converts the status to the /api/cluster document.
func (s Status) JSON() ClusterJSON {
	out := ClusterJSON{Cluster: s.Cluster, Local: s.Local, Lead: s.Lead, Term: s.Term, Nodes: []NodeJSON{},
		State: s.State, Reason: s.Reason, Serving: s.Serving, Connected: s.Connected, Now: s.Now.UTC()}
	for _, m := range s.Members {
		out.Nodes = append(out.Nodes, NodeJSON{
			ID: m.ID, Host: m.Host, IP: m.IP, StartedAt: m.StartedAt.UTC(), LastHeartbeat: m.LastHeartbeat.UTC(),
			Lead: m.Lead, Local: m.Local, State: m.State, Version: m.Version,
			ClockSkewMS: m.ClockSkew.Milliseconds(), ClockSkewed: m.ClockSkewed, HTTPAddr: m.HTTPAddr, Reason: m.Reason,
		})
	}
	return out
}

// DownRequest is the body of POST /api/cluster/down.
type DownRequest struct {
	Node string `json:"node"`
}

// CacheClearRequest is the body of POST /api/cache/clear.
type CacheClearRequest struct {
	Region string   `json:"region"`
	Keys   []string `json:"keys,omitempty"`
}

// Handler serves the node's HTTP endpoints; see Mount.
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	n.Mount(mux)
	return mux
}

// Mount adds the node's endpoints to mux:
//
//	GET|HEAD /ha/health   200 "ok" or 503 with a one-line reason
//	GET      /livez       200 while the process runs the node
//	GET      /readyz      same as /ha/health
//	GET      /api/cluster the cluster view as JSON (ClusterJSON)
//	POST     /api/cache/clear  {"region": R, "keys": [...]} broadcast
//	POST     /api/cluster/down {"node": ID} down an unreachable member (Node.Down)
//	GET      /api/settings          {"settings": [Setting...]} (?prefix=P)
//	GET      /api/settings/{key}    Setting, 404 if unset
//	PUT      /api/settings/{key}    {"value": "..."}: set it on every node (Node.Settings)
//	DELETE   /api/settings/{key}    unset it on every node
//	GET      /metrics     Prometheus, if the registerer is a Gatherer
//
// The operator's console (package console) serves "/".
func (n *Node) Mount(mux *http.ServeMux) {
	n.mountSettings(mux)
	health := func(w http.ResponseWriter, r *http.Request) {
		ok, reason := n.Healthy()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		if r.Method != http.MethodHead {
			io.WriteString(w, reason+"\n")
		}
	}
	mux.HandleFunc("GET /ha/health", health)
	mux.HandleFunc("GET /readyz", health)
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, r *http.Request) {
		n.mu.Lock()
		stopped := n.stopped
		n.mu.Unlock()
		if stopped {
			http.Error(w, "stopped", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /api/cluster", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		doc := n.Status().JSON()
		doc.Terms, doc.Duties = n.Terms(), n.Duties()
		doc.Alerts = n.alerts()
		_ = enc.Encode(doc)
	})
	mux.HandleFunc("POST /api/cluster/down", func(w http.ResponseWriter, r *http.Request) {
		var req DownRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.Node == "" {
			http.Error(w, `bus: want {"node": "ID"}`, http.StatusBadRequest)
			return
		}
		if err := n.Down(req.Node); err != nil {
			code := http.StatusConflict
			if errors.Is(err, adapters.ErrNotFound) {
				code = http.StatusNotFound
			}
			http.Error(w, err.Error(), code)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /api/cache/clear", func(w http.ResponseWriter, r *http.Request) {
		var req CacheClearRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || req.Region == "" {
			http.Error(w, `bus: want {"region": "...", "keys": [...]}`, http.StatusBadRequest)
			return
		}
		if err := n.Invalidate(r.Context(), req.Region, req.Keys...); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	if g, ok := n.reg.(prometheus.Gatherer); ok {
		mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	}
}

func (n *Node) alerts() []string {
	var out []string
	if a := n.probeAlert(); a != "" {
		out = append(out, a)
	}
	if n.opts.alerts != nil {
		out = append(out, n.opts.alerts()...)
	}
	return out
}

// Alerts are the conditions an operator should look at that do not change
// the node's state (see WithAlerts), as /api/cluster shows them.
func (n *Node) Alerts() []string { return n.alerts() }
