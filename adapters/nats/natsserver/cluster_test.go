package natsserver_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

// Three servers form a JetStream cluster; an R3 stream keeps every
// acknowledged message when the server that leads it stops, gets a new
// leader on another server, and the stopped server rejoins on its old
// ports with its store.
func TestClusterStreamSurvivesLeaderStopAndRestart(t *testing.T) {
	c, err := natsserver.StartCluster(natsserver.ClusterConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	if c.Size() != 3 || c.MetaLeader() < 0 {
		t.Fatalf("size %d, meta leader %d", c.Size(), c.MetaLeader())
	}
	nc, err := nats.Connect(c.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := nc.JetStream(nats.MaxWait(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: "S", Subjects: []string{"s"}, Replicas: 3, Storage: nats.FileStorage}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := js.Publish("s", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	leader := waitIndex(t, "a stream leader", func() int { return c.StreamLeader("", "S") })
	t.Logf("stream leader %s, meta leader %s", c.ServerName(leader), c.ServerName(c.MetaLeader()))
	c.Stop(leader)
	stopped := time.Now()
	next := waitIndex(t, "a new stream leader", func() int { return c.StreamLeader("", "S") })
	t.Logf("new stream leader %s after %s", c.ServerName(next), time.Since(stopped).Round(time.Millisecond))
	if next == leader {
		t.Fatalf("stopped server %d still leads", leader)
	}
	if c.Server(leader) != nil {
		t.Fatal("Server(i) of a stopped server is not nil")
	}
	// Publishing goes on with two of three.
	var pubErr error
	deadline := time.Now().Add(20 * time.Second)
	for n := 0; n < 10 && time.Now().Before(deadline); {
		if _, pubErr = js.Publish("s", []byte("y")); pubErr == nil {
			n++
		}
	}
	if pubErr != nil {
		t.Fatalf("publish with one server down: %v", pubErr)
	}
	if err := c.Restart(leader); err != nil {
		t.Fatal(err)
	}
	if c.Server(leader) == nil || c.ClientAddr(leader) == "" || c.RouteAddr(leader) == "" {
		t.Fatal("restarted server not reported")
	}
	info, err := js.StreamInfo("S")
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 20 {
		t.Fatalf("stream has %d messages, want 20", info.State.Msgs)
	}
}

func waitIndex(t *testing.T, what string, f func() int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if i := f(); i >= 0 {
			return i
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 30s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStartClusterRejectsBadConfig(t *testing.T) {
	if _, err := natsserver.StartCluster(natsserver.ClusterConfig{}); err == nil {
		t.Fatal("no Dir accepted")
	}
	if _, err := natsserver.StartCluster(natsserver.ClusterConfig{Dir: t.TempDir(), Size: 12}); err == nil {
		t.Fatal("Size 12 accepted")
	}
	if _, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), ClusterName: "c", ClusterListen: "127.0.0.1:0"}); err == nil {
		t.Fatal("clustered server without a Name accepted")
	}
}
