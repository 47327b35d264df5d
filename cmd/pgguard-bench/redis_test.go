package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// startFakeRedis serves the few commands the Redis reference sends, from
// memory, on a loopback port, and returns its address. It stops when the
// test ends.
func startFakeRedis(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { listener.Close() })

	var mu sync.Mutex
	values := map[string]int64{}
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				reader := bufio.NewReader(conn)
				for {
					args, err := readCommand(reader)
					if err != nil {
						return
					}
					mu.Lock()
					reply := fakeReply(values, args)
					mu.Unlock()
					if _, err := io.WriteString(conn, reply); err != nil {
						return
					}
				}
			}()
		}
	}()
	return listener.Addr().String()
}

// readCommand reads one RESP array of bulk strings.
func readCommand(reader *bufio.Reader) ([]string, error) {
	line, err := reader.ReadString('\n')
	if err != nil {
		return nil, err
	}
	count, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
	if err != nil {
		return nil, err
	}
	args := make([]string, count)
	for i := range args {
		header, err := reader.ReadString('\n')
		if err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(header, "$")))
		if err != nil {
			return nil, err
		}
		arg := make([]byte, size+2) // the argument and its CRLF
		if _, err := io.ReadFull(reader, arg); err != nil {
			return nil, err
		}
		args[i] = string(arg[:size])
	}
	return args, nil
}

func fakeReply(values map[string]int64, args []string) string {
	bulk := func(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }
	switch strings.ToUpper(args[0]) {
	case "SCRIPT":
		return bulk("fake-sha")
	case "INFO":
		return bulk("# Server\r\nredis_version:7.0-fake\r\n")
	case "SET":
		values[args[1]] = 1
		return "+OK\r\n"
	case "GET":
		if _, ok := values[args[1]]; !ok {
			return "$-1\r\n"
		}
		return bulk("1")
	case "EVALSHA":
		values[args[3]]++
		return fmt.Sprintf(":%d\r\n", values[args[3]])
	case "DEL":
		delete(values, args[1])
		return ":1\r\n"
	}
	return "-ERR unknown command\r\n"
}
