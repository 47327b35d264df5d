package main

import (
	"fmt"
	"net/netip"
)

// Lockout workloads key their ops by account and client source. Account n
// of a key set is "<set>-<n>@example.com" and logs in from its own IPv4
// address, so every op touches its own account, pair and source counters
// and no row is hot. Each key set has its own block of 2^20 addresses in
// 10.0.0.0/8, so two sets never share a source counter. The addresses are
// only stored as data; nothing is sent to them.
type keySet struct {
	name  string
	block int64
}

// maxKeysPerSet is the number of addresses in a key set's block.
const maxKeysPerSet = 1 << 20

var (
	keysFail    = keySet{name: "fail", block: 0}
	keysSucceed = keySet{name: "ok", block: 1}
	keysLocked  = keySet{name: "locked", block: 2}
	keysFloor   = keySet{name: "floor", block: 3}
	// Key sets of the scale cases.
	keysWide     = keySet{name: "wide", block: 4}
	keysNarrow   = keySet{name: "narrow", block: 5}
	keysAttacker = keySet{name: "attacker", block: 6}
	keysSprayed  = keySet{name: "sprayed", block: 7}
	keysSprayers = keySet{name: "sprayer", block: 8}
)

func (s keySet) email(n int64) string {
	return fmt.Sprintf("%s-%d@example.com", s.name, n)
}

// ip returns the address of source n of the set.
func (s keySet) ip(n int64) string {
	if n < 0 || n >= maxKeysPerSet {
		panic(fmt.Sprintf("key %d of set %s is outside its block of %d addresses", n, s.name, maxKeysPerSet))
	}
	v := uint32(10)<<24 | uint32(s.block)<<20 | uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}

// firstIP returns the SQL offset of the set's block from 10.0.0.0, so that
// '10.0.0.0'::inet + firstIP + n in SQL equals ip(n).
func (s keySet) firstIP() int64 {
	return s.block << 20
}
