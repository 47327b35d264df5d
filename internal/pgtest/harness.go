package pgtest

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/internal/pgfind"
)

// ReadyClones is the number of clones that [New] keeps ready in each test
// process. It is a small fixed number because every ready clone takes the
// template's size on the server (8 MB for pgguard's migrations) and stays
// after the run, for the first tests of the next run. Four covers the tests
// that run at once with up to four CPUs, since go test's -parallel defaults
// to GOMAXPROCS.
const ReadyClones = 4

// Harness gives out databases with pgguard's migrations applied, cloned
// from one template on one server. [New] uses one Harness per test process.
// A Harness is safe for concurrent use.
type Harness struct {
	srv    *pgfind.Server
	admin  *pgxpool.Pool
	tpl    templateDatabase
	clones *clonePool
}

// NewHarness finds or builds the template of pgguard's migrations on srv
// and starts keeping readyClones clones of it ready in the background.
// Call [Harness.Close] when done.
func NewHarness(ctx context.Context, srv *pgfind.Server, readyClones int) (*Harness, error) {
	return newHarness(ctx, srv, pgguardMigrations, readyClones)
}

func newHarness(ctx context.Context, srv *pgfind.Server, migrations migrationSet, readyClones int) (*Harness, error) {
	tpl, err := ensureTemplate(ctx, srv, migrations)
	if err != nil {
		return nil, err
	}
	config, err := pgxpool.ParseConfig(srv.URL)
	if err != nil {
		return nil, fmt.Errorf("failed to configure a pool for %s: %w", srv.Source, err)
	}
	// One connection runs the CREATE DATABASE of the next clone and the
	// other serves the renames, so that the pool keeps at most two
	// connections open for the life of the test process.
	config.MaxConns = 2
	admin, err := pgxpool.NewWithConfig(ctx, config)
	if err != nil {
		return nil, fmt.Errorf("failed to configure a pool for %s: %w", srv.Source, err)
	}
	clones, err := startClonePool(ctx, srv, admin, tpl, readyClones)
	if err != nil {
		admin.Close()
		return nil, err
	}
	return &Harness{srv: srv, admin: admin, tpl: tpl, clones: clones}, nil
}

// Template returns the name of the template database.
func (h *Harness) Template() string {
	return h.tpl.name
}

// Open returns a new database with pgguard's migrations applied, with a
// pool connected to it. The caller drops it with [Harness.Drop].
func (h *Harness) Open(ctx context.Context) (*DB, error) {
	db := &DB{Name: newDatabaseName()}
	db.URL = h.srv.DatabaseURL(db.Name)

	began := time.Now()
	ready, err := h.clones.claim(ctx, db.Name)
	if err != nil {
		return nil, err
	}
	db.Timing.Clone = time.Since(began)
	db.Timing.Ready = ready

	began = time.Now()
	db.Pool, err = connect(ctx, db)
	if err != nil {
		if dropErr := h.srv.DropDatabase(context.WithoutCancel(ctx), db.Name); dropErr != nil {
			return nil, fmt.Errorf("%w; dropping it failed too: %w", err, dropErr)
		}
		return nil, err
	}
	db.Timing.Connect = time.Since(began)
	return db, nil
}

// Drop closes the pool of db and drops the database.
func (h *Harness) Drop(ctx context.Context, db *DB) error {
	if db.Pool != nil {
		db.Pool.Close()
	}
	return h.srv.DropDatabase(ctx, db.Name)
}

// CreateTimes returns how long each CREATE DATABASE of a clone took so far,
// in the background or for a test that found no ready clone.
func (h *Harness) CreateTimes() []time.Duration {
	h.clones.mu.Lock()
	defer h.clones.mu.Unlock()
	return slices.Clone(h.clones.createTimes)
}

// Close stops creating clones and closes the connections to the server.
// The ready clones stay on the server, for the next Harness of the same
// migrations to claim.
func (h *Harness) Close() {
	h.clones.stop()
	h.admin.Close()
}
