package azservicebus

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// Scheme is the URL scheme this adapter registers with adapters.Register.
const Scheme = "azservicebus"

// DefaultSubscriptionIdle is the AutoDeleteOnIdle of the subscription made
// for each subscriber: Service Bus deletes it after this long without a
// receiver, so a node that dies without closing leaves nothing behind. It is
// also the smallest value Service Bus accepts.
const DefaultSubscriptionIdle = 5 * time.Minute

// Config configures a Broker.
type Config struct {
	// ConnectionString is a Service Bus connection string:
	// "Endpoint=sb://NS.servicebus.windows.net/;SharedAccessKeyName=…;SharedAccessKey=…".
	// For a local server add UseDevelopmentEmulator=true (plain AMQP on the
	// endpoint's host and port) and set AdminEndpoint.
	ConnectionString string
	// AdminEndpoint is the base URL of the ATOM management API when the
	// connection string says UseDevelopmentEmulator=true, such as
	// "http://127.0.0.1:5300". It is required then (queues and topics are
	// created through it) and refused otherwise (against Azure the admin
	// client talks HTTPS to the namespace itself).
	AdminEndpoint string
	// SubscriptionIdle is the AutoDeleteOnIdle of per-subscriber
	// subscriptions. Zero means DefaultSubscriptionIdle.
	SubscriptionIdle time.Duration
	// Logger receives the adapter's log lines. Nil means slog.Default().
	Logger *slog.Logger
}

// urlParams are the accepted query parameters of an azservicebus:// URL.
var urlParams = []string{"admin_endpoint", "connection_string", "connection_string_env", "subscription_idle"}

// ParseURL turns an azservicebus:// URL into a Config. The URL has no host
// and no path; everything is in query parameters:
//
//	connection_string      the connection string itself (URL-escaped)
//	connection_string_env  the name of an environment variable holding it
//	admin_endpoint         the ATOM management base URL (emulators only)
//	subscription_idle      a Go duration, at least 5m
//
// Exactly one of connection_string and connection_string_env is required.
func ParseURL(u *url.URL) (Config, error) {
	const op = "azservicebus: parse URL"
	var cfg Config
	if u.Host != "" || (u.Path != "" && u.Path != "/") || u.Opaque != "" || u.User != nil {
		return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op,
			"want azservicebus://?connection_string_env=VAR (no host, user or path: the namespace is in the connection string); accepted parameters: %s",
			strings.Join(urlParams, ", "))
	}
	q := u.Query()
	var unknown []string
	for k := range q {
		if !contains(urlParams, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op, "unknown parameter(s) %s; accepted: %s",
			strings.Join(unknown, ", "), strings.Join(urlParams, ", "))
	}
	cs, env := q.Get("connection_string"), q.Get("connection_string_env")
	switch {
	case cs != "" && env != "":
		return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op, "give connection_string or connection_string_env, not both")
	case cs != "":
		cfg.ConnectionString = cs
	case env != "":
		cfg.ConnectionString = os.Getenv(env)
		if cfg.ConnectionString == "" {
			return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op, "connection_string_env: environment variable %s is empty or unset", env)
		}
	default:
		return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op,
			"no connection string: give connection_string=… or connection_string_env=VAR; accepted parameters: %s", strings.Join(urlParams, ", "))
	}
	cfg.AdminEndpoint = q.Get("admin_endpoint")
	if s := q.Get("subscription_idle"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return cfg, adapters.Errorf(adapters.ErrInvalidArgument, op, "subscription_idle %q: want a Go duration such as 10m", s)
		}
		cfg.SubscriptionIdle = d
	}
	return cfg, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// connInfo is what the adapter needs from a connection string.
type connInfo struct {
	emulator bool
	host     string // host[:port] of the endpoint
}

// parseConnectionString checks the parts the adapter relies on; the SDK
// parses it again. Secrets never appear in the errors.
func parseConnectionString(cs string) (connInfo, error) {
	const op = "azservicebus: connection string"
	var ci connInfo
	var endpoint string
	for _, part := range strings.Split(cs, ";") {
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return ci, adapters.Errorf(adapters.ErrInvalidArgument, op, "want KEY=VALUE pairs separated by ';'")
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "endpoint":
			endpoint = v
		case "usedevelopmentemulator":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return ci, adapters.Errorf(adapters.ErrInvalidArgument, op, "UseDevelopmentEmulator=%q: want true or false", v)
			}
			ci.emulator = b
		}
	}
	u, err := url.Parse(endpoint)
	if endpoint == "" || err != nil || u.Scheme != "sb" || u.Host == "" {
		return ci, adapters.Errorf(adapters.ErrInvalidArgument, op, "Endpoint %q: want sb://NAMESPACE.servicebus.windows.net/ (or sb://HOST:PORT with UseDevelopmentEmulator=true)", endpoint)
	}
	ci.host = u.Host
	return ci, nil
}

