package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// The Redis reference keeps the usual design's counter in Redis: before
// verifying, one GET of the lock key; after a failure, one script that
// increments the counter and sets its expiry (INCR and EXPIRE in one round
// trip); after a success, one DEL of the counter. It talks RESP over one
// connection per client, which is all three commands need, so that the
// figures measure Redis rather than a client library.

// redisCounterScript increments KEYS[1] and, on its first increment, makes
// it expire after ARGV[1] seconds.
const redisCounterScript = `local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n`

// redisKeyTTL is how long the reference's keys live, in seconds. The run
// deletes nothing, so this also bounds how long its keys stay in Redis.
const redisKeyTTL = "900"

// redisTimeout bounds connecting and each command.
const redisTimeout = 10 * time.Second

// redisConn is one RESP connection. It is not safe for concurrent use.
type redisConn struct {
	conn   net.Conn
	reader *bufio.Reader
	writer *bufio.Writer
}

func dialRedis(ctx context.Context, addr string) (*redisConn, error) {
	dialer := net.Dialer{Timeout: redisTimeout}
	conn, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("failed to connect to Redis at %s: %w", addr, err)
	}
	return &redisConn{conn: conn, reader: bufio.NewReader(conn), writer: bufio.NewWriter(conn)}, nil
}

// do sends one command and returns its reply: a string for simple and
// bulk strings, an int64 for integers, nil for a null bulk string. Arrays
// are not needed and are rejected. A Redis error reply is returned as an
// error.
func (c *redisConn) do(ctx context.Context, args ...string) (any, error) {
	countRoundTrip(ctx)
	if err := c.conn.SetDeadline(time.Now().Add(redisTimeout)); err != nil {
		return nil, err
	}

	fmt.Fprintf(c.writer, "*%d\r\n", len(args))
	for _, arg := range args {
		fmt.Fprintf(c.writer, "$%d\r\n%s\r\n", len(arg), arg)
	}
	if err := c.writer.Flush(); err != nil {
		return nil, fmt.Errorf("failed to send a Redis command: %w", err)
	}
	return c.readReply()
}

func (c *redisConn) readReply() (any, error) {
	line, err := c.reader.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("failed to read a Redis reply: %w", err)
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty Redis reply")
	}

	switch kind, rest := line[0], line[1:]; kind {
	case '+':
		return rest, nil
	case '-':
		return nil, fmt.Errorf("redis: %s", rest)
	case ':':
		return strconv.ParseInt(rest, 10, 64)
	case '$':
		size, err := strconv.Atoi(rest)
		if err != nil {
			return nil, fmt.Errorf("invalid Redis bulk length %q", rest)
		}
		if size < 0 {
			return nil, nil
		}
		data := make([]byte, size+2)
		if _, err := io.ReadFull(c.reader, data); err != nil {
			return nil, fmt.Errorf("failed to read a Redis reply: %w", err)
		}
		return string(data[:size]), nil
	default:
		return nil, fmt.Errorf("unsupported Redis reply type %q", kind)
	}
}

func (c *redisConn) close() error {
	return c.conn.Close()
}

// redisPool hands one connection to each concurrent client.
type redisPool struct {
	conns chan *redisConn
	// scriptSHA is the SHA-1 of redisCounterScript, loaded on the server.
	scriptSHA string
	version   string
}

// openRedisPool connects size connections to addr and loads the counter
// script.
func openRedisPool(ctx context.Context, addr string, size int) (*redisPool, error) {
	pool := &redisPool{conns: make(chan *redisConn, size)}
	for range size {
		conn, err := dialRedis(ctx, addr)
		if err != nil {
			pool.close()
			return nil, err
		}
		pool.conns <- conn
	}

	conn := <-pool.conns
	defer func() { pool.conns <- conn }()
	sha, err := conn.do(ctx, "SCRIPT", "LOAD", redisCounterScript)
	if err != nil {
		pool.close()
		return nil, fmt.Errorf("failed to load the Redis counter script: %w", err)
	}
	pool.scriptSHA, _ = sha.(string)

	info, err := conn.do(ctx, "INFO", "server")
	if err != nil {
		pool.close()
		return nil, fmt.Errorf("failed to read the Redis version: %w", err)
	}
	text, _ := info.(string)
	for line := range strings.Lines(text) {
		if version, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			pool.version = version
		}
	}
	return pool, nil
}

// with runs fn on a connection of its own.
func (p *redisPool) with(fn func(conn *redisConn) error) error {
	conn := <-p.conns
	defer func() { p.conns <- conn }()
	return fn(conn)
}

func (p *redisPool) close() {
	for {
		select {
		case conn := <-p.conns:
			conn.close()
		default:
			return
		}
	}
}

// redisWorkloads returns the lockout operations of the Redis reference.
// runID keeps the keys of concurrent or repeated runs apart.
func redisWorkloads(pool *redisPool, runID string) []*workload {
	counterKey := func(set keySet, key int64) string {
		return "pgguard-bench:" + runID + ":failures:" + set.email(key) + "|" + set.ip(key)
	}
	lockKey := func(set keySet, key int64) string {
		return "pgguard-bench:" + runID + ":lock:" + set.email(key) + "|" + set.ip(key)
	}

	beginFail := func(ctx context.Context, key int64) error {
		return pool.with(func(conn *redisConn) error {
			if err := redisCheckUnlocked(ctx, conn, lockKey(keysFail, key)); err != nil {
				return err
			}
			_, err := conn.do(ctx, "EVALSHA", pool.scriptSHA, "1", counterKey(keysFail, key), redisKeyTTL)
			return err
		})
	}
	beginSucceed := func(ctx context.Context, key int64) error {
		return pool.with(func(conn *redisConn) error {
			if err := redisCheckUnlocked(ctx, conn, lockKey(keysSucceed, key)); err != nil {
				return err
			}
			_, err := conn.do(ctx, "DEL", counterKey(keysSucceed, key))
			return err
		})
	}
	beginLocked := func(ctx context.Context, key int64) error {
		return pool.with(func(conn *redisConn) error {
			reply, err := conn.do(ctx, "GET", lockKey(keysLocked, key%lockedKeys))
			if err != nil {
				return err
			}
			if reply == nil {
				return errors.New("a locked key was not locked")
			}
			return nil
		})
	}
	return []*workload{
		{operation: opBeginFail, design: designRedis, op: beginFail},
		{operation: opBeginSucceed, design: designRedis, op: beginSucceed},
		{operation: opBeginLocked, design: designRedis, op: beginLocked},
	}
}

func redisCheckUnlocked(ctx context.Context, conn *redisConn, key string) error {
	reply, err := conn.do(ctx, "GET", key)
	if err != nil {
		return err
	}
	if reply != nil {
		return errors.New("key unexpectedly locked")
	}
	return nil
}

// seedRedisLocks sets the lock keys of the locked accounts.
func seedRedisLocks(ctx context.Context, pool *redisPool, runID string) error {
	return pool.with(func(conn *redisConn) error {
		for key := range int64(lockedKeys) {
			lock := "pgguard-bench:" + runID + ":lock:" + keysLocked.email(key) + "|" + keysLocked.ip(key)
			if _, err := conn.do(ctx, "SET", lock, "1", "EX", redisKeyTTL); err != nil {
				return fmt.Errorf("failed to seed Redis lock keys: %w", err)
			}
		}
		return nil
	})
}
