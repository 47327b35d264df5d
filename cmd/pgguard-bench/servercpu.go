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

// cpuSampleInterval is how often a cpuSampler reads the backends' CPU time.
const cpuSampleInterval = 100 * time.Millisecond

// cpuSample is the backends' CPU time at a moment.
type cpuSample struct {
	at   time.Time
	used time.Duration
}

type cpuSamples []cpuSample

// cpuSampler reads a serverCPU periodically in the background, so that
// parts of a long run can be charged their CPU time afterwards.
type cpuSampler struct {
	cpu     *serverCPU
	samples cpuSamples
	done    chan struct{}
	stopped chan struct{}
}

// startCPUSampler starts sampling cpu, which may be nil.
func startCPUSampler(cpu *serverCPU) *cpuSampler {
	s := &cpuSampler{cpu: cpu, done: make(chan struct{}), stopped: make(chan struct{})}
	// The first sample is taken before the run it measures starts.
	s.sample()
	go func() {
		defer close(s.stopped)
		ticker := time.NewTicker(cpuSampleInterval)
		defer ticker.Stop()
		for {
			select {
			case <-s.done:
				s.sample()
				return
			case <-ticker.C:
				s.sample()
			}
		}
	}()
	return s
}

func (s *cpuSampler) sample() {
	if used, ok := s.cpu.used(); ok {
		s.samples = append(s.samples, cpuSample{at: time.Now(), used: used})
	}
}

// stop ends the sampling and returns the samples.
func (s *cpuSampler) stop() cpuSamples {
	close(s.done)
	<-s.stopped
	return s.samples
}

// between returns the CPU time used from from to to, interpolating
// linearly between the samples around each end, and false when the
// samples do not cover the span.
func (samples cpuSamples) between(from, to time.Time) (time.Duration, bool) {
	start, ok := samples.at(from)
	if !ok {
		return 0, false
	}
	end, ok := samples.at(to)
	if !ok {
		return 0, false
	}
	return end - start, true
}

func (samples cpuSamples) at(moment time.Time) (time.Duration, bool) {
	for i := 1; i < len(samples); i++ {
		before, after := samples[i-1], samples[i]
		if moment.Before(before.at) || moment.After(after.at) {
			continue
		}
		span := after.at.Sub(before.at)
		if span == 0 {
			return before.used, true
		}
		fraction := float64(moment.Sub(before.at)) / float64(span)
		return before.used + time.Duration(fraction*float64(after.used-before.used)), true
	}
	return 0, false
}
