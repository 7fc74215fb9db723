package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/signed"
	"github.com/clusterbus/clusterbus/adminhttp"
)

// clusterKeys returns the node's key ring and where it came from, or nil
// when the cluster has no key. The key file wins over the environment; both
// set is an error, so that an operator never rotates one and runs on the
// other.
func (c *nodeConfig) clusterKeys() (*signed.KeyRing, string, error) {
	var keys [][]byte
	var src string
	switch {
	case c.ClusterKeyFile != "" && c.ClusterKey != "":
		return nil, "", fmt.Errorf("cluster-key-file %s and CLUSTERBUS_CLUSTER_KEY are both set: use one", c.ClusterKeyFile)
	case c.ClusterKeyFile != "":
		src = "cluster-key-file " + c.ClusterKeyFile
		k, err := signed.ReadKeyFile(c.ClusterKeyFile)
		if err != nil {
			return nil, "", fmt.Errorf("cluster-key-file: %w", err)
		}
		keys = k
	case c.ClusterKey != "":
		src = "CLUSTERBUS_CLUSTER_KEY"
		keys = signed.ParseKeys(c.ClusterKey)
		if len(keys) == 0 {
			return nil, "", fmt.Errorf("CLUSTERBUS_CLUSTER_KEY holds no key: want one or more keys, comma-separated, the first signs")
		}
	default:
		return nil, "", nil
	}
	ring, err := signed.NewKeyRing(keys...)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", src, err)
	}
	return ring, src, nil
}

// messageMaxAge is the freshness window of signed topic messages.
func (c *nodeConfig) messageMaxAge() time.Duration {
	if c.MessageMaxAge > 0 {
		return c.MessageMaxAge
	}
	return 10*c.FailureTimeout + c.ClockSkewThreshold
}

// trust holds the node's secrets: the cluster key ring (nil without a key),
// the signed broker once wrapped, and the admin token. newTrust reads them
// before the node connects anywhere, and re-reads --cluster-key-file and
// --admin-token-file on SIGHUP until ctx ends.
type trust struct {
	cfg    *nodeConfig
	log    *slog.Logger
	ring   *signed.KeyRing
	src    string
	signed *signed.Broker
	token  atomic.Pointer[string] // the admin token, "" for none
}

func newTrust(ctx context.Context, cfg *nodeConfig, log *slog.Logger) (*trust, error) {
	ring, src, err := cfg.clusterKeys()
	if err != nil {
		return nil, err
	}
	tok, err := cfg.adminToken()
	if err != nil {
		return nil, err
	}
	t := &trust{cfg: cfg, log: log, ring: ring, src: src}
	t.token.Store(&tok)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP) // never let SIGHUP kill a node
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			t.reload()
		}
	}()
	return t, nil
}

// reload re-reads the key and token files; a file that fails keeps the
// previous value.
func (t *trust) reload() {
	cfg, log := t.cfg, t.log
	if cfg.AdminTokenFile != "" {
		if tok, err := readTokenFile(cfg.AdminTokenFile); err != nil {
			log.Error("SIGHUP: admin token NOT reloaded; still using the previous one", "err", err)
		} else {
			t.token.Store(&tok)
			log.Info("SIGHUP: admin token reloaded", "file", cfg.AdminTokenFile)
		}
	}
	if t.ring == nil || cfg.ClusterKeyFile == "" {
		return
	}
	keys, err := signed.ReadKeyFile(cfg.ClusterKeyFile)
	if err == nil {
		err = t.ring.Set(keys...)
	}
	if err != nil {
		log.Error("SIGHUP: cluster keys NOT reloaded; still using the previous ones", "file", cfg.ClusterKeyFile, "err", err)
		return
	}
	log.Info("SIGHUP: cluster keys reloaded", "file", cfg.ClusterKeyFile, "keys", len(keys))
}

// wrap wraps b with adapters/signed when the cluster has a key. Without a
// key it returns b as is: the cluster then trusts the broker's access
// control.
func (t *trust) wrap(b adapters.Broker, nodeID string, reg prometheus.Registerer) (adapters.Broker, error) {
	if t.ring == nil {
		t.log.Warn("no cluster key (CLUSTERBUS_CLUSTER_KEY or --cluster-key-file): messages are not authenticated; the cluster trusts the broker's access control")
		return b, nil
	}
	sb, err := signed.Wrap(b, signed.Config{Cluster: t.cfg.Cluster, Sender: nodeID, Keys: t.ring,
		MaxAge: t.cfg.messageMaxAge(), Logger: t.log.With("component", "signed"), Registerer: reg})
	if err != nil {
		return nil, err
	}
	t.signed = sb
	t.log.Info("messages are signed and verified", "keys_from", t.src, "keys", t.ring.Len(), "message_max_age", t.cfg.messageMaxAge())
	return sb, nil
}

