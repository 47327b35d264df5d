package pgtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/internal/pgfind"
)

// readyClonePrefix starts the name of every ready clone:
// pgguard_ready_<template id>_<creation time>_<random>, where the creation
// time is in Unix seconds, base 36.
const readyClonePrefix = "pgguard_ready_"

// staleCloneAge is the age after which a ready clone of another template is
// dropped. It is the default timeout of go test, so the test process that
// created the clone has most likely exited. Dropping a clone that a live
// process still counts on is safe, because that process then creates
// another one.
const staleCloneAge = 10 * time.Minute

// warmupTimeout bounds the wait for the session that warmed a new clone to
// end. When the session outlives it, the pool stops creating clones.
const warmupTimeout = 5 * time.Second

// clonePool keeps up to size clones of a template ready, created in the
// background, so that a test usually finds one instead of waiting for
// CREATE DATABASE.
//
// A ready clone is an ordinary database named with readyClonePrefix. A test
// claims one by renaming it to its own name with ALTER DATABASE ... RENAME.
// The rename is atomic and durable, so two test processes never get the
// same clone, and a clone that a test may have written to never carries the
// ready name again. Clones still ready when the process exits stay on the
// server, and the next clonePool of the same template claims them first.
type clonePool struct {
	srv   *pgfind.Server
	admin *pgxpool.Pool
	tpl   templateDatabase
	size  int
	// fileCopy adds STRATEGY FILE_COPY to CREATE DATABASE, as
	// createReadyClone explains. fill sets it before the first clone.
	fileCopy bool

	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	// ready lists the names of the clones to try, oldest first.
	ready []string
	// stale lists the ready clones of other templates for fill to drop.
	stale []string
	// creating counts the clones being created.
	creating int
	// stopped is set when the filler has exited, after which every test
	// creates its own clone.
	stopped bool
	// changed is closed and replaced whenever ready or stopped changes.
	changed chan struct{}
	// createTimes lists how long each CREATE DATABASE of a clone took.
	createTimes []time.Duration
}

// startClonePool queues the ready clones of tpl that earlier processes
// left and starts creating more in the background. Stop it with stop.
func startClonePool(ctx context.Context, srv *pgfind.Server, admin *pgxpool.Pool, tpl templateDatabase, size int) (*clonePool, error) {
	p := &clonePool{
		srv:     srv,
		admin:   admin,
		tpl:     tpl,
		size:    size,
		done:    make(chan struct{}),
		changed: make(chan struct{}),
	}
	var err error
	p.ready, p.stale, err = p.listLeftovers(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to list the ready clones of template %s: %w", tpl.name, err)
	}

	fillCtx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go p.fill(fillCtx)
	return p, nil
}

// stop ends the background work and waits for it. A CREATE DATABASE in
// progress is canceled. Ready clones stay on the server for the next run.
func (p *clonePool) stop() {
	p.cancel()
	<-p.done
}

// claim gives the caller a copy of the template named name: a ready clone
// renamed to name, or a new clone when no ready clone is left and none is
// being created. ready reports whether a ready clone was there without
// waiting for CREATE DATABASE.
func (p *clonePool) claim(ctx context.Context, name string) (ready bool, err error) {
	ready = true
	for {
		candidate, waited, ok, err := p.next(ctx)
		if err != nil {
			return false, err
		}
		if !ok {
			break
		}
		if waited {
			ready = false
		}
		claimed, err := p.rename(ctx, candidate, name)
		if err != nil {
			return false, err
		}
		if claimed {
			return ready, nil
		}
	}

	began := time.Now()
	if err := p.srv.CreateDatabase(ctx, name, p.tpl.name); err != nil {
		return false, err
	}
	p.recordCreate(time.Since(began))
	return false, nil
}

// next returns the oldest ready clone, waiting for the filler when there is
// none yet, and whether it waited. It returns ok false when the filler has
// stopped and no clone is left.
func (p *clonePool) next(ctx context.Context) (name string, waited, ok bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if len(p.ready) > 0 {
			name = p.ready[0]
			p.ready = p.ready[1:]
			p.notify()
			return name, waited, true, nil
		}
		if p.stopped {
			return "", waited, false, nil
		}

		waited = true
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			p.mu.Lock()
			return "", waited, false, fmt.Errorf("stopped waiting for a clone of template %s: %w", p.tpl.name, ctx.Err())
		}
		p.mu.Lock()
	}
}

// rename claims the ready clone candidate under the name name. It returns
// false when another process claimed or dropped the clone first, or when a
// session is connected to it.
func (p *clonePool) rename(ctx context.Context, candidate, name string) (bool, error) {
	sql := "ALTER DATABASE " + pgx.Identifier{candidate}.Sanitize() + " RENAME TO " + pgx.Identifier{name}.Sanitize()
	_, err := p.admin.Exec(ctx, sql)
	if err == nil {
		return true, nil
	}

	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "3D000", // invalid_catalog_name: the clone no longer exists
			"55006", // object_in_use: a session is connected to it
			"42501": // insufficient_privilege: another role created it
			return false, nil
		}
	}
	return false, fmt.Errorf("failed to claim clone %s of template %s: %w", candidate, p.tpl.name, err)
}

