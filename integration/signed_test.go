package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	_ "github.com/clusterbus/clusterbus/adapters/nats"
	"github.com/clusterbus/clusterbus/adapters/signed"
)

const (
	itKeyA = "integration-key-A-0123456789"
	itKeyB = "integration-key-B-0123456789"
)

func writeKeys(t *testing.T, path string, keys ...string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// signedTrio starts three signed nodes (each with its own key file holding
// keys) on a `clusterbus broker` and waits until they agree on n1.
func signedTrio(t *testing.T, cluster string, keys ...string) (brokerURL string, nodes []*node, files []string) {
	brokerURL = startNATSBroker(t)
	dir := t.TempDir()
	for _, id := range []string{"n1", "n2", "n3"} {
		f := filepath.Join(dir, id+".keys")
		writeKeys(t, f, keys...)
		files = append(files, f)
		nodes = append(nodes, startNode(t, brokerURL, cluster, id, "--cluster-key-file", f))
	}
	waitUntil(t, 30*time.Second, "3 signed nodes agree on n1", func() bool {
		for _, n := range nodes {
			if !n.sees("n1", "n1", "n2", "n3") {
				return false
			}
		}
		return true
	})
	return brokerURL, nodes, files
}

// watchHealth polls every node's /ha/health until stop is closed and
// returns the non-200 answers seen.
func watchHealth(nodes []*node, stop chan struct{}) func() []string {
	var mu sync.Mutex
	var bad []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			for _, n := range nodes {
				if code := n.health(); code != 200 {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s %s: %d", time.Now().Format("15:04:05.000"), n.id, code))
					mu.Unlock()
				}
			}
		}
	}()
	return func() []string {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return bad
	}
}

