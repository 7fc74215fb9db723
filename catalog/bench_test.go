package catalog_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
	"github.com/clusterbus/clusterbus/catalog"
)

// BenchmarkPutNATS: one Put on embedded NATS (persisted to a data dir,
// retained in JetStream, published), as seen by the writer.
func BenchmarkPutNATS(b *testing.B) {
	srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	br := openNATS(b, srv.ClientURL())
	c, err := catalog.Open(br, catalog.Config{Cluster: cluster, NodeID: "a", Name: "bench", Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer c.Stop(ctx)
	val := []byte(strings.Repeat("v", 200))
	b.ResetTimer()
	for i := range b.N {
		if _, err := c.Put(ctx, fmt.Sprintf("key-%06d", i%10000), val); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJoinSync10k: a node joins a catalog of 10,000 entries of 200
// bytes held by two others and Syncs (mem broker, 1 MiB messages).
func BenchmarkJoinSync10k(b *testing.B) {
	srv := mem.NewServer()
	ctx := context.Background()
	val := []byte(strings.Repeat("v", 200))
	var holders []*catalog.Catalog
	for _, id := range []string{"a", "b"} {
		c, err := catalog.Open(srv.Client(), catalog.Config{Cluster: cluster, NodeID: id, Name: "bench", DigestInterval: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Start(ctx); err != nil {
			b.Fatal(err)
		}
		defer c.Stop(ctx)
		holders = append(holders, c)
	}
	for i := range 10000 {
		if _, err := holders[i%2].Put(ctx, fmt.Sprintf("key-%06d", i), val); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	b.ResetTimer()
	for range b.N {
		c, err := catalog.Open(srv.Client(), catalog.Config{Cluster: cluster, NodeID: "joiner", Name: "bench", DigestInterval: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Start(ctx); err != nil {
			b.Fatal(err)
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := c.Sync(sctx); err != nil {
			b.Fatal(err)
		}
		cancel()
		if c.Len() != 10000 {
			b.Fatalf("joiner has %d entries", c.Len())
		}
		_ = c.Stop(ctx)
	}
}

// BenchmarkLoadDir10k: Start of a node whose data dir holds 10,000 entries.
func BenchmarkLoadDir10k(b *testing.B) {
	dir := b.TempDir()
	ctx := context.Background()
	c, err := catalog.Open(mem.New(), catalog.Config{Cluster: cluster, NodeID: "a", Name: "bench", Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		b.Fatal(err)
	}
	val := []byte(strings.Repeat("v", 200))
	for i := range 10000 {
		if _, err := c.Put(ctx, fmt.Sprintf("key-%06d", i), val); err != nil {
			b.Fatal(err)
		}
	}
	_ = c.Stop(ctx)
	b.ResetTimer()
	for range b.N {
		c, err := catalog.Open(mem.New(), catalog.Config{Cluster: cluster, NodeID: "a", Name: "bench", Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Start(ctx); err != nil {
			b.Fatal(err)
		}
		if c.Len() != 10000 {
			b.Fatalf("loaded %d", c.Len())
		}
		_ = c.Stop(ctx)
	}
}
