package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/bus"
)

// nodeConfig is the configuration of `clusterbus node`. Sources, later ones
// winning: the YAML file named by --config (or CLUSTERBUS_CONFIG), the
// environment (CLUSTERBUS_<KEY>, with '-' and '.' written '_', such as
// CLUSTERBUS_NODE_ID or CLUSTERBUS_FLOWS_MAX_ATTEMPTS), then flags.
type nodeConfig struct {
	// Broker is the broker URL; empty runs the embedded NATS server.
	// BrokerFile holds it instead, and BrokerPasswordFile the password
	// of its user info (secrets off argv; see trust.go).
	Broker             string `koanf:"broker"`
	BrokerFile         string `koanf:"broker-file"`
	BrokerPasswordFile string `koanf:"broker-password-file"`
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
	// OnBrokerLoss: fence (default) or degrade; see bus.BrokerLoss.
	OnBrokerLoss string `koanf:"on-broker-loss"`
	// ClusterKey is CLUSTERBUS_CLUSTER_KEY: keys, comma-separated, the
	// first signs. ClusterKeyFile holds one key per line instead and is
	// re-read on SIGHUP. See trust.go.
	ClusterKey     string `koanf:"cluster-key"`
	ClusterKeyFile string `koanf:"cluster-key-file"`
	// MessageMaxAge is the freshness window of signed topic messages
	// (0: 10 x failure-timeout + clock-skew-threshold).
	MessageMaxAge time.Duration `koanf:"message-max-age"`
	// Admin API (see adminhttp and trust.go). AdminToken is
	// CLUSTERBUS_ADMIN_TOKEN (there is no flag: argv is visible in ps).
	AdminToken              string `koanf:"admin-token"`
	AdminTokenFile          string `koanf:"admin-token-file"`
	AdminHTTP               string `koanf:"admin-http"`
	AdminAllowRemoteNoToken bool   `koanf:"admin-allow-remote-without-token"`
	ProtectReads            bool   `koanf:"protect-reads"`
	TLSCert                 string `koanf:"tls-cert"`
	TLSKey                  string `koanf:"tls-key"`
	HTTPMaxBody             int64  `koanf:"http-max-body"`
	// DrainTimeout bounds the graceful stop on SIGTERM.
	DrainTimeout time.Duration `koanf:"drain-timeout"`
	// StartTimeout bounds how long the node may take to get ready (broker
	// reachable, joined, every service started); 0 waits for ever.
	StartTimeout time.Duration `koanf:"start-timeout"`

	// Flows configures the flow executor (cmd/clusterbus/flow.go).
	Flows flowsConfig `koanf:"flows"`

	// dataDirHeld: the node keeps its ID in DataDir (and holds its lock),
	// so the directory is this node's alone.
	dataDirHeld bool
}

// ownDataDir is DataDir if it is this node's own: it keeps the node's ID
// there, or it is not the default (given on purpose); else "" (nodes
// started with --node-id and the default directory may share it).
func (c *nodeConfig) ownDataDir() string {
	if c.dataDirHeld || (c.DataDir != "" && c.DataDir != defaultNodeConfig().DataDir) {
		return c.DataDir
	}
	return ""
}

type flowsConfig struct {
	// Enabled runs the flow engine (default true): it runs the deployed
	// flows' steps whether or not Dir is set.
	Enabled     bool          `koanf:"enabled"`
	Dir         string        `koanf:"dir"`
	Queue       string        `koanf:"queue"`
	Concurrency int           `koanf:"concurrency"`
	Lease       time.Duration `koanf:"lease"`
	MaxAttempts int           `koanf:"max-attempts"`
	// ResultsQueue receives one completion record per execution; empty
	// records none.
	ResultsQueue string `koanf:"results-queue"`
	// Retention is how long ended executions' records are kept.
	Retention time.Duration `koanf:"retention"`
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
		OnBrokerLoss:       string(bus.FenceOnBrokerLoss),
		DrainTimeout:       30 * time.Second,
		HTTPMaxBody:        1 << 20,
		Flows:              flowsConfig{Enabled: true, Concurrency: 4, Lease: 30 * time.Second, MaxAttempts: 5, Retention: 7 * 24 * time.Hour},
	}
}

