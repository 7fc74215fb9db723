package main

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adminhttp"
	"github.com/clusterbus/clusterbus/bus"
)

// config set/get/list/unset against a real node behind the admin guard:
// mutating calls need the token, reads do not, and a second node sees the
// setting.
func TestConfigSetGetListTalkToTheNodeAPI(t *testing.T) {
	clearConfigEnv(t)
	srv := mem.NewServer()
	start := func(id string) *bus.Node {
		cfg := bus.DefaultConfig()
		cfg.Cluster, cfg.NodeID = "cli", id
		n, err := bus.New(srv.Client(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Stop(context.Background()) })
		return n
	}
	a, b := start("a"), start("b")
	hs := httptest.NewServer(adminhttp.Guard(a.Handler(), adminhttp.Config{Token: func() string { return "s3cret" }}))
	t.Cleanup(hs.Close)

	_, err := runCLI(t, "config", "set", "http.base_url", "https://example.com", "--addr", hs.URL)
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("set without the token = %v, want a 401", err)
	}
	t.Setenv("CLUSTERBUS_ADMIN_TOKEN", "s3cret")
	if _, err := runCLI(t, "config", "set", "http.base_url", "https://example.com", "--addr", hs.URL); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "config", "set", "feature.x", "on", "--addr", hs.URL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for v, _ := b.Settings().Get("http.base_url"); v != "https://example.com"; v, _ = b.Settings().Get("http.base_url") {
		if time.Now().After(deadline) {
			t.Fatal("node b never saw the setting")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Setenv("CLUSTERBUS_ADMIN_TOKEN", "")
	out, err := runCLI(t, "config", "get", "http.base_url", "--addr", hs.URL)
	if err != nil || strings.TrimSpace(out) != "https://example.com" {
		t.Fatalf("get = %q, %v", out, err)
	}
	out, err = runCLI(t, "config", "list", "--addr", hs.URL)
	if err != nil || !strings.Contains(out, "feature.x") || !strings.Contains(out, "https://example.com") || !strings.Contains(out, "KEY") {
		t.Fatalf("list = %q, %v", out, err)
	}
	out, err = runCLI(t, "config", "list", "--prefix", "feature.", "-o", "json", "--addr", hs.URL)
	if err != nil || !strings.Contains(out, `"key": "feature.x"`) || strings.Contains(out, "base_url") {
		t.Fatalf("list -o json --prefix = %q, %v", out, err)
	}
	t.Setenv("CLUSTERBUS_ADMIN_TOKEN", "s3cret")
	if _, err := runCLI(t, "config", "unset", "feature.x", "--addr", hs.URL); err != nil {
		t.Fatal(err)
	}
	_, err = runCLI(t, "config", "get", "feature.x", "--addr", hs.URL)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("get of an unset key = %v, want exit 1", err)
	}
	if _, err := runCLI(t, "config", "set", "bad key", "x", "--addr", hs.URL); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("set of a bad key = %v, want a 400", err)
	}
}
