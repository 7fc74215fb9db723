package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

func startTestNATS(t *testing.T) *natsserver.Server {
	t.Helper()
	srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("start embedded NATS: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

func TestCheckRoundTripsAgainstEmbeddedNATS(t *testing.T) {
	srv := startTestNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := runCheck(ctx, &out, srv.ClientURL()); err != nil {
		t.Fatalf("check: %v\noutput:\n%s", err, out.String())
	}
	t.Logf("check output:\n%s", out.String())
	for _, want := range []string{"topic round trip", "queue round trip", "capabilities of nats", "lease extension"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

func TestCheckUnknownSchemeListsKnownOnes(t *testing.T) {
	err := runCheck(context.Background(), &bytes.Buffer{}, "carrierpigeon://coop")
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("err = %v, want ErrInvalidArgument", err)
	}
	if !strings.Contains(err.Error(), "nats") || !strings.Contains(err.Error(), "carrierpigeon") {
		t.Errorf("error %q should name the bad scheme and list the known ones", err)
	}
}

func TestCheckUnreachableBrokerFailsWithReason(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	err := runCheck(ctx, &bytes.Buffer{}, "nats://127.0.0.1:1")
	if err == nil {
		t.Fatal("check against a closed port succeeded")
	}
	t.Logf("error after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if !strings.Contains(err.Error(), "connect") {
		t.Errorf("error %q should say the connection failed", err)
	}
}
