package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clusterbus/clusterbus/bus"
)

// defaultAddr is the node API address the CLI talks to: --addr, else
// CLUSTERBUS_ADDR, else the local node's default.
func defaultAddr() string {
	if a := os.Getenv("CLUSTERBUS_ADDR"); a != "" {
		return a
	}
	return "http://127.0.0.1:8080"
}

func normalizeAddr(a string) string {
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	return strings.TrimRight(a, "/")
}

func init() {
	var addr, output string
	var asJSON, watch bool
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print the cluster as a node sees it (--watch: again every --interval until interrupted)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON && output == "" {
				output = "json"
			}
			if err := checkOutput(output); err != nil {
				return err
			}
			if every <= 0 {
				return &exitError{code: 2, err: fmt.Errorf("--interval %s: want more than 0", every)}
			}
			for {
				cl, raw, err := fetchCluster(cmd.Context(), addr)
				switch {
				case err != nil && !watch:
					return err
				case err != nil:
					fmt.Fprintf(cmd.OutOrStdout(), "%s  %v\n", time.Now().UTC().Format(time.TimeOnly), err)
				case output != "":
					if err := writeOutput(cmd.OutOrStdout(), output, raw); err != nil {
						return err
					}
				default:
					if watch {
						fmt.Fprintf(cmd.OutOrStdout(), "\n%s\n", time.Now().UTC().Format(time.TimeOnly+" UTC"))
					}
					if err := printCluster(cmd.OutOrStdout(), cl, time.Now()); err != nil {
						return err
					}
				}
				if !watch {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
	cmd.Flags().StringVar(&addr, "addr", defaultAddr(), "a node's HTTP address (env CLUSTERBUS_ADDR)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the /api/cluster JSON (same as -o json)")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "print again every --interval until interrupted")
	cmd.Flags().DurationVar(&every, "interval", time.Second, "how often --watch prints")
	addOutputFlag(cmd, &output)
	addAdminTokenFlag(cmd)
	rootCmd.AddCommand(cmd)
}

func fetchCluster(ctx context.Context, addr string) (bus.ClusterJSON, []byte, error) {
	var cl bus.ClusterJSON
	u := normalizeAddr(addr) + "/api/cluster"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return cl, nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return cl, nil, fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return cl, nil, fmt.Errorf("status: read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return cl, nil, fmt.Errorf("status: GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(raw)))
	}
	if err := json.Unmarshal(raw, &cl); err != nil {
		return cl, nil, fmt.Errorf("status: GET %s: not a cluster document: %w", u, err)
	}
	return cl, raw, nil
}

func printCluster(w io.Writer, cl bus.ClusterJSON, now time.Time) error {
	lead := cl.Lead
	if lead == "" {
		lead = "(none)"
	}
	fmt.Fprintf(w, "cluster %s  lead %s  term %d  (%d nodes, seen from %s)\n\n", cl.Cluster, lead, cl.Term, len(cl.Nodes), cl.Local)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tHOST\tIP\tSTATE\tLEAD\tLOCAL\tVERSION\tUP\tLAST HEARTBEAT\tCLOCK SKEW")
	for _, n := range cl.Nodes {
		hb := "-"
		if !n.LastHeartbeat.IsZero() && n.LastHeartbeat.Year() > 1 {
			hb = now.Sub(n.LastHeartbeat).Round(time.Millisecond).String() + " ago"
		}
		skew := fmt.Sprintf("%dms", n.ClockSkewMS)
		if n.ClockSkewed {
			skew += " SKEWED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.ID, n.Host, n.IP, n.State, mark(n.Lead), mark(n.Local),
			n.Version, now.Sub(n.StartedAt).Round(time.Second), hb, skew)
	}
	return tw.Flush()
}

func mark(b bool) string {
	if b {
		return "*"
	}
	return ""
}
