package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func loadFlags(t *testing.T, args ...string) (*nodeConfig, error) {
	t.Helper()
	fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
	addNodeFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return loadNodeConfig(fs)
}

func TestClusterKeysFromEnvAndFile(t *testing.T) {
	clearConfigEnv(t)
	t.Setenv("CLUSTERBUS_CLUSTER_KEY", "new-key-0123456789abcdef, old-key-0123456789abcdef")
	cfg, err := loadFlags(t)
	if err != nil {
		t.Fatal(err)
	}
	ring, src, err := cfg.clusterKeys()
	if err != nil || ring.Len() != 2 || string(ring.Keys()[0]) != "new-key-0123456789abcdef" || src != "CLUSTERBUS_CLUSTER_KEY" {
		t.Fatalf("%v %q %v", ring, src, err)
	}
	file := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(file, []byte("# signer first\nfile-key-0123456789abcdef\n\n"), 0o600)
	cfg, _ = loadFlags(t, "--cluster-key-file", file)
	if _, _, err := cfg.clusterKeys(); err == nil || !strings.Contains(err.Error(), "both set") {
		t.Fatalf("env and file: %v, want an error", err)
	}
	os.Unsetenv("CLUSTERBUS_CLUSTER_KEY")
	cfg, _ = loadFlags(t, "--cluster-key-file", file)
	if ring, _, err := cfg.clusterKeys(); err != nil || ring.Len() != 1 {
		t.Fatalf("file: %v %v", ring, err)
	}
	t.Setenv("CLUSTERBUS_CLUSTER_KEY", "short")
	cfg, _ = loadFlags(t)
	if _, _, err := cfg.clusterKeys(); err == nil || !strings.Contains(err.Error(), "CLUSTERBUS_CLUSTER_KEY") {
		t.Fatalf("short key: %v, want an error naming CLUSTERBUS_CLUSTER_KEY", err)
	}
}

func TestBrokerFileAndPasswordFile(t *testing.T) {
	clearConfigEnv(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("p@ss:word\n"), 0o600)
	cfg, err := loadFlags(t, "--broker", "kafka://alice@k1:9092,k2:9092?sasl=plain", "--broker-password-file", pw)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Broker != "kafka://alice:p%40ss%3Aword@k1:9092,k2:9092?sasl=plain" {
		t.Fatalf("broker %q", cfg.Broker)
	}
	bf := filepath.Join(dir, "broker")
	os.WriteFile(bf, []byte("nats://u:secret@h:4222\n"), 0o600)
	cfg, err = loadFlags(t, "--broker-file", bf)
	if err != nil || cfg.Broker != "nats://u:secret@h:4222" {
		t.Fatalf("%v %q", err, cfg.Broker)
	}
	if _, err := loadFlags(t, "--broker", "nats://h:4222", "--broker-password-file", pw); err == nil {
		t.Fatal("a password file for a URL without a user was accepted")
	}
}

// TestConfigPrintRedactsSecrets: config print never shows the cluster key,
// the admin token or the broker password.
func TestConfigPrintRedactsSecrets(t *testing.T) {
	clearConfigEnv(t)
	t.Setenv("CLUSTERBUS_CLUSTER_KEY", "very-secret-cluster-key-123")
	t.Setenv("CLUSTERBUS_ADMIN_TOKEN", "very-secret-admin-token")
	out, err := runCLI(t, "config", "print", "--broker", "nats://u:very-secret-pw@h:4222")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"very-secret-cluster-key-123", "very-secret-admin-token", "very-secret-pw"} {
		if strings.Contains(out, s) {
			t.Errorf("config print shows %q:\n%s", s, out)
		}
	}
}

// TestCLISendsAdminToken: the CLI commands send the token from
// CLUSTERBUS_ADMIN_TOKEN or --admin-token-file.
func TestCLISendsAdminToken(t *testing.T) {
	clearConfigEnv(t)
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get("Authorization"))
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	t.Setenv("CLUSTERBUS_ADMIN_TOKEN", "env-token")
	if _, err := runCLI(t, "cache", "clear", "users", "--addr", srv.URL); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(file, []byte("file-token\n"), 0o600)
	if _, err := runCLI(t, "cache", "clear", "users", "--addr", srv.URL, "--admin-token-file", file); err != nil {
		t.Fatal(err)
	}
	cliTokenFile = ""
	if len(got) != 2 || got[0] != "Bearer env-token" || got[1] != "Bearer file-token" {
		t.Fatalf("Authorization headers %q", got)
	}
}
