package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is set by the linker: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// rootCmd is the clusterbus command; each subcommand lives in its own file
// and adds itself from an init function.
var rootCmd = &cobra.Command{
	Use:           "clusterbus",
	Short:         "Cluster coordination for application servers over the broker you already run",
	SilenceUsage:  true,
	SilenceErrors: true,
	Version:       version,
}

func init() {
	rootCmd.SetVersionTemplate(versionLine())
}

func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "clusterbus:", err)
		os.Exit(exitCode(err))
	}
}

// exitError carries a process exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	if e, ok := err.(*exitError); ok {
		return e.code
	}
	return 1
}
