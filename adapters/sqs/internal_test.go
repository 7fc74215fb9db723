package sqs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/clusterbus/clusterbus/adapters"
)

func TestValidTextFollowsSQSCharacterSet(t *testing.T) {
	for s, want := range map[string]bool{
		"plain":             true,
		"tab\tcr\rlf\n":     true,
		"héllo ✓ 中文":        true,
		"":                  true,
		"nul\x00":           false,
		"ctl\x01":           false,
		"\xff\xfe":          false,
		"emoji 😀":           false, // beyond U+FFFD: sent as binary (emulators refuse it)
		"\uFFFE":            false,
		"replacement\uFFFD": true,
	} {
		if got := validText(s); got != want {
			t.Errorf("validText(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	caps := capabilities()
	for _, m := range []adapters.Message{
		{ID: "a", Body: []byte("text body")},
		{ID: "b", Key: "k/é", Body: []byte{0, 1, 2, 0xff}},
		{ID: "c", Body: nil},
		{ID: "d", Headers: map[string]string{"e": "", "s": "v", "bin": "\x01\x02\xff"}, Body: []byte("x")},
	} {
		w, err := encode("test", m, caps)
		if err != nil {
			t.Fatalf("%s: %v", m.ID, err)
		}
		if !validText(w.body) || w.body == "" {
			t.Errorf("%s: wire body %q is not valid non-empty SQS text", m.ID, w.body)
		}
		d, err := decode("test", w.body, w.sqsAttrs())
		if err != nil {
			t.Fatalf("%s: decode: %v", m.ID, err)
		}
		got := d.msg
		if got.ID != m.ID || got.Key != m.Key || !bytes.Equal(got.Body, m.Body) || len(got.Headers) != len(m.Headers) {
			t.Errorf("%s: got %+v, want %+v", m.ID, got, m)
		}
		for k, v := range m.Headers {
			if got.Headers[k] != v {
				t.Errorf("%s: header %q = %q, want %q", m.ID, k, got.Headers[k], v)
			}
		}
	}
}

func TestEncodeCountsBase64AgainstWireLimit(t *testing.T) {
	caps := capabilities()
	caps.MaxMessageSize = 0 // only the wire check
	text := adapters.Message{ID: "t", Body: bytes.Repeat([]byte("a"), 200*1024)}
	if _, err := encode("test", text, caps); err != nil {
		t.Fatalf("200 KiB of text: %v", err)
	}
	bin := adapters.Message{ID: "b", Body: bytes.Repeat([]byte{0xff}, 200*1024)} // 273 KiB as base64
	_, err := encode("test", bin, caps)
	if !errors.Is(err, adapters.ErrTooLarge) || !strings.Contains(err.Error(), "base64") {
		t.Fatalf("200 KiB binary: %v, want ErrTooLarge explaining base64", err)
	}
	// With the real caps, the advertised MaxMessageSize of binary always fits.
	caps = capabilities()
	m := adapters.Message{ID: strings.Repeat("é", 64), Key: strings.Repeat("ü", 64), Headers: map[string]string{}}
	for i := range MaxHeaders {
		m.Headers[fmt.Sprintf("h%d", i)] = ""
	}
	m.Body = bytes.Repeat([]byte{0xff}, MaxMessageSize-adapters.Size(m))
	w, err := encode("test", m, caps)
	if err != nil {
		t.Fatalf("binary message of exactly MaxMessageSize: %v", err)
	}
	t.Logf("MaxMessageSize %d of binary with escaped ID and key: %d bytes on the wire of %d", MaxMessageSize, w.size(), WireLimit)
}

func TestWithReasonKeepsAttributesAndAddsReason(t *testing.T) {
	w, err := encode("test", adapters.Message{ID: "x", Headers: map[string]string{"h": "v"}, Body: []byte("b")}, capabilities())
	if err != nil {
		t.Fatal(err)
	}
	attrs := withReason(w.sqsAttrs(), strings.Repeat("r", 5000))
	d, err := decode("test", w.body, attrs)
	if err != nil {
		t.Fatal(err)
	}
	if d.msg.ID != "x" || d.msg.Headers["h"] != "v" || len(d.reason) != maxReason {
		t.Errorf("got %+v reason %d bytes; want ID x, header h=v, reason cut to %d", d.msg, len(d.reason), maxReason)
	}
	if _, ok := attrs["h"]; !ok || aws.ToString(attrs[metaAttr].DataType) != "String" {
		t.Errorf("attributes %v", attrs)
	}
}

func TestFifoTokenKeepsValidIDsAndHashesOthers(t *testing.T) {
	if got := fifoToken("order-42:step:3"); got != "order-42:step:3" {
		t.Errorf("valid ID changed to %q", got)
	}
	a, b := fifoToken("naïve id"), fifoToken("naïve id")
	if a != b || strings.ContainsAny(a, " ï") || len(a) > 128 {
		t.Errorf("hashed token %q / %q", a, b)
	}
	if fifoToken(strings.Repeat("x", 129)) == fifoToken(strings.Repeat("x", 130)) {
		t.Error("different long IDs share a token")
	}
}

func TestSecondsRoundsUp(t *testing.T) {
	for d, want := range map[time.Duration]int32{0: 0, time.Millisecond: 1, time.Second: 1, 1500 * time.Millisecond: 2, 30 * time.Second: 30} {
		if got := seconds(d); got != want {
			t.Errorf("seconds(%s) = %d, want %d", d, got, want)
		}
	}
}

func TestGraceStaysWithinSQSMaximum(t *testing.T) {
	if got := withGrace(30); got != 31 {
		t.Errorf("withGrace(30) = %d, want 31", got)
	}
	if got := withGrace(seconds(MaxLease)); got != 43200 {
		t.Errorf("withGrace(12h) = %d, want SQS's maximum 43200", got)
	}
}

func TestBatcherGroupsConcurrentCallsAndReportsEachResult(t *testing.T) {
	var mu sync.Mutex
	var sizes []int
	release := make(chan struct{})
	bt := &batcher[int]{maxN: 10, maxBytes: 100,
		opCtx: func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
		flush: func(ctx context.Context, items []int) []error {
			<-release
			mu.Lock()
			sizes = append(sizes, len(items))
			mu.Unlock()
			errs := make([]error, len(items))
			for i, it := range items {
				if it%7 == 0 {
					errs[i] = fmt.Errorf("item %d failed", it)
				}
			}
			return errs
		}}
	const n = 35
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = bt.do(context.Background(), i, 10) })
	}
	// Let the callers queue up behind the first flush, then let all go.
	time.Sleep(100 * time.Millisecond)
	close(release)
	wg.Wait()
	for i, err := range errs {
		if (i%7 == 0) != (err != nil) {
			t.Errorf("item %d: %v", i, err)
		}
	}
	total := 0
	for _, s := range sizes {
		if s > 10 {
			t.Errorf("batch of %d items, max 10 (and 100 bytes at 10 each)", s)
		}
		total += s
	}
	if total != n || len(sizes) >= n {
		t.Errorf("batches %v: %d items in %d calls, want %d items in fewer calls", sizes, total, len(sizes), n)
	}
	t.Logf("batches: %v", sizes)
}

