package rabbitmq

import (
	"errors"
	"net/url"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
)

// TestParseURLTLSFiles: amqps:// takes a CA as ca= (like the other
// adapters) or cacertfile= (amqp091-go's name), checked before dialing.
// The CI machine's RabbitMQ has no TLS listener, so the handshake itself
// is amqp091-go's, not exercised here.
func TestParseURLTLSFiles(t *testing.T) {
	caFile, _ := adaptertest.TestCA(t, t.TempDir())
	for _, param := range []string{"ca", "cacertfile"} {
		got, err := parseURL("amqps://u:p@h:5671/v?"+param+"="+url.QueryEscape(caFile), &Options{})
		if err != nil {
			t.Fatalf("%s: %v", param, err)
		}
		u, _ := url.Parse(got)
		if u.Query().Get("cacertfile") != caFile {
			t.Fatalf("%s: SDK URL %s lacks cacertfile", param, got)
		}
	}
	for _, bad := range []string{
		"amqps://u:p@h/?ca=/nonexistent.pem",
		"amqp://u:p@h/?ca=" + url.QueryEscape(caFile),
		"amqps://u:p@h/?ca=" + url.QueryEscape(caFile) + "&cacertfile=" + url.QueryEscape(caFile),
		"amqps://u:p@h/?cert=" + url.QueryEscape(caFile),
	} {
		if _, err := parseURL(bad, &Options{}); !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", bad, err)
		}
	}
}
