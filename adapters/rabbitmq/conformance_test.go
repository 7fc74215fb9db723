package rabbitmq

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
)

// TestConformance runs the broker contract's suite against the RabbitMQ at
// CLUSTERBUS_TEST_AMQP_URL. The restart case restarts this machine's
// RabbitMQ (rabbitmqctl stop_app/start_app, which drops every client
// connection and keeps durable queues) only when
// CLUSTERBUS_TEST_AMQP_RESTART=1, because it disrupts a shared broker.
func TestConformance(t *testing.T) {
	requireBroker(t)
	log := testLogger(t)
	h := adaptertest.Harness{
		Open: func(ctx context.Context) (adapters.Broker, error) {
			b, err := Open(ctx, testURL(), Options{Logger: log})
			if err != nil {
				return nil, err
			}
			return b, nil
		},
	}
	if restart, why := restartHook(); restart != nil {
		h.Restart = restart
	} else {
		t.Logf("restart case will skip: %s", why)
	}
	adaptertest.Run(t, h)
}

// restartHook returns a function that restarts the local RabbitMQ, or nil
// and the reason it cannot.
func restartHook() (func(context.Context) error, string) {
	if os.Getenv("CLUSTERBUS_TEST_AMQP_RESTART") != "1" {
		return nil, "CLUSTERBUS_TEST_AMQP_RESTART is not 1 (restarting disrupts a shared broker; .ci/run sets it)"
	}
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		return nil, "rabbitmqctl not found: cannot restart the broker from here"
	}
	return func(ctx context.Context) error {
		// Debian's /usr/sbin/rabbitmqctl runs as user rabbitmq; a server
		// started as root from /usr/lib/rabbitmq/bin has root's Erlang
		// cookie. Use whichever reaches the node.
		ctl := ""
		for _, c := range []string{"rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl"} {
			if err := exec.CommandContext(ctx, c, "-q", "status").Run(); err == nil {
				ctl = c
				break
			}
		}
		if ctl == "" {
			return fmt.Errorf("no rabbitmqctl reaches the local node (Erlang cookie?)")
		}
		for _, args := range [][]string{{"stop_app"}, {"start_app"}, {"await_startup"}} {
			out, err := exec.CommandContext(ctx, ctl, args...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%s %s: %v: %s", ctl, args[0], err, out)
			}
		}
		return nil
	}, ""
}
