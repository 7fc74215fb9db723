package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	"github.com/clusterbus/clusterbus/adapters/kafka"
)

// TestTLSAndSASL: kafka://user:password@host?tls=true&ca=FILE&sasl=M
// reaches a Kafka (kfake) that requires TLS and SASL, for each mechanism;
// a wrong password is refused.
func TestTLSAndSASL(t *testing.T) {
	dir := t.TempDir()
	caFile, srvTLS := adaptertest.TestCA(t, dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.TLS(srvTLS), kfake.EnableSASL(),
		kfake.Superuser("PLAIN", "plainuser", "plain-pw"),
		kfake.Superuser("SCRAM-SHA-256", "scram256", "scram-pw"),
		kfake.Superuser("SCRAM-SHA-512", "scram512", "scram-pw"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for _, m := range []struct{ mech, user, pw string }{
		{"plain", "plainuser", "plain-pw"}, {"scram-sha-256", "scram256", "scram-pw"}, {"scram-sha-512", "scram512", "scram-pw"},
	} {
		t.Run(m.mech, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			u := fmt.Sprintf("kafka://%s:%s@%s?tls=true&ca=%s&sasl=%s&partitions=1", m.user, m.pw, addr, caFile, m.mech)
			b, err := adapters.Open(ctx, u)
			if err != nil {
				t.Fatalf("open %s: %v", adapters.Redact(u), err)
			}
			defer b.Close()
			q := "tls-" + m.mech
			if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
				t.Fatalf("declare over TLS+SASL: %v", err)
			}
			if err := b.Enqueue(ctx, q, adapters.Message{Body: []byte("over tls")}); err != nil {
				t.Fatalf("enqueue over TLS+SASL: %v", err)
			}
			con, err := b.Consume(ctx, q, adapters.ConsumeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer con.Close()
			d, err := con.Receive(ctx)
			if err != nil || string(d.Message().Body) != "over tls" {
				t.Fatalf("receive over TLS+SASL: %v", err)
			}
			_ = d.Ack(ctx)
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if b, err := adapters.Open(ctx, fmt.Sprintf("kafka://scram256:wrong@%s?tls=true&ca=%s&sasl=scram-sha-256", addr, caFile)); err == nil {
		err = b.DeclareQueue(ctx, adapters.QueueConfig{Name: "wrongpw"})
		b.Close()
		if err == nil {
			t.Fatal("a wrong SASL password was accepted")
		}
	}
}

func TestParseURLTLSAndSASL(t *testing.T) {
	cfg, err := kafka.ParseURL("kafka://u:p%40ss@h1:9092,h2?tls=true&sasl=SCRAM-SHA-512")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.User != "u" || cfg.Password != "p@ss" || cfg.SASL != "scram-sha-512" || cfg.TLS == nil || len(cfg.Brokers) != 2 {
		t.Fatalf("%+v", cfg)
	}
	for _, bad := range []string{
		"kafka://u:p@h1?sasl=gssapi",
		"kafka://u:p@h1",             // credentials without a mechanism
		"kafka://h1?sasl=plain",      // a mechanism without credentials
		"kafka://h1?ca=/nonexistent", // a CA file that is not there
		"kafka://h1?tls=maybe",
	} {
		if _, err := kafka.ParseURL(bad); !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", bad, err)
		}
	}
}
