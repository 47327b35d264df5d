package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard"
	"github.com/pgguard/pgguard/internal/pgfind"
)

// harnessResult is the time to give one test a fresh migrated database the
// way internal/pgtest.New does: CREATE DATABASE from a migrated template,
// then open a pool and ping it. Dropping it afterwards is timed apart,
// because it runs after the test.
type harnessResult struct {
	Clones   int     `json:"clones"`
	MedianMs float64 `json:"median_ms"`
	P90Ms    float64 `json:"p90_ms"`
	MaxMs    float64 `json:"max_ms"`
	// CreateMedianMs and ConnectMedianMs split the median into CREATE
	// DATABASE and opening the pool with its ping.
	CreateMedianMs  float64 `json:"create_median_ms"`
	ConnectMedianMs float64 `json:"connect_median_ms"`
	DropMedianMs    float64 `json:"drop_median_ms"`
	// TemplateSize is the template's size as pg_database_size reports it.
	TemplateSize string `json:"template_size"`
	// MigrateMs is the time to migrate an empty database, which a
	// template saves every test but the first.
	MigrateMs float64 `json:"migrate_ms"`
}

// measureHarness builds a migrated template and clones it opts.clones
// times, one clone at a time.
func measureHarness(ctx context.Context, server *pgfind.Server, opts options) (*harnessResult, error) {
	progressf(opts, "Timing %d clones of a migrated template", opts.clones)
	template, err := createScratchDatabase(ctx, server, "pgguard_bench_tpl_", "")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := template.drop(ctx); err != nil {
			progressf(opts, "failed to drop template %s: %v", template.name, err)
		}
	}()

	began := time.Now()
	if err := pgguard.Migrate(ctx, template.url, pgguard.MigrateOptions{}); err != nil {
		return nil, fmt.Errorf("failed to migrate the template: %w", err)
	}
	result := &harnessResult{Clones: opts.clones, MigrateMs: milliseconds(time.Since(began))}
	if result.TemplateSize, err = databaseSize(ctx, template.url); err != nil {
		return nil, err
	}

	var clones, creates, connects, drops []time.Duration
	for range opts.clones {
		clone, create, connect, err := cloneTemplate(ctx, server, template.name)
		if err != nil {
			return nil, err
		}
		clones = append(clones, create+connect)
		creates = append(creates, create)
		connects = append(connects, connect)

		began := time.Now()
		if err := clone.drop(ctx); err != nil {
			return nil, err
		}
		drops = append(drops, time.Since(began))
	}

	result.MedianMs = milliseconds(percentile(clones, 50))
	result.P90Ms = milliseconds(percentile(clones, 90))
	result.MaxMs = milliseconds(percentile(clones, 100))
	result.CreateMedianMs = milliseconds(percentile(creates, 50))
	result.ConnectMedianMs = milliseconds(percentile(connects, 50))
	result.DropMedianMs = milliseconds(percentile(drops, 50))
	return result, nil
}

// cloneTemplate creates a database from template, connects a pool to it and
// pings it, as pgtest does for each test, and returns the time each step
// took.
func cloneTemplate(ctx context.Context, server *pgfind.Server, template string) (*scratchDatabase, time.Duration, time.Duration, error) {
	began := time.Now()
	clone, err := createScratchDatabase(ctx, server, "pgguard_bench_clone_", template)
	if err != nil {
		return nil, 0, 0, err
	}
	create := time.Since(began)

	began = time.Now()
	pool, err := pgxpool.New(ctx, clone.url)
	if err == nil {
		err = pool.Ping(ctx)
		pool.Close()
	}
	connect := time.Since(began)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("failed to connect to clone %s: %w", clone.name, err)
	}
	return clone, create, connect, nil
}

func databaseSize(ctx context.Context, url string) (string, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return "", err
	}
	defer pool.Close()
	var size string
	err = pool.QueryRow(ctx, `SELECT pg_size_pretty(pg_database_size(current_database()))`).Scan(&size)
	return size, err
}

func printHarness(w io.Writer, h *harnessResult) {
	fmt.Fprintf(w, "\nTest harness: a fresh migrated database per test (CREATE DATABASE ... TEMPLATE, pool, ping)\n")
	fmt.Fprintf(w, "  %d clones of a %s template: median %.1f ms (CREATE DATABASE %.1f ms, pool and ping %.1f ms), p90 %.1f ms, max %.1f ms; drop median %.1f ms\n",
		h.Clones, h.TemplateSize, h.MedianMs, h.CreateMedianMs, h.ConnectMedianMs, h.P90Ms, h.MaxMs, h.DropMedianMs)
	fmt.Fprintf(w, "  migrating an empty database instead: %.0f ms\n", h.MigrateMs)
}
