package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clusterbus/clusterbus/flows"
)

// deployCommands are `clusterbus flow deploy|versions|rollback|undeploy`:
// the flow definitions deployed to the cluster (see package flows).
func deployCommands() []*cobra.Command {
	var addr, output string
	deploy := &cobra.Command{
		Use:   "deploy FILE...",
		Short: "Deploy the flows defined in each FILE to the cluster as new versions; every node runs them, without a restart",
		Long: `Deploy flow definitions. Each FILE is checked here first (exit 2 naming
the file and line of each problem), then sent to the node at --addr, which
stores each flow document as an immutable version in the cluster's
definitions catalog: the file's "version:" if it has one (an error if that
version exists with other content; nothing to do if the same), else the
next version (nothing to do if a version holds exactly this content). A
new version becomes the one new submissions use; running executions end
on theirs. Exit 1 if a deploy failed or conflicted.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			type result struct {
				File     string             `json:"file"`
				Deployed []flows.Deployment `json:"deployed"`
			}
			var results []result
			srcs := make([][]byte, len(args))
			for i, file := range args {
				src, err := os.ReadFile(file)
				if err != nil {
					return &exitError{code: 2, err: err}
				}
				if _, err := flows.Parse(file, src); err != nil {
					return &exitError{code: 2, err: err}
				}
				srcs[i] = src
			}
			for i, file := range args {
				var resp flows.DeployResponse
				err := flowAPI(cmd.Context(), http.MethodPost, normalizeAddr(addr)+"/api/flow-definitions",
					flows.DeployRequest{YAML: string(srcs[i]), File: file}, &resp)
				if err != nil {
					return &exitError{code: 1, err: fmt.Errorf("%s: %w", file, err)}
				}
				results = append(results, result{File: file, Deployed: resp.Deployed})
			}
			if output != "" {
				raw, _ := json.Marshal(map[string]any{"files": results})
				return writeOutput(cmd.OutOrStdout(), output, raw)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "FILE\tFLOW\tVERSION\tCREATED\tHEAD")
			for _, r := range results {
				for _, d := range r.Deployed {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%v\t%v\n", r.File, d.Flow, d.Version, d.Created, d.Head)
				}
			}
			return tw.Flush()
		},
	}
	versions := &cobra.Command{
		Use:   "versions NAME",
		Short: "List the deployed versions of flow NAME and which one new submissions use",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			var raw json.RawMessage
			if err := flowAPI(cmd.Context(), http.MethodGet, normalizeAddr(addr)+"/api/flow-definitions/"+url.PathEscape(args[0]), nil, &raw); err != nil {
				return err
			}
			if output != "" {
				return writeOutput(cmd.OutOrStdout(), output, raw)
			}
			return printVersions(cmd, raw)
		},
	}
	rollback := &cobra.Command{
		Use:   "rollback NAME VERSION",
		Short: "Make deployed VERSION of flow NAME the one new submissions use (running executions keep theirs)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := strconv.Atoi(args[1])
			if err != nil || v < 1 {
				return &exitError{code: 2, err: fmt.Errorf("VERSION %q: want a number >= 1", args[1])}
			}
			if err := checkOutput(output); err != nil {
				return err
			}
			var raw json.RawMessage
			if err := flowAPI(cmd.Context(), http.MethodPost, normalizeAddr(addr)+"/api/flow-definitions/"+url.PathEscape(args[0])+"/rollback",
				flows.RollbackRequest{Version: v}, &raw); err != nil {
				return err
			}
			if output != "" {
				return writeOutput(cmd.OutOrStdout(), output, raw)
			}
			return printVersions(cmd, raw)
		},
	}
	undeploy := &cobra.Command{
		Use:   "undeploy NAME",
		Short: "Stop new submissions of flow NAME on the cluster; running executions end on their versions, which stay stored",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			var raw json.RawMessage
			if err := flowAPI(cmd.Context(), http.MethodPost, normalizeAddr(addr)+"/api/flow-definitions/"+url.PathEscape(args[0])+"/undeploy",
				struct{}{}, &raw); err != nil {
				return err
			}
			if output != "" {
				return writeOutput(cmd.OutOrStdout(), output, raw)
			}
			return printVersions(cmd, raw)
		},
	}
	cmds := []*cobra.Command{deploy, versions, rollback, undeploy}
	for _, c := range cmds {
		c.Flags().StringVar(&addr, "addr", defaultAddr(), "a node's HTTP address (env CLUSTERBUS_ADDR)")
		addAdminTokenFlag(c)
		addOutputFlag(c, &output)
	}
	return cmds
}

func printVersions(cmd *cobra.Command, raw json.RawMessage) error {
	var fv flows.FlowVersions
	if err := json.Unmarshal(raw, &fv); err != nil {
		return err
	}
	head := "none (undeployed)"
	if fv.Head > 0 {
		head = strconv.Itoa(fv.Head)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "flow %s: head %s\n", fv.Flow, head)
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tHEAD\tDEPLOYED\tBY\tBYTES\tERROR")
	for _, v := range fv.Versions {
		mark := ""
		if v.Head {
			mark = "*"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", v.Version, mark, v.Deployed.UTC().Format(time.RFC3339), v.Node, v.Size, v.Error)
	}
	return tw.Flush()
}