// fill drops the stale ready clones of other templates, then creates
// clones while fewer than size are ready or being created. It stops at the first failure to create or
// connect to a clone, and the tests then create their own clones, which
// reports the error to them.
//
// NOTE: fill does not report its own error, so a failure that only the
// background work meets (STRATEGY FILE_COPY rejected, for example) goes
// unnoticed, and every test then waits for CREATE DATABASE as before.
func (p *clonePool) fill(ctx context.Context) {
	defer close(p.done)
	defer p.update(func() { p.stopped = true })

	var version int
	if err := p.admin.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return
	}
	// PostgreSQL 15 added the STRATEGY option, and before it every
	// CREATE DATABASE copied files.
	p.fileCopy = version >= 150000

	for _, name := range p.stale {
		// Without FORCE, a clone that a session is connected to stays.
		p.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()) //nolint:errcheck // a later run retries
	}
	if p.size == 0 {
		return
	}

	p.create(ctx)
}

// create creates clones one at a time while fewer than size are ready. It
// returns when ctx is canceled or a clone cannot be created.
//
// One at a time, because the time a test waits in its cleanup matters too.
// Two FILE_COPY copies at a time created clones faster, but they slowed
// the drop in a test's cleanup. In 6 pgguard-bench runs of each on a
// loaded two-core machine, the median drop was about 170 ms with two
// copies at a time and 110 ms with one.
func (p *clonePool) create(ctx context.Context) {
	for {
		p.mu.Lock()
		full := len(p.ready)+p.creating >= p.size
		changed := p.changed
		if !full {
			p.creating++
		}
		p.mu.Unlock()
		if full {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return
			}
		}

		name, err := p.createReadyClone(ctx)
		p.update(func() {
			p.creating--
			if err == nil {
				p.ready = append(p.ready, name)
			}
		})
		if err != nil {
			return
		}
	}
}

// listLeftovers returns the ready clones on the server, oldest first:
// those of the template, which the pool claims first, and the stale ones
// of other templates, which fill drops.
func (p *clonePool) listLeftovers(ctx context.Context) (own, stale []string, err error) {
	rows, err := p.admin.Query(ctx,
		"SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY oid", readyClonePrefix)
	if err != nil {
		return nil, nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, err
	}

	ownPrefix := readyClonePrefix + p.tpl.id + "_"
	for _, name := range names {
		switch {
		case strings.HasPrefix(name, ownPrefix):
			own = append(own, name)
		case cloneAge(name) > staleCloneAge:
			stale = append(stale, name)
		}
	}
	return own, stale, nil
}

// cloneAge returns the time since the ready clone name was created, or 0
// when name does not contain a creation time.
func cloneAge(name string) time.Duration {
	rest, ok := strings.CutPrefix(name, readyClonePrefix)
	if !ok {
		return 0
	}
	fields := strings.Split(rest, "_")
	if len(fields) != 3 {
		return 0
	}
	seconds, err := strconv.ParseInt(fields[1], 36, 64)
	if err != nil {
		return 0
	}
	return time.Since(time.Unix(seconds, 0))
}

// createReadyClone creates a clone under a ready name and connects to it
// once, so that PostgreSQL writes the clone's relation cache file
// (pg_internal.init) and the test's own first connection starts faster.
//
// It copies the template's files (STRATEGY FILE_COPY) instead of using
// the PostgreSQL 15 default, WAL_LOG. WAL_LOG is faster on its own, but it
// writes the clone into shared buffers, where a ready clone waits dirty
// until the next checkpoint, and every DROP DATABASE requests an immediate
// checkpoint (dropdb in PostgreSQL's dbcommands.c). So the drop in each
// test's cleanup writes out the ready clones. This was measured over 18
// pgguard-bench runs with WAL_LOG clones and 24 with FILE_COPY clones, on
// a loaded two-core machine with PostgreSQL 15. The median drop of a run
// was 73 to 642 ms (165 ms in the middle run) with WAL_LOG, and 45 to
// 356 ms (108 ms) with FILE_COPY.
func (p *clonePool) createReadyClone(ctx context.Context) (string, error) {
	name := readyClonePrefix + p.tpl.id + "_" + strconv.FormatInt(time.Now().Unix(), 36) + "_" + strings.ToLower(rand.Text()[:8])

	began := time.Now()
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " TEMPLATE " + pgx.Identifier{p.tpl.name}.Sanitize()
	if p.fileCopy {
		sql += " STRATEGY FILE_COPY"
	}
	if _, err := p.admin.Exec(ctx, sql); err != nil {
		return "", err
	}
	p.recordCreate(time.Since(began))

	if err := p.warmUp(ctx, name); err != nil {
		// The clone is complete, so a later run may still claim it.
		return "", fmt.Errorf("failed to connect to clone %s: %w", name, err)
	}
	return name, nil
}

// warmUp connects to database name once and waits until that session has
// ended, because a rename waits up to 5 s for the sessions of a database.
func (p *clonePool) warmUp(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, warmupTimeout)
	defer cancel()

	conn, err := pgx.Connect(ctx, p.srv.DatabaseURL(name))
	if err != nil {
		return err
	}
	if err := conn.Close(ctx); err != nil {
		return err
	}

	for {
		var connected bool
		err := p.admin.QueryRow(ctx,
			"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = $1)", name).Scan(&connected)
		if err != nil {
			return err
		}
		if !connected {
			return nil
		}
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *clonePool) recordCreate(took time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.createTimes = append(p.createTimes, took)
}

// update runs change under the lock and notifies the waiting goroutines.
func (p *clonePool) update(change func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	change()
	p.notify()
}

// notify wakes the tests waiting in next and the idle loops of fill. The
// caller holds the lock.
func (p *clonePool) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}
