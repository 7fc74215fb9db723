package adapters_test

import (
	"strings"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
)

func TestRedactHidesSecretsAndKeepsTheRest(t *testing.T) {
	cases := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"amqp://guest:s3cret@rabbit:5672/vh", "amqp://guest:xxxxx@rabbit:5672/vh"},
		{"kafka://k1:9092?partitions=8", "kafka://k1:9092?partitions=8"},
		{"sqs://eu-west-1?endpoint=http://127.0.0.1:4566&secret_access_key=abc", "sqs://eu-west-1?endpoint=http%3A%2F%2F127.0.0.1%3A4566&secret_access_key=xxxxx"},
		{"azservicebus://?connection_string=Endpoint%3Dsb%3A%2F%2Fns.servicebus.windows.net%2F%3BSharedAccessKeyName%3DRoot%3BSharedAccessKey%3DAbC%2B%3D",
			"azservicebus://?connection_string=Endpoint%3Dsb%3A%2F%2Fns.servicebus.windows.net%2F%3BSharedAccessKeyName%3DRoot%3BSharedAccessKey%3Dxxxxx"},
		{"azservicebus://?connection_string=Endpoint%3Dsb%3A%2F%2Fns%2F%3BSharedAccessSignature%3DSharedAccessSignature+sr%3Dx%26sig%3Dy",
			"azservicebus://?connection_string=Endpoint%3Dsb%3A%2F%2Fns%2F%3BSharedAccessSignature%3Dxxxxx"},
	}
	for _, c := range cases {
		if got := adapters.Redact(c.in); got != c.want {
			t.Errorf("Redact(%q)\n got %q\nwant %q", c.in, got, c.want)
		}
	}
	// An unparsable URL keeps nothing after the user info or the query.
	for _, in := range []string{"amqp://u:p@bad host:1", "x://h:1?tok%zz=1"} {
		got := adapters.Redact(in)
		if strings.Contains(got, "p@") || strings.Contains(got, "tok") {
			t.Errorf("Redact(%q) = %q: a secret may show", in, got)
		}
	}
}
