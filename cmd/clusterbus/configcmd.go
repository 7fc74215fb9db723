package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/clusterbus/clusterbus/adapters"
)

// `clusterbus config print` and `clusterbus config check` take the same
// flags, environment and file as `clusterbus node`.
func init() {
	cfgCmd := &cobra.Command{Use: "config", Short: "Show or check the configuration a node would run with"}
	print := &cobra.Command{
		Use:   "print [node flags]",
		Short: "Print the merged node configuration, the source of each value, secrets redacted",
		Long: `print loads the configuration exactly as 'clusterbus node' would (flags >
CLUSTERBUS_* environment > --config file > defaults) and prints every key
with its value and where the value came from. Secrets (the cluster key,
tokens, passwords in the broker URL) are redacted. It exits 2, naming each
bad key, if the configuration is invalid.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, settings, err := loadNodeConfigSources(cmd.Flags())
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			return printConfig(cmd.OutOrStdout(), settings)
		},
	}
	check := &cobra.Command{
		Use:   "check [node flags]",
		Short: "Check the node configuration and flow definitions; exit 2 naming each problem",
		Long: `check loads and validates the configuration as 'clusterbus node' would,
including the flow definitions in flows.dir, without connecting to anything.
It prints "config ok" and exits 0, or lists every problem and exits 2.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadNodeConfig(cmd.Flags())
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
			fmt.Fprintln(cmd.OutOrStdout(), "config ok")
			return nil
		},
	}
	for _, c := range []*cobra.Command{print, check} {
		c.Args = cobra.NoArgs
		addNodeFlags(c.Flags())
		cfgCmd.AddCommand(c)
	}
	addSettingsCommands(cfgCmd)
	rootCmd.AddCommand(cfgCmd)
}

// secretKey tells settings whose value is a secret.
func secretKey(key string) bool {
	for _, w := range []string{"key", "token", "password", "secret"} {
		if strings.Contains(key, w) {
			return true
		}
	}
	return false
}

func printConfig(w io.Writer, settings map[string]configSetting) error {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tVALUE\tSOURCE")
	for _, k := range keys {
		v := settings[k].Value
		switch {
		case v == "":
			v = `""`
		case secretKey(k):
			v = "<redacted>"
		case k == "broker":
			v = adapters.Redact(v)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", k, v, settings[k].Source)
	}
	return tw.Flush()
}