// alerts describes recent rejections for /api/cluster and the status page.
func (t *trust) alerts() []string {
	if t == nil || t.signed == nil {
		return nil
	}
	st := t.signed.Stats()
	if st.Total == 0 {
		return nil
	}
	var parts []string
	for r, n := range st.ByReason {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", r, n))
		}
	}
	sort.Strings(parts)
	l := st.Last
	from := l.Sender
	if from == "" {
		from = "an unknown sender"
	}
	return []string{fmt.Sprintf("%d messages failed verification (%s); last at %s: %s from %s on %s %q: %s",
		st.Total, strings.Join(parts, ", "), l.Time.UTC().Format(time.RFC3339), l.Reason, from, l.Kind, l.Destination, l.Detail)}
}

// adminToken reads the admin token: --admin-token-file wins over
// CLUSTERBUS_ADMIN_TOKEN; both set is an error.
func (c *nodeConfig) adminToken() (string, error) {
	switch {
	case c.AdminTokenFile != "" && c.AdminToken != "":
		return "", fmt.Errorf("admin-token-file %s and CLUSTERBUS_ADMIN_TOKEN are both set: use one", c.AdminTokenFile)
	case c.AdminTokenFile != "":
		return readTokenFile(c.AdminTokenFile)
	}
	return strings.TrimSpace(c.AdminToken), nil
}

func readTokenFile(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(raw))
	if tok == "" {
		return "", fmt.Errorf("admin-token-file %s is empty", path)
	}
	return tok, nil
}

// startHTTP serves mux (guarded, see adminhttp) on --http and, if set,
// --admin-http.
func startHTTP(cfg *nodeConfig, mux http.Handler, log *slog.Logger, tr *trust) (*adminhttp.Server, error) {
	if *tr.token.Load() == "" && !cfg.AdminAllowRemoteNoToken {
		log.Warn("no admin token (CLUSTERBUS_ADMIN_TOKEN or --admin-token-file): mutating API requests are served to loopback clients only")
	}
	return adminhttp.Start(mux, adminhttp.ServerConfig{
		Addr: cfg.HTTP, AdminAddr: cfg.AdminHTTP, TLSCert: cfg.TLSCert, TLSKey: cfg.TLSKey, Logger: log,
		Guard: adminhttp.Config{
			Token:                   func() string { return *tr.token.Load() },
			AllowRemoteWithoutToken: cfg.AdminAllowRemoteNoToken,
			ProtectReads:            cfg.ProtectReads,
			MaxBody:                 cfg.HTTPMaxBody,
		},
	})
}

// resolveBroker reads --broker-file and --broker-password-file into
// Broker, so that no secret needs to be on the command line.
func (c *nodeConfig) resolveBroker() error {
	if c.BrokerFile != "" {
		if c.Broker != "" {
			return fmt.Errorf("broker %q and broker-file %s are both set: use one", adapters.Redact(c.Broker), c.BrokerFile)
		}
		raw, err := os.ReadFile(c.BrokerFile)
		if err != nil {
			return fmt.Errorf("broker-file: %w", err)
		}
		c.Broker = strings.TrimSpace(string(raw))
		if c.Broker == "" {
			return fmt.Errorf("broker-file %s is empty; want a broker URL such as nats://host:4222", c.BrokerFile)
		}
	}
	if c.BrokerPasswordFile == "" {
		return nil
	}
	raw, err := os.ReadFile(c.BrokerPasswordFile)
	if err != nil {
		return fmt.Errorf("broker-password-file: %w", err)
	}
	pw := strings.TrimRight(string(raw), "\r\n")
	u, err := url.Parse(c.Broker)
	if err != nil || u.User == nil || u.User.Username() == "" {
		return fmt.Errorf("broker-password-file: the broker URL %q names no user; want scheme://user@host with the password in the file", adapters.Redact(c.Broker))
	}
	if _, has := u.User.Password(); has {
		return fmt.Errorf("broker-password-file: the broker URL %q has a password already: use one", adapters.Redact(c.Broker))
	}
	// Rebuild only the user info, so the rest of the URL (a Kafka host
	// list, say) keeps its form.
	scheme, rest, _ := strings.Cut(c.Broker, "://")
	at := strings.Index(rest, "@")
	c.Broker = scheme + "://" + url.UserPassword(u.User.Username(), pw).String() + rest[at:]
	return nil
}
