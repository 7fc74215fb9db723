// Command bench is the peer benchmark of clusterbus's queues: one workload
// run, in one process and one run, through raw nats.go used at its best,
// Watermill with watermill-nats (JetStream) tuned, the clusterbus NATS
// adapter and the clusterbus workqueue, on an embedded nats-server with the
// default fsync and with fsync always; and raw amqp091-go against the
// clusterbus RabbitMQ adapter on a RabbitMQ (-rabbit); and River (riverqueue,
// pgx v5 driver) on a PostgreSQL (-pg), whose fsync and synchronous_commit
// are printed at the start. It is its own Go module so that the main module
// does not depend on Watermill or River.
//
// Workload: -items items of -size bytes, enqueue → receive → ack, -consumers
// consumers (each on its own connection), -producers concurrent producers
// (sharing one connection). Modes: "concurrent" (consumers run while the
// producers enqueue; the time is from the first enqueue to the last ack) and
// "drain" (the queue is filled first; the time is from the consumers' start
// to the last ack). Each system runs -runs times per mode, interleaved; the
// table shows medians in items/s and each system's ratio to its base system.
//
// Systems: raw, raw-sync (raw nats.go, each producer waiting for its own
// PubAck: the adapter's guarantee, shown for diagnosis), raw-limits (raw on
// a limits-retention stream nothing purges, as the adapter's queues are
// between compactions: acks delete nothing; a diagnostic), watermill, adapter (Enqueue per item, Prefetch -prefetch growing to -max-prefetch),
// adapter-batch (adapters.EnqueueBatch of -batch items), adapter-async
// (adapters.EnqueueAsync per item, every Pending waited for after the last
// send, as raw awaits PublishAsyncComplete), workqueue (one
// Worker per consumer, Concurrency 8, Prefetch and MaxPrefetch at their
// defaults: Concurrency, 500; producers Enqueue per item, as river's Insert
// per job), workqueue-async (the same, producers as adapter-async: the
// producer raw is measured with), workqueue-p64 (Prefetch 64), rabbit-raw, rabbit-raw-sync
// (each producer waiting for every confirm), rabbit-adapter,
// rabbit-adapter-batch, rabbit-adapter-async (adapters.EnqueueAsync, which
// RabbitMQ runs as Enqueue on a goroutine), river (Client.Insert per job; one Client per
// consumer, each with its own pool and the default queue at MaxWorkers 8,
// FetchCooldown -river-cooldown; the time ends when every client has
// stopped, i.e. every completion is written), river-batch (Client.InsertMany
// of -batch jobs). River's tables live in the schema river_bench, migrated
// with rivermigrate at the start; each run truncates river_job. The fsync
// setting applies to neither RabbitMQ nor PostgreSQL. Rabbit systems are
// compared with rabbit-raw, river systems with river, the others with raw;
// workqueue rows also show their ratio to river when it ran (compare with
// -fsync always: both durable on every acknowledged write).
//
// CPU: after each table, CPU time per item (whole runs, including drain's
// producers). With -server-bin the NATS server runs as its own process and
// the client's CPU (this process) and the server's are shown apart, with the
// server's ratio to raw's.
//
//	cd bench && go run . -runs 3
//	cd bench && go build -o /tmp/nats-server github.com/nats-io/nats-server/v2 && go run . -runs 3 -fsync default -server-bin /tmp/nats-server
//	cd bench && go run . -runs 3 -fsync default -systems rabbit-raw,rabbit-adapter
//	cd bench && go run . -runs 3 -fsync always -systems river,river-batch,workqueue,workqueue-p64
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	"github.com/ThreeDotsLabs/watermill/message"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clusterbus/clusterbus/adapters"
	cbnats "github.com/clusterbus/clusterbus/adapters/nats"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
	"github.com/clusterbus/clusterbus/workqueue"
)

type config struct {
	items, size, consumers, producers, runs        int
	prefetch, maxPrefetch, rawBatch, window, batch int
	systems, modes, fsyncs                         []string
	serverBin                                      string
}

