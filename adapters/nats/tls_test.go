package nats_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	_ "github.com/clusterbus/clusterbus/adapters/nats"
)

// TestTLSURL: tls://host?ca=FILE reaches a NATS server that requires TLS,
// and a URL without the CA is refused (the certificate is not trusted).
func TestTLSURL(t *testing.T) {
	dir := t.TempDir()
	caFile, srvTLS := adaptertest.TestCA(t, dir)
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir,
		TLSConfig: srvTLS, TLS: true, TLSTimeout: 2, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	addr := srv.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, u := range []string{"tls://" + addr + "?ca=" + caFile, "nats://" + addr + "?ca=" + caFile} {
		b, err := adapters.Open(ctx, u)
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: "tlsq"}); err != nil {
			t.Fatalf("%s: declare over TLS: %v", u, err)
		}
		b.Close()
	}
	short, cancel2 := context.WithTimeout(ctx, 3*time.Second)
	defer cancel2()
	if b, err := adapters.Open(short, "tls://"+addr+"?connect_timeout=1s"); err == nil {
		b.Close()
		t.Fatal("connected over TLS without trusting the server's CA")
	}
	if _, err := adapters.Open(ctx, fmt.Sprintf("tls://%s?ca=%s", addr, filepath.Join(dir, "missing.pem"))); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("missing CA file: %v, want ErrInvalidArgument", err)
	}
}
