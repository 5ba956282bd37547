package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/kv"
)

// A container start must not read what grows with the cluster. The host
// keeps, per pool it allocates in, the pool's fixed layout, its own blocks
// and the addresses it knows are taken in them (poolCache). It is a hint,
// kept true by the store: every allocation is a transaction that creates the
// address key and checks that the pool record is as the cache read it; an
// address another host or an earlier run holds fails the create and is
// learnt. A new block is the lowest free one, and after a lost race one at
// random among the first free ones (as flannel picks among its first 100
// free subnets), so that hosts joining at once do not keep racing for the
// same one; the whole block list is read only when probing finds nothing,
// and every address of the pool only when every block is taken (borrowing).
// The claim and lease of blocks are in block.go, the allocation of addresses
// in address.go, the block feed in feed.go.

// ownBlock is one of this host's blocks: the version of its record and when
// its lease runs out.
type ownBlock struct {
	version uint64
	expires time.Time
}

// poolCache is this host's view of one pool. mu serialises the host's
// allocations in the pool: concurrent starts never pick the same address.
type poolCache struct {
	mu      sync.Mutex
	cidr    string
	layout  Layout
	version uint64 // of the pool record the fields below were read from
	gateway string
	routed  int8 // 0: not known yet, 1: routed (vxlan, host-gw, wireguard), -1: macvlan
	own     map[netip.Prefix]ownBlock
	used    map[netip.Addr]bool   // taken (or being taken) in own blocks
	taken   map[netip.Prefix]bool // blocks other hosts hold, last seen
}

// SetLocal tells the IPAM what this host's endpoints hold, so that a pool
// it loads after a restart starts with their addresses taken.
func (m *IPAM) SetLocal(h Holding) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.local = h
}

// forget drops the host's view of a pool (it released it).
func (m *IPAM) forget(cidr string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cached, cidr)
}

