package flows_test

import (
	"context"
	"sync"
	"testing"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/flows"
)

// TestCELSeesTheClusterSettings: a step's CEL expressions read the cluster
// settings (Options.Settings) as "settings", as they are when the step
// runs: a setting changed between two executions changes the second's
// result; a missing key is an error the expression can guard with "in".
func TestCELSeesTheClusterSettings(t *testing.T) {
	defs, err := flows.Parse("settings.yaml", []byte(`flow: uses-settings
version: 1
steps:
  - name: url
    set:
      url: "settings['http.base_url'] + '/orders/' + input.id"
      mode: "'mode' in settings ? settings.mode : 'default'"
`))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	settings := map[string]string{"http.base_url": "https://a.example"}
	cfg := testConfig(t)
	e, err := flows.New(mem.NewServer().Client(), cfg, flows.Options{NodeID: "n1", Logger: logger(t),
		Settings: func() map[string]string {
			mu.Lock()
			defer mu.Unlock()
			out := map[string]string{}
			for k, v := range settings {
				out[k] = v
			}
			return out
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Register(defs.Flows[0]); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(context.Background()) })
	run := func(id string) map[string]any {
		t.Helper()
		x, err := e.Submit(context.Background(), "uses-settings", map[string]any{"id": id})
		if err != nil {
			t.Fatal(err)
		}
		return waitState(t, e, x, flows.StateCompleted).Output
	}
	if out := run("1"); out["url"] != "https://a.example/orders/1" || out["mode"] != "default" {
		t.Fatalf("first execution's output %v", out)
	}
	mu.Lock()
	settings["http.base_url"], settings["mode"] = "https://b.example", "fast"
	mu.Unlock()
	if out := run("2"); out["url"] != "https://b.example/orders/2" || out["mode"] != "fast" {
		t.Fatalf("second execution's output %v after the settings changed", out)
	}
}
