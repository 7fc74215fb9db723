package natsserver_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

func TestStartRejectsBadConfigNamingTheField(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		cfg  natsserver.Config
		want string
	}{
		{natsserver.Config{Listen: "127.0.0.1:0"}, "Config.DataDir is required"},
		{natsserver.Config{Listen: "nohostport", DataDir: dir}, "Config.Listen"},
		{natsserver.Config{Listen: "127.0.0.1:99999", DataDir: dir}, "port must be a number"},
		{natsserver.Config{Listen: "127.0.0.1:0", DataDir: dir, MaxPayload: -1}, "Config.MaxPayload"},
		{natsserver.Config{Listen: "127.0.0.1:0", DataDir: dir, User: "u"}, "User and Config.Password"},
	}
	for _, c := range cases {
		s, err := natsserver.Start(c.cfg)
		if err == nil {
			s.Shutdown()
			t.Errorf("Start(%+v) succeeded, want error mentioning %q", c.cfg, c.want)
			continue
		}
		if !strings.HasPrefix(err.Error(), "natsserver: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Start(%+v): %v, want natsserver: … %q", c.cfg, err, c.want)
		}
	}
}

func TestPortInUseFailsClearly(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s, err := natsserver.Start(natsserver.Config{Listen: l.Addr().String(), DataDir: t.TempDir(), ReadyTimeout: 2 * time.Second})
	if err == nil {
		s.Shutdown()
		t.Fatal("Start on a port in use succeeded")
	}
	t.Logf("error: %v", err)
}

// A server on a random port reports its real address, serves JetStream with
// authentication, and keeps its streams across a restart on the same port
// and directory.
func TestRandomPortJetStreamAndRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := natsserver.Config{Listen: "127.0.0.1:0", DataDir: dir, Sync: true, User: "u", Password: "p"}
	s, err := natsserver.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	if strings.HasSuffix(s.Addr(), ":0") || !strings.Contains(s.ClientURL(), strings.Split(s.Addr(), ":")[1]) {
		t.Fatalf("Addr %q, ClientURL %q: want the real port", s.Addr(), s.ClientURL())
	}
	if _, err := nats.Connect(s.ClientURL()); err == nil {
		t.Fatal("connect without credentials succeeded")
	}
	nc, err := nats.Connect(s.ClientURL(), nats.UserInfo("u", "p"))
	if err != nil {
		t.Fatal(err)
	}
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: "S", Subjects: []string{"s"}, Storage: nats.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish("s", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	addr := s.Addr()
	s.Shutdown()

	cfg.Listen = addr
	s2, err := natsserver.Start(cfg)
	if err != nil {
		t.Fatalf("restart on %s: %v", addr, err)
	}
	t.Cleanup(s2.Shutdown)
	nc, err = nats.Connect(s2.ClientURL(), nats.UserInfo("u", "p"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ = nc.JetStream()
	m, err := js.GetMsg("S", 1)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if string(m.Data) != "kept" {
		t.Fatalf("after restart: %q, want \"kept\"", m.Data)
	}
}