func TestBatcherDoesNotSendCancelledItems(t *testing.T) {
	var mu sync.Mutex
	var sent []int
	block := make(chan struct{})
	bt := &batcher[int]{maxN: 10, maxBytes: 1 << 20,
		opCtx: func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
		flush: func(ctx context.Context, items []int) []error {
			mu.Lock()
			sent = append(sent, items...)
			mu.Unlock()
			if items[0] == 1 {
				<-block
			}
			return make([]error, len(items))
		}}
	first := make(chan error, 1)
	go func() { first <- bt.do(context.Background(), 1, 1) }()
	for {
		mu.Lock()
		n := len(sent)
		mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancelled := make(chan error, 1)
	go func() { cancelled <- bt.do(ctx, 2, 1) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled call: %v", err)
	}
	close(block)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := bt.do(context.Background(), 3, 1); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, it := range sent {
		if it == 2 {
			t.Errorf("item 2 was sent although its context ended before its batch; sent %v", sent)
		}
	}
}

// TestBatcherRunsRequestsSideBySide: with maxInflight 3, an eager batcher
// sends each call at once while fewer than three requests run; one that is
// not eager starts a second request only for a full batch; maxInflight 1
// never overlaps two. Items queued by send are answered through then.
func TestBatcherRunsRequestsSideBySide(t *testing.T) {
	run := func(eager bool, maxInflight, calls int) (peak int, sizes []int) {
		t.Helper()
		var mu sync.Mutex
		cur := 0
		release := make(chan struct{})
		bt := &batcher[int]{maxN: 10, maxBytes: 1 << 20, maxInflight: maxInflight, eager: eager,
			opCtx: func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			flush: func(ctx context.Context, items []int) []error {
				mu.Lock()
				cur++
				peak = max(peak, cur)
				sizes = append(sizes, len(items))
				mu.Unlock()
				<-release
				mu.Lock()
				cur--
				mu.Unlock()
				return make([]error, len(items))
			}}
		var wg sync.WaitGroup
		var answered sync.WaitGroup
		for i := range calls {
			if i%2 == 0 {
				wg.Go(func() {
					if err := bt.do(context.Background(), i, 1); err != nil {
						t.Error(err)
					}
				})
			} else {
				answered.Add(1)
				bt.send(i, 1, func(err error) {
					if err != nil {
						t.Error(err)
					}
					answered.Done()
				})
			}
		}
		// Every call queued or in a request before the requests may end.
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			sent := 0
			for _, n := range sizes {
				sent += n
			}
			mu.Unlock()
			bt.mu.Lock()
			queued := len(bt.pending)
			bt.mu.Unlock()
			if sent+queued == calls {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d calls sent or queued after 10 s", sent+queued, calls)
			}
			time.Sleep(5 * time.Millisecond)
		}
		close(release)
		wg.Wait()
		answered.Wait()
		mu.Lock()
		defer mu.Unlock()
		return peak, sizes
	}
	if peak, sizes := run(true, 3, 5); peak != 3 {
		t.Errorf("eager, 5 calls, maxInflight 3: %d requests at once (batches %v), want 3", peak, sizes)
	}
	if peak, sizes := run(false, 3, 9); peak != 1 {
		t.Errorf("not eager, 9 calls (no full batch): %d requests at once (batches %v), want 1", peak, sizes)
	}
	if peak, sizes := run(false, 3, 25); peak != 3 {
		t.Errorf("not eager, 25 calls (full batches waiting): %d requests at once (batches %v), want 3", peak, sizes)
	}
	if peak, sizes := run(true, 1, 25); peak != 1 {
		t.Errorf("maxInflight 1: %d requests at once (batches %v), want 1", peak, sizes)
	}
}

func TestBatchEntryErrorsMapToCodes(t *testing.T) {
	for c, want := range map[string]error{
		"ReceiptHandleIsInvalid": adapters.ErrLeaseLost,
		"BatchRequestTooLong":    adapters.ErrTooLarge,
		"InternalError":          adapters.ErrUnavailable,
	} {
		err := batchEntryErr("op", types.BatchResultErrorEntry{Code: aws.String(c), Message: aws.String("m")})
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", c, err, want)
		}
	}
	err := batchEntryErr("op", types.BatchResultErrorEntry{Code: aws.String("InvalidParameterValue"), SenderFault: true})
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Errorf("sender fault: %v", err)
	}
}
