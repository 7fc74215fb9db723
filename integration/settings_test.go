package integration

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestClusterSettingsAcrossNodes: `clusterbus config set` on node a is seen
// by `config get` on node b; a node that joins with an empty data dir gets
// it from its peers (or the broker); after a restart of every node with
// their data dirs it is there; after a restart of every node with empty
// data dirs it is there on NATS and Kafka (the broker retains the catalog)
// and gone on RabbitMQ (it retains nothing), as the README says.
func TestClusterSettingsAcrossNodes(t *testing.T) {
	needBinary(t)
	for _, kind := range []string{"nats", "kafka", "rabbitmq"} {
		t.Run(kind, func(t *testing.T) {
			b := startTestBroker(t, kind)
			cluster := fmt.Sprintf("it-settings-%d", time.Now().UnixNano()%1e8)
			dirs := map[string]string{"a": t.TempDir(), "b": t.TempDir()}
			start := func(id string) *node {
				return startNode(t, b.url, cluster, id, "--data-dir", dirs[id])
			}
			setting := func(n *node, key string) (int, string) {
				resp, err := client.Get(n.addr + "/api/settings/" + key)
				if err != nil {
					return 0, err.Error()
				}
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return resp.StatusCode, ""
				}
				return resp.StatusCode, strings.TrimSpace(cli(t, "config", "get", key, "--addr", n.addr))
			}
			a, bn := start("a"), start("b")
			waitUntil(t, 30*time.Second, "a and b serve", func() bool { return a.health() == http.StatusOK && bn.health() == http.StatusOK })
			cli(t, "config", "set", "http.base_url", "https://example.com/v1", "--addr", a.addr)
			cli(t, "config", "set", "feature.fast", "on", "--addr", bn.addr)
			took := waitUntil(t, 10*time.Second, "b sees a's setting", func() bool {
				code, v := setting(bn, "http.base_url")
				return code == 200 && v == "https://example.com/v1"
			})
			t.Logf("%s: set on a, seen on b %s later", kind, took.Round(time.Millisecond))
			if out := cli(t, "config", "list", "--addr", a.addr); !strings.Contains(out, "feature.fast") || !strings.Contains(out, "http.base_url") {
				t.Fatalf("config list on a:\n%s", out)
			}

			// A joiner with an empty data dir.
			dirs["c"] = t.TempDir()
			c := start("c")
			waitUntil(t, 15*time.Second, "c gets the settings", func() bool {
				code, v := setting(c, "feature.fast")
				return code == 200 && v == "on"
			})
			c.term(20 * time.Second)

			// Every node restarts with its data dir.
			a.term(20 * time.Second)
			bn.term(20 * time.Second)
			a, bn = start("a"), start("b")
			waitUntil(t, 30*time.Second, "a and b serve after the restart", func() bool { return a.health() == http.StatusOK && bn.health() == http.StatusOK })
			for _, n := range []*node{a, bn} {
				if code, v := setting(n, "http.base_url"); code != 200 || v != "https://example.com/v1" {
					t.Fatalf("%s after a restart with its data dir: %d %q", n.id, code, v)
				}
			}

			// Every node restarts with an empty data dir.
			a.term(20 * time.Second)
			bn.term(20 * time.Second)
			dirs["a"], dirs["b"] = t.TempDir(), t.TempDir()
			a, bn = start("a"), start("b")
			waitUntil(t, 30*time.Second, "a and b serve again", func() bool { return a.health() == http.StatusOK && bn.health() == http.StatusOK })
			code, v := setting(a, "http.base_url")
			switch kind {
			case "rabbitmq":
				if code != http.StatusNotFound {
					t.Fatalf("rabbitmq keeps nothing, yet after a restart with empty data dirs: %d %q", code, v)
				}
			default:
				if code != 200 || v != "https://example.com/v1" {
					t.Fatalf("%s retains the catalog, yet after a restart with empty data dirs: %d %q", kind, code, v)
				}
			}
			a.term(20 * time.Second)
			bn.term(20 * time.Second)
		})
	}
}
