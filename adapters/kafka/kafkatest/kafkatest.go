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
}

// Server is a running kfake cluster.
type Server struct {
	port int
	dir  string

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
	s := &Server{port: port, dir: opts.DataDir}
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) start() error {
	o := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(s.port),
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

// URL is the kafka:// URL of the broker with TestQuery.
func (s *Server) URL() string { return "kafka://" + s.Addr() + "?" + TestQuery }

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
