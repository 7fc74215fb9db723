package natsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// DefaultListen is the address the embedded server listens on when
// Config.Listen is empty: loopback, not the standard NATS port 4222.
const DefaultListen = "127.0.0.1:14222"

// Config configures the embedded server.
type Config struct {
	// Listen is host:port for clients. Empty means DefaultListen; port 0
	// picks a free port.
	Listen string
	// DataDir holds the JetStream store. Required.
	DataDir string
	// Sync fsyncs after every write (sync_interval "always"), so that an
	// acknowledged message survives a machine crash. Slower.
	Sync bool
	// Name is the server name; empty lets the server choose.
	Name string
	// User and Password, if set, are required from clients.
	User, Password string
	// MaxPayload is the largest message the server accepts, in bytes.
	// Zero means the NATS default (1 MiB).
	MaxPayload int
	// Logger receives the server's log lines; nil discards them.
	Logger *slog.Logger
	// Debug also logs the server's debug lines.
	Debug bool
	// ReadyTimeout bounds how long Start waits for the server to accept
	// connections. Zero means 10 seconds.
	ReadyTimeout time.Duration

	// ClusterName, ClusterListen and Routes make the server one of a
	// cluster: it listens for routes from the other servers on
	// ClusterListen (host:port) and dials each of Routes (host:port, or
	// nats-route://host:port). All three are set together or none; Name is
	// then required (JetStream tells peers apart by server name). See
	// StartCluster for N servers on loopback.
	ClusterName   string
	ClusterListen string
	Routes        []string
	// ClusterAdvertise is the route address this server gossips to the
	// others for implicit routes; empty means ClusterListen. A test that
	// routes through proxies sets an address nobody listens on, so that
	// no server dials a peer directly around a proxy.
	ClusterAdvertise string
}

// Server is a running embedded NATS server.
type Server struct {
	cfg Config
	srv *server.Server
}

// Start validates cfg, starts the server and waits until it accepts
// connections with JetStream enabled.
func Start(cfg Config) (*Server, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("natsserver: Config.Listen %q: want host:port, such as %s: %v", cfg.Listen, DefaultListen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("natsserver: Config.Listen %q: port must be a number from 0 to 65535", cfg.Listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	} else {
		// Fail fast and clearly on a port in use (the server itself only
		// logs it).
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("natsserver: cannot listen on Config.Listen %s: %w", cfg.Listen, err)
		}
		_ = l.Close()
	}
	if cfg.DataDir == "" {
		return nil, errors.New("natsserver: Config.DataDir is required: the directory that holds the JetStream store")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("natsserver: Config.DataDir: %w", err)
	}
	if cfg.MaxPayload < 0 {
		return nil, fmt.Errorf("natsserver: Config.MaxPayload %d: want 0 (default) or a positive number of bytes", cfg.MaxPayload)
	}
	if (cfg.User == "") != (cfg.Password == "") {
		return nil, errors.New("natsserver: Config.User and Config.Password must be set together")
	}
	clustered := cfg.ClusterName != "" || cfg.ClusterListen != "" || len(cfg.Routes) > 0
	var cluster server.ClusterOpts
	var routes []*url.URL
	if clustered {
		if cfg.ClusterName == "" || cfg.ClusterListen == "" {
			return nil, errors.New("natsserver: Config.ClusterName and Config.ClusterListen are required together (with Config.Routes) for a clustered server")
		}
		if cfg.Name == "" {
			return nil, errors.New("natsserver: Config.Name is required for a clustered server: JetStream tells peers apart by server name")
		}
		chost, cport, err := splitPort(cfg.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("natsserver: Config.ClusterListen %q: %v", cfg.ClusterListen, err)
		}
		cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: chost, Port: cport, Advertise: cfg.ClusterAdvertise}
		for _, r := range cfg.Routes {
			if !strings.Contains(r, "://") {
				r = "nats-route://" + r
			}
			u, err := url.Parse(r)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("natsserver: Config.Routes entry %q: want host:port or nats-route://host:port", r)
			}
			routes = append(routes, u)
		}
	}
	opts := &server.Options{
		Cluster:    cluster,
		Routes:     routes,
		ServerName: cfg.Name,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		SyncAlways: cfg.Sync,
		NoSigs:     true,
		NoLog:      cfg.Logger == nil,
		MaxPayload: int32(cfg.MaxPayload),
		Username:   cfg.User,
		Password:   cfg.Password,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsserver: %w", err)
	}
	if cfg.Logger != nil {
		srv.SetLoggerV2(slogLogger{cfg.Logger}, cfg.Debug, false, false)
	}
	srv.Start()
	if !srv.ReadyForConnections(cfg.ReadyTimeout) {
		srv.Shutdown()
		return nil, fmt.Errorf("natsserver: not ready for connections on %s after %s (is the port in use?)", cfg.Listen, cfg.ReadyTimeout)
	}
	if !clustered && !srv.JetStreamEnabled() {
		srv.Shutdown()
		return nil, fmt.Errorf("natsserver: JetStream did not start (data dir %s)", cfg.DataDir)
	}
	return &Server{cfg: cfg, srv: srv}, nil
}