// cache is the host's view of a pool, loaded on first use: the pool record,
// the pool's block list (once) and its route exceptions (the addresses other
// hosts borrowed, some maybe from this host's blocks).
func (m *IPAM) cache(ctx context.Context, cidr string) (*poolCache, error) {
	m.mu.Lock()
	pc, local := m.cached[cidr], m.local
	m.mu.Unlock()
	if pc != nil {
		return pc, nil
	}
	pc = &poolCache{cidr: cidr, own: map[netip.Prefix]ownBlock{}, used: map[netip.Addr]bool{}, taken: map[netip.Prefix]bool{}}
	if err := m.readPool(ctx, pc); err != nil {
		return nil, err
	}
	if err := m.readBlocks(ctx, pc, nil); err != nil {
		return nil, err
	}
	if _, err := kv.ListJSON(ctx, m.store, kv.ExceptionPrefix(cidr), func(_ string, _ uint64, a kv.Address) error {
		if ip, err := netip.ParseAddr(a.IP); err == nil {
			pc.used[ip] = true
		}
		return nil
	}, m.skipped); err != nil {
		return nil, err
	}
	if local != nil {
		for ip := range local()[cidr] {
			if a, err := netip.ParseAddr(ip); err == nil {
				pc.used[a] = true
			}
		}
	}
	if gw, err := netip.ParseAddr(pc.gateway); err == nil {
		pc.used[gw] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur := m.cached[cidr]; cur != nil {
		return cur, nil
	}
	m.cached[cidr] = pc
	return pc, nil
}

// readPool reads the pool record into pc. Called with pc.mu held, or before
// pc is shared.
func (m *IPAM) readPool(ctx context.Context, pc *poolCache) error {
	var p kv.Pool
	v, err := kv.GetJSON(ctx, m.store, kv.PoolPath(pc.cidr), &p)
	if errors.Is(err, kv.ErrNotFound) {
		m.forget(pc.cidr)
		return errdefs.Invalid("pool %s is not registered (it was released): recreate the network", pc.cidr)
	}
	if err != nil {
		return err
	}
	if p.Releasing {
		return errdefs.Invalid("pool %s is being released (its network was removed on its last host): recreate the network", pc.cidr)
	}
	layout, err := poolLayout(p)
	if err != nil {
		return fmt.Errorf("pool record %s is corrupt: %w", pc.cidr, err)
	}
	pc.layout, pc.version, pc.gateway = layout, v, p.Gateway
	return nil
}

func poolLayout(p kv.Pool) (Layout, error) {
	pool, err := netip.ParsePrefix(p.CIDR)
	if err != nil {
		return Layout{}, err
	}
	var rng netip.Prefix
	if p.Range != "" {
		if rng, err = netip.ParsePrefix(p.Range); err != nil {
			return Layout{}, err
		}
	}
	return NewLayout(pool, rng, p.BlockBits)
}

// readBlocks reads the pool's block list into pc: its own blocks and those
// other hosts hold. With live (the hosts' liveness), blocks whose lease
// ran out and whose host is gone are not counted as held. Called with pc.mu
// held, or before pc is shared.
func (m *IPAM) readBlocks(ctx context.Context, pc *poolCache, live *kv.Liveness) error {
	own, taken := map[netip.Prefix]ownBlock{}, map[netip.Prefix]bool{}
	_, err := kv.ListJSON(ctx, m.store, kv.BlockPrefix(pc.cidr), func(_ string, ver uint64, b kv.Block) error {
		b.Pool = pc.cidr // the pool it is listed under (the witness's key)
		p, err := netip.ParsePrefix(b.CIDR)
		if err != nil {
			return nil
		}
		switch {
		case b.Host == m.cfg.Host:
			own[p] = ownBlock{version: ver, expires: b.Expires}
		case live == nil:
			taken[p] = true
		default:
			if live.BlockSeen == nil {
				live.BlockSeen = map[string]time.Time{}
			}
			live.BlockSeen[kv.BlockPath(b.Pool, b.CIDR)] = m.cfg.Witness.Block(b, live.Now)
			if live.BlockAlive(b) {
				taken[p] = true
			}
		}
		return nil
	}, func(e *kv.DecodeError) {
		m.skipped(e)
		// Its owner is unknown: never claimed, never handed out from.
		if p, err := kv.PrefixFromKey(e.Key[len(kv.BlockPrefix(pc.cidr)):]); err == nil {
			taken[p] = true
		}
	})
	if err != nil {
		return err
	}
	pc.own, pc.taken = own, taken
	return nil
}

// mark records whether ip is taken.
func (pc *poolCache) mark(ip netip.Addr, used bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if used {
		pc.used[ip] = true
	} else {
		delete(pc.used, ip)
	}
}

// ownsLocked says whether ip lies in one of this host's blocks, so that
// routes to the block reach it. Called with pc.mu held.
func (pc *poolCache) ownsLocked(ip netip.Addr) bool {
	_, ok := pc.own[pc.layout.BlockOf(ip)]
	return ok
}

// routed says whether the pool's network is a routed one (vxlan, host-gw,
// wireguard): any backend but BackendBridged.
// Before the driver has recorded the network, it is taken as routed.
func (m *IPAM) routed(ctx context.Context, cidr string) bool {
	m.mu.Lock()
	pc := m.cached[cidr]
	m.mu.Unlock()
	if pc != nil {
		pc.mu.Lock()
		r := pc.routed
		pc.mu.Unlock()
		if r != 0 {
			return r > 0
		}
	}
	var n kv.PoolNetwork
	if _, err := kv.GetJSON(ctx, m.store, kv.NetworkPath(cidr), &n); err != nil {
		return true
	}
	routed := n.Backend != BackendBridged
	if pc != nil {
		pc.mu.Lock()
		pc.routed = -1
		if routed {
			pc.routed = 1
		}
		pc.mu.Unlock()
	}
	return routed
}