func main() {
	var cfg config
	var systems, modes, fsyncs string
	flag.IntVar(&cfg.items, "items", 20000, "items per run")
	flag.IntVar(&cfg.size, "size", 256, "item body size in bytes")
	flag.IntVar(&cfg.consumers, "consumers", 8, "consumers, each on its own connection")
	flag.IntVar(&cfg.producers, "producers", 64, "concurrent producers")
	flag.IntVar(&cfg.runs, "runs", 3, "runs per system and mode (the median is shown)")
	flag.IntVar(&cfg.prefetch, "prefetch", 8, "ConsumeOptions.Prefetch of the clusterbus adapter consumers")
	flag.IntVar(&cfg.maxPrefetch, "max-prefetch", 500, "ConsumeOptions.MaxPrefetch of the clusterbus adapter consumers (0: Prefetch, fixed); 8 and 500 are what a workqueue.Worker of Concurrency 8 asks for")
	flag.IntVar(&cfg.rawBatch, "raw-batch", 500, "pull batch (PullMaxMessages) of raw nats.go and Watermill")
	flag.IntVar(&cfg.window, "window", 4000, "PublishAsync window of raw nats.go")
	flag.IntVar(&cfg.batch, "batch", 100, "items per adapters.EnqueueBatch call of adapter-batch")
	flag.StringVar(&systems, "systems", "raw,watermill,adapter,adapter-batch,adapter-async,workqueue,workqueue-async,workqueue-p64", "systems to run")
	flag.StringVar(&modes, "modes", "concurrent,drain", "modes to run")
	flag.StringVar(&fsyncs, "fsync", "default,always", "server fsync settings to run")
	flag.StringVar(&rabbitURL, "rabbit", rabbitURL, "RabbitMQ URL of the rabbit-* systems")
	flag.StringVar(&pgURL, "pg", pgURL, "PostgreSQL URL of the river systems")
	flag.DurationVar(&riverFetchCooldown, "river-cooldown", riverFetchCooldown, "Config.FetchCooldown of the river consumers (River's default: 100ms)")
	flag.StringVar(&cfg.serverBin, "server-bin", "", "run this nats-server binary as its own process instead of the embedded server, and report server and client CPU per item apart (build it at the embedded version: go build -o /tmp/nats-server github.com/nats-io/nats-server/v2)")
	flag.IntVar(&serverProfPort, "server-prof-port", 0, "with -server-bin, serve the server's pprof on this port (e.g. go tool pprof http://127.0.0.1:PORT/debug/pprof/profile?seconds=5)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	cfg.systems, cfg.modes, cfg.fsyncs = strings.Split(systems, ","), strings.Split(modes, ","), strings.Split(fsyncs, ",")
	if err := run(cfg); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// serverProfPort is -server-prof-port.
var serverProfPort int

type system func(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error)

var allSystems = map[string]system{
	"raw": runRaw,
	// raw nats.go with the adapter's guarantee: each producer waits for
	// its own PubAck before its next publish (a diagnostic, not a base).
	"raw-sync": func(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
		return runRawWith(ctx, url, cfg, drain, true, jetstream.WorkQueuePolicy)
	},
	// raw nats.go on a stream with limits retention that nothing purges:
	// acks remove nothing (the adapter's queues are limits streams that
	// their consumers purge below the ack floor once a second). The upper
	// bound of that retention, a diagnostic, not a base.
	"raw-limits": func(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
		return runRawWith(ctx, url, cfg, drain, false, jetstream.LimitsPolicy)
	},
	"watermill": runWatermill,
	"adapter":   runAdapter,
	"workqueue": runWorkqueue,
	// The workqueue fed as adapter-async feeds the adapter.
	"workqueue-async": func(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
		return runWorkqueueWith(ctx, url, cfg, drain, 0, true)
	},
	// The workqueue with Config.Prefetch 64 (default: Concurrency, 8).
	"workqueue-p64": func(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
		return runWorkqueueWith(ctx, url, cfg, drain, 64, false)
	},
	// The adapter with producers enqueueing -batch items per call.
	"adapter-batch": runAdapterBatch,
	"adapter-async": runAdapterAsync,
	// RabbitMQ (-rabbit); the fsync setting does not apply.
	"rabbit-raw": runRabbitRaw,
	"rabbit-raw-sync": func(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
		return runRabbitRawWith(ctx, url, cfg, drain, 1)
	},
	"rabbit-adapter": runRabbitAdapter,
	"rabbit-adapter-batch": func(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
		return runRabbitAdapterWith(ctx, url, cfg, drain, cfg.batch)
	},
	"rabbit-adapter-async": func(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
		return runRabbitAdapterWith(ctx, url, cfg, drain, 0)
	},
	// River on PostgreSQL (-pg); the fsync setting does not apply.
	"river":       runRiver,
	"river-batch": runRiverBatch,
}

// baseOf is the system each one's ratio is taken against.
func baseOf(s string) string {
	if strings.HasPrefix(s, "rabbit-") {
		return "rabbit-raw"
	}
	if strings.HasPrefix(s, "river") {
		return "river"
	}
	return "raw"
}

func run(cfg config) error {
	for _, s := range cfg.systems {
		if allSystems[s] == nil {
			return fmt.Errorf("unknown system %q", s)
		}
	}
	if slices.ContainsFunc(cfg.systems, func(s string) bool { return strings.HasPrefix(s, "river") }) {
		if err := prepareRiver(context.Background()); err != nil {
			return err
		}
	}
	fmt.Printf("%d items of %d B, %d consumers, %d producers, %d runs per cell (median shown); adapter prefetch %d, raw/Watermill pull batch %d, raw publish window %d\n",
		cfg.items, cfg.size, cfg.consumers, cfg.producers, cfg.runs, cfg.prefetch, cfg.rawBatch, cfg.window)
	for _, fs := range cfg.fsyncs {
		dir, err := os.MkdirTemp("", "clusterbus-bench-")
		if err != nil {
			return err
		}
		url, serverCPU, stopServer, err := startServer(cfg, dir, fs == "always")
		if err != nil {
			return err
		}
		results := map[string]map[string][]float64{}
		// CPU per item (µs), per system and mode: the client side (this
		// process, less the server when it is embedded) and the server.
		clientCPU, srvCPU := map[string]map[string][]float64{}, map[string]map[string][]float64{}
		addTo := func(m map[string]map[string][]float64, s, mode string, v float64) {
			if m[s] == nil {
				m[s] = map[string][]float64{}
			}
			m[s][mode] = append(m[s][mode], v)
		}
		for _, mode := range cfg.modes {
			for r := range cfg.runs {
				for _, s := range cfg.systems {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
					c0, s0 := selfCPU(), serverCPU()
					el, err := allSystems[s](ctx, url, cfg, mode == "drain")
					c1, s1 := selfCPU(), serverCPU()
					cancel()
					if err != nil {
						stopServer()
						return fmt.Errorf("fsync=%s %s %s run %d: %w", fs, s, mode, r+1, err)
					}
					ips := float64(cfg.items) / el.Seconds()
					fmt.Fprintf(os.Stderr, "fsync=%s %-10s %-10s run %d: %8.0f items/s\n", fs, mode, s, r+1, ips)
					if results[s] == nil {
						results[s] = map[string][]float64{}
					}
					results[s][mode] = append(results[s][mode], ips)
					perItem := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(cfg.items) }
					addTo(clientCPU, s, mode, perItem(c1-c0))
					addTo(srvCPU, s, mode, perItem(s1-s0))
				}
			}
		}
		stopServer()
		os.RemoveAll(dir)
		fmt.Printf("\nfsync=%s (items/s, median; min-max; ratio to the base system)\n", fs)
		tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "system\t%s\n", strings.Join(cfg.modes, "\t"))
		for _, s := range cfg.systems {
			row := []string{s}
			for _, mode := range cfg.modes {
				m := median(results[s][mode])
				cell := fmt.Sprintf("%.0f [%.0f-%.0f]", m, slices.Min(results[s][mode]), slices.Max(results[s][mode]))
				if raw := results[baseOf(s)][mode]; len(raw) > 0 {
					cell += fmt.Sprintf(" %.2fx %s", m/median(raw), baseOf(s))
				}
				if strings.HasPrefix(s, "adapter") || strings.HasPrefix(s, "workqueue") {
					if wm := results["watermill"][mode]; len(wm) > 0 {
						cell += fmt.Sprintf(" %.2fx watermill", m/median(wm))
					}
				}
				if strings.HasPrefix(s, "workqueue") {
					if rv := results["river"][mode]; len(rv) > 0 {
						cell += fmt.Sprintf(" %.2fx river", m/median(rv))
					}
				}
				row = append(row, cell)
			}
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
		tw.Flush()
		printCPU(cfg, clientCPU, srvCPU)
	}
	return nil
}

// startServer starts the NATS server of one fsync setting: embedded, or
// cfg.serverBin as its own process. serverCPU reads the server's CPU time
// so far (always 0 when embedded: it is counted with this process).
func startServer(cfg config, dir string, sync bool) (url string, serverCPU func() time.Duration, stop func(), err error) {
	if cfg.serverBin != "" {
		p, err := startNATSProc(cfg.serverBin, dir, sync)
		if err != nil {
			return "", nil, nil, err
		}
		return p.url, func() time.Duration { d, _ := p.cpu(); return d }, p.stop, nil
	}
	srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: dir, Sync: sync,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return "", nil, nil, err
	}
	return srv.ClientURL(), func() time.Duration { return 0 }, srv.Shutdown, nil
}

