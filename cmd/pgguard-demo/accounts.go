package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"

	"github.com/pgguard/pgguard/service"
)

// Default demo account, documented in the README and printed on start.
const (
	demoEmail    = "demo@example.com"
	demoPassword = "correct horse battery staple"
)

// maxPasswordBytes is the longest password bcrypt uses: it ignores every
// byte after the 72nd, and bcrypt.GenerateFromPassword rejects longer ones.
const maxPasswordBytes = 72

// settleTimeout bounds Succeed and Fail after the password check. They run
// on a context that ignores the client hanging up, because an attempt left
// unsettled counts as a failure once the lockout's AttemptTimeout passes.
const settleTimeout = 5 * time.Second

// credential is an account as configured: an email and its plain-text
// password.
type credential struct {
	Email    string
	Password string
}

// parseCredential parses "email:password", split at the first colon, so a
// password may contain colons but an email may not. Errors never quote the
// password, nor the whole entry, which might be one.
func parseCredential(s string) (credential, error) {
	email, password, found := strings.Cut(s, ":")
	switch {
	case !found:
		return credential{}, errors.New("the account has no colon; write it as email:password")
	case !strings.Contains(email, "@"):
		return credential{}, fmt.Errorf("the account email %q has no @; write the account as email:password", email)
	case password == "":
		return credential{}, fmt.Errorf("account %s has an empty password", email)
	case len(password) > maxPasswordBytes:
		return credential{}, fmt.Errorf("account %s has a password of %d bytes; bcrypt uses at most %d", email, len(password), maxPasswordBytes)
	}
	if _, err := service.NormalizeEmail(email); err != nil {
		return credential{}, fmt.Errorf("account %q: %w", email, err)
	}
	return credential{Email: email, Password: password}, nil
}

// parseCredentialList parses a comma-separated list of email:password
// entries, as in PGGUARD_DEMO_ACCOUNTS. White space around an entry and
// empty entries are ignored, so a password in the list cannot contain a
// comma or start or end with white space.
func parseCredentialList(list string) ([]credential, error) {
	var credentials []credential
	for i, entry := range strings.Split(list, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		c, err := parseCredential(entry)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		credentials = append(credentials, c)
	}
	return credentials, nil
}

// accountStore maps normalized emails, the same form the lockout counters
// use, to bcrypt hashes, so "Demo@Example.com" logs in as demo@example.com.
type accountStore struct {
	hashes map[string][]byte
	// dummyHash is compared for unknown emails and over-long passwords, so
	// that they take as long as a wrong password for a real account.
	dummyHash []byte
}

// newAccountStore hashes every password at cost, or bcrypt.DefaultCost when
// cost is 0. A later credential for the same normalized email replaces an
// earlier one.
func newAccountStore(credentials []credential, cost int) (*accountStore, error) {
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	store := &accountStore{hashes: make(map[string][]byte, len(credentials))}

	for _, c := range credentials {
		email, err := service.NormalizeEmail(c.Email)
		if err != nil {
			return nil, fmt.Errorf("account %q: %w", c.Email, err)
		}
		hash, err := bcrypt.GenerateFromPassword([]byte(c.Password), cost)
		if err != nil {
			return nil, fmt.Errorf("failed to hash the password of account %s: %w", c.Email, err)
		}
		store.hashes[email] = hash
	}

	// The dummy password is random, so no input can match the dummy hash.
	dummyHash, err := bcrypt.GenerateFromPassword([]byte(rand.Text()), cost)
	if err != nil {
		return nil, fmt.Errorf("failed to create the dummy password hash: %w", err)
	}
	store.dummyHash = dummyHash
	return store, nil
}

// verify reports whether password belongs to the account with the
// normalized email. It runs one bcrypt comparison in every case, so an
// unknown email costs as much time as a wrong password.
func (s *accountStore) verify(normalizedEmail, password string) bool {
	hash, known := s.hashes[normalizedEmail]
	if !known || len(password) > maxPasswordBytes {
		// bcrypt would ignore the bytes after the 72nd, so a longer
		// password could match on its prefix alone.
		_ = bcrypt.CompareHashAndPassword(s.dummyHash, []byte(password))
		return false
	}
	return bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil
}

type loginRequest struct {
	Email    *string `json:"email"`
	Password *string `json:"password"`
}

