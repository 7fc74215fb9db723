package integration

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestNodeExportsSpansOverOTLP: with the standard OTEL_* variables a node
// exports its spans to an OTLP/HTTP collector (here a stand-in that keeps
// what it is sent); the execution's trace ID is on its log lines.
func TestNodeExportsSpansOverOTLP(t *testing.T) {
	needBinary(t)
	var mu sync.Mutex
	var got []byte
	col := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			body = zr
		}
		b, _ := io.ReadAll(body)
		if r.URL.Path == "/v1/traces" {
			mu.Lock()
			got = append(got, b...)
			mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	t.Cleanup(col.Close)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", col.URL)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	t.Setenv("OTEL_SERVICE_NAME", "shop-node")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "greet.yaml"), []byte("flow: greet\nversion: 1\nsteps:\n  - name: hello\n    wait: 10ms\n  - name: bye\n    wait: 10ms\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, startNATSBroker(t), "otlp", "o1", "--flows.dir", dir)
	waitUntil(t, 30*time.Second, "o1 serves", func() bool { return n.health() == http.StatusOK })
	id := submitFlow(t, n.addr, "greet")
	waitUntil(t, 30*time.Second, "the collector got the step spans", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return bytes.Contains(got, []byte("flow step greet/bye")) && bytes.Contains(got, []byte("flow submit greet")) &&
			bytes.Contains(got, []byte("shop-node")) && bytes.Contains(got, []byte(id))
	})
	var traceLine string
	for _, l := range strings.Split(n.log(), "\n") {
		if strings.Contains(l, "execution completed") && strings.Contains(l, id) {
			traceLine = l
		}
	}
	if !strings.Contains(traceLine, "trace_id=") || strings.Contains(traceLine, `trace_id=""`) {
		t.Errorf("the completion log line has no trace ID: %q", traceLine)
	}
}
