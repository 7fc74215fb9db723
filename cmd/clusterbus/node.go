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
	"runtime"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
	"github.com/clusterbus/clusterbus/adapters/traced"
	"github.com/clusterbus/clusterbus/bus"
	"github.com/clusterbus/clusterbus/console"
	"github.com/clusterbus/clusterbus/flows"
	"github.com/clusterbus/clusterbus/queuestats"
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
	// Queues watches queue counts for /metrics and the console: services
	// Watch the queues they use.
	Queues *queuestats.Watcher
	// Flows is the flow engine, once its service started it (else nil).
	Flows *flows.Engine

	retry func(ctx context.Context, phase string, fn func(context.Context) error) error
}

// Retry runs fn until it succeeds, with a jittered backoff, while health
// answers 503 "starting: PHASE"; it fails only when ctx ends (a signal or
// --start-timeout). Services use it for whatever needs the broker.
func (e *nodeEnv) Retry(ctx context.Context, phase string, fn func(context.Context) error) error {
	return e.retry(ctx, phase, fn)
}

// nodeService is a part of the node that runs beside bus.Node, such as the
// flow engine. Check runs before anything connects (a bad setting exits 2
// before the node joins); Start runs once the node has joined and may
// retry through env.Retry until the broker lets it through. Other files
// add services from init.
type nodeService struct {
	Name  string
	Check func(cfg *nodeConfig) error
	Start func(ctx context.Context, env *nodeEnv) (stop func(context.Context) error, err error)
}

