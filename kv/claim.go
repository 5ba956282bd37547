package kv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Claims is a store that can hold a key for a live process, timed by the
// store's server alone (Consul: a session with a TTL that the process
// renews; the server lets it lapse when the renewals stop), so that two
// live processes never hold one key and a dead one stops holding it without
// any machine's clock compared with another's.
type Claims interface {
	// Claim tries to hold key, with value, while ctx lives. When another
	// live claim holds it, held is false and holder is that claim's value.
	// While held, lost is closed when the claim ends without ctx ending
	// (the server stopped seeing it renewed); when ctx ends, the claim is
	// given up and the key goes.
	Claim(ctx context.Context, key string, value []byte, ttl time.Duration) (held bool, holder []byte, lost <-chan struct{}, err error)
	// Break ends the claim that holds key, if any, so that it can be
	// claimed at once (a process of the holder's own machine that died
	// without giving it up).
	Break(ctx context.Context, key string) error
}

// Claim holds key with a Consul session of ttl (renewed at half of it;
// Consul lets a session lapse between ttl and twice ttl after its last
// renewal) whose key is deleted with it.
func (c *Consul) Claim(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, []byte, <-chan struct{}, error) {
	var held bool
	var holder []byte
	var session *api.Session
	var id string
	err := c.doServer(ctx, "claim", key, true, func(ctx context.Context, idx int) error {
		s, kv := c.sessions[idx], c.kvs[idx]
		wo := (&api.WriteOptions{}).WithContext(ctx)
		sid, _, err := s.Create(&api.SessionEntry{Name: "tartan " + key, TTL: ttl.String(), Behavior: api.SessionBehaviorDelete, LockDelay: time.Second}, wo)
		if err != nil {
			return err
		}
		ok, _, err := kv.Acquire(&api.KVPair{Key: c.prefix + key, Value: value, Session: sid}, wo)
		if err == nil && ok {
			held, session, id = true, s, sid
			return nil
		}
		_, _ = s.Destroy(sid, wo)
		if err != nil {
			return err
		}
		p, _, err := kv.Get(c.prefix+key, c.query(ctx))
		if err != nil {
			return err
		}
		if p != nil {
			holder = p.Value
		}
		return nil
	})
	if err != nil || !held {
		return false, holder, nil, err
	}
	lost := make(chan struct{})
	go func() {
		// RenewPeriodic returns when the session is gone (lost) or, having
		// destroyed it, when ctx ends.
		_ = session.RenewPeriodic(ttl.String(), id, (&api.WriteOptions{}).WithContext(ctx), ctx.Done())
		if ctx.Err() == nil {
			close(lost)
		}
	}()
	return true, nil, lost, nil
}

// Break destroys the session that holds key (its key goes with it).
func (c *Consul) Break(ctx context.Context, key string) error {
	return c.doServer(ctx, "break claim", key, true, func(ctx context.Context, idx int) error {
		p, _, err := c.kvs[idx].Get(c.prefix+key, c.query(ctx))
		if err != nil || p == nil || p.Session == "" {
			return err
		}
		_, err = c.sessions[idx].Destroy(p.Session, (&api.WriteOptions{}).WithContext(ctx))
		return err
	})
}

// claim is one claim of the memory store.
type claim struct {
	value []byte
	end   chan struct{} // closed when the claim is broken
}

// memoryClaims gives the memory store claims that last while their
// context does, for tests: a claim "lapses" when its ctx ends or it is
// broken.
type memoryClaims struct {
	mu     sync.Mutex
	claims map[string]*claim
}

// Claim holds key until ctx ends or Break.
func (m *Memory) Claim(ctx context.Context, key string, value []byte, _ time.Duration) (bool, []byte, <-chan struct{}, error) {
	mc := &m.claims
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.claims == nil {
		mc.claims = map[string]*claim{}
	}
	if cur, ok := mc.claims[key]; ok {
		return false, cur.value, nil, nil
	}
	c := &claim{value: value, end: make(chan struct{})}
	mc.claims[key] = c
	lost := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-c.end:
			close(lost)
		}
		mc.mu.Lock()
		if mc.claims[key] == c {
			delete(mc.claims, key)
		}
		mc.mu.Unlock()
	}()
	return true, nil, lost, nil
}

// Break ends the claim on key.
func (m *Memory) Break(_ context.Context, key string) error {
	mc := &m.claims
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if c, ok := mc.claims[key]; ok {
		delete(mc.claims, key)
		close(c.end)
	}
	return nil
}

// ClaimsOf is the store's Claims, or an error saying why it has none
// (the embedded store is one host's: nothing to tell apart there).
func ClaimsOf(s Store) (Claims, error) {
	for {
		if c, ok := s.(Claims); ok {
			return c, nil
		}
		u, ok := s.(interface{ Unwrap() Store })
		if !ok {
			return nil, fmt.Errorf("%s: %w", s, errNoClaims)
		}
		s = u.Unwrap()
	}
}

var errNoClaims = errors.New("this store holds no claims (one host's own store)")