// withDefaults fills zero fields and checks cfg.
func (cfg Config) withDefaults() (Config, connInfo, error) {
	const op = "azservicebus: config"
	if cfg.ConnectionString == "" {
		return cfg, connInfo{}, adapters.Errorf(adapters.ErrInvalidArgument, op, "Config.ConnectionString is empty")
	}
	ci, err := parseConnectionString(cfg.ConnectionString)
	if err != nil {
		return cfg, ci, err
	}
	switch {
	case ci.emulator && cfg.AdminEndpoint == "":
		return cfg, ci, adapters.Errorf(adapters.ErrInvalidArgument, op,
			"UseDevelopmentEmulator=true needs admin_endpoint (Config.AdminEndpoint), the http:// base URL of the management API, to create queues and topics")
	case !ci.emulator && cfg.AdminEndpoint != "":
		return cfg, ci, adapters.Errorf(adapters.ErrInvalidArgument, op,
			"admin_endpoint is only for UseDevelopmentEmulator=true; against Azure the management API is the namespace itself")
	case cfg.AdminEndpoint != "":
		u, err := url.Parse(cfg.AdminEndpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return cfg, ci, adapters.Errorf(adapters.ErrInvalidArgument, op, "admin_endpoint %q: want http://HOST:PORT", cfg.AdminEndpoint)
		}
	}
	if cfg.SubscriptionIdle == 0 {
		cfg.SubscriptionIdle = DefaultSubscriptionIdle
	}
	if cfg.SubscriptionIdle < DefaultSubscriptionIdle {
		return cfg, ci, adapters.Errorf(adapters.ErrInvalidArgument, op, "subscription_idle %s: Service Bus accepts at least %s", cfg.SubscriptionIdle, DefaultSubscriptionIdle)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg, ci, nil
}

// rewriteTransport sends the admin client's https://NAMESPACE/ requests to
// the emulator's management endpoint instead.
type rewriteTransport struct {
	base   *url.URL
	client *http.Client
}

func (t *rewriteTransport) Do(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.URL.Scheme = t.base.Scheme
	r.URL.Host = t.base.Host
	r.URL.Path = strings.TrimSuffix(t.base.Path, "/") + r.URL.Path
	r.Host = t.base.Host
	return t.client.Do(r)
}

func init() {
	adapters.Register(Scheme, func(ctx context.Context, u *url.URL) (adapters.Broker, error) {
		cfg, err := ParseURL(u)
		if err != nil {
			return nil, err
		}
		return Open(ctx, cfg)
	})
}

// isoDuration formats d as an xsd:duration, as the management API wants.
func isoDuration(d time.Duration) string {
	return "PT" + strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "S"
}

// parseISODuration reads the xsd:durations the management API returns
// ("PT30S", "PT1M", "P10675199DT2H48M5.4775807S").
func parseISODuration(s string) (time.Duration, error) {
	rest, ok := strings.CutPrefix(s, "P")
	if !ok {
		return 0, fmt.Errorf("duration %q: no leading P", s)
	}
	var total float64
	inTime := false
	num := ""
	for _, r := range rest {
		switch {
		case r == 'T':
			inTime = true
		case (r >= '0' && r <= '9') || r == '.':
			num += string(r)
		default:
			v, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return 0, fmt.Errorf("duration %q: %v", s, err)
			}
			num = ""
			switch {
			case r == 'D' && !inTime:
				total += v * 86400
			case r == 'H' && inTime:
				total += v * 3600
			case r == 'M' && inTime:
				total += v * 60
			case r == 'S' && inTime:
				total += v
			default:
				return 0, fmt.Errorf("duration %q: unsupported unit %q", s, r)
			}
		}
	}
	if total > float64(1<<62)/1e9 {
		return time.Duration(1<<62 - 1), nil
	}
	return time.Duration(total * float64(time.Second)).Round(time.Millisecond), nil
}