// addNodeFlags declares the flags of `clusterbus node`; their names are the
// koanf keys.
func addNodeFlags(fs *pflag.FlagSet) {
	d := defaultNodeConfig()
	fs.String("config", "", "YAML config file (env CLUSTERBUS_CONFIG)")
	fs.String("broker", d.Broker, "broker URL such as nats://host:4222; empty runs the embedded NATS server (a password here is visible in ps: use --broker-file or --broker-password-file)")
	fs.String("broker-file", d.BrokerFile, "file holding the broker URL, secrets and all (instead of --broker)")
	fs.String("broker-password-file", d.BrokerPasswordFile, "file holding the password of the broker URL's user")
	fs.String("http", d.HTTP, "listen address for /ha/health, /api/cluster, /metrics and the status page")
	fs.String("cluster", d.Cluster, "cluster name")
	fs.String("node-id", d.NodeID, "node ID (default: the one kept in --data-dir, created on first start; else derived from the host name)")
	fs.String("data-dir", d.DataDir, "the node's own directory: its node ID, and the embedded NATS server's store (without --broker)")
	fs.String("embedded-listen", d.EmbeddedListen, "embedded NATS server address (only without --broker)")
	fs.Bool("embedded-sync", d.EmbeddedSync, "embedded NATS server fsyncs every write before acknowledging it, so an acknowledged item survives a machine crash (only without --broker)")
	fs.String("log-format", d.LogFormat, "log format: text or json")
	fs.String("log-level", d.LogLevel, "log level: debug, info, warn or error")
	fs.Duration("heartbeat-interval", d.HeartbeatInterval, "heartbeat interval")
	fs.Duration("failure-timeout", d.FailureTimeout, "a member without a heartbeat for this long has failed")
	fs.Duration("forget-after", d.ForgetAfter, "how long failed members count for split-brain (0: 20 x failure timeout)")
	fs.Duration("clock-skew-threshold", d.ClockSkewThreshold, "flag members whose clock differs by more than this")
	fs.String("split-brain", d.SplitBrain, "split-brain policy: keep-majority, keep-oldest, off or static-quorum:N")
	fs.String("on-broker-loss", d.OnBrokerLoss, "while the broker is lost: fence (503, the default) or degrade (health 200 \"degraded\", caches bypassed, no lead, no work, submissions refused)")
	fs.String("cluster-key", d.ClusterKey, "")
	_ = fs.MarkDeprecated("cluster-key", "a key on the command line is visible to every user of the machine (ps); use env CLUSTERBUS_CLUSTER_KEY or --cluster-key-file")
	fs.String("cluster-key-file", d.ClusterKeyFile, "file of cluster keys, one per line, the first signs, all verify; re-read on SIGHUP (or env CLUSTERBUS_CLUSTER_KEY, comma-separated)")
	fs.Duration("message-max-age", d.MessageMaxAge, "signed topic messages sent longer ago (or ahead) than this are dropped (0: 10 x failure-timeout + clock-skew-threshold)")
	fs.Duration("drain-timeout", d.DrainTimeout, "how long a graceful stop may take")
	fs.Duration("start-timeout", d.StartTimeout, "give up (exit 1) if the node is not ready this long after start; 0 waits for the broker for ever")
	addFlowsFlags(fs)
	fs.String("admin-token", d.AdminToken, "")
	_ = fs.MarkDeprecated("admin-token", "a token on the command line is visible to every user of the machine (ps); use env CLUSTERBUS_ADMIN_TOKEN or --admin-token-file")
	fs.String("admin-token-file", d.AdminTokenFile, "file holding the admin API token (or env CLUSTERBUS_ADMIN_TOKEN); mutating requests need Authorization: Bearer <token>; re-read on SIGHUP")
	fs.String("admin-http", d.AdminHTTP, "a separate listen address for mutating API requests (the --http listener then serves health and reads only)")
	fs.Bool("admin-allow-remote-without-token", d.AdminAllowRemoteNoToken, "without an admin token, serve mutating requests to non-loopback clients too (trust the network)")
	fs.Bool("protect-reads", d.ProtectReads, "read endpoints (/api/*, /metrics, status page) need the admin token too; /ha/health, /livez, /readyz stay open")
	fs.String("tls-cert", d.TLSCert, "PEM certificate: serve HTTPS (with --tls-key)")
	fs.String("tls-key", d.TLSKey, "PEM private key of --tls-cert")
	fs.Int64("http-max-body", d.HTTPMaxBody, "largest request body accepted, in bytes (413 above)")
}

// loadNodeConfig merges defaults, file, environment and flags, strictly:
// an unknown key in the file, an unknown CLUSTERBUS_* variable or a value
// of the wrong type (a duration without a unit) is an error that names the
// key as the user typed it and the nearest valid one; then validate checks
// the values together. Every error is returned, joined.
func loadNodeConfig(fs *pflag.FlagSet) (*nodeConfig, error) {
	cfg, _, err := loadNodeConfigSources(fs)
	return cfg, err
}

// configSetting is one merged setting: its value and where it came from.
type configSetting struct {
	Value  string
	Source string // "default", "file PATH", "env NAME" or "flag --NAME"
}

