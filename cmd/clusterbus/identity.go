package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/clusterbus/clusterbus/bus"
)

// nodeIDFile is where a node keeps its ID in --data-dir.
const nodeIDFile = "node-id"

// resolveNodeID gives the node a stable identity, so that a restarted node
// replaces its previous incarnation at once instead of adding a member that
// looks dead for --forget-after: --node-id if given; else the ID kept in
// --data-dir (written on first start); else, if the data dir cannot be
// written, one derived from the host name. The ID file stays locked while
// the node runs, so two nodes sharing a data dir fail at start with a clear
// error instead of both using one ID (which would be a cluster panic).
func resolveNodeID(cfg *nodeConfig, log *slog.Logger) (string, func(), error) {
	if cfg.NodeID != "" {
		return cfg.NodeID, func() {}, nil
	}
	id, release, err := persistedNodeID(cfg.DataDir)
	if err == nil {
		cfg.dataDirHeld = true
		return id, release, nil
	}
	if errors.Is(err, errDataDirInUse) {
		return "", nil, err
	}
	host, herr := os.Hostname()
	id = hostNodeID(host)
	if herr != nil || id == "" {
		return "", nil, fmt.Errorf("node-id: not given, the data dir %s cannot keep one (%v), and the host name %q gives none: pass --node-id", cfg.DataDir, err, host)
	}
	log.Warn("node ID derived from the host name: the data dir cannot keep one", "node_id", id, "data_dir", cfg.DataDir, "err", err)
	return id, func() {}, nil
}

var errDataDirInUse = errors.New("in use by another running node")

// persistedNodeID reads (or creates) dir/node-id and locks it.
func persistedNodeID(dir string) (string, func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	path := filepath.Join(dir, nodeIDFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return "", nil, fmt.Errorf("data-dir %s: %w (its %s is locked); give each node its own --data-dir or --node-id", dir, errDataDirInUse, nodeIDFile)
	}
	release := func() { f.Close() } // closing drops the lock
	raw, err := os.ReadFile(path)
	if err != nil {
		release()
		return "", nil, err
	}
	id := strings.TrimSpace(string(raw))
	if id != "" {
		if err := bus.ValidateNodeID(id); err != nil {
			release()
			return "", nil, fmt.Errorf("data-dir %s: %s holds %q: %w; fix or remove it", dir, nodeIDFile, id, err)
		}
		return id, release, nil
	}
	id = bus.NewNodeID()
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(id+"\n"), 0)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			release()
			return "", nil, err
		}
	}
	return id, release, nil
}

var notIDChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// hostNodeID turns a host name into a valid node ID ("" if none).
func hostNodeID(host string) string {
	id := strings.Trim(notIDChars.ReplaceAllString(host, "-"), "-._")
	if len(id) > 64 {
		id = id[:64]
	}
	return id
}
