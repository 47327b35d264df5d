package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/pgguard/pgguard/service"
)

func init() {
	commands["lockout"] = command{
		summary: "inspect and clear login lockout counters (status, source, unlock, unlock-source, locks, purge)",
		run: func(ctx context.Context, env *environment, args []string) error {
			return runGroup(ctx, env, "lockout", lockoutCommands, args)
		},
	}
}

var lockoutCommands = map[string]subcommand{
	"status": {
		usage: "status EMAIL           show every counter of an account and whether it is locked",
		run:   runLockoutStatus,
	},
	"source": {
		usage: "source IP              show the source-wide counters of a client address",
		run:   runLockoutSourceStatus,
	},
	"unlock": {
		usage: "unlock EMAIL           clear every counter and lock of an account, the hard lock included",
		run:   runLockoutUnlock,
	},
	"unlock-source": {
		usage: "unlock-source IP       clear the source-wide counters of a client address",
		run:   runLockoutUnlockSource,
	},
	"locks": {
		usage: "locks [-limit N] [-after CURSOR]  list active locks page by page",
		run:   runLockoutLocks,
	},
	"purge": {
		usage: "purge [-retention D] [-batch N]   delete idle counters and expired known sources",
		run:   runLockoutPurge,
	},
}

// policyFlags registers the settings of the application's LockoutConfig
// that change what these commands do, so an application that changed
// them can pass the same values. Unset flags keep the library defaults.
func policyFlags(flags *flag.FlagSet) *service.LockoutConfig {
	config := &service.LockoutConfig{}
	flags.IntVar(&config.IPv6PrefixLen, "ipv6-prefix", 64, "prefix length the application counts IPv6 clients by (LockoutConfig.IPv6PrefixLen)")
	flags.DurationVar(&config.KnownSourceWindow, "known-source-window", 90*24*time.Hour, "the application's LockoutConfig.KnownSourceWindow")
	flags.DurationVar(&config.StreakRetention, "streak-retention", 90*24*time.Hour, "the application's LockoutConfig.StreakRetention")
	return config
}

// newLockout connects and builds a Lockout with config. The commands use it
// to normalize input and to read the windows that purging depends on.
func newLockout(ctx context.Context, env *environment, config *service.LockoutConfig) (*service.Lockout, error) {
	pool, err := env.connect(ctx)
	if err != nil {
		return nil, err
	}
	return service.NewLockout(pool, *config)
}

// oneArgument parses subcommands that take exactly one value after the
// policy flags.
func oneArgument(env *environment, name, what string, args []string) (string, *service.LockoutConfig, error) {
	flags := flag.NewFlagSet("pgguard lockout "+name, flag.ContinueOnError)
	flags.SetOutput(env.stderr)
	config := policyFlags(flags)
	if err := flags.Parse(args); err != nil {
		return "", nil, usagef("%v", err)
	}
	if flags.NArg() != 1 {
		return "", nil, usagef("lockout %s needs exactly one %s", name, what)
	}
	return flags.Arg(0), config, nil
}

func runLockoutStatus(ctx context.Context, env *environment, args []string) error {
	email, config, err := oneArgument(env, "status", "EMAIL", args)
	if err != nil {
		return err
	}
	lockout, err := newLockout(ctx, env, config)
	if err != nil {
		return err
	}

	statuses, err := lockout.AccountStatus(ctx, email)
	if err != nil {
		return err
	}
	if len(statuses) == 0 {
		fmt.Fprintln(env.stdout, "no counters: this email has no failed or pending attempts")
		return nil
	}
	return printCounters(env.stdout, statuses)
}

func runLockoutSourceStatus(ctx context.Context, env *environment, args []string) error {
	ip, config, err := oneArgument(env, "source", "IP (use \"\" for the bucket of unknown sources)", args)
	if err != nil {
		return err
	}
	lockout, err := newLockout(ctx, env, config)
	if err != nil {
		return err
	}

	statuses, err := lockout.SourceStatus(ctx, ip)
	if err != nil {
		return err
	}
	if len(statuses) == 0 {
		fmt.Fprintln(env.stdout, "no counters: this source has no failed or pending attempts")
		return nil
	}
	return printCounters(env.stdout, statuses)
}