// loadNodeConfigSources is loadNodeConfig that also returns each key's
// merged value and where it came from.
func loadNodeConfigSources(fs *pflag.FlagSet) (*nodeConfig, map[string]configSetting, error) {
	keys := configKeys(fs)
	source := map[string]string{}
	for k := range keys {
		source[k] = "default"
	}
	var errs []error
	k := koanf.New(".")
	cfgFile, _ := fs.GetString("config")
	if !fs.Changed("config") {
		cfgFile = os.Getenv("CLUSTERBUS_CONFIG")
	}
	if cfgFile != "" {
		kf := koanf.New(".")
		if err := kf.Load(file.Provider(cfgFile), yaml.Parser()); err != nil {
			return nil, nil, fmt.Errorf("config file %s: %w", cfgFile, err)
		}
		for _, key := range kf.Keys() {
			f, ok := keys[key]
			if !ok {
				errs = append(errs, fmt.Errorf("config file %s: unknown key %q%s", cfgFile, key, suggest(key, sortedKeys(keys), "")))
				continue
			}
			if err := checkValue(f, kf.Get(key)); err != nil {
				errs = append(errs, fmt.Errorf("config file %s: %s: %w", cfgFile, key, err))
				continue
			}
			source[key] = "file " + cfgFile
		}
		if err := k.Merge(kf); err != nil {
			return nil, nil, fmt.Errorf("config file %s: %w", cfgFile, err)
		}
	}
	envVals := map[string]any{}
	for _, kv := range os.Environ() {
		name, val, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "CLUSTERBUS_") || otherEnv[name] {
			continue
		}
		key := envToKey(name)
		f, ok := keys[key]
		if !ok {
			var names []string
			for k := range keys {
				names = append(names, keyToEnv(k))
			}
			for n := range otherEnv {
				names = append(names, n)
			}
			sort.Strings(names)
			errs = append(errs, fmt.Errorf("environment: %s is not a clusterbus setting%s", name, suggest(name, names, "")))
			continue
		}
		if err := checkValue(f, val); err != nil {
			errs = append(errs, fmt.Errorf("environment: %s: %w", name, err))
			continue
		}
		envVals[key] = val
		source[key] = "env " + name
	}
	for key, val := range envVals {
		_ = k.Set(key, val)
	}
	if err := k.Load(posflag.Provider(fs, ".", k), nil); err != nil {
		return nil, nil, fmt.Errorf("flags: %w", err)
	}
	fs.Visit(func(f *pflag.Flag) {
		if f.Name != "config" {
			source[f.Name] = "flag --" + f.Name
		}
	})
	k.Delete("config")
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	cfg := defaultNodeConfig()
	if err := k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{Tag: "koanf"}); err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	if err := cfg.resolveBroker(); err != nil {
		return nil, nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, nil, err
	}
	out := make(map[string]configSetting, len(source))
	for key, src := range source {
		v := k.Get(key)
		if v == nil {
			v = keys[key].DefValue
		}
		out[key] = configSetting{Value: fmt.Sprint(v), Source: src}
	}
	return &cfg, out, nil
}

// otherEnv are CLUSTERBUS_* variables clusterbus reads that are not node
// settings.
var otherEnv = map[string]bool{
	"CLUSTERBUS_CONFIG": true, // --config
	"CLUSTERBUS_ADDR":   true, // --addr of the client commands
}

// configKeys maps every node setting's key to its flag (the flag name is
// the key).
func configKeys(fs *pflag.FlagSet) map[string]*pflag.Flag {
	keys := map[string]*pflag.Flag{}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "config" && f.Name != "help" {
			keys[f.Name] = f
		}
	})
	return keys
}

func sortedKeys(m map[string]*pflag.Flag) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkValue checks that v (from YAML or the environment) is a valid
// value for flag f's type. A bare number is no duration: 500 would be
// 500ns, so it must carry a unit.
func checkValue(f *pflag.Flag, v any) error {
	if _, ok := v.(map[string]any); ok {
		return fmt.Errorf("want a %s, got a section", typeName(f))
	}
	if _, ok := v.([]any); ok && !strings.HasSuffix(f.Value.Type(), "Slice") {
		return fmt.Errorf("want a %s, got a list", typeName(f))
	}
	s := fmt.Sprint(v)
	switch f.Value.Type() {
	case "duration":
		if _, err := time.ParseDuration(s); err != nil {
			if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
				return fmt.Errorf("%s has no unit: write a duration such as %sms or %ss", s, s, s)
			}
			return fmt.Errorf("%q is not a duration: want a number with a unit, such as 500ms, 1.5s or 2m", s)
		}
	case "int":
		if _, err := strconv.Atoi(s); err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
	case "bool":
		if _, err := strconv.ParseBool(s); err != nil {
			return fmt.Errorf("%q: want true or false", s)
		}
	}
	return nil
}

