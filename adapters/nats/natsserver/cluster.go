package natsserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// ClusterConfig configures StartCluster.
type ClusterConfig struct {
	// Size is the number of servers; zero means 3.
	Size int
	// Dir holds one data directory per server (Dir/s1, Dir/s2, …).
	// Required.
	Dir string
	// Name is the cluster name; empty means "clusterbus". Servers are
	// named Name-1, Name-2, ….
	Name string
	// Sync fsyncs every write on every server (see Config.Sync).
	Sync bool
	// Logger receives every server's log lines, with a "server" attribute;
	// nil discards them.
	Logger *slog.Logger
	// RouteVia, if set, gives the address server from (0-based) dials to
	// reach server to, whose route listener is on addr. A test returns the
	// address of a proxy it can cut to partition the two; implicit
	// (gossiped) routes are then disabled so that nothing goes around it.
	// Nil dials addr directly. It is called once per pair, from one
	// goroutine, before any server starts; a restarted server dials the
	// same addresses again.
	RouteVia func(from, to int, addr string) string
	// ReadyTimeout bounds the wait for each server and for a JetStream
	// meta leader; zero means 30 seconds.
	ReadyTimeout time.Duration
}

// Cluster is N embedded NATS servers on loopback joined by routes, with
// JetStream clustered over them. Each server keeps its client and route
// ports and its data directory across Stop and Restart, as a real server
// restarted on its machine would.
type Cluster struct {
	cfg ClusterConfig

	mu         sync.Mutex
	servers    []*Server // nil while stopped
	clientAddr []string
	routeAddr  []string
	routes     [][]string // what server i dials, fixed at StartCluster
}

// StartCluster starts cfg.Size servers with routes between every pair and
// waits until each accepts connections and JetStream has a meta leader.
func StartCluster(cfg ClusterConfig) (*Cluster, error) {
	if cfg.Size == 0 {
		cfg.Size = 3
	}
	if cfg.Size < 1 || cfg.Size > 9 {
		return nil, fmt.Errorf("natsserver: ClusterConfig.Size %d: want 1 to 9", cfg.Size)
	}
	if cfg.Dir == "" {
		return nil, errors.New("natsserver: ClusterConfig.Dir is required: the directory that holds each server's store")
	}
	if cfg.Name == "" {
		cfg.Name = "clusterbus"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 30 * time.Second
	}
	c := &Cluster{cfg: cfg, servers: make([]*Server, cfg.Size),
		clientAddr: make([]string, cfg.Size), routeAddr: make([]string, cfg.Size),
		routes: make([][]string, cfg.Size)}
	// Every server's routes name every other server, so the ports are
	// chosen before any starts. They stay held until RouteVia has run, so
	// that what it listens on (proxies) cannot take one of them.
	var held []net.Listener
	release := func() {
		for _, l := range held {
			l.Close()
		}
		held = nil
	}
	defer release()
	for i := range cfg.Size {
		for _, addr := range []*string{&c.clientAddr[i], &c.routeAddr[i]} {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, fmt.Errorf("natsserver: no free loopback port: %w", err)
			}
			held = append(held, l)
			*addr = l.Addr().String()
		}
	}
	for i := range cfg.Size {
		for j := range cfg.Size {
			if j == i {
				continue
			}
			addr := c.routeAddr[j]
			if cfg.RouteVia != nil {
				addr = cfg.RouteVia(i, j, addr)
			}
			c.routes[i] = append(c.routes[i], addr)
		}
	}
	release()
	errs := make([]error, cfg.Size)
	var wg sync.WaitGroup
	for i := range cfg.Size {
		wg.Go(func() { errs[i] = c.start(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Shutdown()
		return nil, err
	}
	if err := c.WaitMetaLeader(cfg.ReadyTimeout); err != nil {
		c.Shutdown()
		return nil, err
	}
	return c, nil
}

// start starts server i on its ports and directory.
func (c *Cluster) start(i int) error {
	cfg := Config{
		Listen:        c.clientAddr[i],
		DataDir:       filepath.Join(c.cfg.Dir, "s"+strconv.Itoa(i+1)),
		Sync:          c.cfg.Sync,
		Name:          c.ServerName(i),
		ClusterName:   c.cfg.Name,
		ClusterListen: c.routeAddr[i],
		ReadyTimeout:  c.cfg.ReadyTimeout,
	}
	if c.cfg.Logger != nil {
		cfg.Logger = c.cfg.Logger.With("server", cfg.Name)
	}
	if c.cfg.RouteVia != nil {
		cfg.ClusterAdvertise = "127.0.0.1:1" // nobody listens: no implicit routes
	}
	cfg.Routes = c.routes[i]
	var s *Server
	var err error
	// A port freed a moment ago may be taken by another process on a busy
	// machine; a restart retries briefly.
	for try := 0; try < 20; try++ {
		if s, err = Start(cfg); err == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("natsserver: cluster server %s: %w", cfg.Name, err)
	}
	c.mu.Lock()
	c.servers[i] = s
	c.mu.Unlock()
	return nil
}

// Size is the number of servers, running or not.
func (c *Cluster) Size() int { return c.cfg.Size }

// ServerName is server i's name (0-based): Name-(i+1).
func (c *Cluster) ServerName(i int) string { return c.cfg.Name + "-" + strconv.Itoa(i+1) }

// Server returns server i, or nil while it is stopped.
func (c *Cluster) Server(i int) *Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.servers[i]
}

// ClientAddr is server i's client host:port (kept across restarts).
func (c *Cluster) ClientAddr(i int) string { return c.clientAddr[i] }

// RouteAddr is server i's route listener host:port (kept across
// restarts): what a proxy in front of it would dial.
func (c *Cluster) RouteAddr(i int) string { return c.routeAddr[i] }

// ClientURL is a nats:// URL listing every server, for clients that fail
// over between them: nats://127.0.0.1:p1,127.0.0.1:p2,….
func (c *Cluster) ClientURL() string {
	u := "nats://"
	for i, a := range c.clientAddr {
		if i > 0 {
			u += ","
		}
		u += a
	}
	return u
}

// Stop shuts server i down (its store stays for Restart). In-process there
// is no kill -9; the server closes its connections and stops answering,
// which is what its peers and clients see of a dead server. It is a no-op
// on a stopped server.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
	}
}

