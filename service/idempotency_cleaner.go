package service

import (
	"context"
	"log/slog"
	"time"
)

// IdempotencyCleanerConfig is the policy of an [IdempotencyCleaner]. A zero
// field takes its default.
type IdempotencyCleanerConfig struct {
	// Interval is the time between the starts of two purges. A purge that
	// takes longer starts the next one as soon as it ends. Defaults to 1
	// minute.
	Interval time.Duration

	// BatchSize is the largest number of records one DELETE statement
	// removes, so that no statement runs long or holds many row locks.
	// Defaults to 1000.
	BatchSize int

	// BatchPause is how long the cleaner waits after each full batch. Each
	// batch's commit flushes the WAL of the rows it deleted, and the
	// commits of requests wait behind that flush, so the pause leaves room
	// for them. Defaults to 10 milliseconds. A negative value runs the
	// batches back to back. It may not exceed Interval.
	BatchPause time.Duration

	// Logger receives the number of records each purge deleted and purge
	// errors. Defaults to the Logger of the Idempotency.
	Logger *slog.Logger
}

func (c IdempotencyCleanerConfig) withDefaults(idempotency *Idempotency) IdempotencyCleanerConfig {
	if c.Interval == 0 {
		c.Interval = time.Minute
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.BatchPause == 0 {
		c.BatchPause = 10 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = idempotency.config.Logger
	}
	return c
}

func (c IdempotencyCleanerConfig) validate() error {
	switch {
	case c.Interval < time.Millisecond:
		return invalidConfig("Interval", "is %s; use a positive duration of at least 1ms", c.Interval)
	case c.BatchSize < 1:
		return invalidConfig("BatchSize", "is %d; use a positive number of rows", c.BatchSize)
	case c.BatchPause > c.Interval:
		return invalidConfig("BatchPause", "is %s, longer than Interval %s; use a pause of a few milliseconds, or a negative value for none", c.BatchPause, c.Interval)
	}
	return nil
}

// IdempotencyCleaner deletes expired idempotency records periodically, in
// an application process. For cron, "pgguard idempotency purge" does one
// pass. Any number of cleaners may run at once, in one process or many:
// each batch skips the rows another cleaner has locked.
type IdempotencyCleaner struct {
	idempotency *Idempotency
	config      IdempotencyCleanerConfig
}

// NewIdempotencyCleaner returns a cleaner for the records of idempotency.
// It returns an error wrapping [ErrInvalidConfig] when a config field is
// out of range.
func NewIdempotencyCleaner(idempotency *Idempotency, config IdempotencyCleanerConfig) (*IdempotencyCleaner, error) {
	if idempotency == nil {
		return nil, invalidConfig("idempotency", "is nil; pass the *Idempotency returned by NewIdempotency")
	}
	config = config.withDefaults(idempotency)
	if err := config.validate(); err != nil {
		return nil, err
	}
	return &IdempotencyCleaner{idempotency: idempotency, config: config}, nil
}

// Run purges expired records at once and then every Interval, until ctx
// ends, and then returns nil. A failed purge is logged and tried again at
// the next interval, so Run never stops because of a database error.
func (c *IdempotencyCleaner) Run(ctx context.Context) error {
	ticker := time.NewTicker(c.config.Interval)
	defer ticker.Stop()

	c.config.Logger.LogAttrs(ctx, slog.LevelInfo, "pgguard: idempotency cleaner started",
		slog.Duration("interval", c.config.Interval),
		slog.Int("batch_size", c.config.BatchSize),
		slog.Duration("batch_pause", c.config.BatchPause))
	for {
		c.purge(ctx)
		select {
		case <-ctx.Done():
			c.config.Logger.LogAttrs(context.WithoutCancel(ctx), slog.LevelInfo, "pgguard: idempotency cleaner stopped")
			return nil
		case <-ticker.C:
		}
	}
}

// Config returns the cleaner's configuration, defaults filled in.
func (c *IdempotencyCleaner) Config() IdempotencyCleanerConfig {
	return c.config
}

// PurgeOnce deletes the records expired now, in batches of BatchSize with
// BatchPause after each full batch, and returns how many it deleted. Run
// calls it every Interval.
func (c *IdempotencyCleaner) PurgeOnce(ctx context.Context) (int64, error) {
	return c.idempotency.purgeExpired(ctx, c.config.BatchSize, max(c.config.BatchPause, 0))
}

func (c *IdempotencyCleaner) purge(ctx context.Context) {
	started := time.Now()
	deleted, err := c.PurgeOnce(ctx)
	switch {
	case err != nil && ctx.Err() != nil:
		// Run is stopping; the interrupted purge is not a failure.
		if deleted > 0 {
			c.config.Logger.LogAttrs(context.WithoutCancel(ctx), slog.LevelInfo, "pgguard: purged expired idempotency records before stopping",
				slog.Int64("deleted", deleted),
				slog.Duration("duration", time.Since(started)))
		}
	case err != nil:
		c.config.Logger.LogAttrs(ctx, slog.LevelError, "pgguard: failed to purge expired idempotency records; retrying at the next interval",
			slog.Any("error", err),
			slog.Int64("deleted", deleted),
			slog.Duration("interval", c.config.Interval))
	case deleted > 0:
		c.config.Logger.LogAttrs(ctx, slog.LevelInfo, "pgguard: purged expired idempotency records",
			slog.Int64("deleted", deleted),
			slog.Duration("duration", time.Since(started)))
	}
}
