package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/bus"
	"github.com/clusterbus/clusterbus/flows"
)

// needHAProxy returns the haproxy binary, or skips (fails under CI=true)
// when it is not installed. .ci/run installs the Debian package.
func needHAProxy(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("haproxy is required under CI=true (apt-get install haproxy; .ci/run does)")
		}
		t.Skip("haproxy not installed (apt-get install haproxy)")
	}
	return p
}

// buildVersion builds clusterbus with main.version set to v (the "newer
// build" of a rolling upgrade) and returns its path.
func buildVersion(t *testing.T, v string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "clusterbus-"+v)
	out, err := exec.Command("go", "build", "-ldflags", "-X main.version="+v, "-o", bin,
		"github.com/clusterbus/clusterbus/cmd/clusterbus").CombinedOutput()
	if err != nil {
		t.Fatalf("go build %s: %v\n%s", v, err, out)
	}
	return bin
}

// haproxyConfig is the balancer of the rolling-restart test: health checks
// with HEAD /ha/health every 200ms (2 failures take a node out, 2 passes
// bring it back), and retries: a request whose connection fails or that
// gets a 503 is sent again, to another node (redispatch). POST /api/flows
// is retried too: a submission carries its execution ID, so a repeat is
// harmless (flows drop a second submission of the same ID where the broker
// deduplicates; see README "Rolling restart").
func haproxyConfig(listen string, servers map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
  maxconn 512
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 10s
  retries 5
  option redispatch 1
  retry-on all-retryable-errors
frontend app
  bind %s
  default_backend nodes
backend nodes
  option httpchk HEAD /ha/health
  http-check expect status 200
  default-server inter 200ms fall 2 rise 2 init-addr none
`, listen)
	ids := make([]string, 0, len(servers))
	for id := range servers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fmt.Fprintf(&b, "  server %s %s check\n", id, servers[id])
	}
	return b.String()
}

// TestRollingRestartBehindHAProxy runs three nodes (version v1) behind a
// real HAProxy, sends client traffic (GET /api/cluster and POST /api/flows
// of a 3-step flow with a wait) through it without pause, and upgrades the
// nodes one at a time: SIGTERM (the node answers 503 on /ha/health at once,
// hands over the lead and drains), wait for it to exit, start it on the
// same port as v2, wait for 200. It checks: no client request failed
// (HAProxy's retries and redispatch allowed), every submitted execution
// completed, the cluster ran mixed versions, the lead changed at most once
// per restart of the lead and was never a younger node while an older one
// was live and active.
func TestRollingRestartBehindHAProxy(t *testing.T) {
	needBinary(t)
	haproxy := needHAProxy(t)
	v2 := buildVersion(t, "v2-rolling")
	brokerURL := startNATSBroker(t)
	tag := fmt.Sprintf("%d", time.Now().UnixNano()%1e8)
	cluster, queue, results := "rolling-"+tag, "rolling-flows-"+tag, "rolling-results-"+tag
	rec := newChaosRecorder(t)
	dir := t.TempDir()
	flowYAML := fmt.Sprintf(`flow: rolling
version: 1
steps:
  - name: reserve
    http: {method: POST, url: "%[1]s/reserve", timeout: 10s, retries: 0}
  - name: pause
    wait: 300ms
  - name: confirm
    http: {method: POST, url: "%[1]s/confirm", timeout: 10s, retries: 0}
`, rec.srv.URL)
	if err := os.WriteFile(filepath.Join(dir, "rolling.yaml"), []byte(flowYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--flows.dir", dir, "--flows.queue", queue, "--flows.results-queue", results,
		"--flows.lease", "4s", "--log-level", chaosLogLevel()}

	ids := []string{"n1", "n2", "n3"}
	ports := map[string]int{}
	servers := map[string]string{}
	nodes := map[string]*node{}
	var nodesMu sync.Mutex
	for _, id := range ids {
		ports[id] = freePort(t)
		servers[id] = fmt.Sprintf("127.0.0.1:%d", ports[id])
		nodes[id] = startNodeOf(t, binPath, ports[id], brokerURL, cluster, id, args...)
	}
	waitUntil(t, 30*time.Second, "3 nodes agree on n1", func() bool {
		return nodes["n1"].sees("n1", ids...) && nodes["n2"].sees("n1", ids...) && nodes["n3"].sees("n1", ids...)
	})

	lbPort := freePort(t)
	lb := fmt.Sprintf("http://127.0.0.1:%d", lbPort)
	cfgPath := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(haproxyConfig(fmt.Sprintf("127.0.0.1:%d", lbPort), servers)), 0o644); err != nil {
		t.Fatal(err)
	}
	hp := startProcOf(t, haproxy, "haproxy", "-db", "-f", cfgPath)
	waitUntil(t, 15*time.Second, "HAProxy answers", func() bool {
		if !hp.running() {
			t.Fatalf("haproxy exited: %v\n%s", hp.err, hp.log())
		}
		resp, err := client.Get(lb + "/api/cluster")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	// Completion records.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b, err := adapters.Open(ctx, brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var cons adapters.Consumer
	waitUntil(t, 30*time.Second, "the results queue exists", func() bool {
		cons, err = b.Consume(ctx, results, adapters.ConsumeOptions{Prefetch: 64})
		return err == nil
	})
	var compMu sync.Mutex
	completions := map[string]int{}
	collectCtx, stopCollect := context.WithCancel(ctx)
	collectDone := make(chan struct{})
	go func() {
		defer close(collectDone)
		for {
			d, err := cons.Receive(collectCtx)
			if err != nil {
				if collectCtx.Err() != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			var r flows.Result
			if json.Unmarshal(d.Message().Body, &r) == nil {
				compMu.Lock()
				completions[r.Execution]++
				compMu.Unlock()
			}
			_ = d.Ack(ctx)
		}
	}()

	// Client traffic through HAProxy: every request must succeed.
	lbClient := &http.Client{Timeout: 15 * time.Second}
	var requests, failed atomic.Int64
	var failMu sync.Mutex
	var failures []string
	fail := func(what string) {
		failed.Add(1)
		failMu.Lock()
		failures = append(failures, time.Now().Format("15:04:05.000")+" "+what)
		t.Logf("client request failed: %s", what)
		failMu.Unlock()
	}
	var submitted []string
	var subMu sync.Mutex
	loadStop := make(chan struct{})
	var loadWG sync.WaitGroup
	loadWG.Go(func() { // flow submissions, every 40ms
		for i := 0; ; i++ {
			select {
			case <-loadStop:
				return
			case <-time.After(40 * time.Millisecond):
			}
			id := fmt.Sprintf("r%s-%05d", tag, i)
			body, _ := json.Marshal(flows.SubmitRequest{Flow: "rolling", ID: id})
			requests.Add(1)
			resp, err := lbClient.Post(lb+"/api/flows", "application/json", bytes.NewReader(body))
			if err != nil {
				fail("POST /api/flows " + id + ": " + err.Error())
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				fail("POST /api/flows " + id + ": " + resp.Status)
				continue
			}
			subMu.Lock()
			submitted = append(submitted, id)
			subMu.Unlock()
		}
	})
	loadWG.Go(func() { // reads, every 20ms
		for {
			select {
			case <-loadStop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			requests.Add(1)
			resp, err := lbClient.Get(lb + "/api/cluster")
			if err != nil {
				fail("GET /api/cluster: " + err.Error())
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				fail("GET /api/cluster: " + resp.Status)
			}
		}
	})

	// The lead as every live node sees it, every 50ms.
	type sample struct {
		at      time.Time
		from    string
		pid     int
		view    bus.ClusterJSON
		version map[string]string
	}
	var samples []sample
	var sampMu sync.Mutex
	obsStop := make(chan struct{})
	var obsWG sync.WaitGroup
	obsWG.Go(func() {
		for {
			select {
			case <-obsStop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			nodesMu.Lock()
			live := make([]*node, 0, 3)
			for _, id := range ids {
				if n := nodes[id]; n != nil && n.running() {
					live = append(live, n)
				}
			}
			nodesMu.Unlock()
			for _, n := range live {
				c, err := n.cluster()
				if err != nil {
					continue
				}
				v := map[string]string{}
				for _, m := range c.Nodes {
					if m.State == bus.StateActive {
						v[m.ID] = m.Version
					}
				}
				sampMu.Lock()
				samples = append(samples, sample{at: time.Now(), from: n.id, pid: n.cmd.Process.Pid, view: c, version: v})
				sampMu.Unlock()
			}
		}
	})

	testStart := time.Now()
	time.Sleep(3 * time.Second) // traffic before the first restart
	type restartEvent struct {
		id         string
		wasLead    bool
		sigterm    time.Time
		exited     time.Time
		started    time.Time
		healthy    time.Time
		exitCode   int
		leadBefore string
	}
	var events []restartEvent
	for _, id := range ids {
		c, _ := nodes[id].cluster()
		ev := restartEvent{id: id, leadBefore: c.Lead, wasLead: c.Lead == id, sigterm: time.Now()}
		ev.exitCode = nodes[id].term(30 * time.Second)
		ev.exited = time.Now()
		if ev.exitCode != 0 {
			t.Errorf("%s exited %d after SIGTERM, want 0", id, ev.exitCode)
		}
		ev.started = time.Now()
		n := startNodeOf(t, v2, ports[id], brokerURL, cluster, id, args...)
		nodesMu.Lock()
		nodes[id] = n
		nodesMu.Unlock()
		waitUntil(t, 30*time.Second, id+" (v2) answers 200 on /ha/health", func() bool { return n.health() == http.StatusOK })
		ev.healthy = time.Now()
		events = append(events, ev)
		t.Logf("%s (lead: %v) at +%s: SIGTERM -> exit 0 in %s, start v2 -> health 200 in %s",
			id, ev.wasLead, ev.sigterm.Sub(testStart).Round(time.Millisecond), ev.exited.Sub(ev.sigterm).Round(time.Millisecond),
			ev.healthy.Sub(ev.started).Round(time.Millisecond))
		time.Sleep(2 * time.Second) // HAProxy sees it up (rise 2 × 200ms) and traffic flows through it
	}
	time.Sleep(2 * time.Second)
	close(loadStop)
	loadWG.Wait()
	close(obsStop)
	obsWG.Wait()

	// Every submission completes.
	subMu.Lock()
	subs := append([]string(nil), submitted...)
	subMu.Unlock()
	waitUntil(t, 2*time.Minute, "every submitted execution completes", func() bool {
		compMu.Lock()
		defer compMu.Unlock()
		for _, id := range subs {
			if completions[id] == 0 {
				return false
			}
		}
		return true
	})
	// A client that got no answer retries with the same ID: safe, the
	// execution runs once (NATS deduplicates by message ID).
	retried := subs[:min(10, len(subs))]
	for _, id := range retried {
		body, _ := json.Marshal(flows.SubmitRequest{Flow: "rolling", ID: id})
		resp, err := lbClient.Post(lb+"/api/flows", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("resubmitting %s: %v", id, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Errorf("resubmitting %s with the same ID: %s, want 202", id, resp.Status)
		}
	}
	time.Sleep(3 * time.Second) // a second run would complete in well under this
	stopCollect()
	<-collectDone
	cons.Close()

	// --- Checks ---
	t.Logf("%d client requests through HAProxy, %d failed; %d executions submitted", requests.Load(), failed.Load(), len(subs))
	if failed.Load() > 0 {
		t.Errorf("%d client requests failed during the rolling restart:\n%s", failed.Load(), strings.Join(chaosFirst(failures, 20), "\n"))
	}
	compMu.Lock()
	var repeated []string
	for _, id := range subs {
		if completions[id] > 1 {
			repeated = append(repeated, fmt.Sprintf("%s×%d", id, completions[id]))
		}
	}
	compMu.Unlock()
	if len(repeated) > 0 {
		t.Errorf("%d executions completed more than once (NATS deduplicates; the first %d were submitted twice): %v",
			len(repeated), len(retried), chaosFirst(repeated, 10))
	}

	sampMu.Lock()
	defer sampMu.Unlock()
	sort.Slice(samples, func(i, j int) bool { return samples[i].at.Before(samples[j].at) })
	// Mixed versions seen.
	mixed := false
	for _, s := range samples {
		vs := map[string]bool{}
		for _, v := range s.version {
			vs[v] = true
		}
		if len(vs) > 1 {
			mixed = true
			break
		}
	}
	if !mixed {
		t.Errorf("no sample showed two versions in the cluster: the upgrade was not rolling")
	}
	// Lead changes, as each node process saw them (nodes that learn of a
	// handover a heartbeat apart would interleave in one merged sequence).
	leadRestarts := 0
	for _, ev := range events {
		if ev.wasLead {
			leadRestarts++
		}
	}
	seqs := map[string][]string{}
	var observers []string
	for _, s := range samples {
		k := fmt.Sprintf("%s/pid%d", s.from, s.pid)
		seq, seen := seqs[k]
		if !seen {
			observers = append(observers, k)
		}
		if s.view.Lead != "" && (len(seq) == 0 || seq[len(seq)-1] != s.view.Lead) {
			seq = append(seq, s.view.Lead)
		}
		seqs[k] = seq
	}
	for _, k := range observers {
		t.Logf("lead as %s saw it: %v", k, seqs[k])
		if changes := len(seqs[k]) - 1; changes > leadRestarts {
			t.Errorf("%s saw the lead change %d times (%v) for %d restarts of the lead: want at most one change per restart of the lead",
				k, changes, seqs[k], leadRestarts)
		}
	}
	// Never a younger lead while an older member is live and active (as
	// the reporting node saw its members). A node still starting is not
	// asked: it is hearing the cluster (a member heard once is listed but
	// not yet live, so for a heartbeat interval its view can name a younger
	// lead), and it claims nothing meanwhile (package bus, "Lead").
	var younger []string
	for _, s := range samples {
		if s.view.State == bus.StateStarting {
			continue
		}
		var lead *bus.NodeJSON
		for i := range s.view.Nodes {
			if s.view.Nodes[i].ID == s.view.Lead {
				lead = &s.view.Nodes[i]
			}
		}
		if lead == nil {
			continue
		}
		for _, m := range s.view.Nodes {
			if m.State == bus.StateActive && m.ID != lead.ID && m.StartedAt.Before(lead.StartedAt) {
				younger = append(younger, fmt.Sprintf("%s: %s saw lead %s (started %s) while %s (started %s) was active",
					s.at.Format("15:04:05.000"), s.from, lead.ID, lead.StartedAt.Format("15:04:05.000"), m.ID, m.StartedAt.Format("15:04:05.000")))
			}
		}
	}
	if len(younger) > 0 {
		t.Errorf("%d samples show a younger lead while an older node was active, e.g.:\n%s", len(younger), strings.Join(chaosFirst(younger, 10), "\n"))
	}
}
