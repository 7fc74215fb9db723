package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/clusterbus/clusterbus/catalog"
	"github.com/clusterbus/clusterbus/flows"
)

// addFlowsFlags declares the flows.* settings of `clusterbus node`.
func addFlowsFlags(fs *pflag.FlagSet) {
	d := defaultNodeConfig().Flows
	fs.Bool("flows.enabled", d.Enabled, "run the flow engine: it runs the steps of the flows deployed to the cluster (`clusterbus flow deploy`) and of flows.dir")
	fs.String("flows.dir", d.Dir, "directory of flow and rule YAML files: each flow whose exact content is not deployed yet is deployed at start (a seed); rules are loaded on this node")
	fs.String("flows.queue", d.Queue, "queue that carries flow steps (empty: CLUSTER-flows)")
	fs.Int("flows.concurrency", d.Concurrency, "flow steps this node runs at once")
	fs.Duration("flows.lease", d.Lease, "lease of a flow step; renewed every third of it while the step runs")
	fs.Int("flows.max-attempts", d.MaxAttempts, "deliveries of a step before its execution is dead-lettered")
	fs.String("flows.results-queue", d.ResultsQueue, "queue that receives one completion record per execution (empty: none)")
	fs.Duration("flows.retention", d.Retention, "how long the records of ended executions are kept (history, list)")
}

// flowCommand is `clusterbus flow`; the files of its subcommands add them.
var flowCommand = &cobra.Command{Use: "flow", Short: "Submit flow executions, ask where they are and control them"}

