package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/signed"
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

// trust is what signing adds to a node: the signed broker (nil without a
// key) and the reload of the key file on SIGHUP.
type trust struct {
	signed *signed.Broker
}

// wrapBroker wraps b with adapters/signed when the cluster has a key, and
// re-reads --cluster-key-file on SIGHUP until ctx ends. Without a key it
// returns b as is: the cluster then trusts the broker's access control.
func wrapBroker(ctx context.Context, cfg *nodeConfig, nodeID string, b adapters.Broker, log *slog.Logger, reg prometheus.Registerer) (adapters.Broker, *trust, error) {
	ring, src, err := cfg.clusterKeys()
	if err != nil {
		return nil, nil, &exitError{code: 2, err: err}
	}
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
			if ring == nil || cfg.ClusterKeyFile == "" {
				log.Info("SIGHUP: nothing to reload (no --cluster-key-file)")
				continue
			}
			keys, err := signed.ReadKeyFile(cfg.ClusterKeyFile)
			if err == nil {
				err = ring.Set(keys...)
			}
			if err != nil {
				log.Error("SIGHUP: cluster keys NOT reloaded; still using the previous ones", "file", cfg.ClusterKeyFile, "err", err)
				continue
			}
			log.Info("SIGHUP: cluster keys reloaded", "file", cfg.ClusterKeyFile, "keys", len(keys))
		}
	}()
	if ring == nil {
		log.Warn("no cluster key (CLUSTERBUS_CLUSTER_KEY or --cluster-key-file): messages are not authenticated; the cluster trusts the broker's access control")
		return b, &trust{}, nil
	}
	sb, err := signed.Wrap(b, signed.Config{Cluster: cfg.Cluster, Sender: nodeID, Keys: ring,
		MaxAge: cfg.messageMaxAge(), Logger: log.With("component", "signed"), Registerer: reg})
	if err != nil {
		return nil, nil, err
	}
	log.Info("messages are signed and verified", "keys_from", src, "keys", ring.Len(), "message_max_age", cfg.messageMaxAge())
	return sb, &trust{signed: sb}, nil
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