func typeName(f *pflag.Flag) string {
	switch t := f.Value.Type(); t {
	case "duration":
		return "duration (such as 500ms)"
	case "int":
		return "whole number"
	case "bool":
		return "true or false"
	default:
		return t
	}
}

// suggest returns "; did you mean X?" for the candidate nearest to s (by
// edit distance, '_' and '-' alike), or "; valid: …" when none is close.
func suggest(s string, candidates []string, _ string) string {
	norm := func(x string) string { return strings.ToLower(strings.ReplaceAll(x, "_", "-")) }
	best, bestD := "", -1
	for _, c := range candidates {
		d := editDistance(norm(s), norm(c))
		if bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	if best != "" && bestD <= max(2, len(s)/3) {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	return " (see clusterbus node --help for the settings)"
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// keyToEnv maps flows.max-attempts to CLUSTERBUS_FLOWS_MAX_ATTEMPTS.
func keyToEnv(key string) string {
	return "CLUSTERBUS_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
}

// busFieldKeys names bus.Config's fields by the keys users type.
var busFieldKeys = map[string]string{
	"Cluster": "cluster", "NodeID": "node-id", "HeartbeatInterval": "heartbeat-interval",
	"FailureTimeout": "failure-timeout", "ForgetAfter": "forget-after",
	"ClockSkewThreshold": "clock-skew-threshold", "SplitBrain": "split-brain", "OnBrokerLoss": "on-broker-loss", "Quorum": "split-brain static-quorum:N",
}

// validate checks the node's settings together; every problem names the
// key and what is accepted.
func (c *nodeConfig) validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if _, err := c.busConfig(); err != nil {
		var ae *adapters.Error
		if errors.As(err, &ae) && ae.Err != nil {
			err = ae.Err
		}
		errs = append(errs, err)
	}
	if c.Broker != "" {
		u, err := url.Parse(c.Broker)
		switch {
		case err != nil:
			bad("broker %q: not a URL: %v", adapters.Redact(c.Broker), err)
		case !slices.Contains(adapters.Schemes(), strings.ToLower(u.Scheme)):
			bad("broker %q: unknown scheme %q%s; want one of %s", adapters.Redact(c.Broker), u.Scheme,
				strings.TrimSuffix(suggest(u.Scheme, adapters.Schemes(), ""), " (see clusterbus node --help for the settings)"),
				strings.Join(adapters.Schemes(), ", "))
		}
	}
	if c.HTTP == "" {
		bad("http: want a listen address such as :8080 or 127.0.0.1:8080")
	}
	if c.DrainTimeout <= 0 {
		bad("drain-timeout (%s): want more than 0, such as 30s", c.DrainTimeout)
	}
	if c.StartTimeout < 0 {
		bad("start-timeout (%s): want 0 (wait for ever) or more", c.StartTimeout)
	}
	if _, err := newLogger(io.Discard, c.LogFormat, c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	f := c.Flows
	if f.Concurrency < 1 {
		bad("flows.concurrency (%d): want at least 1", f.Concurrency)
	}
	if f.MaxAttempts < 1 {
		bad("flows.max-attempts (%d): want at least 1 (1 means no retry)", f.MaxAttempts)
	}
	if f.Lease < time.Second {
		bad("flows.lease (%s): want at least 1s", f.Lease)
	}
	if f.Retention < time.Minute {
		bad("flows.retention (%s): want at least 1m", f.Retention)
	}
	for key, name := range map[string]string{"flows.queue": f.Queue, "flows.results-queue": f.ResultsQueue} {
		if name != "" {
			if err := adapters.ValidateName("queue", name); err != nil {
				bad("%s %q: want 1-64 letters, digits, '-' or '_', starting with a letter or digit", key, name)
			}
		}
	}
	return errors.Join(errs...)
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

// busConfig turns the node config into a bus.Config; errors name the keys.
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
		return b, fmt.Errorf("split-brain %q: want keep-majority, keep-oldest, off or static-quorum:N", c.SplitBrain)
	}
	b.SplitBrain, b.Quorum = sb, q
	b.OnBrokerLoss = bus.BrokerLoss(c.OnBrokerLoss)
	return b, b.ValidateNamed(func(field string) string { return busFieldKeys[field] })
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
		opts.ReplaceAttr = durationText
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log-format %q: want text or json", format)
}

// durationText writes durations in JSON logs as text ("1.5s") rather than
// nanoseconds, as the text format does.
func durationText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}
