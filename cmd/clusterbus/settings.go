package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clusterbus/clusterbus/bus"
)

// addSettingsCommands adds `clusterbus config set|get|list|unset` to the
// config command: the cluster settings, through a node's HTTP API (--addr).
func addSettingsCommands(cfgCmd *cobra.Command) {
	cfgCmd.Short = "Show or check a node's configuration; set, get and list the cluster settings"
	var addr string
	var output string
	set := &cobra.Command{
		Use:   "set KEY VALUE",
		Short: "Set a cluster setting on every node (PUT /api/settings/KEY; needs the admin token)",
		Long: `set asks the node at --addr to set the cluster setting KEY to VALUE. Every node
of the cluster sees it within moments, including nodes that start later;
the settings are kept in each node's data dir and, on NATS, in the broker.
Keys: letters, digits and _ - . : / @ = +, at most 256 bytes. Concurrent
sets of one key end with the later one on every node.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			body, _ := json.Marshal(bus.SetSettingRequest{Value: args[1]})
			var s bus.Setting
			if err := settingsCall(cmd.Context(), http.MethodPut, addr, args[0], body, &s); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s set\n", s.Key)
			return nil
		},
	}
	unset := &cobra.Command{
		Use:     "unset KEY",
		Aliases: []string{"delete"},
		Short:   "Remove a cluster setting from every node (DELETE /api/settings/KEY; needs the admin token)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := settingsCall(cmd.Context(), http.MethodDelete, addr, args[0], nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s unset\n", args[0])
			return nil
		},
	}
	get := &cobra.Command{
		Use:   "get KEY",
		Short: "Print a cluster setting's value (exit 1 if it is not set)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			var s bus.Setting
			if err := settingsCall(cmd.Context(), http.MethodGet, addr, args[0], nil, &s); err != nil {
				return err
			}
			if output != "" {
				return writeValue(cmd.OutOrStdout(), output, s)
			}
			fmt.Fprintln(cmd.OutOrStdout(), s.Value)
			return nil
		},
	}
	var prefix string
	list := &cobra.Command{
		Use:   "list",
		Short: "List the cluster settings: key, value, when and by which node they were set",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			var doc struct {
				Settings []bus.Setting `json:"settings"`
			}
			if err := settingsCall(cmd.Context(), http.MethodGet, addr, "", nil, &doc); err != nil {
				return err
			}
			var out []bus.Setting
			for _, s := range doc.Settings {
				if strings.HasPrefix(s.Key, prefix) {
					out = append(out, s)
				}
			}
			if output != "" {
				if out == nil {
					out = []bus.Setting{}
				}
				return writeValue(cmd.OutOrStdout(), output, out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KEY\tVALUE\tUPDATED\tBY")
			for _, s := range out {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Key, oneLine(s.Value), s.Updated.UTC().Format(time.RFC3339), s.By)
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&prefix, "prefix", "", "only keys that start with this")
	for _, c := range []*cobra.Command{set, unset, get, list} {
		c.Flags().StringVar(&addr, "addr", defaultAddr(), "a node's HTTP address (env CLUSTERBUS_ADDR)")
		addAdminTokenFlag(c)
		cfgCmd.AddCommand(c)
	}
	for _, c := range []*cobra.Command{get, list} {
		addOutputFlag(c, &output)
	}
}

// settingsCall sends method to /api/settings[/key] and decodes a 2xx JSON
// answer into out (if not nil).
func settingsCall(ctx context.Context, method, addr, key string, body []byte, out any) error {
	u := normalizeAddr(addr) + "/api/settings"
	if key != "" {
		u += "/" + url.PathEscape(key)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if method != http.MethodGet {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return fmt.Errorf("config %s: %w", strings.ToLower(method), err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode/100 != 2 {
		err := fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, strings.TrimSpace(string(data)))
		if resp.StatusCode == http.StatusNotFound && key != "" && method == http.MethodGet {
			return &exitError{code: 1, err: fmt.Errorf("setting %s is not set", key)}
		}
		return err
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: the answer does not decode: %w", method, u, err)
		}
	}
	return nil
}

func oneLine(s string) string {
	s = strings.NewReplacer("\n", `\n`, "\r", `\r`, "\t", `\t`).Replace(s)
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// writeValue prints v as format (json or yaml).
func writeValue(w io.Writer, format string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeOutput(w, format, raw)
}
