package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// bench runs its queue and topic load through the adapter and reports what
// it measured; every item must come back, and the figures must be numbers.
func TestBenchMeasuresQueueAndTopic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	cfg := benchConfig{Items: 300, Size: 64, Producers: 2, Consumers: 3, Prefetch: 8, Topic: 20}
	if err := runBench(ctx, &out, "mem://bench-test", cfg); err != nil {
		t.Fatalf("bench: %v\n%s", err, out.String())
	}
	t.Logf("\n%s", out.String())
	m := regexp.MustCompile(`enqueue -> ack\s+(\d+) items/s`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no enqueue -> ack rate in the output")
	}
	if n, _ := strconv.Atoi(m[1]); n <= 0 {
		t.Errorf("enqueue -> ack rate %d", n)
	}
	for _, want := range []string{"300 items of 64 B", "enqueue -> receive  p50", "20 messages of 64 B", "publish -> receive  p50"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

func TestBenchRejectsBadFlagsNamingThem(t *testing.T) {
	for _, c := range []struct {
		cfg  benchConfig
		want string
	}{
		{benchConfig{Items: 0, Size: 64, Producers: 1, Consumers: 1, Prefetch: 1}, "--items"},
		{benchConfig{Items: 1, Size: 8, Producers: 1, Consumers: 1, Prefetch: 1}, "--size"},
		{benchConfig{Items: 1, Size: 64, Producers: 0, Consumers: 1, Prefetch: 1}, "--producers"},
		{benchConfig{Items: 1, Size: 64, Producers: 1, Consumers: 1, Prefetch: 0}, "--prefetch"},
	} {
		err := c.cfg.validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("validate(%+v) = %v, want an error naming %s", c.cfg, err, c.want)
		}
	}
	ctx := context.Background()
	err := runBench(ctx, &bytes.Buffer{}, "mem://bench-big", benchConfig{Items: 1, Size: 64 << 20, Producers: 1, Consumers: 1, Prefetch: 1})
	if err == nil || !strings.Contains(err.Error(), "message size limit") {
		t.Errorf("a size over the broker's limit: %v", err)
	}
}