// TestSignedClusterIgnoresForgedMessages: a plain broker client publishes
// forged, unsigned, foreign-key, replayed, oversized and term-2^64-1
// messages at a running 3-node signed cluster; every node stays 200 with
// the same lead and term, and /api/cluster shows the rejections as an
// alert.
func TestSignedClusterIgnoresForgedMessages(t *testing.T) {
	needBinary(t)
	cluster := fmt.Sprintf("it-signed-%d", time.Now().UnixNano()%1e6)
	brokerURL, nodes, _ := signedTrio(t, cluster, itKeyA)
	c0, _ := nodes[1].cluster()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	raw, err := adapters.Open(ctx, brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ring, _ := signed.NewKeyRing([]byte("a-foreign-key-0123456789"))
	fraw, _ := adapters.Open(ctx, brokerURL)
	foreign, err := signed.Wrap(fraw, signed.Config{Cluster: cluster, Sender: "n1", Keys: ring})
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	topic := "clusterbus-" + cluster
	// Capture a real heartbeat to replay.
	sub, err := raw.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	captured, err := sub.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sub.Close()
	hb := func(id string, term uint64) adapters.Message {
		body, _ := json.Marshal(map[string]any{"id": id, "inc": "evil", "seq": uint64(1) << 40, "state": "active",
			"start": time.Now().Add(-time.Hour).UnixNano(), "sent": time.Now().UnixNano(), "term": term, "lterm": term})
		return adapters.Message{Headers: map[string]string{"clusterbus.kind": "hb", "clusterbus.cluster": cluster, "clusterbus.node": id}, Body: body}
	}
	inv := adapters.Message{Headers: map[string]string{"clusterbus.kind": "inv", "clusterbus.cluster": cluster, "clusterbus.node": "n2"},
		Body: []byte(`{"id":"n2","inc":"evil","cseq":99,"region":"users"}`)}
	watch := make(chan struct{})
	bad := watchHealth(nodes, watch)
	for range 5 {
		for _, send := range []func() error{
			func() error { return raw.Publish(ctx, topic, hb("n1", 1)) },                  // duplicate ID: panic before
			func() error { return raw.Publish(ctx, topic, hb("evil", math.MaxUint64)) },   // an older lead, term wrap
			func() error { return foreign.Publish(ctx, topic, hb("n2", math.MaxUint64)) }, // another key
			func() error { return raw.Publish(ctx, topic, inv) },                          // unsigned cache-clear
			func() error { return raw.Publish(ctx, topic, captured) },                     // replay
			func() error { return raw.Publish(ctx, topic, adapters.Message{Body: []byte("CBS1garbage")}) },
			func() error {
				return raw.Publish(ctx, topic, adapters.Message{Body: make([]byte, raw.Capabilities().MaxMessageSize-1024)})
			},
		} {
			if err := send(); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	time.Sleep(2 * failureTimeout)
	close(watch)
	if b := bad(); len(b) > 0 {
		t.Fatalf("health was not 200 during the attack: %v", b)
	}
	for _, n := range nodes {
		c, err := n.cluster()
		if err != nil {
			t.Fatal(err)
		}
		if c.Lead != "n1" || c.Term != c0.Term || !n.sees("n1", "n1", "n2", "n3") {
			t.Fatalf("%s after the attack: lead %s term %d (before %d), %+v", n.id, c.Lead, c.Term, c0.Term, c.Nodes)
		}
		if len(c.Alerts) == 0 || !strings.Contains(c.Alerts[0], "failed verification") {
			t.Errorf("%s: /api/cluster alerts %q, want the rejections", n.id, c.Alerts)
		}
		for _, m := range c.Nodes {
			if m.State == "panic" {
				t.Fatalf("%s shows %s in panic", n.id, m.ID)
			}
		}
	}
	t.Logf("alert on n1: %s", func() string { c, _ := nodes[0].cluster(); return strings.Join(c.Alerts, "; ") }())
}

// TestSignedKeyRotationLive rotates the cluster key on a running 3-node
// cluster: add the new key, switch the signer, remove the old, each node
// in turn with SIGHUP; no node answers anything but 200 meanwhile, lead and
// term stay, and nothing is rejected.
func TestSignedKeyRotationLive(t *testing.T) {
	needBinary(t)
	cluster := fmt.Sprintf("it-rotate-%d", time.Now().UnixNano()%1e6)
	_, nodes, files := signedTrio(t, cluster, itKeyA)
	c0, _ := nodes[0].cluster()
	watch := make(chan struct{})
	bad := watchHealth(nodes, watch)
	for _, step := range []struct {
		name string
		keys []string
	}{
		{"add the new key", []string{itKeyA, itKeyB}},
		{"sign with the new key", []string{itKeyB, itKeyA}},
		{"remove the old key", []string{itKeyB}},
	} {
		for i, n := range nodes {
			writeKeys(t, files[i], step.keys...)
			if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, 10*time.Second, n.id+" reloads its keys ("+step.name+")", func() bool {
				return strings.Count(n.log(), "cluster keys reloaded") >= stepIndex(step.name)
			})
			time.Sleep(2 * 500 * time.Millisecond) // two heartbeats with this node's new keys
		}
	}
	time.Sleep(failureTimeout)
	close(watch)
	if b := bad(); len(b) > 0 {
		t.Fatalf("not 200 during the rotation: %v", b)
	}
	for _, n := range nodes {
		c, err := n.cluster()
		if err != nil {
			t.Fatal(err)
		}
		if c.Lead != "n1" || c.Term != c0.Term || !n.sees("n1", "n1", "n2", "n3") {
			t.Fatalf("%s after the rotation: lead %s term %d (before %d)", n.id, c.Lead, c.Term, c0.Term)
		}
		if len(c.Alerts) != 0 {
			t.Errorf("%s rejected messages during the rotation: %q", n.id, c.Alerts)
		}
	}
}

func stepIndex(name string) int {
	switch name {
	case "add the new key":
		return 1
	case "sign with the new key":
		return 2
	}
	return 3
}
