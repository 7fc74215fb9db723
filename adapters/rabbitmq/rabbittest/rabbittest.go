package rabbittest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// EnvURLs names an external cluster: comma-separated amqp:// URLs, one per
// node.
const EnvURLs = "CLUSTERBUS_TEST_AMQP_CLUSTER_URLS"

// ErrNotOwned: the cluster came from EnvURLs, so this process cannot kill,
// start or restart its nodes.
var ErrNotOwned = errors.New("rabbittest: the cluster is external (" + EnvURLs + "): its nodes cannot be stopped from here")

// Cluster is a 3-node RabbitMQ cluster.
type Cluster struct {
	urls   []string
	script string // empty: external
}

var (
	startOnce sync.Once
	started   *Cluster
	startErr  error
)

// StartCluster returns the cluster, starting it with .ci/rabbitmq-cluster.sh
// when it does not answer (about a minute; once per process). It fails when
// rabbitmq-server is not installed or the script cannot be found.
func StartCluster(ctx context.Context) (*Cluster, error) {
	if s := os.Getenv(EnvURLs); s != "" {
		return &Cluster{urls: strings.Split(s, ",")}, nil
	}
	startOnce.Do(func() {
		script, err := findScript()
		if err != nil {
			startErr = err
			return
		}
		c := &Cluster{script: script}
		for i := range 3 {
			c.urls = append(c.urls, fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", 5681+i))
		}
		if out, err := c.run(ctx, "start"); err != nil {
			startErr = fmt.Errorf("rabbittest: %s start: %v\n%s", script, err, out)
			return
		}
		started = c
	})
	return started, startErr
}

// findScript looks for .ci/rabbitmq-cluster.sh from the working directory
// up (tests run in their package's directory inside the module).
func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, ".ci", "rabbitmq-cluster.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("rabbittest: .ci/rabbitmq-cluster.sh not found above the working directory")
		}
		dir = parent
	}
}

func (c *Cluster) run(ctx context.Context, args ...string) (string, error) {
	if c.script == "" {
		return "", ErrNotOwned
	}
	out, err := exec.CommandContext(ctx, "bash", append([]string{c.script}, args...)...).CombinedOutput()
	return string(out), err
}

// Size is the number of nodes.
func (c *Cluster) Size() int { return len(c.urls) }

// URL is the amqp:// URL of node i (0-based).
func (c *Cluster) URL(i int) string { return c.urls[i] }

// NodeName is node i's Erlang node name (cb1@localhost, …).
func (c *Cluster) NodeName(i int) string { return "cb" + strconv.Itoa(i+1) + "@localhost" }

// Owned reports whether this process may stop and start the nodes.
func (c *Cluster) Owned() bool { return c.script != "" }

// Ctl runs rabbitmqctl against node i and returns its output.
func (c *Cluster) Ctl(ctx context.Context, i int, args ...string) (string, error) {
	out, err := c.run(ctx, append([]string{"ctl", strconv.Itoa(i + 1)}, args...)...)
	if err != nil && c.script != "" {
		return out, fmt.Errorf("rabbitmqctl -n %s %s: %v: %s", c.NodeName(i), strings.Join(args, " "), err, out)
	}
	return out, err
}

// Kill sends SIGKILL to node i's server process and waits until it is
// gone.
func (c *Cluster) Kill(i int) error {
	out, err := c.run(context.Background(), "pid", strconv.Itoa(i+1))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		return fmt.Errorf("rabbittest: pid of %s: %q", c.NodeName(i), out)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("rabbittest: kill -9 %s (pid %d): %w", c.NodeName(i), pid, err)
	}
	for syscall.Kill(pid, 0) == nil {
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// Start starts node i again (after Kill) and waits until it runs; it
// rejoins the cluster by itself.
func (c *Cluster) Start(ctx context.Context, i int) error {
	if out, err := c.run(ctx, "start-node", strconv.Itoa(i+1)); err != nil {
		return fmt.Errorf("rabbittest: start %s: %v\n%s", c.NodeName(i), err, out)
	}
	return nil
}

// StopApp stops the RabbitMQ application on node i (rabbitmqctl stop_app):
// clients are disconnected, the Erlang node stays up.
func (c *Cluster) StopApp(ctx context.Context, i int) error {
	_, err := c.Ctl(ctx, i, "-q", "stop_app")
	return err
}

// StartApp starts the application again and waits for it.
func (c *Cluster) StartApp(ctx context.Context, i int) error {
	if _, err := c.Ctl(ctx, i, "-q", "start_app"); err != nil {
		return err
	}
	_, err := c.Ctl(ctx, i, "-q", "await_startup")
	return err
}

// QueueLeader returns the index of the node that leads the quorum queue
// named (its broker-side name), or -1.
func (c *Cluster) QueueLeader(ctx context.Context, queue string) (int, error) {
	for i := range c.Size() {
		out, err := c.Ctl(ctx, i, "-q", "list_queues", "name", "leader", "--no-table-headers")
		if err != nil {
			continue // that node is down: ask the next
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == queue {
				for j := range c.Size() {
					if f[1] == c.NodeName(j) {
						return j, nil
					}
				}
			}
		}
		return -1, nil
	}
	return -1, errors.New("rabbittest: no node answers list_queues")
}
