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
		slog.Int("batch_size", c.config.BatchSize))
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

func (c *IdempotencyCleaner) purge(ctx context.Context) {
	started := time.Now()
	deleted, err := c.idempotency.PurgeExpired(ctx, c.config.BatchSize)
	switch {
	case err != nil && ctx.Err() != nil:
		// Run is stopping; the interrupted purge is not a failure.
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
