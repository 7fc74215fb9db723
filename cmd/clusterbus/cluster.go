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
	clusterCmd := &cobra.Command{Use: "cluster", Short: "Act on the cluster membership"}
	down := &cobra.Command{
		Use:   "down NODE",
		Short: "Down an unreachable member: it stops counting toward any quorum (manual downing)",
		Long: `Asks the node at --addr to down member NODE (POST /api/cluster/down), as the
serving side does by itself after --forget-after: NODE leaves the membership
at once, stops counting toward the split-brain quorum, and the other nodes
learn it from the next heartbeat. If NODE comes back it rejoins as a new
incarnation. Only a member the node cannot reach can be downed. Use it when
most of a cluster is gone for good and the survivors wait (503) for members
that will not return. Needs the admin token.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body, _ := json.Marshal(bus.DownRequest{Node: args[0]})
			u := normalizeAddr(addr) + "/api/cluster/down"
			req, err := http.NewRequestWithContext(cmd.Context(), http.MethodPost, u, bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := httpClient.Do(req)
			if err != nil {
				return fmt.Errorf("cluster down: %w", err)
			}
			defer resp.Body.Close()
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			if resp.StatusCode/100 != 2 {
				return fmt.Errorf("cluster down %s: POST %s: %s: %s", args[0], u, resp.Status, strings.TrimSpace(string(msg)))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "downed %s\n", args[0])
			return nil
		},
	}
	down.Flags().StringVar(&addr, "addr", defaultAddr(), "a node's HTTP address (env CLUSTERBUS_ADDR)")
	addAdminTokenFlag(down)
	clusterCmd.AddCommand(down)
	rootCmd.AddCommand(clusterCmd)
}
