package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clusterbus/clusterbus/flows"
)

// The execution control commands: history, cancel, retry, signal. Any node
// answers: they read and write the cluster's executions catalog.
func init() {
	var addr, output, reason, data string
	execURL := func(id, action string) string {
		u := normalizeAddr(addr) + "/api/executions/" + url.PathEscape(id)
		if action != "" {
			u += "/" + action
		}
		return u
	}
	// printStatus prints an execution's status as JSON (or -o yaml).
	printStatus := func(w io.Writer, raw json.RawMessage) error {
		if output != "" {
			return writeOutput(w, output, raw)
		}
		return printJSON(w, raw)
	}
	history := &cobra.Command{
		Use:   "history ID",
		Short: "Print an execution's state and every step: node, attempt, start, end, outcome, error",
		Long: `Print an execution's record from the cluster's executions catalog (any
node answers, also after every node that ran it has restarted, within
flows.retention): its state, then one line per step attempt.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			var raw json.RawMessage
			if err := flowAPI(cmd.Context(), http.MethodGet, execURL(args[0], ""), nil, &raw); err != nil {
				return err
			}
			if output != "" {
				return writeOutput(cmd.OutOrStdout(), output, raw)
			}
			var st flows.Status
			if err := json.Unmarshal(raw, &st); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "execution %s  flow %s@%d  state %s", st.Execution, st.Flow, st.Version, st.State)
			if st.Reason != "" {
				fmt.Fprintf(w, " (%s)", st.Reason)
			}
			if st.Await != nil {
				fmt.Fprintf(w, "  awaiting signal %q at %s", st.Await.Signal, st.Await.Step)
				if !st.Await.Deadline.IsZero() {
					fmt.Fprintf(w, " until %s", st.Await.Deadline.UTC().Format(time.RFC3339))
				}
			}
			if st.Retries > 0 {
				fmt.Fprintf(w, "  retries %d", st.Retries)
			}
			fmt.Fprintln(w)
			if st.Error != "" {
				fmt.Fprintf(w, "error: %s\n", st.Error)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tSTEP\tNODE\tATTEMPT\tSTARTED\tENDED\tOUTCOME\tERROR")
			for _, s := range st.Steps {
				errText := s.Error
				if len(errText) > 80 {
					errText = errText[:80] + "…"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", s.Seq, s.Step, s.Node, s.Attempt,
					stamp(s.Started), stamp(s.Ended), s.Outcome, errText)
			}
			return tw.Flush()
		},
	}
	addOutputFlag(history, &output)
	cancel := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel an execution: it stops at its next step boundary, a running step's context is cancelled",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var raw json.RawMessage
			if err := flowAPI(cmd.Context(), http.MethodPost, execURL(args[0], "cancel"), map[string]string{"reason": reason}, &raw); err != nil {
				return err
			}
			return printStatus(cmd.OutOrStdout(), raw)
		},
	}
	cancel.Flags().StringVar(&reason, "reason", "", "why, recorded with the cancellation")
	addOutputFlag(cancel, &output)
	retry := &cobra.Command{
		Use:   "retry ID",
		Short: "Resume a failed or dead-lettered execution from the step that failed (earlier steps do not run again)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var raw json.RawMessage
			if err := flowAPI(cmd.Context(), http.MethodPost, execURL(args[0], "retry"), struct{}{}, &raw); err != nil {
				return err
			}
			return printStatus(cmd.OutOrStdout(), raw)
		},
	}
	addOutputFlag(retry, &output)
	signal := &cobra.Command{
		Use:   "signal ID NAME",
		Short: "Release an execution parked at an await step for signal NAME, with --data in its vars",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := flows.SignalRequest{Name: args[1]}
			if data != "" {
				b, err := readInput(data, cmd.InOrStdin())
				if err != nil {
					return &exitError{code: 2, err: err}
				}
				if err := json.Unmarshal(b, &req.Data); err != nil {
					return &exitError{code: 2, err: fmt.Errorf("--data: want JSON: %w", err)}
				}
			}
			var raw json.RawMessage
			if err := flowAPI(cmd.Context(), http.MethodPost, execURL(args[0], "signal"), req, &raw); err != nil {
				return err
			}
			return printStatus(cmd.OutOrStdout(), raw)
		},
	}
	signal.Flags().StringVar(&data, "data", "", "the signal's data, JSON; @FILE reads it from FILE, - from standard input")
	addOutputFlag(signal, &output)
	for _, c := range []*cobra.Command{history, cancel, retry, signal} {
		c.Flags().StringVar(&addr, "addr", defaultAddr(), "a node's HTTP address (env CLUSTERBUS_ADDR)")
		addAdminTokenFlag(c)
		c.PreRunE = func(*cobra.Command, []string) error { return checkOutput(output) }
		flowCommand.AddCommand(c)
	}
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
