package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// pgURL is the PostgreSQL the river systems use (-pg).
var pgURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// riverSchema is the schema River's tables are migrated into and used from.
const riverSchema = "river_bench"

// riverFetchCooldown is Config.FetchCooldown of the consuming clients
// (-river-cooldown): the least time between two fetches of a client, so a
// client with MaxWorkers 8 works at most 8 jobs per cooldown. It is River's
// minimum, tuned for throughput as the other peers are: at River's default
// of 100ms, 8 clients cannot work more than 640 jobs/s, which is what such a
// run measures (609-632 items/s at -items 2000).
var riverFetchCooldown = river.FetchCooldownMin

// riverProducerConns caps the connections of the producers' pool (they share
// one pool; a PostgreSQL connection runs one statement at a time, so up to
// one per producer), keeping the total under PostgreSQL's default
// max_connections of 100 next to the consumers' pools.
const riverProducerConns = 32

// benchArgs is the job of the river systems: a payload of -size bytes.
type benchArgs struct {
	Payload string `json:"payload"`
}

func (benchArgs) Kind() string { return "bench" }

func riverLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// prepareRiver creates River's schema, runs its migrations (rivermigrate, up
// to the newest version) and prints PostgreSQL's durability settings: the
// -fsync setting does not apply to PostgreSQL.
func prepareRiver(ctx context.Context) error {
	pool, err := pgxpool.New(ctx, pgURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+riverSchema); err != nil {
		return err
	}
	m, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: riverSchema,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("river migrations: %w", err)
	}
	var fsync, syncCommit string
	if err := pool.QueryRow(ctx, "SHOW fsync").Scan(&fsync); err != nil {
		return err
	}
	if err := pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&syncCommit); err != nil {
		return err
	}
	fmt.Printf("river: PostgreSQL %s, schema %s migrated; fsync=%s synchronous_commit=%s (the -fsync setting does not apply); consumers' FetchCooldown %s\n",
		strings.Split(pgURL, "?")[0], riverSchema, fsync, syncCommit, riverFetchCooldown)
	return nil
}

// runRiver is River with the pgx v5 driver: producers call Client.Insert
// per job on one insert-only client (pool of up to riverProducerConns
// connections), one Client per consumer (each with a pool of its own) with
// the default queue at MaxWorkers 8 and River's other settings at their
// defaults but FetchCooldown (-river-cooldown), and a worker that does nothing; the time ends when every client
// has stopped, i.e. when every job's completion is written.
func runRiver(ctx context.Context, _ string, cfg config, drain bool) (time.Duration, error) {
	return runRiverWith(ctx, cfg, drain, 1)
}

// runRiverBatch is runRiver with the producers inserting -batch jobs per
// Client.InsertMany call.
func runRiverBatch(ctx context.Context, _ string, cfg config, drain bool) (time.Duration, error) {
	return runRiverWith(ctx, cfg, drain, cfg.batch)
}

func runRiverWith(ctx context.Context, cfg config, drain bool, batch int) (time.Duration, error) {
	pcfg, err := pgxpool.ParseConfig(pgURL)
	if err != nil {
		return 0, err
	}
	pcfg.MaxConns = int32(min(cfg.producers, riverProducerConns))
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	// The jobs of earlier runs are removed before and after this one.
	truncate := func(ctx context.Context) error {
		_, err := pool.Exec(ctx, "TRUNCATE "+riverSchema+".river_job")
		return err
	}
	if err := truncate(ctx); err != nil {
		return 0, err
	}
	defer truncate(context.Background())
	log := riverLogger()
	inserter, err := river.NewClient(riverpgxv5.New(pool), &river.Config{Schema: riverSchema, Logger: log})
	if err != nil {
		return 0, err
	}
	args := benchArgs{Payload: strings.Repeat("x", cfg.size)}
	c := newCounter(cfg.items)
	workers := river.NewWorkers()
	river.AddWorker(workers, river.WorkFunc(func(context.Context, *river.Job[benchArgs]) error {
		c.add()
		return nil
	}))
	var clients []*river.Client[pgx.Tx]
	var pools []*pgxpool.Pool
	stopAll := func(ctx context.Context) error {
		var wg sync.WaitGroup
		errs := make([]error, len(clients))
		for i, cl := range clients {
			wg.Go(func() { errs[i] = cl.Stop(ctx) })
		}
		wg.Wait()
		clients = nil
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	}
	defer func() {
		stopAll(context.Background())
		for _, p := range pools {
			p.Close()
		}
	}()
	start := func() error {
		for range cfg.consumers {
			p, err := pgxpool.New(ctx, pgURL)
			if err != nil {
				return err
			}
			pools = append(pools, p)
			cl, err := river.NewClient(riverpgxv5.New(p), &river.Config{
				Schema:        riverSchema,
				Logger:        log,
				FetchCooldown: riverFetchCooldown,
				Queues:        map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 8}},
				Workers:       workers,
			})
			if err != nil {
				return err
			}
			if err := cl.Start(ctx); err != nil {
				return err
			}
			clients = append(clients, cl)
		}
		return nil
	}
	enqueue := func(i int) error {
		if batch <= 1 {
			_, err := inserter.Insert(ctx, args, nil)
			return err
		}
		if i%batch != 0 {
			return nil // inserted by the call for the first index of its batch
		}
		ps := make([]river.InsertManyParams, 0, batch)
		for j := i; j < min(i+batch, cfg.items); j++ {
			ps = append(ps, river.InsertManyParams{Args: args})
		}
		_, err := inserter.InsertMany(ctx, ps)
		return err
	}
	t0, err := measure(ctx, cfg, drain, start, enqueue, c)
	if err != nil {
		return 0, err
	}
	// The workers have run; the time counts until their completions are
	// written (a client's Stop waits for its completer's last batch).
	if err := stopAll(ctx); err != nil {
		return 0, err
	}
	el := time.Since(t0)
	var completed int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+riverSchema+".river_job WHERE state = 'completed'").Scan(&completed); err != nil {
		return 0, err
	}
	if completed != cfg.items {
		return 0, fmt.Errorf("%d of %d jobs completed after the clients stopped", completed, cfg.items)
	}
	return el, nil
}
