package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/bus"
)

func TestStatusAndCacheClearTalkToTheNodeAPI(t *testing.T) {
	now := time.Now()
	doc := bus.ClusterJSON{Cluster: "c1", Local: "n2", Lead: "n1", Term: 4, Nodes: []bus.NodeJSON{
		{ID: "n1", Host: "h1", IP: "10.0.0.1", StartedAt: now.Add(-time.Hour), LastHeartbeat: now, Lead: true, State: "active", Version: "v1"},
		{ID: "n2", Host: "h2", IP: "10.0.0.2", StartedAt: now.Add(-time.Minute), LastHeartbeat: now, Local: true, State: "active", Version: "v1", ClockSkewMS: 3000, ClockSkewed: true},
	}}
	var cleared bus.CacheClearRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/cluster":
			json.NewEncoder(w).Encode(doc)
		case "/api/cache/clear":
			json.NewDecoder(r.Body).Decode(&cleared)
			w.WriteHeader(http.StatusNoContent)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)

	var out bytes.Buffer
	rootCmd.SetOut(&out)
	rootCmd.SetArgs([]string{"status", "--addr", srv.URL})
	if err := rootCmd.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{"cluster c1", "lead n1", "term 4", "n2", "10.0.0.2", "SKEWED"} {
		if !strings.Contains(s, want) {
			t.Errorf("status output lacks %q:\n%s", want, s)
		}
	}

	out.Reset()
	rootCmd.SetArgs([]string{"cache", "clear", "users", "u1", "u2", "--addr", srv.URL})
	if err := rootCmd.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if cleared.Region != "users" || strings.Join(cleared.Keys, ",") != "u1,u2" {
		t.Fatalf("POST /api/cache/clear got %+v", cleared)
	}
}
