package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/bus"
	"github.com/clusterbus/clusterbus/console"
)

func startNode(t *testing.T, b *mem.Broker, id string) *bus.Node {
	t.Helper()
	cfg := bus.DefaultConfig()
	cfg.Cluster, cfg.NodeID, cfg.HTTPAddr = "console", id, "http://"+id+".invalid:8080"
	cfg.HeartbeatInterval, cfg.FailureTimeout = 50*time.Millisecond, 500*time.Millisecond
	n, err := bus.New(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Stop(context.Background()) })
	return n
}

// The page and its assets are served from the binary; the snapshot has the
// members and alerts; the event stream pushes a new snapshot when the
// cluster changes; drain takes the local node out of service and refuses
// an unknown member.
func TestConsoleServesPageSnapshotEventsAndDrain(t *testing.T) {
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	n := startNode(t, b, "a")
	c := console.New(console.Config{Node: n, Broker: "mem", Interval: 20 * time.Millisecond})
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(srv.Close)

	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/"); code != 200 || !strings.Contains(body, `src="/console/app.js"`) || strings.Contains(body, "http-equiv") {
		t.Fatalf("GET / = %d:\n%.300s", code, body)
	}
	for _, f := range []string{"/console/app.js", "/console/app.css"} {
		if code, body := get(f); code != 200 || len(body) < 500 {
			t.Fatalf("GET %s = %d, %d bytes", f, code, len(body))
		}
	}

	// Subscribe while the node still warms up: the stream must push the
	// change to "serving".
	resp, err := http.Get(srv.URL + "/api/console/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events Content-Type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	deadline := time.Now().Add(10 * time.Second)
	var snap console.Snapshot
	events := 0
	for sc.Scan() && time.Now().Before(deadline) {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		events++
		if err := json.Unmarshal([]byte(line), &snap); err != nil {
			t.Fatalf("event does not decode: %v", err)
		}
		if snap.Cluster.Serving {
			break
		}
	}
	if !snap.Cluster.Serving || events < 2 {
		t.Fatalf("after %d events the stream still shows %+v", events, snap.Cluster)
	}
	if len(snap.Cluster.Nodes) != 1 || snap.Cluster.Nodes[0].HTTPAddr != "http://a.invalid:8080" || snap.Broker != "mem" || snap.Queues == nil {
		t.Fatalf("snapshot %+v", snap)
	}
	for _, a := range snap.Alerts {
		if strings.Contains(a.Text, "does not serve") {
			t.Errorf("serving node still alerts %q", a.Text)
		}
	}

	post := func(path string) int {
		r, err := http.Post(srv.URL+path, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if code := post("/api/members/nobody/drain"); code != http.StatusNotFound {
		t.Errorf("drain of an unknown member = %d, want 404", code)
	}
	if code := post("/api/members/a/drain"); code != 200 {
		t.Fatalf("drain = %d", code)
	}
	for time.Now().Before(deadline) && n.Serving() {
		time.Sleep(10 * time.Millisecond)
	}
	_, body := get("/api/console")
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range snap.Alerts {
		found = found || (a.Level == "error" && strings.Contains(a.Text, "does not serve: draining"))
	}
	if n.Serving() || !found {
		t.Fatalf("after drain: serving %v, alerts %+v", n.Serving(), snap.Alerts)
	}
}

// The page's Down action: app.js offers it for an unreachable member and
// posts {"node": ID} to /api/cluster/down. On a mux built as the node
// builds it (bus routes and console routes), a member whose heartbeats
// stopped shows as "unreachable" in the console snapshot, the page's
// request downs it (204) and it leaves the snapshot; the node refuses an
// unknown member (404) and itself (409), answers the page shows as text.
func TestConsoleDownsAnUnreachableMember(t *testing.T) {
	ms := mem.NewServer()
	a := startNode(t, ms.Client(), "a")
	cb := ms.Client()
	startNode(t, cb, "b")
	t.Cleanup(cb.Reconnect) // before b's Stop (cleanups run last first)
	mux := http.NewServeMux()
	a.Mount(mux)
	console.New(console.Config{Node: a, Broker: "mem", Interval: 20 * time.Millisecond}).Routes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	resp, err := http.Get(srv.URL + "/console/app.js")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`button: "Down"`, `n.state === "unreachable"`, `post("/api/cluster/down", { node: n.id }`} {
		if !strings.Contains(string(js), want) {
			t.Fatalf("app.js lacks %q: the page has no Down action as described", want)
		}
	}

	snapshot := func() console.Snapshot {
		r, err := http.Get(srv.URL + "/api/console")
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		var s console.Snapshot
		if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	stateOf := func(id string) string {
		for _, m := range snapshot().Cluster.Nodes {
			if m.ID == id {
				return m.State
			}
		}
		return ""
	}
	down := func(id string) (int, string) {
		body, _ := json.Marshal(map[string]string{"node": id}) // what the page sends
		r, err := http.Post(srv.URL+"/api/cluster/down", "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		text, _ := io.ReadAll(r.Body)
		return r.StatusCode, strings.TrimSpace(string(text))
	}
	waitState := func(id, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for stateOf(id) != want {
			if time.Now().After(deadline) {
				t.Fatalf("member %s is %q in the snapshot, want %q", id, stateOf(id), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	waitState("b", "active")
	if code, text := down("b"); code != http.StatusConflict || text == "" {
		t.Errorf("down of live b = %d %q, want 409 with a reason", code, text)
	}
	if code, text := down("nobody"); code != http.StatusNotFound || text == "" {
		t.Errorf("down of an unknown member = %d %q, want 404 with a reason", code, text)
	}
	if code, _ := down("a"); code != http.StatusConflict {
		t.Errorf("down of the node itself = %d, want 409", code)
	}
	cb.Disconnect() // b's heartbeats stop reaching a
	waitState("b", "unreachable")
	if code, text := down("b"); code != http.StatusNoContent {
		t.Fatalf("down of unreachable b = %d %q, want 204", code, text)
	}
	if s := stateOf("b"); s != "" {
		t.Fatalf("downed b still in the snapshot as %q", s)
	}
}
