package bus

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

// settingsNode starts a node on b with the real clock.
func settingsNode(t *testing.T, b adapters.Broker, id, dataDir string) *Node {
	t.Helper()
	cfg := testConfig("settings")
	cfg.NodeID, cfg.DataDir = id, dataDir
	n, err := New(b, cfg, WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop(context.Background()) })
	return n
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSettingsReplicateAndWatch(t *testing.T) {
	srv := mem.NewServer()
	a := settingsNode(t, srv.Client(), "a", "")
	b := settingsNode(t, srv.Client(), "b", "")
	var mu sync.Mutex
	var changes []string
	stop := b.Settings().Watch(func(k, v string, deleted bool) {
		mu.Lock()
		defer mu.Unlock()
		if deleted {
			changes = append(changes, "-"+k)
		} else {
			changes = append(changes, k+"="+v)
		}
	})
	defer stop()
	ctx := context.Background()
	s, err := a.Settings().Set(ctx, "http.base_url", "https://example.com")
	if err != nil || s.By != "a" || s.Updated.IsZero() {
		t.Fatalf("Set = %+v, %v", s, err)
	}
	waitUntil(t, "b to see the setting", func() bool { v, ok := b.Settings().Get("http.base_url"); return ok && v == "https://example.com" })
	if _, err := b.Settings().Set(ctx, "feature.x", "on"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a to see feature.x", func() bool { _, ok := a.Settings().Get("feature.x"); return ok })
	if err := a.Settings().Delete(ctx, "http.base_url"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "b to see the delete", func() bool { _, ok := b.Settings().Get("http.base_url"); return !ok })
	if m := b.Settings().Map(); len(m) != 1 || m["feature.x"] != "on" {
		t.Fatalf("Map = %v", m)
	}
	waitUntil(t, "three changes watched", func() bool { mu.Lock(); defer mu.Unlock(); return len(changes) == 3 })
	mu.Lock()
	defer mu.Unlock()
	if changes[0] != "http.base_url=https://example.com" || changes[1] != "feature.x=on" || changes[2] != "-http.base_url" {
		t.Fatalf("watched %q", changes)
	}
	if _, err := a.Settings().Set(ctx, "bad key", "x"); err == nil {
		t.Fatal("a bad key was accepted")
	}
}

func TestSettingsSurviveRestartWithDataDir(t *testing.T) {
	dir := t.TempDir()
	a := settingsNode(t, mem.New(), "a", dir)
	if _, err := a.Settings().Set(context.Background(), "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := a.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A new broker that retains nothing: only the data dir has it.
	a2 := settingsNode(t, struct{ adapters.Broker }{mem.New()}, "a", dir)
	if v, ok := a2.Settings().Get("k"); !ok || v != "v" {
		t.Fatalf("after restart Get = %q, %v", v, ok)
	}
}

func TestSettingsHTTP(t *testing.T) {
	a := settingsNode(t, mem.New(), "a", "")
	hs := httptest.NewServer(a.Handler())
	defer hs.Close()
	do := func(method, path, body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, hs.URL+path, bytes.NewBufferString(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	if r := do("PUT", "/api/settings/flows/base.url", `{"value":"https://x"}`); r.StatusCode != 200 {
		t.Fatalf("PUT = %d", r.StatusCode)
	}
	var s Setting
	if r := do("GET", "/api/settings/flows/base.url", ""); r.StatusCode != 200 || decodeJSON(r, &s) != nil || s.Value != "https://x" || s.By != "a" {
		t.Fatalf("GET = %d %+v", r.StatusCode, s)
	}
	var list struct{ Settings []Setting }
	if r := do("GET", "/api/settings", ""); r.StatusCode != 200 || decodeJSON(r, &list) != nil || len(list.Settings) != 1 || list.Settings[0].Key != "flows/base.url" {
		t.Fatalf("list = %+v", list)
	}
	if r := do("PUT", "/api/settings/bad%20key", `{"value":"x"}`); r.StatusCode != 400 {
		t.Fatalf("PUT with a bad key = %d, want 400", r.StatusCode)
	}
	if r := do("PUT", "/api/settings/k", `not json`); r.StatusCode != 400 {
		t.Fatalf("PUT with a bad body = %d, want 400", r.StatusCode)
	}
	if r := do("DELETE", "/api/settings/flows/base.url", ""); r.StatusCode != 204 {
		t.Fatalf("DELETE = %d", r.StatusCode)
	}
	if r := do("GET", "/api/settings/flows/base.url", ""); r.StatusCode != 404 {
		t.Fatalf("GET after delete = %d, want 404", r.StatusCode)
	}
}
