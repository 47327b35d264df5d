package service

import (
	"net/netip"
	"time"
)

// LockoutEventKind names what happened in a [LockoutEvent].
type LockoutEventKind string

const (
	// EventLocked: an account-and-source or account-wide counter locked.
	EventLocked LockoutEventKind = "locked"
	// EventHardLocked: an account reached its consecutive-failure limit.
	EventHardLocked LockoutEventKind = "hard_locked"
	// EventSourceThrottled: a source-wide counter locked.
	EventSourceThrottled LockoutEventKind = "source_throttled"
	// EventUnlocked: an operator unlocked an account or a source.
	EventUnlocked LockoutEventKind = "unlocked"
)

// LockoutEvent describes a lock or unlock, passed to LockoutConfig.OnEvent.
type LockoutEvent struct {
	Kind LockoutEventKind
	// Tier is the counter concerned; for EventUnlocked of an account it is
	// TierAccount, of a source TierSource.
	Tier Tier
	// Channel is the channel of the failure; empty for EventUnlocked, which
	// covers every channel.
	Channel Channel
	// Email is the normalized email, empty for source events.
	Email string
	// Source is the client network, invalid when unknown or not concerned.
	Source netip.Prefix
	// Until is when the lock ends; zero for a hard lock and an unlock.
	Until time.Time
}
