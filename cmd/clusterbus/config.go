package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"

	"github.com/clusterbus/clusterbus/bus"
)

// nodeConfig is the configuration of `clusterbus node`. Sources, later ones
// winning: the YAML file named by --config (or CLUSTERBUS_CONFIG), the
// environment (CLUSTERBUS_<KEY>, with '-' and '.' written '_', such as
// CLUSTERBUS_NODE_ID or CLUSTERBUS_FLOWS_MAX_ATTEMPTS), then flags.
type nodeConfig struct {
	// Broker is the broker URL; empty runs the embedded NATS server.
	Broker string `koanf:"broker"`
	// HTTP is the listen address of the health, status and API server.
	HTTP string `koanf:"http"`
	// Cluster and NodeID: see bus.Config.
	Cluster string `koanf:"cluster"`
	NodeID  string `koanf:"node-id"`
	// DataDir holds the embedded NATS server's store (no --broker only).
	DataDir string `koanf:"data-dir"`
	// EmbeddedListen is the embedded NATS server's address.
	EmbeddedListen string `koanf:"embedded-listen"`
	// EmbeddedSync makes the embedded NATS server fsync every write before
	// acknowledging it, as `clusterbus broker` does by default.
	EmbeddedSync bool `koanf:"embedded-sync"`

	LogFormat string `koanf:"log-format"` // text or json
	LogLevel  string `koanf:"log-level"`  // debug, info, warn, error

	HeartbeatInterval  time.Duration `koanf:"heartbeat-interval"`
	FailureTimeout     time.Duration `koanf:"failure-timeout"`
	ForgetAfter        time.Duration `koanf:"forget-after"`
	ClockSkewThreshold time.Duration `koanf:"clock-skew-threshold"`
	// SplitBrain: keep-majority, keep-oldest, off or static-quorum:N.
	SplitBrain string `koanf:"split-brain"`
	// ClusterKey is CLUSTERBUS_CLUSTER_KEY: keys, comma-separated, the
	// first signs. ClusterKeyFile holds one key per line instead and is
	// re-read on SIGHUP. See trust.go.
	ClusterKey     string `koanf:"cluster-key"`
	ClusterKeyFile string `koanf:"cluster-key-file"`
	// MessageMaxAge is the freshness window of signed topic messages
	// (0: 10 x failure-timeout + clock-skew-threshold).
	MessageMaxAge time.Duration `koanf:"message-max-age"`
	// DrainTimeout bounds the graceful stop on SIGTERM.
	DrainTimeout time.Duration `koanf:"drain-timeout"`

	// Flows configures the flow executor (cmd/clusterbus/flow.go).
	Flows flowsConfig `koanf:"flows"`
}

type flowsConfig struct {
	Dir         string        `koanf:"dir"`
	Queue       string        `koanf:"queue"`
	Concurrency int           `koanf:"concurrency"`
	Lease       time.Duration `koanf:"lease"`
	MaxAttempts int           `koanf:"max-attempts"`
	// ResultsQueue receives one completion record per execution; empty
	// records none.
	ResultsQueue string `koanf:"results-queue"`
}

// configSections are the nested keys whose env names need a '.' after the
// section ("CLUSTERBUS_FLOWS_DIR" -> "flows.dir").
var configSections = []string{"flows"}

func defaultNodeConfig() nodeConfig {
	d := bus.DefaultConfig()
	return nodeConfig{
		HTTP:               ":8080",
		Cluster:            d.Cluster,
		DataDir:            "clusterbus-data",
		EmbeddedListen:     "127.0.0.1:14222",
		EmbeddedSync:       true,
		LogFormat:          "text",
		LogLevel:           "info",
		HeartbeatInterval:  d.HeartbeatInterval,
		FailureTimeout:     d.FailureTimeout,
		ClockSkewThreshold: d.ClockSkewThreshold,
		SplitBrain:         string(d.SplitBrain),
		DrainTimeout:       30 * time.Second,
		Flows:              flowsConfig{Concurrency: 4, Lease: 30 * time.Second, MaxAttempts: 5},
	}
}

