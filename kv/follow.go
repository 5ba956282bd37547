package kv

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// FollowOptions tune Follow; the zero value follows as fast as the store
// answers and retries failed reads after 1 to 10 seconds.
type FollowOptions struct {
	// Gap is the pause after an answer of n records (folder markers left
	// out: a prefix over every pool holds one per pool) before the next
	// read, so
	// that a prefix that changes all the time costs the store a bounded
	// rate of queries (nil: none).
	Gap func(n int) time.Duration
	// Late, when set, is called when an answer comes more than LateAfter
	// after the one before it (the follower may have missed changes that
	// only a listing of something else shows).
	Late      func()
	LateAfter time.Duration
	// Failed hears every failed read (it is retried).
	Failed func(error)
}

// Follow lists prefix, then watches it, and hands every answer whose keys
// or versions changed to listed (the first answer always), until ctx ends.
// Errors only delay it: the follower keeps what it was last given.
func Follow(ctx context.Context, s Store, prefix string, o FollowOptions, listed func([]Pair)) {
	var index uint64
	var last string
	backoff := time.Second
	answered := time.Now()
	for ctx.Err() == nil {
		var ps []Pair
		var next uint64
		var err error
		if index == 0 {
			ps, next, err = s.List(ctx, prefix)
		} else {
			ps, next, err = s.Watch(ctx, prefix, index)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if o.Failed != nil {
				o.Failed(err)
			}
			if !Sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = time.Second
		if o.Late != nil && index != 0 && time.Since(answered) > o.LateAfter {
			o.Late()
		}
		answered = time.Now()
		if fp := fingerprint(ps); index == 0 || fp != last {
			last = fp
			listed(ps)
		}
		index = max(next, 1)
		if o.Gap != nil && !Sleep(ctx, o.Gap(records(ps))) {
			return
		}
	}
}

// Sleep waits d, or less when ctx ends first (then it says false).
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// fingerprint tells listings apart by their keys and versions.
func fingerprint(ps []Pair) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "%s@%d\n", p.Key, p.Version)
	}
	return b.String()
}

// records counts the pairs that are records, not folder markers.
func records(ps []Pair) int {
	n := 0
	for _, p := range ps {
		if !IsFolder(p.Key) {
			n++
		}
	}
	return n
}
