package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// serverCPU reads the CPU time that the Postgres backends of a pool have
// used, from /proc/<pid>/schedstat. It works only when the server runs on
// this machine and its processes are visible, as with a local server. Its
// per-op figure stays comparable while other programs load the machine,
// which throughput does not.
type serverCPU struct {
	pids []int
}

// newServerCPU records the backend process of every connection of pool,
// which must hold n open connections, all idle.
func newServerCPU(ctx context.Context, pool *pgxpool.Pool, n int) (*serverCPU, error) {
	conns := make([]*pgxpool.Conn, 0, n)
	defer func() {
		for _, conn := range conns {
			conn.Release()
		}
	}()

	cpu := &serverCPU{}
	for range n {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		conns = append(conns, conn)
		var pid int
		if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
			return nil, fmt.Errorf("failed to read a backend's process id: %w", err)
		}
		cpu.pids = append(cpu.pids, pid)
	}
	if _, ok := cpu.used(); !ok {
		// The server runs elsewhere, or its processes are hidden.
		cpu.pids = nil
	}
	return cpu, nil
}

// used returns the CPU time the backends have used so far, and false when
// it cannot be read.
func (c *serverCPU) used() (time.Duration, bool) {
	if c == nil || len(c.pids) == 0 {
		return 0, false
	}
	var total time.Duration
	for _, pid := range c.pids {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/schedstat")
		if err != nil {
			return 0, false
		}
		// The first field is the time spent on a CPU, in nanoseconds.
		fields := strings.Fields(string(data))
		if len(fields) == 0 {
			return 0, false
		}
		ns, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, false
		}
		total += time.Duration(ns)
	}
	return total, true
}