// handleLogin checks a password behind the lockout. Responses never tell a
// wrong password from an unknown email: both get the same 401 body, and
// both are counted and locked the same way.
func (s *server) handleLogin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")

	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var req loginRequest
	if err := decodeJSON(body, &req); err != nil {
		writeInvalidRequest(w, "The body is not a valid login request: "+err.Error())
		return
	}
	if req.Email == nil || req.Password == nil {
		writeInvalidRequest(w, `The body must be a JSON object with the string members "email" and "password".`)
		return
	}
	if !strings.Contains(*req.Email, "@") {
		writeInvalidRequest(w, "The email is not an email address: it has no @.")
		return
	}
	if *req.Password == "" {
		writeInvalidRequest(w, "The password is empty.")
		return
	}

	attempt, err := s.lockout.Begin(r.Context(), service.ChannelPassword, *req.Email, s.sources.ClientIP(r))
	var locked *service.LockedError
	var invalid *service.InputError
	switch {
	case errors.As(err, &locked):
		writeLoginLocked(w, locked.RetryAfter)
		return
	case errors.As(err, &invalid):
		writeInvalidRequest(w, fmt.Sprintf("Invalid %s: %s.", invalid.Field, invalid.Problem))
		return
	case errors.Is(err, service.ErrUnavailable):
		// The lockout fails closed: without its check no password is
		// verified.
		s.logger.ErrorContext(r.Context(), "lockout unavailable, login refused", "error", err)
		writeLoginUnavailable(w)
		return
	case err != nil:
		s.logger.ErrorContext(r.Context(), "failed to begin login attempt", "error", err)
		writeInternalError(w)
		return
	}

	correct := s.accounts.verify(attempt.Email(), *req.Password)

	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), settleTimeout)
	defer cancel()
	if correct {
		if err := attempt.Succeed(ctx); err != nil {
			s.logger.ErrorContext(ctx, "failed to record login success", "error", err)
			writeInternalError(w)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`+"\n")
		return
	}

	if _, err := attempt.Fail(ctx); err != nil {
		// The attempt stays pending and counts as a failure once the
		// lockout's AttemptTimeout passes, so the failure is not lost.
		s.logger.ErrorContext(ctx, "failed to record login failure", "error", err)
		writeInternalError(w)
		return
	}
	writeProblem(w, problem{
		Type:   problemLoginFailed,
		Title:  "Login failed",
		Status: http.StatusUnauthorized,
		Detail: "The email or password is incorrect.",
	})
}

// problemLoginUnavailable is the problem type of a login refused because
// the lockout's database is unavailable.
const problemLoginUnavailable = problemTypeBase + "login-unavailable"

// writeLoginUnavailable sends 503, which asks clients to retry later.
func writeLoginUnavailable(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "5")
	writeProblem(w, problem{
		Type:   problemLoginUnavailable,
		Title:  "Login temporarily unavailable",
		Status: http.StatusServiceUnavailable,
		Detail: "Logins are paused because the server cannot check for password guessing right now. Retry after the number of seconds in the Retry-After header.",
	})
}

// writeLoginLocked sends 429. The body is the same for every locked key, so
// it does not tell a real account from an unknown email.
func writeLoginLocked(w http.ResponseWriter, retryAfter time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(retryAfter)))
	writeProblem(w, problem{
		Type:   problemLoginLocked,
		Title:  "Too many failed logins",
		Status: http.StatusTooManyRequests,
		Detail: "Logins for this email from your network are paused after too many failures. Retry after the number of seconds in the Retry-After header.",
	})
}

// retryAfterSeconds converts a wait to the whole seconds of a Retry-After
// header, rounding up so a client that waits that long is never early.
func retryAfterSeconds(d time.Duration) int {
	seconds := int(d / time.Second)
	if d%time.Second != 0 {
		seconds++
	}
	return max(seconds, 1)
}

// decodeJSON decodes body, which must contain exactly one JSON value, into v.
// Unknown object members are rejected, so a misspelled field is an error
// instead of a silently missing value. So are bytes that are not UTF-8,
// which encoding/json would replace with U+FFFD: an email would otherwise
// be counted under an address the client never sent.
func decodeJSON(body []byte, v any) error {
	if !utf8.Valid(body) {
		return errors.New("the body is not valid UTF-8")
	}
	decoder := json.NewDecoder(bytes.NewReader(body))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(v); err != nil {
		return err
	}
	if _, err := decoder.Token(); !errors.Is(err, io.EOF) {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}
