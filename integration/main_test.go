package integration

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// binPath is the clusterbus binary TestMain built.
var binPath string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips itself
	}
	dir, err := os.MkdirTemp("", "clusterbus-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "clusterbus")
	build := exec.Command("go", "build", "-o", binPath, "github.com/clusterbus/clusterbus/cmd/clusterbus")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: go build failed:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needBinary skips under -short, with the reason.
func needBinary(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test: runs clusterbus processes on every broker for several minutes; skipped with -short")
	}
}
