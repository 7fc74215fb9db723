package integration

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/azservicebus/sbtest"
	"github.com/clusterbus/clusterbus/adapters/kafka/kafkatest"
	"github.com/clusterbus/clusterbus/adapters/sqs/sqstest"
)

// brokerKinds are the brokers every multi-process test runs on, in this
// order, as subtests named after them.
var brokerKinds = []string{"nats", "rabbitmq", "kafka", "sqs", "azservicebus"}

// testBroker is a broker a subtest's nodes connect to.
type testBroker struct {
	kind string // one of brokerKinds, or the URL scheme of an external broker
	url  string
}

// forEachBroker runs fn as a subtest per broker kind, each with a broker of
// its own started for it. CLUSTERBUS_INTEGRATION_BROKER=<url> restricts the
// run to that one external broker (subtest named after its kind). A broker
// that cannot be started skips its subtest with the reason, or fails it
// under CI=true.
func forEachBroker(t *testing.T, fn func(t *testing.T, b testBroker)) {
	t.Helper()
	if u := os.Getenv("CLUSTERBUS_INTEGRATION_BROKER"); u != "" {
		kind := brokerKindOf(u)
		t.Run(kind, func(t *testing.T) {
			t.Logf("broker from CLUSTERBUS_INTEGRATION_BROKER: %s", adapters.Redact(u))
			if kind == "sqs" && os.Getenv("AWS_ACCESS_KEY_ID") == "" && os.Getenv("AWS_PROFILE") == "" {
				sqstest.Setenv(t) // placeholder credentials, for an emulator
			}
			fn(t, testBroker{kind: kind, url: u})
		})
		return
	}
	for _, kind := range brokerKinds {
		t.Run(kind, func(t *testing.T) {
			fn(t, startTestBroker(t, kind))
		})
	}
}

// brokerKindOf names the broker of a URL by its scheme.
func brokerKindOf(u string) string {
	scheme, _, _ := strings.Cut(u, "://")
	switch scheme {
	case "amqp", "amqps":
		return "rabbitmq"
	case "":
		return "unknown"
	}
	return scheme
}

// brokerUnavailable skips the test with the reason, or fails it under
// CI=true.
func brokerUnavailable(t *testing.T, kind string, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s broker unavailable (CI=true, so this fails instead of skipping): %v", kind, err)
	}
	t.Skipf("%s broker unavailable: %v", kind, err)
}

// startTestBroker starts (or finds) a broker of kind for the test and
// stops it at cleanup.
func startTestBroker(t *testing.T, kind string) testBroker {
	t.Helper()
	start := time.Now()
	b := testBroker{kind: kind}
	switch kind {
	case "nats":
		b.url = startNATSBroker(t)
	case "rabbitmq":
		b.url = os.Getenv("CLUSTERBUS_TEST_AMQP_URL")
		if b.url == "" {
			b.url = "amqp://guest:guest@127.0.0.1:5672/"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		br, err := adapters.Open(ctx, b.url)
		if err != nil {
			brokerUnavailable(t, kind, fmt.Errorf("no RabbitMQ at %s (set CLUSTERBUS_TEST_AMQP_URL or run .ci/rabbitmq.sh): %w", adapters.Redact(b.url), err))
		}
		br.Close()
	case "kafka":
		s, err := kafkatest.Start(kafkatest.Options{})
		if err != nil {
			brokerUnavailable(t, kind, err)
		}
		t.Cleanup(s.Stop)
		b.url = s.URL()
	case "sqs":
		s, err := sqstest.Start(0)
		if err != nil {
			brokerUnavailable(t, kind, err)
		}
		t.Cleanup(s.Stop)
		sqstest.Setenv(t)
		b.url = s.URL()
	case "azservicebus":
		s, err := sbtest.Start(sbtest.Options{})
		if err != nil {
			brokerUnavailable(t, kind, err)
		}
		t.Cleanup(s.Stop)
		b.url = s.URL()
	default:
		t.Fatalf("unknown broker kind %q", kind)
	}
	t.Logf("%s broker ready in %s: %s", kind, time.Since(start).Round(time.Millisecond), adapters.Redact(b.url))
	return b
}

var sbEndpointRE = regexp.MustCompile(`Endpoint=sb://([^/;]+)/?`)

// viaProxy returns the address the broker URL connects to and the URL
// with that address replaced by addr, or skips the test when a proxy in
// front of one address cannot cut one client's link to this broker.
func viaProxy(t *testing.T, b testBroker, addr string) (target, proxied string) {
	t.Helper()
	u, err := url.Parse(b.url)
	if err != nil {
		t.Fatalf("broker URL %q: %v", adapters.Redact(b.url), err)
	}
	switch u.Scheme {
	case "kafka":
		t.Skip("kafka: clients reconnect to the broker address advertised in metadata, so a proxy in front of the bootstrap address cannot cut one node's link")
	case "sqs":
		// The SQS and SNS endpoint is a query parameter.
		q := u.Query()
		e, err := url.Parse(q.Get("endpoint"))
		if err != nil || e.Host == "" {
			t.Skipf("sqs: cannot put a proxy in front of %q: it has no endpoint parameter (AWS itself)", adapters.Redact(b.url))
		}
		target = e.Host
		e.Host = addr
		q.Set("endpoint", e.String())
		u.RawQuery = q.Encode()
		return target, u.String()
	case "azservicebus":
		// The AMQP endpoint is in the connection string; the admin
		// endpoint (entity management over HTTP) stays direct.
		q := u.Query()
		cs := q.Get("connection_string")
		m := sbEndpointRE.FindStringSubmatch(cs)
		if m == nil {
			t.Skipf("azservicebus: cannot put a proxy in front of %q: no Endpoint=sb://host:port in connection_string", adapters.Redact(b.url))
		}
		target = m[1]
		q.Set("connection_string", strings.Replace(cs, m[0], "Endpoint=sb://"+addr+strings.TrimPrefix(m[0], "Endpoint=sb://"+m[1]), 1))
		u.RawQuery = q.Encode()
		return target, u.String()
	}
	if u.Host == "" || strings.Contains(u.Host, ",") {
		t.Skipf("cannot put a proxy in front of broker URL %q (want one host:port)", adapters.Redact(b.url))
	}
	target = u.Host
	u.Host = addr
	return target, u.String()
}