// nodeServices are started after the node joins, in order, and stopped (in
// reverse) on shutdown before the node leaves.
var nodeServices []nodeService

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
//
// Start order does not matter: the HTTP server is up first and answers 503
// with what the node waits for; connecting to the broker, joining and
// every service start retry with a jittered backoff until they succeed
// (bounded only by --start-timeout), and the node's routes are served only
// once all of them are up. A configuration error exits 2 before anything
// connects.
func runNode(ctx context.Context, cfg *nodeConfig, logOut interface{ Write([]byte) (int, error) }) error {
	bcfg, err := cfg.busConfig()
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	for _, s := range nodeServices {
		if s.Check != nil {
			if err := s.Check(cfg); err != nil {
				return &exitError{code: 2, err: err}
			}
		}
	}
	base, err := newLogger(logOut, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	id, release, err := resolveNodeID(cfg, base)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	defer release()
	// Fixed here so that every log line, ours included, carries it.
	bcfg.NodeID, cfg.NodeID = id, id
	// The cluster settings keep their copy in the node's own data dir.
	bcfg.DataDir = cfg.ownDataDir()
	log := base.With("node", bcfg.NodeID)
	// Adapters opened by URL log through slog.Default(): make it this
	// node's logger, so their lines follow --log-level and --log-format.
	slog.SetDefault(log)

	stopTracing, err := setupTracing(ctx, id, log)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			log.Warn("tracing: flushing spans at stop failed", "err", err)
		}
	}()

	startCtx, cancelStart := ctx, context.CancelFunc(func() {})
	if cfg.StartTimeout > 0 {
		startCtx, cancelStart = context.WithTimeout(ctx, cfg.StartTimeout)
	}
	defer cancelStart()

	tr, err := newTrust(ctx, cfg, log)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	gate := newStartGate()
	hs, err := startHTTP(cfg, gate, log, tr)
	if err != nil {
		return err
	}
	defer hs.Close()
	log.Info("answering 503 until ready")

	var srv *natsserver.Server
	brokerURL := cfg.Broker
	if brokerURL == "" {
		// The server's own notices are chatty: warnings and up unless debug.
		srvLog := log
		if cfg.LogLevel != "debug" {
			quiet, _ := newLogger(logOut, cfg.LogFormat, "warn")
			srvLog = quiet.With("node", bcfg.NodeID)
		}
		gate.Phase("starting the embedded NATS server")
		srv, err = natsserver.Start(natsserver.Config{Listen: cfg.EmbeddedListen, DataDir: cfg.DataDir, Sync: cfg.EmbeddedSync,
			Logger: srvLog.With("component", "nats-server")})
		if err != nil {
			return fmt.Errorf("embedded NATS server (no --broker given): %w; pass --broker nats://%s to join a running one, or --embedded-listen to use another port", err, cfg.EmbeddedListen)
		}
		defer srv.Shutdown()
		brokerURL = srv.ClientURL()
		log.Info("embedded NATS server running", "url", brokerURL, "data_dir", cfg.DataDir, "fsync", cfg.EmbeddedSync)
	}
	var raw adapters.Broker
	err = retryUntilReady(startCtx, log, gate, "waiting for broker", func(ctx context.Context) error {
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var err error
		raw, err = adapters.Open(octx, brokerURL)
		return err
	})
	if err != nil {
		return notReady(ctx, cfg, err)
	}
	defer raw.Close()
	log.Info("broker connected", "url", adapters.Redact(brokerURL), "capabilities", raw.Capabilities().String())

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo())
	// Everything the node and its services send or receive goes through
	// b: signed and verified when the cluster has a key.
	b, err := tr.wrap(raw, bcfg.NodeID, reg)
	if err != nil {
		return err
	}
	// Outside the signing: the trace headers are signed with the rest.
	b = traced.New(b, traced.Options{})
	if addrs := hs.Addrs(); len(addrs) > 0 {
		bcfg.HTTPAddr = advertiseHTTP(addrs[0], cfg.TLSCert != "")
	}
	node, err := bus.New(b, bcfg, bus.WithLogger(base), bus.WithRegisterer(reg), bus.WithAlerts(tr.alerts))
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	mux := http.NewServeMux()
	node.Mount(mux)
	queues := queuestats.New(b, reg, 0, log)
	qctx, qstop := context.WithCancel(context.Background())
	defer qstop()
	go queues.Run(qctx)
	cons := console.New(console.Config{Node: node, Queues: queues, Gatherer: reg, Broker: b.Capabilities().Name, Logger: log})
	cons.Routes(mux)

	if err := retryUntilReady(startCtx, log, gate, "joining the cluster", node.Start); err != nil {
		return notReady(ctx, cfg, err)
	}
	env := &nodeEnv{Broker: b, Node: node, Mux: mux, Config: cfg, Logger: log, Registry: reg, BaseLogger: base, Queues: queues,
		retry: func(ctx context.Context, phase string, fn func(context.Context) error) error {
			return retryUntilReady(ctx, log, gate, phase, fn)
		}}
	var stops []func(context.Context) error
	var startErr error
	for _, s := range nodeServices {
		gate.Phase("starting " + s.Name)
		stop, err := s.Start(startCtx, env)
		if err != nil {
			startErr = notReady(ctx, cfg, err)
			break
		}
		if stop != nil {
			stops = append(stops, stop)
		}
	}
	if env.Flows != nil {
		cons.SetFlows(env.Flows)
	}
	if startErr == nil {
		cancelStart()
		// Every route is mounted: from now on the node's own health
		// (warm-up, broker link, split brain) answers.
		gate.Open(mux)
		log.Info("node services running; serving once the node is in good standing")
		<-ctx.Done()
		log.Info("shutting down: draining")
	} else {
		log.Error("the node did not get ready; shutting down", "err", startErr)
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

// notReady explains a start that ended before the node was ready: a signal
// (the caller's context), --start-timeout, or a service that failed for
// good.
func notReady(ctx context.Context, cfg *nodeConfig, err error) error {
	var ee *exitError
	if errors.As(err, &ee) {
		return err
	}
	if ctx.Err() != nil {
		return nil // stopped by a signal while starting: a clean exit
	}
	if cfg.StartTimeout > 0 && errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("not ready within --start-timeout %s: %w", cfg.StartTimeout, err)
	}
	return err
}

// buildInfo is clusterbus_build_info{version,go_version} 1.
func buildInfo() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "clusterbus", Name: "build_info",
		Help: "Always 1; its labels say which clusterbus and Go built this process."}, []string{"version", "go_version"})
	g.WithLabelValues(version, runtime.Version()).Set(1)
	return g
}

// advertiseHTTP is the HTTP address this node tells the other members: the
// listen address, with a wildcard host replaced by this machine's first
// non-loopback IP (the loopback address if it has none).
func advertiseHTTP(addr string, tls bool) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, x := range addrs {
				if n, ok := x.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
					ip = n.IP
					break
				}
			}
		}
	}
	scheme := "http://"
	if tls {
		scheme = "https://"
	}
	return scheme + net.JoinHostPort(ip.String(), port)
}
