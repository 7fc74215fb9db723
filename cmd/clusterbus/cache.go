package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/clusterbus/clusterbus/bus"
)

func init() {
	var addr string
	cacheCmd := &cobra.Command{Use: "cache", Short: "Cache-clear events"}
	clearCmd := &cobra.Command{
		Use:   "clear REGION [KEY...]",
		Short: "Tell every node to drop KEYs of REGION (the whole region without keys)",
		Long: `Asks the node at --addr to broadcast a cache-clear event (POST /api/cache/clear).
Every node of its cluster runs its handlers for REGION.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body, _ := json.Marshal(bus.CacheClearRequest{Region: args[0], Keys: args[1:]})
			u := normalizeAddr(addr) + "/api/cache/clear"
			req, err := http.NewRequestWithContext(cmd.Context(), http.MethodPost, u, bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := httpClient.Do(req)
			if err != nil {
				return fmt.Errorf("cache clear: %w", err)
			}
			defer resp.Body.Close()
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			if resp.StatusCode/100 != 2 {
				return fmt.Errorf("cache clear: POST %s: %s: %s", u, resp.Status, strings.TrimSpace(string(msg)))
			}
			what := "whole region"
			if len(args) > 1 {
				what = fmt.Sprintf("%d keys", len(args)-1)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cleared %s of %q\n", what, args[0])
			return nil
		},
	}
	clearCmd.Flags().StringVar(&addr, "addr", defaultAddr(), "a node's HTTP address (env CLUSTERBUS_ADDR)")
	addAdminTokenFlag(clearCmd)
	cacheCmd.AddCommand(clearCmd)
	rootCmd.AddCommand(cacheCmd)
}
