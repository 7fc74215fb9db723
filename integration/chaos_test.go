package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/flows"
)

// Chaos test knobs. CLUSTERBUS_CHAOS_EXECUTIONS overrides the count.
const (
	chaosNodes       = 4
	chaosExecutions  = 1000
	chaosSubmitOver  = 40 * time.Second // submissions are spread over this
	chaosKillEvery   = 4 * time.Second  // a kill -9 about this often
	chaosDownFor     = 2 * time.Second  // > failure timeout, so the same node ID can rejoin
	chaosLease       = 4 * time.Second
	chaosConcurrency = 16
	chaosBudget      = 4 * time.Minute
	chaosAfterSubmit = 10 * time.Second // kills go on this long after the last submission
)

// chaosCall is one http step call as the recorder saw it.
type chaosCall struct {
	Exec, Step, Node, Key string
	Seq, Attempt          int
	At                    time.Time // received
	LeaseDeadline         time.Time // as the node knew it when it called
	WorkDeadline          time.Time // when the node would stop without a renewal
}

// chaosRecorder is the http step target: it records every call and holds
// each for a few milliseconds so that kills land mid-step.
type chaosRecorder struct {
	mu    sync.Mutex
	calls []chaosCall
	srv   *httptest.Server
}

func newChaosRecorder(t *testing.T) *chaosRecorder {
	r := &chaosRecorder{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		c := chaosCall{At: time.Now(), Exec: req.Header.Get(flows.HeaderExecution), Step: req.Header.Get(flows.HeaderStep),
			Node: req.Header.Get(flows.HeaderNode), Key: req.Header.Get(flows.HeaderIdempotencyKey)}
		c.Seq, _ = strconv.Atoi(req.Header.Get(flows.HeaderSeq))
		c.Attempt, _ = strconv.Atoi(req.Header.Get(flows.HeaderAttempt))
		c.LeaseDeadline, _ = time.Parse(time.RFC3339Nano, req.Header.Get(flows.HeaderLeaseDeadline))
		c.WorkDeadline, _ = time.Parse(time.RFC3339Nano, req.Header.Get(flows.HeaderWorkDeadline))
		r.mu.Lock()
		r.calls = append(r.calls, c)
		r.mu.Unlock()
		time.Sleep(time.Duration(20+rand.IntN(130)) * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"ok":true}`)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *chaosRecorder) snapshot() []chaosCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]chaosCall(nil), r.calls...)
}

type chaosKill struct {
	Node string
	At   time.Time
	Lead bool
}

// TestChaosFlowsCompleteExactlyOnceUnderKill9 runs chaosNodes node
// processes on one broker, submits chaosExecutions three-step flows, kills
// a random node (the lead every third time) with SIGKILL every few seconds
// and restarts it, then checks: every execution has exactly one completion
// record; no step ran while another holder could still work on the same
// item (before its work deadline: its lease deadline minus the leasing
// margin, after which it stops unless it renewed); steps ran twice only
// after a crash of the node that ran them first. Redeliveries that came
// before the earlier holder's lease deadline as its adapter computed it
// (but after its work deadline) are logged with the largest gap. It logs the figures: steps/s under chaos and the time from a
// kill -9 to the interrupted step resuming on another node (p50, p99).
func TestChaosFlowsCompleteExactlyOnceUnderKill9(t *testing.T) {
	needBinary(t)
	forEachBroker(t, func(t *testing.T, tb testBroker) { runChaos(t, tb, chaosSetup{}) })
}

// chaosSetup varies the chaos run; the zero value is the default run.
type chaosSetup struct {
	nodes      int                     // zero: chaosNodes
	executions int                     // zero: chaosExecutions
	nodeURL    func(i int) string      // broker URL of node i; nil: the broker's URL
	flowYAML   func(url string) string // the flow "chaos" calling the recorder at url; nil: 4 steps
	// during runs while executions are submitted, alongside the node
	// kills, until env.stop is closed: e.g. kill broker servers.
	during func(t *testing.T, env chaosEnv)
}

// chaosEnv is what chaosSetup.during sees of the run.
type chaosEnv struct {
	stop  <-chan struct{}
	live  func() []*node     // the nodes running now
	queue string             // the flows queue
	calls func() []chaosCall // the step calls so far
	// brokerKilled records that a broker server was killed at that moment:
	// the checker accepts a repeat of a step across it.
	brokerKilled func(at time.Time)
}

func runChaos(t *testing.T, tb testBroker, setup chaosSetup) {
	chaosNodes := chaosNodes
	if setup.nodes > 0 {
		chaosNodes = setup.nodes
	}
	n := chaosExecutions
	if setup.executions > 0 {
		n = setup.executions
	}
	if s := os.Getenv("CLUSTERBUS_CHAOS_EXECUTIONS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	nodeURL := setup.nodeURL
	if nodeURL == nil {
		nodeURL = func(int) string { return tb.url }
	}
	t.Logf("%s: %d executions", tb.kind, n)
	brokerURL := tb.url
	ctx, cancel := context.WithTimeout(context.Background(), chaosBudget+2*time.Minute)
	defer cancel()
	b, err := adapters.Open(ctx, brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	tag := fmt.Sprintf("%d", time.Now().UnixNano()%1e8)
	cluster, queue, results := "chaos-"+tag, "chaos-flows-"+tag, "chaos-results-"+tag
	t.Cleanup(func() {
		// After the nodes are gone (cleanups run last-in first-out), so
		// that a shared broker (RabbitMQ) does not keep every run's queues.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, q := range []string{queue, results} {
			if err := b.DeleteQueue(ctx, q); err != nil && !errors.Is(err, adapters.ErrNotFound) {
				t.Logf("cleanup: delete queue %s: %v", q, err)
			}
		}
	})
	// The lease is chaosLease unless the broker's minimum is longer
	// (Service Bus: 5s).
	chaosLease := max(chaosLease, b.Capabilities().MinLease)
	t.Logf("%s: lease %s", tb.kind, chaosLease)
	rec := newChaosRecorder(t)

	dir := t.TempDir()
	flowYAML := ""
	if setup.flowYAML != nil {
		flowYAML = setup.flowYAML(rec.srv.URL)
	} else {
		flowYAML = fmt.Sprintf(`flow: chaos
version: 1
steps:
  - name: reserve
    http: {method: POST, url: "%[1]s/reserve", timeout: 10s, retries: 0}
  - name: mark
    set: {reserved: "vars.reserve.status == 200"}
  - name: charge
    http: {method: POST, url: "%[1]s/charge", body: "{'reserved': vars.reserved}", timeout: 10s, retries: 0}
  - name: confirm
    http: {method: POST, url: "%[1]s/confirm", timeout: 10s, retries: 0}
`, rec.srv.URL)
	}
	if err := os.WriteFile(filepath.Join(dir, "chaos.yaml"), []byte(flowYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	nodeArgs := []string{"--flows.dir", dir, "--flows.queue", queue, "--flows.results-queue", results,
		"--flows.lease", chaosLease.String(), "--flows.concurrency", strconv.Itoa(chaosConcurrency),
		"--flows.max-attempts", "20", "--log-level", chaosLogLevel()}
	ids := make([]string, chaosNodes)
	var nodesMu sync.Mutex
	nodes := make([]*node, chaosNodes)
	for i := range nodes {
		ids[i] = fmt.Sprintf("c%d", i+1)
		nodes[i] = startNode(t, nodeURL(i), cluster, ids[i], nodeArgs...)
	}
	liveNode := func() *node {
		nodesMu.Lock()
		defer nodesMu.Unlock()
		for _, k := range rand.Perm(len(nodes)) {
			if nodes[k] != nil && nodes[k].running() {
				return nodes[k]
			}
		}
		return nil
	}
	waitUntil(t, 30*time.Second, "every node serves /api/flows", func() bool {
		for _, nd := range nodes {
			resp, err := client.Get(nd.addr + "/api/flows")
			if err != nil {
				return false
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return false
			}
		}
		return true
	})

	// Completion records, read from the results queue by this process.
	var cons adapters.Consumer
	waitUntil(t, 30*time.Second, "the results queue exists", func() bool {
		cons, err = b.Consume(ctx, results, adapters.ConsumeOptions{Prefetch: 64})
		return err == nil
	})
	var compMu sync.Mutex
	completions := map[string]int{}
	var completed atomic.Int64
	collectDone := make(chan struct{})
	collectCtx, stopCollect := context.WithCancel(ctx)
	go func() {
		defer close(collectDone)
		for {
			d, err := cons.Receive(collectCtx)
			if err != nil {
				if collectCtx.Err() != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
				continue
			}
			var r flows.Result
			if json.Unmarshal(d.Message().Body, &r) == nil {
				compMu.Lock()
				// A record delivered again (attempt > 1: this collector's
				// ack was lost, e.g. as a broker server died) is the same
				// record; a second record arrives as attempt 1.
				if completions[r.Execution] == 0 || d.Attempt() == 1 {
					completions[r.Execution]++
					if completions[r.Execution] == 1 {
						completed.Add(1)
					}
				}
				compMu.Unlock()
			}
			_ = d.Ack(ctx)
		}
	}()

	// Submissions, spread over chaosSubmitOver, each to a random live node.
	start := time.Now()
	submitted := make([]string, 0, n)
	submitDone := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			id := fmt.Sprintf("x%s-%05d", tag, i)
			if due := start.Add(time.Duration(i) * chaosSubmitOver / time.Duration(n)); time.Until(due) > 0 {
				time.Sleep(time.Until(due))
			}
			for try := 0; ; try++ {
				if ctx.Err() != nil {
					submitDone <- ctx.Err()
					return
				}
				nd := liveNode()
				if nd != nil && chaosSubmit(nd.addr, id) == nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			submitted = append(submitted, id)
		}
		submitDone <- nil
	}()

	// Chaos: kill -9 a random node (the lead every third time), restart it.
	var kills []chaosKill
	chaosStop := make(chan struct{})
	chaosDone := make(chan struct{})
	go func() {
		defer close(chaosDone)
		for k := 0; ; k++ {
			select {
			case <-chaosStop:
				return
			case <-time.After(chaosKillEvery - chaosDownFor + time.Duration(rand.IntN(1000))*time.Millisecond):
			}
			victim := rand.IntN(chaosNodes)
			lead := false
			if k%3 == 0 {
				if nd := liveNode(); nd != nil {
					if c, err := nd.cluster(); err == nil {
						for i, id := range ids {
							if id == c.Lead {
								victim, lead = i, true
							}
						}
					}
				}
			}
			nodesMu.Lock()
			nd := nodes[victim]
			nodesMu.Unlock()
			nd.kill()
			kills = append(kills, chaosKill{Node: ids[victim], At: time.Now(), Lead: lead})
			stop := false
			select {
			case <-chaosStop:
				stop = true // bring the victim back before the recovery phase
			case <-time.After(chaosDownFor):
			}
			restarted := startNode(t, nodeURL(victim), cluster, ids[victim], nodeArgs...)
			nodesMu.Lock()
			nodes[victim] = restarted
			nodesMu.Unlock()
			if stop {
				return
			}
		}
	}()

	var brokerKillsMu sync.Mutex
	var brokerKills []chaosKill
	duringStop := make(chan struct{})
	duringDone := make(chan struct{})
	go func() {
		defer close(duringDone)
		if setup.during != nil {
			setup.during(t, chaosEnv{stop: duringStop, queue: queue, calls: rec.snapshot, brokerKilled: func(at time.Time) {
				brokerKillsMu.Lock()
				brokerKills = append(brokerKills, chaosKill{Node: chaosBrokerServer, At: at})
				brokerKillsMu.Unlock()
			}, live: func() []*node {
				nodesMu.Lock()
				defer nodesMu.Unlock()
				var live []*node
				for _, nd := range nodes {
					if nd != nil && nd.running() {
						live = append(live, nd)
					}
				}
				return live
			}})
		}
	}()
	stopDuring := sync.OnceFunc(func() { close(duringStop); <-duringDone })
	defer stopDuring()

	if err := <-submitDone; err != nil {
		stopDuring()
		close(chaosStop)
		<-chaosDone
		t.Fatalf("submitting: %v", err)
	}
	submitTook := time.Since(start)
	// Kills go on while executions are submitted and for chaosAfterSubmit
	// more; then every node is up again and the cluster must finish what
	// is left. (Killing forever measures whether a broker's failover keeps
	// up with the kill rate — a Kafka consumer group must rebalance after
	// every kill and every restart — not whether work is lost.)
	deadline := start.Add(chaosBudget)
	calm := time.Now().Add(chaosAfterSubmit)
	stopChaos := sync.OnceFunc(func() { stopDuring(); close(chaosStop); <-chaosDone })
	var chaosTook time.Duration
	for completed.Load() < int64(n) && time.Now().Before(deadline) {
		if time.Now().After(calm) && chaosTook == 0 {
			stopChaos()
			chaosTook = time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopChaos()
	if chaosTook == 0 {
		chaosTook = time.Since(start)
	}
	took := time.Since(start)
	// A repeated completion would come within about one lease of a crash.
	time.Sleep(chaosLease + 2*time.Second)
	stopCollect()
	<-collectDone
	cons.Close()

	// --- Checks ---
	calls := rec.snapshot()
	t.Logf("%d executions submitted in %s; %d completed in %s; %d step calls; %d kills (%d of the lead) in the first %s",
		len(submitted), submitTook.Round(time.Millisecond), completed.Load(), took.Round(time.Millisecond), len(calls),
		len(kills), chaosCountLead(kills), chaosTook.Round(time.Second))
	if len(kills) == 0 || chaosCountLead(kills) == 0 {
		t.Errorf("the chaos loop killed %d nodes, %d leads: want both > 0", len(kills), chaosCountLead(kills))
	}

	// 1. Exactly one completion record per execution.
	compMu.Lock()
	var missing, repeated []string
	for _, id := range submitted {
		switch c := completions[id]; {
		case c == 0:
			missing = append(missing, id)
		case c > 1:
			repeated = append(repeated, fmt.Sprintf("%s×%d", id, c))
		}
	}
	extra := len(completions) - (len(submitted) - len(missing))
	compMu.Unlock()
	if len(missing) > 0 {
		t.Errorf("%d executions never completed, e.g. %v", len(missing), chaosFirst(missing, 10))
	}
	switch {
	case len(repeated) > 0 && !b.Capabilities().Dedupe.Available():
		// Documented in package flows: without dedupe a crash between the
		// completion record and the ack repeats the record.
		// Nodes drop repeats of steps they heard recorded, which narrows
		// this but does not close it. Not failed: the broker cannot give
		// exactly-once completion records; said loudly instead.
		t.Logf("FINDING (%s, no dedupe): completion NOT exactly once: %d of %d executions have more than one completion record "+
			"(documented in package flows: a crash between recording a step and its ack forks the execution): %v",
			b.Capabilities().Name, len(repeated), len(submitted), chaosFirst(repeated, 10))
	case len(repeated) > 0:
		t.Errorf("%d executions have more than one completion record: %v", len(repeated), chaosFirst(repeated, 10))
	default:
		t.Logf("%s: every completed execution has exactly one completion record (dedupe %s)", b.Capabilities().Name, b.Capabilities().Dedupe)
	}
	if extra != 0 {
		t.Errorf("%d completion records for executions never submitted", extra)
	}

	// 2. Leases and repeats.
	brokerKillsMu.Lock()
	ca := chaosAnalyze(calls, append(append([]chaosKill(nil), kills...), brokerKills...))
	brokerKillsMu.Unlock()
	if len(ca.brokerOverlaps) > 0 {
		// Not failed: the broker, not clusterbus, handed the item out twice
		// while the first holder's lease held. Said loudly instead.
		t.Logf("FINDING (%s): %d step calls while another holder's lease held, each across a broker server kill "+
			"(the broker's failover redelivered in-flight items early; steps are keyed for idempotency), e.g.:\n%s",
			tb.kind, len(ca.brokerOverlaps), strings.Join(chaosFirst(ca.brokerOverlaps, 5), "\n"))
	}
	if ca.brokerExplained > 0 {
		t.Logf("%d steps ran again across a broker server kill (an ack in flight to the dying server is lost; the item returns after its lease)", ca.brokerExplained)
	}
	overlaps, unexplained, resume, twice, items := ca.overlaps, ca.unexplained, ca.resume, ca.twice, ca.items
	// Without dedupe a crash between recording a continuation and the ack
	// forks the execution (documented in package flows): the fork's copies
	// are separate items, which this checker cannot tell from one item
	// held twice, so there the findings are reported, not failed.
	report := t.Errorf
	if !b.Capabilities().Dedupe.Available() {
		report = func(format string, args ...any) {
			t.Logf("FINDING (%s, no dedupe, reported not failed: a fork's copies look like one item held twice): "+format,
				append([]any{b.Capabilities().Name}, args...)...)
		}
	}
	if len(ca.early) > 0 {
		report("%d redeliveries came before the previous holder's lease deadline, by up to %s, though after its work deadline "+
			"(deadline - margin), so no two holders worked at once; an adapter's lease deadline is optimistic, e.g.:\n%s",
			len(ca.early), ca.maxEarly, strings.Join(chaosFirst(ca.early, 5), "\n"))
	}
	if len(overlaps) > 0 {
		report("%d step calls while another holder's lease was unexpired, e.g.:\n%s", len(overlaps), strings.Join(chaosFirst(overlaps, 10), "\n"))
	}
	if len(unexplained) > 0 {
		report("%d steps ran again without a crash of the node that ran them, e.g.:\n%s", len(unexplained), strings.Join(chaosFirst(unexplained, 10), "\n"))
	}

	// 3. Every completed execution ran its three http steps.
	steps := map[string]map[string]bool{}
	for _, c := range calls {
		if steps[c.Exec] == nil {
			steps[c.Exec] = map[string]bool{}
		}
		steps[c.Exec][c.Step] = true
	}
	for _, id := range submitted {
		if completions[id] > 0 && len(steps[id]) != 3 {
			t.Errorf("execution %s completed having called %v, want reserve, charge, confirm", id, steps[id])
			break
		}
	}

	p50, p99 := chaosPercentile(resume, 50), chaosPercentile(resume, 99)
	t.Logf("steps that ran twice: %d of %d items; %d repeats came before the killed holder's work deadline (its process was dead)", twice, items, ca.afterKill)
	t.Logf("kill -9 mid-step -> step resumed on another node: n=%d p50=%s p99=%s (lease %s)",
		len(resume), p50.Round(time.Millisecond), p99.Round(time.Millisecond), chaosLease)
	t.Logf("throughput under chaos: %.0f http steps/s, %.0f flow steps/s (4 per execution)",
		float64(len(calls))/took.Seconds(), float64(4*completed.Load())/took.Seconds())
}

// chaosLogLevel is the nodes' log level: warn, or
// CLUSTERBUS_CHAOS_LOG_LEVEL (e.g. info, to see rebalances and dropped
// repeats in the log tails printed on failure).
func chaosLogLevel() string {
	if l := os.Getenv("CLUSTERBUS_CHAOS_LOG_LEVEL"); l != "" {
		return l
	}
	return "warn"
}

func chaosSubmit(addr, id string) error {
	body, _ := json.Marshal(flows.SubmitRequest{Flow: "chaos", ID: id, Input: map[string]any{"n": id}})
	resp, err := client.Post(addr+"/api/flows", "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return errors.New(resp.Status)
	}
	return nil
}

func chaosCountLead(ks []chaosKill) int {
	n := 0
	for _, k := range ks {
		if k.Lead {
			n++
		}
	}
	return n
}

func chaosFirst(s []string, n int) []string {
	sort.Strings(s)
	if len(s) > n {
		return s[:n]
	}
	return s
}

func chaosPercentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return s[i-1]
}

// chaosFindings is what chaosAnalyze found.
type chaosFindings struct {
	brokerOverlaps  []string // overlaps across a broker server kill (reported, not failed)
	brokerExplained int      // repeats after a broker server kill between the two calls
	// overlaps: calls made while an earlier holder of the same item
	// (another attempt or node) was still within its work deadline, the
	// time until which it would act on the item: two holders at once.
	overlaps []string
	// early: calls after the earlier holder's work deadline but before its
	// lease deadline as its adapter computed it (an optimistic adapter
	// deadline, absorbed by the margin). maxEarly is the largest gap.
	early    []string
	maxEarly time.Duration
	// afterKill: calls before an earlier holder's work deadline whose node
	// was killed in between (not two holders at once).
	afterKill int
	// unexplained: repeats of an item whose previous caller was not killed
	// in between.
	unexplained []string
	// resume: for explained repeats, the time from the kill to the repeat.
	resume []time.Duration
	twice  int // items called more than once
	items  int
}

// chaosKilledBetween reports whether node was killed in [from, to).
// chaosBrokerServer is the Node of a chaosKill that killed a broker
// server, not a clusterbus node.
const chaosBrokerServer = "*broker*"

// chaosBrokerFailover: a broker server kill up to this long before a
// holding began can still hand its item out twice (the delivery was
// recorded on the dying server only, or its successor restarts the
// redelivery timers).
const chaosBrokerFailover = 10 * time.Second

func chaosBrokerKilledBetween(kills []chaosKill, from, to time.Time) bool {
	for _, k := range kills {
		if k.Node == chaosBrokerServer && !k.At.Before(from) && k.At.Before(to) {
			return true
		}
	}
	return false
}

func chaosKilledBetween(kills []chaosKill, node string, from, to time.Time) bool {
	for _, k := range kills {
		if k.Node == node && !k.At.Before(from) && k.At.Before(to) {
			return true
		}
	}
	return false
}

// chaosAnalyze checks the recorded step calls against the kills.
func chaosAnalyze(calls []chaosCall, kills []chaosKill) chaosFindings {
	var f chaosFindings
	byItem := map[string][]chaosCall{}
	for _, c := range calls {
		k := c.Exec + ":" + strconv.Itoa(c.Seq)
		byItem[k] = append(byItem[k], c)
	}
	f.items = len(byItem)
	for k, cs := range byItem {
		sort.Slice(cs, func(i, j int) bool { return cs[i].At.Before(cs[j].At) })
		if len(cs) > 1 {
			f.twice++
		}
		for j := 1; j < len(cs); j++ {
			for i := 0; i < j; i++ {
				a, b := cs[i], cs[j]
				if a.Attempt == b.Attempt && a.Node == b.Node {
					continue // same holding
				}
				switch {
				case b.At.Before(a.WorkDeadline) && chaosKilledBetween(kills, a.Node, a.At, b.At):
					// The earlier holder's process was killed: it cannot
					// work any more, and the broker may hand the item out
					// before the lease runs out (RabbitMQ requeues the
					// unacked items of a closed connection at once).
					f.afterKill++
				case b.At.Before(a.WorkDeadline) && chaosBrokerKilledBetween(kills, a.At.Add(-chaosBrokerFailover), b.At):
					// A broker server died around the first holding: its
					// successor may hand the item out again before the
					// lease ends (JetStream's new consumer leader does).
					f.brokerOverlaps = append(f.brokerOverlaps, fmt.Sprintf("%s: %s attempt %d called at %s while %s attempt %d would work on it until %s, across a broker server kill",
						k, b.Node, b.Attempt, b.At.Format("15:04:05.000"), a.Node, a.Attempt, a.WorkDeadline.Format("15:04:05.000")))
				case b.At.Before(a.WorkDeadline):
					f.overlaps = append(f.overlaps, fmt.Sprintf("%s: %s attempt %d called at %s while %s attempt %d would work on it until %s (lease deadline %s)",
						k, b.Node, b.Attempt, b.At.Format("15:04:05.000"), a.Node, a.Attempt,
						a.WorkDeadline.Format("15:04:05.000"), a.LeaseDeadline.Format("15:04:05.000")))
				case b.At.Before(a.LeaseDeadline):
					gap := a.LeaseDeadline.Sub(b.At)
					f.maxEarly = max(f.maxEarly, gap)
					f.early = append(f.early, fmt.Sprintf("%s: %s attempt %d at %s, %s before %s attempt %d's lease deadline %s (work deadline %s)",
						k, b.Node, b.Attempt, b.At.Format("15:04:05.000"), gap.Round(time.Millisecond), a.Node, a.Attempt,
						a.LeaseDeadline.Format("15:04:05.000"), a.WorkDeadline.Format("15:04:05.000")))
				}
			}
			prev, cur := cs[j-1], cs[j]
			if prev.Attempt == cur.Attempt && prev.Node == cur.Node {
				continue // the same holding called twice: not a repeat
			}
			var kill *chaosKill
			for x := range kills {
				if kills[x].Node == prev.Node && !kills[x].At.Before(prev.At) && kills[x].At.Before(cur.At) {
					kill = &kills[x]
					break
				}
			}
			if kill == nil && chaosBrokerKilledBetween(kills, prev.At.Add(-chaosBrokerFailover), cur.At) {
				// A broker server died between the two, or within its
				// failover window before the first: the ack (or the
				// recorded continuation) sent to it, or to a consumer
				// whose leader is still moving, can be lost, and the
				// broker hands the item out again after its lease (seen
				// in CI: acks sent 0-2 s after a kill of the JetStream
				// meta leader were lost, the items came back 11 s later).
				f.brokerExplained++
			} else if kill == nil {
				f.unexplained = append(f.unexplained, fmt.Sprintf("%s: %s attempt %d at %s, then %s attempt %d at %s, with no kill of %s between",
					k, prev.Node, prev.Attempt, prev.At.Format("15:04:05.000"), cur.Node, cur.Attempt, cur.At.Format("15:04:05.000"), prev.Node))
			} else {
				f.resume = append(f.resume, cur.At.Sub(kill.At))
			}
		}
	}
	return f
}

// TestChaosCheckerCatchesOverlapsAndUnexplainedRepeats feeds the checker
// made-up histories, so that a checker that cannot fail would be caught.
func TestChaosCheckerCatchesOverlapsAndUnexplainedRepeats(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	call := func(node string, attempt, ms, leaseMs int) chaosCall {
		return chaosCall{Exec: "e", Seq: 1, Node: node, Attempt: attempt, At: at(ms),
			LeaseDeadline: at(ms + leaseMs), WorkDeadline: at(ms + leaseMs*9/10)}
	}
	killN1 := []chaosKill{{Node: "n1", At: at(50)}}
	// Clean: n1 runs, is killed, n2 runs after n1's lease ran out.
	f := chaosAnalyze([]chaosCall{call("n1", 1, 0, 4000), call("n2", 2, 4100, 4000)}, killN1)
	if len(f.overlaps)+len(f.unexplained)+len(f.early) != 0 || f.twice != 1 || len(f.resume) != 1 || f.resume[0] != 4050*time.Millisecond {
		t.Fatalf("clean history: %+v", f)
	}
	// Overlap: n2 ran while n1, alive, would still work on the item.
	f = chaosAnalyze([]chaosCall{call("n1", 1, 0, 4000), call("n2", 2, 1000, 4000)}, []chaosKill{{Node: "n3", At: at(50)}})
	if len(f.overlaps) != 1 {
		t.Fatalf("overlap not caught: %+v", f)
	}
	t.Logf("caught: %s", f.overlaps[0])
	// Takeover right after n1 was killed (RabbitMQ requeues at once): not
	// two holders at once.
	f = chaosAnalyze([]chaosCall{call("n1", 1, 0, 4000), call("n2", 2, 100, 4000)}, killN1)
	if len(f.overlaps) != 0 || f.afterKill != 1 || len(f.unexplained) != 0 {
		t.Fatalf("takeover after a kill: %+v", f)
	}
	// Early: after n1's work deadline (3.6s), before its lease deadline (4s).
	f = chaosAnalyze([]chaosCall{call("n1", 1, 0, 4000), call("n2", 2, 3900, 4000)}, killN1)
	if len(f.overlaps) != 0 || len(f.early) != 1 || f.maxEarly != 100*time.Millisecond {
		t.Fatalf("early redelivery: %+v", f)
	}
	// Unexplained: a repeat with no kill of n1.
	f = chaosAnalyze([]chaosCall{call("n1", 1, 0, 4000), call("n2", 2, 5000, 4000)}, nil)
	if len(f.unexplained) != 1 {
		t.Fatalf("unexplained repeat not caught: %+v", f)
	}
	t.Logf("caught: %s", f.unexplained[0])
}
