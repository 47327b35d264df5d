package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/internal/pgtest"
	"github.com/pgguard/pgguard/service"
)

// runCLI runs the command line with args and returns its exit status and
// output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()

	var stdout, stderr bytes.Buffer
	code := run(t.Context(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestLockoutCommands(t *testing.T) {
	db := pgtest.New(t)
	t.Setenv("DATABASE_URL", db.URL)

	lockout, err := service.NewLockout(db.Pool, service.LockoutConfig{})
	require.NoError(t, err)
	for range 5 {
		attempt, err := lockout.Begin(t.Context(), service.ChannelPassword, "victim@example.com", "192.0.2.1")
		require.NoError(t, err)
		_, err = attempt.Fail(t.Context())
		require.NoError(t, err)
	}

	code, stdout, stderr := runCLI(t, "lockout", "status", "Victim@Example.com")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "account_source  password  victim@example.com  192.0.2.1/32")
	require.Contains(t, stdout, "until ")

	code, stdout, stderr = runCLI(t, "lockout", "locks", "-limit", "10")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "victim@example.com")
	require.NotContains(t, stdout, "more:")

	code, stdout, stderr = runCLI(t, "lockout", "source", "192.0.2.1")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "source  password  -      192.0.2.1/32  5")

	code, stdout, stderr = runCLI(t, "lockout", "unlock", "victim@example.com")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "cleared 2 counters\n", stdout)

	code, stdout, _ = runCLI(t, "lockout", "locks")
	require.Equal(t, 0, code)
	require.NotContains(t, stdout, "victim@example.com")

	code, stdout, stderr = runCLI(t, "lockout", "unlock-source", "192.0.2.1")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "cleared 1 counters\n", stdout)

	code, stdout, stderr = runCLI(t, "lockout", "purge", "-retention", "24h")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "deleted 0 rows\n", stdout)
}

func TestCommandErrors(t *testing.T) {
	t.Setenv("DATABASE_URL", "")

	code, _, stderr := runCLI(t, "lockout", "status")
	require.Equal(t, 2, code)
	require.Equal(t, "pgguard: lockout status needs exactly one EMAIL\n", stderr)

	code, _, stderr = runCLI(t, "lockout", "unlock", "a@example.com")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "DATABASE_URL is not set")

	code, _, stderr = runCLI(t, "nonsense")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, `unknown command "nonsense"`)

	code, stdout, _ := runCLI(t, "help")
	require.Equal(t, 0, code)
	require.Contains(t, stdout, "lockout")
	require.Contains(t, stdout, "migrate")
}
