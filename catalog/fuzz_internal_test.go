package catalog

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

// FuzzHandle feeds arbitrary topic messages to a started catalog: whatever
// arrives, handle must not panic, and every entry it keeps must pass the
// same validation a Put's entry does. .ci/fuzz.sh runs it for new inputs;
// the seeds run in every go test.
func FuzzHandle(f *testing.F) {
	f.Add("put", []byte(`{"f":"b","e":[{"k":"a","v":"eA==","r":{"c":5,"n":"b"},"at":"2026-01-01T00:00:00Z"}]}`))
	f.Add("put", []byte(`{"f":"b","e":[{"k":"a","d":true,"r":{"c":7,"n":"b"}}]}`))
	f.Add("sync-reply", []byte(`{"f":"b","id":"1","p":1,"ps":1,"dg":{"n":1,"h":2},"e":[{"k":"z","v":"eQ==","r":{"c":1,"n":"b"}}]}`))
	f.Add("sync-request", []byte(`{"f":"b","id":"r","dg":{"n":0,"h":0}}`))
	f.Add("digest", []byte(`{"f":"b","dg":{"n":3,"h":99}}`))
	f.Add("put", []byte(`not json`))
	srv := mem.NewServer()
	c, err := Open(srv.Client(), Config{Cluster: "fuzz", NodeID: "a", Name: "fuzz", MaxEntries: 64, MaxValueSize: 1024,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = c.Stop(context.Background()) })
	f.Fuzz(func(t *testing.T, kind string, body []byte) {
		c.handle(ctx, adapters.Message{Headers: map[string]string{HeaderKind: kind}, Body: body})
		now := time.Now()
		for _, e := range c.List("") {
			if why := c.validEntry(e, now); why != "" {
				t.Fatalf("kept an entry that fails validation (%s): %+v", why, e)
			}
		}
	})
}
