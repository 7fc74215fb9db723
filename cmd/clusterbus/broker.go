package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

func init() {
	var cfg natsserver.Config
	var logFormat string
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Run the embedded NATS server (JetStream) standalone, for several nodes to share",
		Long: `broker runs the NATS server that clusterbus embeds, with JetStream, as a process of its
own, so that several nodes on one machine (or a small site without a broker) can share it.
Nodes connect with --broker nats://ADDR. It prints the client URL once it is ready and runs
until SIGINT or SIGTERM. With --sync (the default) every acknowledged enqueue is fsynced
before the acknowledgement, so it survives a machine crash, not only a process crash.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := newLogger(cmd.ErrOrStderr(), logFormat, "info")
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			cfg.Logger = logger.With("component", "broker")
			srv, err := natsserver.Start(cfg)
			if err != nil {
				return &exitError{code: 2, err: fmt.Errorf("broker: %w", err)}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "clusterbus broker listening on %s (data %s, fsync %v)\n", srv.ClientURL(), cfg.DataDir, cfg.Sync)
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
			s := <-sig
			logger.Info("broker stopping", "signal", s.String())
			srv.Shutdown()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", natsserver.DefaultListen, "host:port for clients (port 0 picks a free one)")
	f.StringVar(&cfg.DataDir, "data-dir", "clusterbus-data/broker", "directory for the JetStream store")
	f.BoolVar(&cfg.Sync, "sync", true, "fsync every write before acknowledging it")
	f.StringVar(&cfg.User, "user", "", "user name clients must give (with --password)")
	f.StringVar(&cfg.Password, "password", "", "password clients must give (with --user)")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	rootCmd.AddCommand(cmd)
}
