package main

import (
	"bufio"
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// environment describes where a run took place, so that its figures can be
// read next to the machine and settings behind them.
type environment struct {
	CPU        string `json:"cpu"`
	Cores      int    `json:"cores"`
	MemoryGiB  int    `json:"memory_gib"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Postgres   string `json:"postgres"`
	Redis      string `json:"redis,omitempty"`
	DatabaseOn string `json:"database_server"`
	// Settings are the Postgres settings that most change the figures.
	Settings map[string]string `json:"postgres_settings"`
}

// postgresSettings are the settings recorded with each run: commit
// durability, memory and background maintenance.
var postgresSettings = []string{
	"synchronous_commit", "fsync", "wal_sync_method", "shared_buffers",
	"max_connections", "autovacuum", "jit",
}

// describeEnvironment reads the machine from /proc on Linux, and the
// server's version and settings through pool.
func describeEnvironment(ctx context.Context, pool *pgxpool.Pool) (environment, error) {
	env := environment{
		CPU:       cpuModel(),
		Cores:     runtime.NumCPU(),
		MemoryGiB: memoryGiB(),
		GoVersion: runtime.Version(),
		OS:        runtime.GOOS + "/" + runtime.GOARCH,
		Settings:  map[string]string{},
	}
	if err := pool.QueryRow(ctx, `SELECT version()`).Scan(&env.Postgres); err != nil {
		return env, err
	}
	for _, name := range postgresSettings {
		var value string
		if err := pool.QueryRow(ctx, `SELECT current_setting($1)`, name).Scan(&value); err != nil {
			return env, err
		}
		env.Settings[name] = value
	}
	return env, nil
}

// cpuModel returns the first "model name" of /proc/cpuinfo, or
// runtime.GOARCH where there is none.
func cpuModel() string {
	file, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		name, value, ok := strings.Cut(scanner.Text(), ":")
		if ok && strings.TrimSpace(name) == "model name" {
			return strings.TrimSpace(value)
		}
	}
	return runtime.GOARCH
}

// memoryGiB returns MemTotal of /proc/meminfo rounded to GiB, or 0 where
// it cannot be read.
func memoryGiB() int {
	file, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kib, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0
			}
			return int((kib + 1<<19) >> 20)
		}
	}
	return 0
}