// printCPU prints CPU time per item: client and server apart when the
// server ran as its own process, else the process as a whole. A run counts
// the whole run's CPU, including the producers of drain mode (which run
// before the timing starts), so drain and concurrent cells compare alike.
func printCPU(cfg config, client, server map[string]map[string][]float64) {
	sep := cfg.serverBin != ""
	if sep {
		fmt.Printf("CPU per item, µs (median): client (this process) / server (nats-server process); ratio of the server's to raw's\n")
	} else {
		fmt.Printf("CPU per item, µs (median), client and embedded server together; -server-bin measures them apart\n")
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "system\t%s\n", strings.Join(cfg.modes, "\t"))
	for _, s := range cfg.systems {
		if server[s] == nil {
			continue
		}
		row := []string{s}
		for _, mode := range cfg.modes {
			c, sv := median(client[s][mode]), median(server[s][mode])
			if !sep {
				row = append(row, fmt.Sprintf("%.1f", c))
				continue
			}
			cell := fmt.Sprintf("%.1f / %.1f", c, sv)
			if raw := server[baseOf(s)][mode]; len(raw) > 0 && median(raw) > 0 && !strings.HasPrefix(s, "rabbit") && !strings.HasPrefix(s, "river") {
				cell += fmt.Sprintf(" (server %.2fx raw)", sv/median(raw))
			}
			row = append(row, cell)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

var seq atomic.Int64

func uniqueName(prefix string) string {
	return fmt.Sprintf("%s%d%d", prefix, time.Now().UnixNano()%1e9, seq.Add(1))
}

// produce runs cfg.producers goroutines that call enqueue for every item
// index once.
func produce(cfg config, enqueue func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, cfg.producers)
	for range cfg.producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= cfg.items {
					return
				}
				if err := enqueue(i); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// counter signals done when n items were acked.
type counter struct {
	n    int64
	got  atomic.Int64
	done chan struct{}
}

func newCounter(n int) *counter { return &counter{n: int64(n), done: make(chan struct{})} }

func (c *counter) add() {
	if c.got.Add(1) == c.n {
		close(c.done)
	}
}

// measure runs start (the consumers) and produce in the order the mode asks,
// waits until every item is acked and returns when the timing started.
func measure(ctx context.Context, cfg config, drain bool, start func() error, enqueue func(i int) error, c *counter) (time.Time, error) {
	return measureWith(ctx, cfg, drain, start, enqueue, nil, c)
}

// measureWith is measure with produced, if not nil, run after the last
// enqueue (such as awaiting outstanding publisher confirms).
func measureWith(ctx context.Context, cfg config, drain bool, start func() error, enqueue func(i int) error, produced func() error, c *counter) (time.Time, error) {
	var t0 time.Time
	produceAll := func() error {
		if err := produce(cfg, enqueue); err != nil {
			return err
		}
		if produced != nil {
			return produced()
		}
		return nil
	}
	if drain {
		if err := produceAll(); err != nil {
			return t0, err
		}
		t0 = time.Now()
		if err := start(); err != nil {
			return t0, err
		}
	} else {
		if err := start(); err != nil {
			return t0, err
		}
		t0 = time.Now()
		errc := make(chan error, 1)
		go func() { errc <- produceAll() }()
		select {
		case err := <-errc:
			if err != nil {
				return t0, err
			}
		case <-c.done:
			defer func() { <-errc }()
		}
	}
	select {
	case <-c.done:
		return t0, nil
	case <-ctx.Done():
		return t0, fmt.Errorf("%d of %d items acked: %w", c.got.Load(), c.n, ctx.Err())
	}
}

// runRaw is nats.go used at its best: PublishMsgAsync with a window (each
// producer waits for nothing but the window; all acknowledgements are
// awaited before the producers count as done), one Consume per consumer
// pulling rawBatch, plain Ack.
func runRaw(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
	return runRawWith(ctx, url, cfg, drain, false, jetstream.WorkQueuePolicy)
}

// runRawWith is runRaw; with perCall each producer waits for the PubAck of
// every publish before its next one, as an adapter Enqueue does (durable
// once it returns). The stream has the given retention.
func runRawWith(ctx context.Context, url string, cfg config, drain, perCall bool, retention jetstream.RetentionPolicy) (time.Duration, error) {
	pc, err := natsgo.Connect(url)
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	js, err := jetstream.New(pc, jetstream.WithPublishAsyncMaxPending(cfg.window))
	if err != nil {
		return 0, err
	}
	name := uniqueName("RAW")
	subject := "raw." + name
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject},
		Retention: retention, Storage: jetstream.FileStorage}); err != nil {
		return 0, err
	}
	defer js.DeleteStream(context.Background(), name)
	if _, err := js.CreateOrUpdateConsumer(ctx, name, jetstream.ConsumerConfig{Durable: "raw",
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxDeliver: -1, MaxAckPending: 10000}); err != nil {
		return 0, err
	}
	body := make([]byte, cfg.size)
	c := newCounter(cfg.items)
	var stops []func()
	defer func() {
		for _, s := range stops {
			s()
		}
	}()
	start := func() error {
		for range cfg.consumers {
			nc, err := natsgo.Connect(url)
			if err != nil {
				return err
			}
			cjs, _ := jetstream.New(nc)
			cons, err := cjs.Consumer(ctx, name, "raw")
			if err != nil {
				return err
			}
			cc, err := cons.Consume(func(m jetstream.Msg) {
				if m.Ack() == nil {
					c.add()
				}
			}, jetstream.PullMaxMessages(cfg.rawBatch))
			if err != nil {
				return err
			}
			stops = append(stops, func() { cc.Stop(); nc.Close() })
		}
		return nil
	}
	var published atomic.Int64
	enqueue := func(i int) error {
		msg := natsgo.NewMsg(subject)
		msg.Header.Set("cb-id", fmt.Sprint(i))
		msg.Data = body
		paf, err := js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute))
		if err != nil {
			return err
		}
		if perCall {
			select {
			case <-paf.Ok():
			case err := <-paf.Err():
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if published.Add(1) == int64(cfg.items) {
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	t0, err := measure(ctx, cfg, drain, start, enqueue, c)
	return time.Since(t0), err
}

// runWatermill is Watermill 1.5 with watermill-nats/v2's JetStream
// publisher and subscriber, tuned: a work-queue stream, a grouped (shared
// durable) consumer, pull batch rawBatch, asynchronous acks, and the
// producers publishing concurrently.
func runWatermill(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
	log := watermill.NopLogger{}
	pc, err := natsgo.Connect(url)
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	topic := uniqueName("WM")
	js, _ := jetstream.New(pc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: topic, Subjects: []string{topic},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage}); err != nil {
		return 0, err
	}
	defer js.DeleteStream(context.Background(), topic)
	pub, err := wmjs.NewPublisher(wmjs.PublisherConfig{Conn: pc, Logger: log})
	if err != nil {
		return 0, err
	}
	body := make([]byte, cfg.size)
	c := newCounter(cfg.items)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var subs []*wmjs.Subscriber
	defer func() {
		for _, s := range subs {
			s.Close()
		}
	}()
	start := func() error {
		for range cfg.consumers {
			nc, err := natsgo.Connect(url)
			if err != nil {
				return err
			}
			sub, err := wmjs.NewSubscriber(wmjs.SubscriberConfig{
				Conn: nc, Logger: log, AckAsync: true,
				ResourceInitializer: wmjs.GroupedConsumer("bench"),
				ConsumeOptions:      []jetstream.PullConsumeOpt{jetstream.PullMaxMessages(cfg.rawBatch)},
			})
			if err != nil {
				return err
			}
			subs = append(subs, sub)
			ch, err := sub.Subscribe(sctx, topic)
			if err != nil {
				return err
			}
			go func() {
				for m := range ch {
					m.Ack()
					c.add()
				}
			}()
		}
		return nil
	}
	enqueue := func(i int) error {
		m := message.NewMessage(fmt.Sprint(i), body)
		return pub.Publish(topic, m)
	}
	t0, err := measure(ctx, cfg, drain, start, enqueue, c)
	return time.Since(t0), err
}

func openAdapter(ctx context.Context, url string) (*cbnats.Broker, error) {
	return cbnats.Open(ctx, cbnats.Options{Servers: []string{url}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

// runAdapter is the clusterbus NATS adapter: Enqueue from the producers on
// one Broker, one Broker per consumer with Prefetch -prefetch and one
// Receive/Ack loop.
func runAdapter(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
	return runAdapterWith(ctx, url, cfg, drain, 1)
}

// runAdapterBatch is runAdapter with the producers enqueueing -batch items
// per adapters.EnqueueBatch call (each call waits until all are stored).
func runAdapterBatch(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
	return runAdapterWith(ctx, url, cfg, drain, cfg.batch)
}

// runAdapterAsync is runAdapter with the producers calling
// adapters.EnqueueAsync per item, as raw calls PublishMsgAsync: the adapter's
// publish window bounds what is in flight, and every item's Pending is
// waited for after the last one is sent (the time includes that wait).
func runAdapterAsync(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
	return runAdapterWith(ctx, url, cfg, drain, 0)
}

// runAdapterWith runs the adapter with batch items per EnqueueBatch call (1:
// Enqueue; 0: EnqueueAsync).
func runAdapterWith(ctx context.Context, url string, cfg config, drain bool, batch int) (time.Duration, error) {
	pb, err := openAdapter(ctx, url)
	if err != nil {
		return 0, err
	}
	defer pb.Close()
	q := uniqueName("adapter")
	if err := pb.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
		return 0, err
	}
	defer pb.DeleteQueue(context.Background(), q)
	body := make([]byte, cfg.size)
	c := newCounter(cfg.items)
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var brokers []*cbnats.Broker
	defer func() {
		cancel()
		wg.Wait()
		for _, b := range brokers {
			b.Close()
		}
	}()
	start := func() error {
		for range cfg.consumers {
			b, err := openAdapter(ctx, url)
			if err != nil {
				return err
			}
			brokers = append(brokers, b)
			cons, err := b.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: cfg.prefetch, MaxPrefetch: cfg.maxPrefetch})
			if err != nil {
				return err
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer cons.Close()
				for {
					d, err := cons.Receive(rctx)
					if err != nil {
						return
					}
					if d.Ack(rctx) == nil {
						c.add()
					}
				}
			}()
		}
		return nil
	}
	enqueue, produced := adapterProducer(ctx, pb, q, cfg, body, batch)
	t0, err := measureWith(ctx, cfg, drain, start, enqueue, produced, c)
	return time.Since(t0), err
}

// adapterProducer returns the producers' enqueue of item i through an
// adapter, batch items per adapters.EnqueueBatch call (1: Enqueue per item;
// 0: adapters.EnqueueAsync per item), and what to run after the last
// enqueue (with EnqueueAsync, waiting for every Pending).
func adapterProducer(ctx context.Context, pb adapters.Broker, q string, cfg config, body []byte, batch int) (enqueue func(i int) error, produced func() error) {
	var mu sync.Mutex
	var pending []adapters.Pending
	if batch == 0 {
		produced = func() error {
			for _, p := range pending {
				if err := p.Wait(ctx); err != nil {
					return err
				}
			}
			return nil
		}
	}
	enqueue = func(i int) error {
		switch {
		case batch == 0:
			p, err := adapters.EnqueueAsync(ctx, pb, q, adapters.Message{ID: fmt.Sprint(i), Body: body})
			if err != nil {
				return err
			}
			mu.Lock()
			pending = append(pending, p)
			mu.Unlock()
			return nil
		case batch == 1:
			return pb.Enqueue(ctx, q, adapters.Message{ID: fmt.Sprint(i), Body: body})
		case i%batch != 0:
			return nil // enqueued by the call for the first index of its batch
		}
		ms := make([]adapters.Message, 0, batch)
		for j := i; j < min(i+batch, cfg.items); j++ {
			ms = append(ms, adapters.Message{ID: fmt.Sprint(j), Body: body})
		}
		return adapters.EnqueueBatch(ctx, pb, q, ms)
	}
	return enqueue, produced
}

// runWorkqueue is the clusterbus workqueue: one Worker per consumer
// Broker, Concurrency 8 (so the adapter prefetches 8), a handler that does
// nothing; the time ends when the last item's Ack has returned, as for the
// other systems (the Workers are stopped after that, untimed).
func runWorkqueue(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
	return runWorkqueueWith(ctx, url, cfg, drain, 0, false)
}

// runWorkqueueWith runs the workqueue with Config.Prefetch prefetch, its
// producers calling EnqueueAsync (async) or Enqueue.
func runWorkqueueWith(ctx context.Context, url string, cfg config, drain bool, prefetch int, async bool) (time.Duration, error) {
	pb, err := openAdapter(ctx, url)
	if err != nil {
		return 0, err
	}
	defer pb.Close()
	qc := adapters.QueueConfig{Name: uniqueName("workqueue")}
	if err := pb.DeclareQueue(ctx, qc); err != nil {
		return 0, err
	}
	defer pb.DeleteQueue(context.Background(), qc.Name)
	body := make([]byte, cfg.size)
	c := newCounter(cfg.items)
	var workers []*workqueue.Worker
	var brokers []*cbnats.Broker
	defer func() {
		for _, w := range workers {
			_ = w.Stop(context.Background())
		}
		for _, b := range brokers {
			b.Close()
		}
	}()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := func() error {
		for range cfg.consumers {
			b, err := openAdapter(ctx, url)
			if err != nil {
				return err
			}
			brokers = append(brokers, b)
			w, err := workqueue.New(countingBroker{b, c}, workqueue.Config{Queue: qc, Concurrency: 8, Prefetch: prefetch},
				func(context.Context, *workqueue.Job) error { return nil }, workqueue.Options{Logger: log})
			if err != nil {
				return err
			}
			if err := w.Start(ctx); err != nil {
				return err
			}
			workers = append(workers, w)
		}
		return nil
	}
	batch := 1
	if async {
		batch = 0
	}
	enqueue, produced := adapterProducer(ctx, pb, qc.Name, cfg, body, batch)
	t0, err := measureWith(ctx, cfg, drain, start, enqueue, produced, c)
	if err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}
