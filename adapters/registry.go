package adapters

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Opener opens a Broker from a parsed URL whose scheme it registered for.
type Opener func(ctx context.Context, u *url.URL) (Broker, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Opener{}
)

// Register makes an adapter available to Open under scheme. It panics if the
// scheme is taken, like database/sql.Register.
func Register(scheme string, open Opener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	scheme = strings.ToLower(scheme)
	if _, dup := registry[scheme]; dup {
		panic("adapters: Register called twice for scheme " + scheme)
	}
	registry[scheme] = open
}

// Schemes lists the registered URL schemes, sorted.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	s := make([]string, 0, len(registry))
	for k := range registry {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open connects to the broker named by rawURL, such as "nats://127.0.0.1:4222"
// or "amqp://guest:guest@localhost:5672/". The adapter for the scheme must be
// linked in (blank-import it). An unknown scheme fails with an error listing
// the known ones.
func Open(ctx context.Context, rawURL string) (Broker, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, Errorf(ErrInvalidArgument, "adapters: open", "malformed broker URL %q: %v", redact(rawURL), err)
	}
	if u.Scheme == "" {
		return nil, Errorf(ErrInvalidArgument, "adapters: open", "broker URL %q has no scheme; want one of %s",
			redact(rawURL), strings.Join(Schemes(), ", "))
	}
	registryMu.RLock()
	open, ok := registry[strings.ToLower(u.Scheme)]
	registryMu.RUnlock()
	if !ok {
		return nil, Errorf(ErrInvalidArgument, "adapters: open", "unknown broker URL scheme %q; known schemes: %s",
			u.Scheme, strings.Join(Schemes(), ", "))
	}
	return open(ctx, u)
}

// redact hides a password in a URL for error messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		if i := strings.Index(raw, "@"); i >= 0 {
			return "…@" + raw[i+1:]
		}
		return raw
	}
	return u.Redacted()
}

// Redact returns rawURL with any password replaced, for logs and errors.
func Redact(rawURL string) string { return redact(rawURL) }

// String describes caps on one line.
func (c Capabilities) String() string {
	return fmt.Sprintf("%s: extend=%s delayed-nack=%s dead-letter=%s dedupe=%s ordering=%s restart=%s max-message=%dB max-headers=%d lease=%s..%s",
		c.Name, c.LeaseExtension, c.DelayedNack, c.DeadLetter, c.Dedupe, c.Ordering, c.Restart,
		c.MaxMessageSize, c.MaxHeaders, c.MinLease, c.MaxLease)
}
