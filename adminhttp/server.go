package adminhttp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// ServerConfig describes the node's listeners.
type ServerConfig struct {
	// Addr is the main listener (health, reads, and mutating requests
	// unless AdminAddr is set).
	Addr string
	// AdminAddr, if set, is a second listener that serves everything;
	// the main one then answers mutating requests 404.
	AdminAddr string
	// TLSCert and TLSKey, both set, serve HTTPS on every listener.
	TLSCert, TLSKey string
	Guard           Config
	Logger          *slog.Logger
	// ReadTimeout bounds reading a whole request, body included (0:
	// the package's ReadTimeout): a client that trickles its body is cut
	// off when it ends.
	ReadTimeout time.Duration
}

// Server is the node's running HTTP server.
type Server struct {
	servers []*http.Server
	addrs   []string
}

// Start listens on the configured addresses and serves h (guarded) until
// Shutdown. It fails before serving anything if an address cannot be bound
// or the certificate does not load.
func Start(h http.Handler, cfg ServerConfig) (*Server, error) {
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, fmt.Errorf("tls-cert and tls-key: give both or neither")
	}
	var tlsCfg *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("tls-cert %s, tls-key %s: %w", cfg.TLSCert, cfg.TLSKey, err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	readTimeout := cfg.ReadTimeout
	if readTimeout <= 0 {
		readTimeout = ReadTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	type listener struct {
		addr, what string
		guard      Config
	}
	main := cfg.Guard
	ls := []listener{{cfg.Addr, "http", main}}
	if cfg.AdminAddr != "" {
		ls[0].guard.AdminOnly = true
		ls = append(ls, listener{cfg.AdminAddr, "admin http", cfg.Guard})
	}
	s := &Server{}
	var lns []net.Listener
	for _, l := range ls {
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			for _, o := range lns {
				_ = o.Close()
			}
			return nil, fmt.Errorf("%s: listen %s: %w", l.what, l.addr, err)
		}
		if tlsCfg != nil {
			ln = tls.NewListener(ln, tlsCfg)
		}
		lns = append(lns, ln)
		hs := &http.Server{
			Handler:           Guard(h, l.guard),
			ReadHeaderTimeout: min(ReadHeaderTimeout, readTimeout),
			ReadTimeout:       readTimeout,
			WriteTimeout:      WriteTimeout,
			IdleTimeout:       IdleTimeout,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		s.servers = append(s.servers, hs)
		s.addrs = append(s.addrs, ln.Addr().String())
		go func(what string) {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error(what+" server failed", "err", err)
			}
		}(l.what)
		log.Info(l.what+" listening", "addr", ln.Addr().String(), "tls", tlsCfg != nil)
	}
	return s, nil
}

// Addrs are the bound addresses, the main listener first.
func (s *Server) Addrs() []string { return s.addrs }

// Shutdown stops every listener, waiting for requests in flight until ctx
// ends.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	for _, hs := range s.servers {
		errs = append(errs, hs.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// Close stops every listener at once.
func (s *Server) Close() error {
	var errs []error
	for _, hs := range s.servers {
		errs = append(errs, hs.Close())
	}
	return errors.Join(errs...)
}