// Restart starts a stopped server i again on the same ports and store; it
// stops it first if it is running.
func (c *Cluster) Restart(i int) error {
	c.Stop(i)
	return c.start(i)
}

// Shutdown stops every server.
func (c *Cluster) Shutdown() {
	var wg sync.WaitGroup
	for i := range c.cfg.Size {
		wg.Go(func() { c.Stop(i) })
	}
	wg.Wait()
}

// MetaLeader returns the index of the server that leads the JetStream meta
// group, or -1 if no running server does.
func (c *Cluster) MetaLeader() int {
	for i := range c.cfg.Size {
		if s := c.Server(i); s != nil && s.srv.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// WaitMetaLeader waits until a running server leads the meta group and
// every running server is current with it (a server that just restarted
// has caught up), so that JetStream API calls are answered.
func (c *Cluster) WaitMetaLeader(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for c.MetaLeader() < 0 || !c.allCurrent() || !c.allPeersOnline() {
		if time.Now().After(deadline) {
			return fmt.Errorf("natsserver: no JetStream meta leader in cluster %s within %s", c.cfg.Name, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// allPeersOnline: the meta leader counts every running server as an
// online peer with current stats. Until then it refuses to place a
// replicated stream on a server that just restarted ("no suitable peers
// for placement, peer offline").
func (c *Cluster) allPeersOnline() bool {
	l := c.MetaLeader()
	if l < 0 {
		return false
	}
	leader := c.Server(l)
	if leader == nil {
		return false
	}
	running := 0
	for i := range c.cfg.Size {
		if c.Server(i) != nil {
			running++
		}
	}
	return len(leader.srv.JetStreamClusterPeers()) >= running
}

func (c *Cluster) allCurrent() bool {
	for i := range c.cfg.Size {
		if s := c.Server(i); s != nil && !s.srv.JetStreamIsCurrent() {
			return false
		}
	}
	return true
}

// StreamLeader returns the index of the server that leads stream (in the
// default account when account is empty), or -1 if no running server does.
func (c *Cluster) StreamLeader(account, stream string) int {
	if account == "" {
		account = "$G"
	}
	for i := range c.cfg.Size {
		if s := c.Server(i); s != nil && s.srv.JetStreamIsStreamLeader(account, stream) {
			return i
		}
	}
	return -1
}

// ConsumerLeader returns the index of the server that leads a stream's
// consumer, or -1.
func (c *Cluster) ConsumerLeader(account, stream, consumer string) int {
	if account == "" {
		account = "$G"
	}
	for i := range c.cfg.Size {
		if s := c.Server(i); s != nil && s.srv.JetStreamIsConsumerLeader(account, stream, consumer) {
			return i
		}
	}
	return -1
}