// addNodeFlags declares the flags of `clusterbus node`; their names are the
// koanf keys.
func addNodeFlags(fs *pflag.FlagSet) {
	d := defaultNodeConfig()
	fs.String("config", "", "YAML config file (env CLUSTERBUS_CONFIG)")
	fs.String("broker", d.Broker, "broker URL such as nats://host:4222; empty runs the embedded NATS server")
	fs.String("http", d.HTTP, "listen address for /ha/health, /api/cluster, /metrics and the status page")
	fs.String("cluster", d.Cluster, "cluster name")
	fs.String("node-id", d.NodeID, "node ID (default: random, fixed for the life of the process)")
	fs.String("data-dir", d.DataDir, "embedded NATS server store (only without --broker)")
	fs.String("embedded-listen", d.EmbeddedListen, "embedded NATS server address (only without --broker)")
	fs.Bool("embedded-sync", d.EmbeddedSync, "embedded NATS server fsyncs every write before acknowledging it, so an acknowledged item survives a machine crash (only without --broker)")
	fs.String("log-format", d.LogFormat, "log format: text or json")
	fs.String("log-level", d.LogLevel, "log level: debug, info, warn or error")
	fs.Duration("heartbeat-interval", d.HeartbeatInterval, "heartbeat interval")
	fs.Duration("failure-timeout", d.FailureTimeout, "a member without a heartbeat for this long has failed")
	fs.Duration("forget-after", d.ForgetAfter, "how long failed members count for split-brain (0: 20 x failure timeout)")
	fs.Duration("clock-skew-threshold", d.ClockSkewThreshold, "flag members whose clock differs by more than this")
	fs.String("split-brain", d.SplitBrain, "split-brain policy: keep-majority, keep-oldest, off or static-quorum:N")
	fs.String("cluster-key", d.ClusterKey, "")
	_ = fs.MarkDeprecated("cluster-key", "a key on the command line is visible to every user of the machine (ps); use env CLUSTERBUS_CLUSTER_KEY or --cluster-key-file")
	fs.String("cluster-key-file", d.ClusterKeyFile, "file of cluster keys, one per line, the first signs, all verify; re-read on SIGHUP (or env CLUSTERBUS_CLUSTER_KEY, comma-separated)")
	fs.Duration("message-max-age", d.MessageMaxAge, "signed topic messages sent longer ago (or ahead) than this are dropped (0: 10 x failure-timeout + clock-skew-threshold)")
	fs.Duration("drain-timeout", d.DrainTimeout, "how long a graceful stop may take")
}

// loadNodeConfig merges defaults, file, environment and flags.
func loadNodeConfig(fs *pflag.FlagSet) (*nodeConfig, error) {
	k := koanf.New(".")
	cfgFile, _ := fs.GetString("config")
	if !fs.Changed("config") {
		cfgFile = os.Getenv("CLUSTERBUS_CONFIG")
	}
	if cfgFile != "" {
		if err := k.Load(file.Provider(cfgFile), yaml.Parser()); err != nil {
			return nil, fmt.Errorf("config file %s: %w", cfgFile, err)
		}
	}
	if err := k.Load(env.ProviderWithValue("CLUSTERBUS_", ".", func(key, value string) (string, any) {
		return envToKey(key), value
	}), nil); err != nil {
		return nil, fmt.Errorf("environment: %w", err)
	}
	if err := k.Load(posflag.Provider(fs, ".", k), nil); err != nil {
		return nil, fmt.Errorf("flags: %w", err)
	}
	k.Delete("config")
	cfg := defaultNodeConfig()
	if err := k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{Tag: "koanf"}); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return &cfg, nil
}

// envToKey maps CLUSTERBUS_FLOWS_MAX_ATTEMPTS to flows.max-attempts and
// CLUSTERBUS_NODE_ID to node-id.
func envToKey(name string) string {
	s := strings.ToLower(strings.TrimPrefix(name, "CLUSTERBUS_"))
	for _, sec := range configSections {
		if rest, ok := strings.CutPrefix(s, sec+"_"); ok {
			return sec + "." + strings.ReplaceAll(rest, "_", "-")
		}
	}
	return strings.ReplaceAll(s, "_", "-")
}

// busConfig turns the node config into a bus.Config.
func (c *nodeConfig) busConfig() (bus.Config, error) {
	b := bus.DefaultConfig()
	b.Cluster = c.Cluster
	b.NodeID = c.NodeID
	b.Version = version
	b.HeartbeatInterval = c.HeartbeatInterval
	b.FailureTimeout = c.FailureTimeout
	b.ForgetAfter = c.ForgetAfter
	b.ClockSkewThreshold = c.ClockSkewThreshold
	sb, q, err := bus.ParseSplitBrain(c.SplitBrain)
	if err != nil {
		return b, err
	}
	b.SplitBrain, b.Quorum = sb, q
	return b, b.Validate()
}

// newLogger builds the process logger from --log-format and --log-level.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log-format %q: want text or json", format)
}