// ClientURL is the nats:// URL clients connect to, with the actual port.
// It carries no credentials.
func (s *Server) ClientURL() string { return s.srv.ClientURL() }

// Addr is the host:port the server listens on, with the actual port.
func (s *Server) Addr() string {
	if a := s.srv.Addr(); a != nil {
		return a.String()
	}
	return s.cfg.Listen
}

// IsMetaLeader reports whether the server leads the JetStream meta group.
func (s *Server) IsMetaLeader() bool { return s.srv.JetStreamIsLeader() }

// IsStreamLeader reports whether the server leads stream (in the default
// account when account is empty).
func (s *Server) IsStreamLeader(account, stream string) bool {
	if account == "" {
		account = "$G"
	}
	return s.srv.JetStreamIsStreamLeader(account, stream)
}

// NumRoutes is the number of route connections to other cluster servers.
func (s *Server) NumRoutes() int { return s.srv.NumRoutes() }

// Config is the configuration the server was started with (defaults
// applied).
func (s *Server) Config() Config { return s.cfg }

// Shutdown stops the server and waits for it to stop. JetStream data stays
// in DataDir. It is safe to call more than once.
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// WaitForShutdown blocks until the server has stopped.
func (s *Server) WaitForShutdown() { s.srv.WaitForShutdown() }

// Run starts the server and blocks until ctx is done, then shuts it down.
func Run(ctx context.Context, cfg Config) error {
	s, err := Start(cfg)
	if err != nil {
		return err
	}
	<-ctx.Done()
	s.Shutdown()
	return nil
}

// splitPort splits host:port; port 0 means a random port.
func splitPort(hostport string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, fmt.Errorf("want host:port: %v", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, errors.New("port must be a number from 0 to 65535")
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// slogLogger adapts slog to the server's Logger interface.
type slogLogger struct{ l *slog.Logger }

func (l slogLogger) Noticef(format string, v ...any) { l.l.Info(fmt.Sprintf(format, v...)) }
func (l slogLogger) Warnf(format string, v ...any)   { l.l.Warn(fmt.Sprintf(format, v...)) }
func (l slogLogger) Fatalf(format string, v ...any)  { l.l.Error(fmt.Sprintf(format, v...)) }
func (l slogLogger) Errorf(format string, v ...any)  { l.l.Error(fmt.Sprintf(format, v...)) }
func (l slogLogger) Debugf(format string, v ...any)  { l.l.Debug(fmt.Sprintf(format, v...)) }
func (l slogLogger) Tracef(format string, v ...any)  { l.l.Debug(fmt.Sprintf(format, v...)) }