func init() {
	nodeServices = append(nodeServices, nodeService{Name: "the flow engine", Check: checkFlows, Start: startFlows})

	flowCmd := flowCommand
	var addr, input, id, output string
	var wait time.Duration
	submit := &cobra.Command{
		Use:   "submit FILE|NAME",
		Short: "Start an execution of the flow defined in FILE (or registered as NAME) on the cluster",
		Long: `Start an execution. FILE is a flow YAML file: it is checked here (errors
name the line) and its flow name and version are submitted; that version
must be deployed (clusterbus flow deploy, or flows.dir). A NAME that is not
a file is submitted as is: the cluster runs its head version. Prints the
execution ID.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := flows.SubmitRequest{Flow: args[0], ID: id}
			if _, err := os.Stat(args[0]); err == nil {
				defs, err := flows.ParseFile(args[0])
				if err != nil {
					return &exitError{code: 2, err: err}
				}
				switch {
				case len(defs.Flows) == 1 && len(defs.Rules) == 0:
					req.Flow = defs.Flows[0].Name
					if defs.Flows[0].VersionGiven() {
						req.Version = defs.Flows[0].Version // else the cluster's head
					}
				case len(defs.Rules) == 1 && len(defs.Flows) == 0:
					req.Flow, req.Version = defs.Rules[0].Name, defs.Rules[0].Version
				default:
					return &exitError{code: 2, err: fmt.Errorf("%s defines %d flows and %d rules; want exactly one", args[0], len(defs.Flows), len(defs.Rules))}
				}
			}
			if input != "" {
				b, err := readInput(input, cmd.InOrStdin())
				if err != nil {
					return &exitError{code: 2, err: err}
				}
				if err := json.Unmarshal(b, &req.Input); err != nil {
					return &exitError{code: 2, err: fmt.Errorf("--input: want a JSON object: %w", err)}
				}
			}
			var resp flows.SubmitResponse
			if err := flowAPI(cmd.Context(), http.MethodPost, normalizeAddr(addr)+"/api/flows", req, &resp); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.ID)
			if wait > 0 {
				return waitFlow(cmd, addr, resp.ID, wait)
			}
			return nil
		},
	}
	submit.Flags().StringVar(&input, "input", "", "the execution's input, a JSON object; @FILE reads it from FILE, - from standard input")
	submit.Flags().StringVar(&id, "id", "", "execution ID (default random; resubmitting an ID within the broker's dedupe window starts nothing new)")
	submit.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the execution to end, then print its status")
	status := &cobra.Command{
		Use:   "status ID",
		Short: "Print where execution ID is (any node can answer)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if wait > 0 {
				return waitFlow(cmd, addr, args[0], wait)
			}
			if err := checkOutput(output); err != nil {
				return err
			}
			var st json.RawMessage
			if err := flowAPI(cmd.Context(), http.MethodGet, normalizeAddr(addr)+"/api/flows/"+args[0], nil, &st); err != nil {
				return err
			}
			return writeOutput(cmd.OutOrStdout(), output, st)
		},
	}
	status.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the execution to end")
	addOutputFlag(status, &output)
	var state, flowName string
	var limit int
	var since time.Duration
	list := &cobra.Command{
		Use:   "list",
		Short: "List executions from the cluster's execution records, newest first (--status, --flow, --since to filter)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			q := url.Values{"limit": {fmt.Sprint(limit)}}
			if state != "" {
				q.Set("status", state)
			}
			if flowName != "" {
				q.Set("flow", flowName)
			}
			if since > 0 {
				q.Set("since", since.String())
			}
			u := normalizeAddr(addr) + "/api/executions?" + q.Encode()
			var raw json.RawMessage
			if err := flowAPI(cmd.Context(), http.MethodGet, u, nil, &raw); err != nil {
				return err
			}
			if output != "" {
				return writeOutput(cmd.OutOrStdout(), output, raw)
			}
			var doc struct{ Executions []flows.Status }
			if err := json.Unmarshal(raw, &doc); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "EXECUTION\tFLOW\tSTATE\tSTEP\tNODE\tATTEMPT\tUPDATED\tERROR")
			for _, x := range doc.Executions {
				errText := x.Error
				if x.State == flows.StateCancelled && x.Reason != "" {
					errText = "cancelled: " + x.Reason
				}
				if len(errText) > 60 {
					errText = errText[:60] + "…"
				}
				fmt.Fprintf(tw, "%s\t%s@%d\t%s\t%s\t%s\t%d\t%s\t%s\n", x.Execution, x.Flow, x.Version, x.State, x.Step, x.Node,
					x.Attempt, x.Updated.UTC().Format(time.RFC3339), errText)
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&state, "status", "", "only executions in this state: running, awaiting, completed, failed, dead_lettered or cancelled")
	list.Flags().StringVar(&state, "state", "", "same as --status")
	_ = list.Flags().MarkHidden("state")
	list.Flags().StringVar(&flowName, "flow", "", "only executions of this flow")
	list.Flags().DurationVar(&since, "since", 0, "only executions started within this long, e.g. 1h")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many")
	addOutputFlag(list, &output)
	lint := &cobra.Command{
		Use:   "lint DIR",
		Short: "Check the flow and rule definitions in DIR as a node would load them; exit 2 naming each problem with its file and line",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			defs, err := flows.CheckDir(args[0])
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d flows, %d rules ok\n", args[0], len(defs.Flows), len(defs.Rules))
			return nil
		},
	}
	flowCmd.AddCommand(lint)
	flowCmd.AddCommand(deployCommands()...)
	for _, c := range []*cobra.Command{submit, status, list} {
		c.Flags().StringVar(&addr, "addr", defaultAddr(), "a node's HTTP address (env CLUSTERBUS_ADDR)")
		addAdminTokenFlag(c)
		flowCmd.AddCommand(c)
	}
	rootCmd.AddCommand(flowCmd)
}

// checkFlows validates the flow settings and definitions before the node
// joins: a bad file or setting exits 2 with its key.
func checkFlows(cfg *nodeConfig) error {
	fc := cfg.Flows
	if fc.Dir == "" {
		return nil
	}
	if _, err := flows.CheckDir(fc.Dir); err != nil {
		return fmt.Errorf("flows.dir %s: %w", fc.Dir, err)
	}
	return nil
}

// startFlows is the node service that runs the flow engine, unless
// flows.enabled is false. It opens the cluster's catalog of flow
// definitions (persisted in the node's own data dir, if it has one), seeds
// it from flows.dir, and starts the engine: at once if flows.dir is set or
// the catalog holds a definition, else as soon as one is deployed, so a
// node of a cluster that runs no flows declares no flow queue and runs no
// queue probe. Loading the catalog, seeding, declaring the queues and
// subscribing retry until the broker lets them through.
func startFlows(ctx context.Context, env *nodeEnv) (func(context.Context) error, error) {
	fc := env.Config.Flows
	log := env.Logger.With("component", "flows")
	if !fc.Enabled {
		log.Info("flows: flows.enabled is false; the flow engine does not run on this node")
		return nil, nil
	}
	if fc.Queue == "" {
		fc.Queue = env.Config.Cluster + "-flows"
	}
	cat, err := catalog.Open(env.Broker, catalog.Config{Cluster: env.Config.Cluster, NodeID: env.Node.ID(),
		Name: flows.DefinitionsCatalog, Dir: env.Config.ownDataDir(), FirstWriteWins: flows.ImmutableDefinition,
		Registerer: env.Registry, Logger: env.BaseLogger.With("node", env.Node.ID())})
	if err != nil {
		return nil, err
	}
	if err := env.Retry(ctx, "loading flow definitions", cat.Start); err != nil {
		return nil, err
	}
	stopCat := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = cat.Stop(sctx)
	}
	e, err := flows.New(env.Broker, flows.Config{
		Queue:        fc.Queue,
		Concurrency:  fc.Concurrency,
		Lease:        fc.Lease,
		MaxAttempts:  fc.MaxAttempts,
		ResultsQueue: fc.ResultsQueue,
		Cluster:      env.Config.Cluster,
		DataDir:      env.Config.ownDataDir(),
		Retention:    fc.Retention,
		DrainGrace:   min(env.Config.DrainTimeout/2, 5*time.Second),
	}, flows.Options{NodeID: env.Node.ID(), Gate: env.Node.Serving, Admit: env.Node.Admit, Logger: env.BaseLogger,
		Registry: env.Registry, Definitions: cat, Settings: env.Node.Settings().Map})
	if err != nil {
		stopCat()
		return nil, err
	}
	if fc.Dir != "" {
		err := env.Retry(ctx, "seeding flow definitions from flows.dir", func(ctx context.Context) error {
			ds, err := e.Seed(ctx, fc.Dir)
			for _, d := range ds {
				log.Info("flows: seeded", "flow", d.Flow, "version", d.Version, "created", d.Created, "head", d.Head)
			}
			if errors.Is(err, catalog.ErrConflict) {
				// The cluster's version wins; this node's file is stale.
				log.Error("flows: a flows.dir file conflicts with the deployed definition, which stays", "dir", fc.Dir, "err", err)
				return nil
			}
			return err
		})
		if err != nil {
			_ = e.Stop(context.Background())
			stopCat()
			return nil, fmt.Errorf("flows.dir %s: %w", fc.Dir, err)
		}
	}
	var probe *queueProbe
	start := func(ctx context.Context) error {
		if probe == nil {
			p, err := newQueueProbe(ctx, env.Broker, env.Config.Cluster, env.Node.ID())
			if err != nil {
				return err
			}
			probe = p
		}
		return e.Start(ctx)
	}
	running := func() {
		// This node serves queues: "connected" includes a queue round trip.
		env.Node.SetProbe(probe.Probe)
		env.Queues.Watch(e.Config().Queue, e.Config().ResultsQueue)
		log.Info("flows: engine running", "dir", fc.Dir, "flows", e.Flows(), "queue", e.Config().Queue,
			"concurrency", e.Config().Concurrency, "lease", e.Config().Lease)
	}
	lazyStop, lazyDone := context.CancelFunc(func() {}), make(chan struct{})
	started := false
	if fc.Dir != "" || len(e.Flows()) > 0 {
		if err := env.Retry(ctx, "declaring queues", start); err != nil {
			_ = e.Stop(context.Background())
			stopCat()
			return nil, err
		}
		running()
		started = true
		close(lazyDone)
	} else {
		// The execution records answer (history, list, cancel) before
		// this node runs any step.
		if err := env.Retry(ctx, "loading execution records", e.StartRecords); err != nil {
			_ = e.Stop(context.Background())
			stopCat()
			return nil, err
		}
		log.Info("flows: no flow deployed yet; the engine starts when one is")
		var lctx context.Context
		lctx, lazyStop = context.WithCancel(context.Background())
		go func() {
			defer close(lazyDone)
			t := time.NewTicker(250 * time.Millisecond)
			defer t.Stop()
			for len(e.Flows()) == 0 {
				select {
				case <-lctx.Done():
					return
				case <-t.C:
				}
			}
			if err := retryUntilReady(lctx, log, newStartGate(), "starting the flow engine", start); err != nil {
				if lctx.Err() == nil {
					log.Error("flows: the flow engine did not start", "err", err)
				}
				return
			}
			running()
			started = true
		}()
	}
	e.Routes(env.Mux)
	env.Flows = e
	return func(ctx context.Context) error {
		lazyStop()
		<-lazyDone
		err := e.Stop(ctx)
		if started {
			env.Node.SetProbe(nil)
		}
		if probe != nil {
			probe.Close()
		}
		stopCat()
		return err
	}, nil
}

func flowAPI(ctx context.Context, method, url string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, e.Error)
		}
		return fmt.Errorf("%s %s: %s (is the flow engine enabled on that node?)", method, url, resp.Status)
	}
	return json.Unmarshal(raw, out)
}

func printJSON(w io.Writer, raw json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

func waitFlow(cmd *cobra.Command, addr, id string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		var st flows.Status
		raw := json.RawMessage{}
		err := flowAPI(cmd.Context(), http.MethodGet, normalizeAddr(addr)+"/api/flows/"+id, nil, &raw)
		if err == nil {
			if err = json.Unmarshal(raw, &st); err == nil && st.State != flows.StateRunning && st.State != flows.StateAwaiting {
				if perr := printJSON(cmd.OutOrStdout(), raw); perr != nil {
					return perr
				}
				if st.State != flows.StateCompleted {
					return &exitError{code: 1, err: fmt.Errorf("execution %s %s: %s", id, st.State, st.Error)}
				}
				return nil
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("still running")
			}
			return fmt.Errorf("execution %s: not ended after %s: %w", id, wait, err)
		}
		select {
		case <-cmd.Context().Done():
			return cmd.Context().Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
