package bus

import (
	"encoding/json"
	"html/template"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ClusterJSON is the body of GET /api/cluster.
type ClusterJSON struct {
	Cluster string     `json:"cluster"`
	Local   string     `json:"local"`
	Lead    string     `json:"lead"`
	Term    uint64     `json:"term"`
	Nodes   []NodeJSON `json:"nodes"`
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
}

// JSON converts the status to the /api/cluster document.
func (s Status) JSON() ClusterJSON {
	out := ClusterJSON{Cluster: s.Cluster, Local: s.Local, Lead: s.Lead, Term: s.Term, Nodes: []NodeJSON{}}
	for _, m := range s.Members {
		out.Nodes = append(out.Nodes, NodeJSON{
			ID: m.ID, Host: m.Host, IP: m.IP, StartedAt: m.StartedAt.UTC(), LastHeartbeat: m.LastHeartbeat.UTC(),
			Lead: m.Lead, Local: m.Local, State: m.State, Version: m.Version,
			ClockSkewMS: m.ClockSkew.Milliseconds(), ClockSkewed: m.ClockSkewed,
		})
	}
	return out
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
//	GET      /metrics     Prometheus, if the registerer is a Gatherer
//	GET      /            the cluster status page
func (n *Node) Mount(mux *http.ServeMux) {
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
		doc.Alerts = n.alerts()
		_ = enc.Encode(doc)
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
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		st := n.Status()
		_ = statusPage.Execute(w, statusView{Status: st, Alerts: n.alerts(), Refresh: max(1, int(n.cfg.HeartbeatInterval.Seconds()*2))})
	})
}

type statusView struct {
	Status
	Alerts  []string
	Refresh int
}

func (n *Node) alerts() []string {
	if n.opts.alerts == nil {
		return nil
	}
	return n.opts.alerts()
}

func (v statusView) Age(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return v.Now.Sub(t).Round(time.Millisecond).String()
}

var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{{.Refresh}}">
<title>Cluster Status — {{.Cluster}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f0f0f0}.bad{color:#b00;font-weight:bold}.ok{color:#070}.local{background:#eef6ff}
</style></head><body>
<h1>Cluster Status</h1>
<p>Cluster <b>{{.Cluster}}</b> · this node <b>{{.Local}}</b> ·
lead <b>{{if .Lead}}{{.Lead}}{{else}}none{{end}}</b> · term {{.Term}} ·
{{if .Serving}}<span class="ok">serving</span>{{else}}<span class="bad">not serving: {{.Reason}}</span>{{end}}</p>
{{range .Alerts}}<p class="bad">⚠ {{.}}</p>
{{end}}<table>
<tr><th>Host name</th><th>IP address</th><th>Node ID</th><th>Lead</th><th>Local</th><th>State</th><th>Version</th><th>Started</th><th>Last heartbeat</th><th>Clock skew</th></tr>
{{range .Members}}<tr{{if .Local}} class="local"{{end}}>
<td>{{.Host}}</td><td>{{.IP}}</td><td>{{.ID}}</td><td>{{if .Lead}}✔{{end}}</td><td>{{if .Local}}✔{{end}}</td>
<td{{if ne .State "active"}} class="bad"{{end}}>{{.State}}</td><td>{{.Version}}</td>
<td>{{.StartedAt.UTC.Format "2006-01-02 15:04:05"}}</td><td>{{$.Age .LastHeartbeat}} ago</td>
<td{{if .ClockSkewed}} class="bad"{{end}}>{{.ClockSkew.Milliseconds}} ms{{if .ClockSkewed}} (skewed){{end}}</td></tr>
{{end}}</table>
<p><small>Refreshes every {{.Refresh}} s · {{.Now.UTC.Format "15:04:05"}} UTC</small></p>
</body></html>
`))
