package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard"
	"github.com/pgguard/pgguard/internal/pgfind"
	"github.com/pgguard/pgguard/internal/pgtest"
)

// harnessResult is the time that a test waits for a fresh migrated
// database from internal/pgtest. The test claims a clone of the migrated
// template that was created in the background, or waits for one, or
// creates one. Then it opens a pool and pings it. The tests run one after
// the other, and each drops its database before the next starts, as a
// test's cleanup does. The drop is timed apart.
type harnessResult struct {
	Clones int `json:"clones"`
	// ReadyClones is the number of clones that the harness keeps ready.
	ReadyClones int `json:"ready_clones"`
	// HoldMs is how long each test kept its database before dropping it.
	HoldMs   float64 `json:"hold_ms"`
	MedianMs float64 `json:"median_ms"`
	P90Ms    float64 `json:"p90_ms"`
	MaxMs    float64 `json:"max_ms"`
	// ClaimMedianMs and ConnectMedianMs split the median into getting the
	// clone (claiming a ready one, waiting for one or creating one) and
	// opening the pool with its ping.
	ClaimMedianMs   float64 `json:"claim_median_ms"`
	ConnectMedianMs float64 `json:"connect_median_ms"`
	// Waited counts the tests that found no ready clone and waited for a
	// CREATE DATABASE.
	Waited int `json:"waited"`
	// CreateMedianMs is the median CREATE DATABASE of a clone, mostly run
	// in the background while tests run.
	CreateMedianMs float64 `json:"create_median_ms"`
	DropMedianMs   float64 `json:"drop_median_ms"`
	// TemplateSize is the template's size as pg_database_size reports it.
	TemplateSize string `json:"template_size"`
	// MigrateMs is the time to migrate an empty database, which a
	// template saves every test but the first.
	MigrateMs float64 `json:"migrate_ms"`
}

// measureHarness opens opts.clones databases through internal/pgtest, one
// at a time, the way consecutive tests do.
func measureHarness(ctx context.Context, server *pgfind.Server, opts options) (*harnessResult, error) {
	progressf(opts, "Timing %d test databases from internal/pgtest", opts.clones)
	result := &harnessResult{Clones: opts.clones, ReadyClones: pgtest.ReadyClones, HoldMs: milliseconds(opts.cloneHold)}
	var err error
	if result.MigrateMs, err = timeMigration(ctx, server); err != nil {
		return nil, err
	}

	harness, err := pgtest.NewHarness(ctx, server, pgtest.ReadyClones)
	if err != nil {
		return nil, err
	}
	defer harness.Close()
	if result.TemplateSize, err = databaseSize(ctx, server.URL, harness.Template()); err != nil {
		return nil, err
	}

	var waits, claims, connects, drops []time.Duration
	for range opts.clones {
		db, err := harness.Open(ctx)
		if err != nil {
			return nil, err
		}
		waits = append(waits, db.Timing.Clone+db.Timing.Connect)
		claims = append(claims, db.Timing.Clone)
		connects = append(connects, db.Timing.Connect)
		if !db.Timing.Ready {
			result.Waited++
		}

		if err := sleep(ctx, opts.cloneHold); err != nil {
			return nil, err
		}
		began := time.Now()
		if err := harness.Drop(context.WithoutCancel(ctx), db); err != nil {
			return nil, err
		}
		drops = append(drops, time.Since(began))
	}

	result.MedianMs = milliseconds(percentile(waits, 50))
	result.P90Ms = milliseconds(percentile(waits, 90))
	result.MaxMs = milliseconds(percentile(waits, 100))
	result.ClaimMedianMs = milliseconds(percentile(claims, 50))
	result.ConnectMedianMs = milliseconds(percentile(connects, 50))
	result.CreateMedianMs = milliseconds(percentile(harness.CreateTimes(), 50))
	result.DropMedianMs = milliseconds(percentile(drops, 50))
	return result, nil
}

// timeMigration migrates a new empty database, for the comparison with a
// clone, and drops it.
func timeMigration(ctx context.Context, server *pgfind.Server) (float64, error) {
	scratch, err := createScratchDatabase(ctx, server, "pgguard_bench_migrate_", "")
	if err != nil {
		return 0, err
	}
	began := time.Now()
	err = pgguard.Migrate(ctx, scratch.url, pgguard.MigrateOptions{})
	took := time.Since(began)
	if dropErr := scratch.drop(ctx); err == nil {
		err = dropErr
	}
	if err != nil {
		return 0, fmt.Errorf("failed to migrate an empty database: %w", err)
	}
	return milliseconds(took), nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// databaseSize returns the size of database name as pg_database_size
// reports it, queried through adminURL because a template may not accept
// connections.
func databaseSize(ctx context.Context, adminURL, name string) (string, error) {
	pool, err := pgxpool.New(ctx, adminURL)
	if err != nil {
		return "", err
	}
	defer pool.Close()
	var size string
	err = pool.QueryRow(ctx, `SELECT pg_size_pretty(pg_database_size($1::text))`, name).Scan(&size)
	return size, err
}

func printHarness(w io.Writer, h *harnessResult) {
	fmt.Fprintf(w, "\nTest harness: a fresh migrated database per test through internal/pgtest (claim a ready clone of the template, pool, ping)\n")
	fmt.Fprintf(w, "  %d tests one after the other, each keeping its database %.0f ms, %d clones kept ready, %s template:\n",
		h.Clones, h.HoldMs, h.ReadyClones, h.TemplateSize)
	fmt.Fprintf(w, "  wait median %.1f ms (clone %.1f ms, pool and ping %.1f ms), p90 %.1f ms, max %.1f ms; %d of %d tests waited for CREATE DATABASE (median %.1f ms); drop median %.1f ms\n",
		h.MedianMs, h.ClaimMedianMs, h.ConnectMedianMs, h.P90Ms, h.MaxMs, h.Waited, h.Clones, h.CreateMedianMs, h.DropMedianMs)
	fmt.Fprintf(w, "  migrating an empty database instead: %.0f ms\n", h.MigrateMs)
}
