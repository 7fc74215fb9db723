package kafkatest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// TestQuery is the kafka:// query URL appends: a 3s group session timeout
// (also the rebalance timeout) with 300ms heartbeats, so a dead consumer's
// partitions move within seconds, and four partitions per queue (less work
// for the in-process server). kfake restarts its wait for a rebalance on
// every join or departure; with a rebalance timeout longer than the gap
// between the chaos tests' kills, rebalances there could not finish.
const TestQuery = "session_timeout=3s&heartbeat_interval=300ms&partitions=4"

// Options configures Start. The zero value is a free port and no data
// directory.
type Options struct {
	// Port to listen on at 127.0.0.1; 0 picks a free one.
	Port int
	// DataDir, if set, persists the cluster so that Restart keeps topics,
	// records and committed offsets.
	DataDir string
	// Brokers is the number of brokers (node IDs 0…Brokers-1); zero means
	// one. Port is broker 0's; the others get free ports. See the package
	// doc for what several kfake brokers model and what they do not.
	Brokers int
}

// Server is a running kfake cluster.
type Server struct {
	port  int
	dir   string
	ports []int // every broker's, ports[0] == port

	mu      sync.Mutex
	cluster *kfake.Cluster
}

// Start starts a one-broker kfake cluster on 127.0.0.1.
func Start(opts Options) (*Server, error) {
	port := opts.Port
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("kafkatest: pick a port: %w", err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	s := &Server{port: port, dir: opts.DataDir, ports: []int{port}}
	for len(s.ports) < max(opts.Brokers, 1) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("kafkatest: pick a port: %w", err)
		}
		s.ports = append(s.ports, l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) start() error {
	o := []kfake.Opt{
		kfake.NumBrokers(len(s.ports)),
		kfake.Ports(s.ports...),
		kfake.GroupMinSessionTimeout(time.Second),
	}
	if s.dir != "" {
		o = append(o, kfake.DataDir(s.dir))
	}
	c, err := kfake.NewCluster(o...)
	if err != nil {
		return fmt.Errorf("kafkatest: start kfake on port %d: %w", s.port, err)
	}
	s.mu.Lock()
	s.cluster = c
	s.mu.Unlock()
	return nil
}

// Addr is the broker's host:port.
func (s *Server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// Port is the broker's port.
func (s *Server) Port() int { return s.port }

// URL is the kafka:// URL of the brokers with TestQuery.
func (s *Server) URL() string {
	hosts := make([]string, len(s.ports))
	for i, p := range s.ports {
		hosts[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	return "kafka://" + strings.Join(hosts, ",") + "?" + TestQuery
}

// RemoveBroker takes broker i (its node ID) out of the cluster: its
// listener closes, its connections end, and the partitions it led get new
// leaders among the others. Nothing stored is lost: kfake keeps one copy
// of everything for all brokers (see the package doc).
func (s *Server) RemoveBroker(i int) error {
	s.mu.Lock()
	c := s.cluster
	s.mu.Unlock()
	if c == nil {
		return fmt.Errorf("kafkatest: remove broker %d: the server is stopped", i)
	}
	return c.RemoveNode(int32(i))
}

// ShuffleLeaders gives every partition a new leader, as a leader election
// after a broker failure would (epochs bumped, clients must refresh).
func (s *Server) ShuffleLeaders() {
	s.mu.Lock()
	c := s.cluster
	s.mu.Unlock()
	if c != nil {
		c.ShufflePartitionLeaders()
	}
}

// CanRestart reports whether Restart keeps data (Options.DataDir was set).
func (s *Server) CanRestart() bool { return s.dir != "" }

// Restart closes the cluster, cutting every connection, and starts a new
// one on the same port (and data directory). It retries while the port is
// still in use, until ctx ends.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	old := s.cluster
	s.cluster = nil
	s.mu.Unlock()
	if old == nil {
		return fmt.Errorf("kafkatest: restart: the server is stopped")
	}
	old.Close()
	var err error
	for ctx.Err() == nil {
		if err = s.start(); err == nil {
			return nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("kafkatest: restart on port %d: %w (last: %v)", s.port, ctx.Err(), err)
}

// Stop closes the cluster. It is safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cluster != nil {
		s.cluster.Close()
		s.cluster = nil
	}
}
