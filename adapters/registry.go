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

// redact hides the secrets in a broker URL for logs, errors and output: the
// password of the user info, the value of any query parameter whose name
// says it is a secret (password, secret, token, key, signature, sas), and
// the SharedAccessKey and SharedAccessSignature of a Service Bus
// connection string given as the connection_string parameter.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if i := strings.LastIndex(raw, "@"); i >= 0 {
			return "…@" + raw[i+1:]
		}
		if i := strings.Index(raw, "?"); i >= 0 {
			return raw[:i] + "?…"
		}
		return raw
	}
	// Work on the text, so the URL keeps its form (url.URL.String drops
	// the "//" of "azservicebus://?…").
	head, query, hasQuery := strings.Cut(raw, "?")
	if _, has := u.User.Password(); has {
		if at := strings.LastIndex(head, "@"); at >= 0 {
			start := strings.Index(head, "//") + 2
			if c := strings.Index(head[start:at], ":"); c >= 0 {
				head = head[:start+c] + ":xxxxx" + head[at:]
			}
		}
	}
	if !hasQuery {
		return head
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return head + "?…"
	}
	for k, vs := range q {
		for i, v := range vs {
			switch {
			case strings.EqualFold(k, "connection_string"):
				vs[i] = redactConnectionString(v)
			case secretParam(k):
				vs[i] = "xxxxx"
			}
		}
	}
	return head + "?" + q.Encode()
}

// secretParam reports whether a URL query parameter holds a secret.
func secretParam(name string) bool {
	n := strings.ToLower(name)
	for _, w := range []string{"password", "passwd", "secret", "token", "key", "signature", "sas"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}

// redactConnectionString masks the secret parts of a
// "Name=value;Name=value" connection string.
func redactConnectionString(cs string) string {
	parts := strings.Split(cs, ";")
	for i, p := range parts {
		name, _, ok := strings.Cut(p, "=")
		if ok && secretParam(name) && !strings.EqualFold(strings.TrimSpace(name), "SharedAccessKeyName") {
			parts[i] = name + "=xxxxx"
		}
	}
	return strings.Join(parts, ";")
}

// Redact returns rawURL with its secrets replaced, for logs and errors.
func Redact(rawURL string) string { return redact(rawURL) }

// String describes caps on one line.
func (c Capabilities) String() string {
	return fmt.Sprintf("%s: extend=%s delayed-nack=%s dead-letter=%s dedupe=%s ordering=%s restart=%s queue-stats=%s adaptive-prefetch=%s max-message=%dB max-headers=%d lease=%s..%s",
		c.Name, c.LeaseExtension, c.DelayedNack, c.DeadLetter, c.Dedupe, c.Ordering, c.Restart, c.QueueStats, c.AdaptivePrefetch,
		c.MaxMessageSize, c.MaxHeaders, c.MinLease, c.MaxLease)
}
