package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
	"github.com/clusterbus/clusterbus/bus"
)

// nodeEnv is what a node service gets: the broker, the running node, the HTTP
// mux (add routes to it), the configuration, the logger (node ID on every
// line) and the Prometheus registry.
type nodeEnv struct {
	Broker   adapters.Broker
	Node     *bus.Node
	Mux      *http.ServeMux
	Config   *nodeConfig
	Logger   *slog.Logger
	Registry *prometheus.Registry
	// BaseLogger is Logger without the node ID, for libraries that add it
	// themselves (bus, flows).
	BaseLogger *slog.Logger
}

// nodeServices are started after the node joins, stopped (in reverse) on
// shutdown before the node leaves. Other files add to it from init.
var nodeServices []func(ctx context.Context, env *nodeEnv) (stop func(context.Context) error, err error)

// nodeCmd is `clusterbus node`; other files may add flags to it (name them
// as their koanf key, such as "flows.dir").
var nodeCmd = &cobra.Command{
	Use:   "node",
	Short: "Run a cluster node: membership, lead, duties, cache-clear, health on --http",
	Long: `Run a clusterbus node. It joins the cluster --cluster through the broker
--broker (or, without --broker, an embedded NATS server listening on
--embedded-listen with its store in --data-dir), serves /ha/health, /livez,
/readyz, /api/cluster, /metrics and a status page on --http, and on SIGTERM
or SIGINT drains, leaves the cluster and exits 0.

Configuration: flags > CLUSTERBUS_* environment > YAML file (--config).`,
	Args: cobra.NoArgs,
	RunE: func(cmd *cobra.Command, _ []string) error {
		cfg, err := loadNodeConfig(cmd.Flags())
		if err != nil {
			return &exitError{code: 2, err: err}
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		return runNode(ctx, cfg, cmd.ErrOrStderr())
	},
}

func init() {
	addNodeFlags(nodeCmd.Flags())
	rootCmd.AddCommand(nodeCmd)
}

// runNode runs a node until ctx is done, then shuts it down gracefully.
func runNode(ctx context.Context, cfg *nodeConfig, logOut interface{ Write([]byte) (int, error) }) error {
	bcfg, err := cfg.busConfig()
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	if bcfg.NodeID == "" {
		// Fixed here so that every log line, ours included, carries it.
		bcfg.NodeID = bus.NewNodeID()
		cfg.NodeID = bcfg.NodeID
	}
	base, err := newLogger(logOut, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	log := base.With("node", bcfg.NodeID)
	// Adapters opened by URL log through slog.Default(): make it this
	// node's logger, so their lines follow --log-level and --log-format.
	slog.SetDefault(log)

	var srv *natsserver.Server
	brokerURL := cfg.Broker
	if brokerURL == "" {
		// The server's own notices are chatty: warnings and up unless debug.
		srvLog := log
		if cfg.LogLevel != "debug" {
			quiet, _ := newLogger(logOut, cfg.LogFormat, "warn")
			srvLog = quiet.With("node", bcfg.NodeID)
		}
		srv, err = natsserver.Start(natsserver.Config{Listen: cfg.EmbeddedListen, DataDir: cfg.DataDir, Sync: cfg.EmbeddedSync,
			Logger: srvLog.With("component", "nats-server")})
		if err != nil {
			return fmt.Errorf("embedded NATS server (no --broker given): %w; pass --broker nats://%s to join a running one, or --embedded-listen to use another port", err, cfg.EmbeddedListen)
		}
		defer srv.Shutdown()
		brokerURL = srv.ClientURL()
		log.Info("embedded NATS server running", "url", brokerURL, "data_dir", cfg.DataDir, "fsync", cfg.EmbeddedSync)
	}
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	raw, err := adapters.Open(openCtx, brokerURL)
	cancel()
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	defer raw.Close()
	log.Info("broker connected", "url", adapters.Redact(brokerURL), "capabilities", raw.Capabilities().String())

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Everything the node and its services send or receive goes through
	// b: signed and verified when the cluster has a key.
	b, tr, err := wrapBroker(ctx, cfg, bcfg.NodeID, raw, log, reg)
	if err != nil {
		return err
	}
	node, err := bus.New(b, bcfg, bus.WithLogger(base), bus.WithRegisterer(reg), bus.WithAlerts(tr.alerts))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	node.Mount(mux)

	ln, err := net.Listen("tcp", cfg.HTTP)
	if err != nil {
		return fmt.Errorf("http: listen %s: %w", cfg.HTTP, err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server failed", "err", err)
		}
	}()
	log.Info("http listening", "addr", ln.Addr().String())

	if err := node.Start(ctx); err != nil {
		return err
	}
	env := &nodeEnv{Broker: b, Node: node, Mux: mux, Config: cfg, Logger: log, Registry: reg, BaseLogger: base}
	var stops []func(context.Context) error
	var startErr error
	for _, start := range nodeServices {
		s, err := start(ctx, env)
		if err != nil {
			startErr = err
			break
		}
		if s != nil {
			stops = append(stops, s)
		}
	}
	if startErr == nil {
		<-ctx.Done()
		log.Info("shutting down: draining")
	} else {
		log.Error("a node service failed to start; shutting down", "err", startErr)
	}

	// Drain: 503 on health, hand over the lead, stop services, leave.
	sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancel()
	node.Drain()
	var errs []error
	for i := len(stops) - 1; i >= 0; i-- {
		if err := stops[i](sctx); err != nil {
			errs = append(errs, err)
			log.Error("service stop failed", "err", err)
		}
	}
	if err := node.Stop(sctx); err != nil {
		errs = append(errs, err)
	}
	_ = hs.Shutdown(sctx)
	if startErr != nil {
		return startErr
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}