func printCounters(w io.Writer, statuses []service.CounterStatus) error {
	table := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(table, "TIER\tCHANNEL\tEMAIL\tSOURCE\tFAILURES\tPENDING\tLOCKS\tSTREAK\tLOCKED")
	for _, s := range statuses {
		fmt.Fprintf(table, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n",
			s.Tier, s.Channel, orDash(s.Email), sourceLabel(s), s.Failures, s.Pending, s.LockCount, streakLabel(s), lockLabel(s.HardLocked, s.LockedUntil))
	}
	return table.Flush()
}

func runLockoutUnlock(ctx context.Context, env *environment, args []string) error {
	email, config, err := oneArgument(env, "unlock", "EMAIL", args)
	if err != nil {
		return err
	}
	lockout, err := newLockout(ctx, env, config)
	if err != nil {
		return err
	}

	cleared, err := lockout.UnlockAccount(ctx, email)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "cleared %d counters\n", cleared)
	return nil
}

func runLockoutUnlockSource(ctx context.Context, env *environment, args []string) error {
	ip, config, err := oneArgument(env, "unlock-source", "IP", args)
	if err != nil {
		return err
	}
	lockout, err := newLockout(ctx, env, config)
	if err != nil {
		return err
	}

	cleared, err := lockout.UnlockSource(ctx, ip)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "cleared %d counters\n", cleared)
	return nil
}

func runLockoutLocks(ctx context.Context, env *environment, args []string) error {
	flags := flag.NewFlagSet("pgguard lockout locks", flag.ContinueOnError)
	flags.SetOutput(env.stderr)
	config := policyFlags(flags)
	limit := flags.Int("limit", 50, "maximum number of locks to list")
	after := flags.String("after", "", "cursor printed at the end of the previous page")
	if err := flags.Parse(args); err != nil {
		return usagef("%v", err)
	}
	if flags.NArg() > 0 {
		return usagef("lockout locks takes only flags, got %q", flags.Args())
	}
	lockout, err := newLockout(ctx, env, config)
	if err != nil {
		return err
	}

	page, err := lockout.ListLocks(ctx, *after, *limit)
	if err != nil {
		return err
	}
	table := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(table, "TIER\tCHANNEL\tEMAIL\tSOURCE\tLOCKED")
	for _, lock := range page.Locks {
		source := "-"
		if lock.Tier != service.TierAccount {
			source = sourceString(lock.Source)
		}
		fmt.Fprintf(table, "%s\t%s\t%s\t%s\t%s\n", lock.Tier, lock.Channel, orDash(lock.Email), source, lockLabel(lock.Hard, lock.Until))
	}
	if err := table.Flush(); err != nil {
		return err
	}
	if page.Next != "" {
		fmt.Fprintf(env.stdout, "more: pgguard lockout locks -limit %d -after %s\n", *limit, page.Next)
	}
	return nil
}

func runLockoutPurge(ctx context.Context, env *environment, args []string) error {
	flags := flag.NewFlagSet("pgguard lockout purge", flag.ContinueOnError)
	flags.SetOutput(env.stderr)
	config := policyFlags(flags)
	// The command sees only the windows given by flags, so an application
	// with longer failure windows must pass a retention at least as long.
	retention := flags.Duration("retention", 48*time.Hour, "delete counters idle for longer than this; use at least the application's longest failure window (24h by default)")
	batch := flags.Int("batch", 1000, "rows deleted per statement")
	if err := flags.Parse(args); err != nil {
		return usagef("%v", err)
	}
	if flags.NArg() > 0 {
		return usagef("lockout purge takes only flags, got %q", flags.Args())
	}
	lockout, err := newLockout(ctx, env, config)
	if err != nil {
		return err
	}

	deleted, err := lockout.PurgeIdle(ctx, *retention, *batch)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "deleted %d rows\n", deleted)
	return nil
}

func sourceLabel(s service.CounterStatus) string {
	if s.Tier == service.TierAccount {
		return "-"
	}
	return sourceString(s.Source)
}

func sourceString(source interface {
	IsValid() bool
	String() string
}) string {
	if !source.IsValid() {
		return "unknown"
	}
	return source.String()
}

func streakLabel(s service.CounterStatus) string {
	if s.Tier != service.TierAccount {
		return "-"
	}
	return fmt.Sprint(s.ConsecutiveFailures)
}

func lockLabel(hard bool, until time.Time) string {
	switch {
	case hard:
		return "hard lock (until unlocked)"
	case until.IsZero():
		return "no"
	default:
		return "until " + until.UTC().Format(time.RFC3339)
	}
}

func orDash(value string) string {
	if value == "" {
		return "-"
	}
	return value
}
