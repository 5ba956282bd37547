package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
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
// same one; the whole block list is read only when
// probing finds nothing, and every address of the pool only when every block
// is taken (borrowing).

// probes is how many free-looking blocks a claim tries before it reads the
// pool's whole block list; window is how many of the first free ones its
// second probe picks among (doubling at each probe after).
const (
	probes = 8
	window = 64
)

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
	routed  int8 // 0: not known yet, 1: vxlan or host-gw, -1: macvlan
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

func (m *IPAM) requestAddress(ctx context.Context, r AddressRequest) (netip.Addr, error) {
	cidr := r.Pool.CIDR.String()
	kind := KindFor(r)
	mac := r.Options[OptMACAddress]
	var got netip.Addr
	anyGateway := false
	err := kv.Retry(ctx, func() error {
		pc, err := m.cache(ctx, cidr)
		if err != nil {
			return err
		}
		ip, want, err := m.choose(ctx, pc, r.Address, kind, anyGateway)
		if err != nil {
			return err
		}
		if !ip.IsValid() {
			return kv.ErrRetry // a block changed hands; look again
		}
		rec := kv.Address{IP: ip.String(), Pool: cidr, Host: m.cfg.Host, Kind: kind, MAC: mac, Created: m.cfg.Now().UTC()}
		err = m.create(ctx, pc, rec)
		if err == nil {
			m.log.WithFields(logrus.Fields{"pool": cidr, "ip": ip, "kind": kind}).Debug("address allocated")
			got = ip
			return m.noteGateway(ctx, pc, kind, ip)
		}
		if !errors.Is(err, kv.ErrConflict) {
			if !want {
				pc.mark(ip, false)
			}
			return err
		}
		var cur kv.Address
		var derr *kv.DecodeError
		if _, gerr := kv.GetJSON(ctx, m.store, kv.AddressPath(cidr, rec.IP), &cur); gerr != nil {
			if errors.As(gerr, &derr) && !want {
				// The key exists, so its address is taken whatever the
				// value says: look further.
				m.skipped(derr)
				pc.mark(ip, true)
				return kv.ErrRetry
			}
			if errors.Is(gerr, kv.ErrNotFound) {
				// The address is free: the pool record changed (a
				// gateway noted, a release begun). Read it again.
				pc.mark(ip, false)
				pc.mu.Lock()
				err := m.readPool(ctx, pc)
				pc.mu.Unlock()
				if err != nil {
					return err
				}
				return kv.ErrRetry
			}
			return gerr
		}
		pc.mark(ip, true)
		if m.confirms(cur, rec) {
			got = ip
			return m.noteGateway(ctx, pc, kind, ip)
		}
		// The swarm manager allocates in the global space, without MACs:
		// its replays confirm, and the node that runs the task (which asks
		// in either space, with the task's MAC) takes the address over so
		// that every other host routes it there.
		swarm := kind == kv.KindEndpoint && cur.Kind == kv.KindEndpoint &&
			(r.Pool.Space == GlobalSpace || (cur.MAC == "" && want))
		if swarm {
			if mac == "" {
				got = ip
				return nil
			}
			if err := m.takeOver(ctx, pc, rec); err != nil {
				if errors.Is(err, kv.ErrConflict) {
					return kv.ErrRetry
				}
				return err
			}
			got = ip
			return nil
		}
		if want && r.Address == "" && kind == kv.KindGateway && cur.Kind == kv.KindEndpoint {
			// Docker chose the default gateway, and a container holds
			// it: an engine that needs no gateway for this network
			// (Docker 28's GwAllocCheck) created it first, on this host
			// or another, and its IPAM handed the first address out. An
			// older engine still asks; any free address serves it, as
			// the networks that skip never route through it.
			anyGateway = true
			return kv.ErrRetry
		}
		if want {
			return errdefs.InUse("address %s is already in use (%s on host %s): pick another address or leave it out", ip, cur.Kind, cur.Host)
		}
		return kv.ErrRetry
	})
	if errors.Is(err, kv.ErrRetry) {
		return netip.Addr{}, fmt.Errorf("allocate in pool %s: too many concurrent allocations: %w", cidr, err)
	}
	return got, err
}

// choose is the address a request asks for (want: the gateway or an address
// given) or one picked for it, marked as being taken. A gateway request with
// no address takes the pool's gateway, or else its first usable address, or
// else (anyGateway: a container holds the first) any free one.
func (m *IPAM) choose(ctx context.Context, pc *poolCache, address, kind string, anyGateway bool) (ip netip.Addr, want bool, err error) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if address == "" && kind == kv.KindGateway {
		address = pc.gateway
		if address == "" && !anyGateway {
			address = pc.layout.FirstUsable().String()
		}
	}
	if address == "" {
		ip, err = m.pickLocked(ctx, pc)
		return ip, false, err
	}
	ip, err = netip.ParseAddr(address)
	if err != nil || ip.Zone() != "" || ip.Is4In6() || ip.Is4() != pc.layout.Pool.Addr().Is4() {
		return netip.Addr{}, true, errdefs.Invalid("address %q is not an address of pool %s's family (IPv4 or IPv6)", address, pc.cidr)
	}
	if !pc.layout.Usable(ip) {
		return netip.Addr{}, true, errdefs.Invalid("address %s is outside pool %s (or is its network or broadcast address): pick an address inside the subnet", ip, pc.cidr)
	}
	return ip, true, nil
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

// create writes a new address record, and its route exception when it is an
// endpoint outside this host's blocks, in one transaction that also checks
// that the pool record is still the one the cache read.
func (m *IPAM) create(ctx context.Context, pc *poolCache, rec kv.Address) error {
	ip, _ := netip.ParseAddr(rec.IP)
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	pc.mu.Lock()
	ops := []kv.Op{{Key: kv.AddressPath(pc.cidr, rec.IP), Value: b}, {Key: kv.PoolPath(pc.cidr), Version: pc.version, Check: true}}
	if rec.Kind == kv.KindEndpoint && !pc.ownsLocked(ip) {
		ops = append(ops, kv.Op{Key: kv.ExceptionPath(pc.cidr, rec.IP), Value: b, Version: kv.Any})
	}
	pc.mu.Unlock()
	_, err = m.store.Txn(ctx, ops)
	return err
}

// pickLocked chooses a free address: first in this host's blocks, then in a
// newly claimed block, and when every block is taken, anywhere in the pool
// (a borrowed address, routed as a /32). It marks it taken. An invalid
// address with a nil error means "state changed, look again". Called with
// pc.mu held.
func (m *IPAM) pickLocked(ctx context.Context, pc *poolCache) (netip.Addr, error) {
	now := m.cfg.Now()
	blocks := make([]netip.Prefix, 0, len(pc.own))
	for b := range pc.own {
		blocks = append(blocks, b)
	}
	slices.SortFunc(blocks, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	for _, b := range blocks {
		a, ok := pc.layout.FreeIn(b, pc.used)
		if !ok {
			continue
		}
		if ob := pc.own[b]; !ob.expires.After(now) {
			// Our own lease ran out but nobody took it: take it back.
			// Only a lost race means "look again"; any other error
			// (store down, access denied) is the answer.
			if err := m.leaseLocked(ctx, pc, b, ob.version); errors.Is(err, kv.ErrConflict) {
				delete(pc.own, b)
				return netip.Addr{}, nil
			} else if err != nil {
				return netip.Addr{}, err
			}
		}
		pc.used[a] = true
		return a, nil
	}
	b, full, err := m.claimLocked(ctx, pc)
	if err != nil {
		return netip.Addr{}, err
	}
	var a netip.Addr
	switch {
	case full:
		if a, err = m.borrowLocked(ctx, pc); err != nil {
			return netip.Addr{}, err
		}
	case b.IsValid():
		a, _ = pc.layout.FreeIn(b, pc.used)
	}
	if a.IsValid() {
		pc.used[a] = true
	}
	return a, nil
}

// leaseLocked takes block b for this host, or renews its lease, by
// compare-and-set over version (0: the block must be free). Called with
// pc.mu held.
func (m *IPAM) leaseLocked(ctx context.Context, pc *poolCache, b netip.Prefix, version uint64) error {
	blk := kv.Block{CIDR: b.String(), Pool: pc.cidr, Host: m.cfg.Host, Expires: m.cfg.Now().Add(m.cfg.LeaseTTL).UTC()}
	_, mine := pc.own[b]
	var v uint64
	var err error
	if mine {
		v, err = kv.PutJSON(ctx, m.store, kv.BlockPath(pc.cidr, blk.CIDR), blk, version)
	} else {
		v, err = m.writeBlock(ctx, blk, version)
	}
	if err != nil {
		return err
	}
	if !mine {
		m.log.WithFields(logrus.Fields{"pool": pc.cidr, "block": blk.CIDR, "expires": blk.Expires}).Info("block claimed")
	}
	pc.own[b] = ownBlock{version: v, expires: blk.Expires}
	delete(pc.taken, b)
	return nil
}

// claimLocked claims a new block for this host and returns it; an invalid
// prefix means "look again", full that every block is held. Called with
// pc.mu held.
func (m *IPAM) claimLocked(ctx context.Context, pc *poolCache) (b netip.Prefix, full bool, err error) {
	for probe := range probes {
		// The lowest free block first (a quiet pool fills in order), then
		// at random among the first free ones, in a window that doubles
		// with every race lost: hosts that lost the same race spread out
		// instead of meeting again.
		free := pc.freeBlocks(window << probe)
		if len(free) == 0 {
			break
		}
		b := free[0]
		if probe > 0 {
			b = free[rand.IntN(len(free))]
		}
		err := m.leaseLocked(ctx, pc, b, 0)
		if err == nil {
			return b, false, nil
		}
		if !errors.Is(err, kv.ErrConflict) {
			return netip.Prefix{}, false, err
		}
		var cur kv.Block
		v, gerr := kv.GetJSON(ctx, m.store, kv.BlockPath(pc.cidr, b.String()), &cur)
		var derr *kv.DecodeError
		switch {
		case errors.Is(gerr, kv.ErrNotFound):
		case errors.As(gerr, &derr):
			pc.taken[b] = true
		case gerr != nil:
			return netip.Prefix{}, false, gerr
		case cur.Host == m.cfg.Host:
			pc.own[b] = ownBlock{version: v, expires: cur.Expires} // an earlier claim whose answer was lost
			return b, false, nil
		default:
			pc.taken[b] = true
		}
	}
	// Probing found nothing free: read every block and host once, and
	// take a free block or one whose host is gone.
	live, err := kv.ReadLiveness(ctx, m.store, m.cfg.Witness, m.cfg.Now(), m.cfg.LeaseTTL, m.skipped)
	if err != nil {
		return netip.Prefix{}, false, err
	}
	if err := m.readBlocks(ctx, pc, &live); err != nil {
		return netip.Prefix{}, false, err
	}
	free := pc.freeBlocks(window << probes)
	if len(free) == 0 {
		return netip.Prefix{}, true, nil
	}
	b = free[rand.IntN(len(free))]
	var cur kv.Block
	v, err := kv.GetJSON(ctx, m.store, kv.BlockPath(pc.cidr, b.String()), &cur)
	if err != nil && !errors.Is(err, kv.ErrNotFound) {
		return netip.Prefix{}, false, err
	}
	if err := m.leaseLocked(ctx, pc, b, v); errors.Is(err, kv.ErrConflict) {
		return netip.Prefix{}, false, nil
	} else if err != nil {
		return netip.Prefix{}, false, err
	}
	return b, false, nil
}

// freeBlocks is up to n of the first blocks of the range that are neither
// this host's nor known to be held, in order.
func (pc *poolCache) freeBlocks(n int) []netip.Prefix {
	var out []netip.Prefix
	pc.layout.Blocks(func(b netip.Prefix) bool {
		if _, own := pc.own[b]; !own && !pc.taken[b] && pc.layout.hasAllocatable(b) {
			out = append(out, b)
		}
		return len(out) < n
	})
	return out
}

// borrowLocked finds a free address anywhere in the pool when every block
// is held: it reads every address of the pool (the one path that does).
// Called with pc.mu held.
func (m *IPAM) borrowLocked(ctx context.Context, pc *poolCache) (netip.Addr, error) {
	used, err := m.usedAddresses(ctx, pc.cidr)
	if err != nil {
		return netip.Addr{}, err
	}
	var borrowed netip.Addr
	pc.layout.addrs(pc.layout.Range, func(a netip.Addr) bool {
		if !used[a] && !pc.used[a] {
			borrowed = a
			return false
		}
		return true
	})
	if !borrowed.IsValid() {
		return netip.Addr{}, errdefs.InUse("pool %s is full (%d addresses in use): use a larger --subnet", pc.cidr, len(used))
	}
	return borrowed, nil
}

// takeOver makes this host the holder of an address the swarm manager
// allocated (a task or node attachment that runs here), with the route
// exception that sends every other host to it.
func (m *IPAM) takeOver(ctx context.Context, pc *poolCache, rec kv.Address) error {
	ip, _ := netip.ParseAddr(rec.IP)
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	err = kv.Retry(ctx, func() error {
		var cur kv.Address
		v, err := kv.GetJSON(ctx, m.store, kv.AddressPath(pc.cidr, rec.IP), &cur)
		if err != nil && !errors.Is(err, kv.ErrNotFound) {
			return err
		}
		if err == nil && cur.Host == rec.Host && cur.MAC == rec.MAC {
			return nil
		}
		pc.mu.Lock()
		exc := kv.Op{Key: kv.ExceptionPath(pc.cidr, rec.IP), Value: b, Version: kv.Any}
		if pc.ownsLocked(ip) {
			exc = kv.Op{Key: exc.Key, Delete: true}
		}
		pc.mu.Unlock()
		_, err = m.store.Txn(ctx, []kv.Op{{Key: kv.AddressPath(pc.cidr, rec.IP), Value: b, Version: v}, exc})
		if err == nil {
			m.log.WithFields(logrus.Fields{"pool": pc.cidr, "ip": rec.IP, "mac": rec.MAC}).Debug("address taken over from the swarm allocator")
		}
		return kv.RetryOnConflict(err)
	})
	if err != nil {
		return fmt.Errorf("take over address %s: %w", rec.IP, err)
	}
	return nil
}

// routed says whether the pool's network is a routed one (vxlan, host-gw).
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
		pc.routed = map[bool]int8{true: 1, false: -1}[routed]
		pc.mu.Unlock()
	}
	return routed
}

// RenewLeases extends every block lease of this host that has used more than
// half of its lifetime. The plugin calls it periodically. The blocks of the
// pools the host allocates in are known; every pool's blocks are read only
// every quarter lease lifetime (and first), for blocks of pools this run has
// not allocated in yet.
func (m *IPAM) RenewLeases(ctx context.Context) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	now := m.cfg.Now()
	m.mu.Lock()
	scan := m.scanned.IsZero() || now.Sub(m.scanned) >= m.cfg.LeaseTTL/4
	caches := make([]*poolCache, 0, len(m.cached))
	for _, pc := range m.cached {
		caches = append(caches, pc)
	}
	m.mu.Unlock()
	if err := m.trimFeed(ctx); err != nil {
		return err
	}
	if scan {
		if err := m.renewAll(ctx, now); err != nil {
			return err
		}
		m.mu.Lock()
		m.scanned = now
		m.mu.Unlock()
	}
	var errs []error
	for _, pc := range caches {
		pc.mu.Lock()
		for b, ob := range pc.own {
			if ob.expires.Sub(now) > m.cfg.LeaseTTL/2 {
				continue
			}
			if err := m.leaseLocked(ctx, pc, b, ob.version); errors.Is(err, kv.ErrConflict) {
				// Changed meanwhile: by this host's full renewal, or
				// taken by another host while this one was away.
				var cur kv.Block
				v, gerr := kv.GetJSON(ctx, m.store, kv.BlockPath(pc.cidr, b.String()), &cur)
				switch {
				case gerr == nil && cur.Host == m.cfg.Host:
					pc.own[b] = ownBlock{version: v, expires: cur.Expires}
				case gerr == nil || errors.Is(gerr, kv.ErrNotFound):
					delete(pc.own, b)
				default:
					errs = append(errs, gerr)
				}
			} else if err != nil {
				errs = append(errs, err)
			}
		}
		pc.mu.Unlock()
	}
	return errors.Join(errs...)
}

// renewAll renews this host's blocks in every pool of the cluster.
func (m *IPAM) renewAll(ctx context.Context, now time.Time) error {
	pools, err := m.pools(ctx)
	if err != nil {
		return err
	}
	for cidr := range pools {
		_, err := kv.ListJSON(ctx, m.store, kv.BlockPrefix(cidr), func(_ string, ver uint64, b kv.Block) error {
			if b.Host != m.cfg.Host || b.Expires.Sub(now) > m.cfg.LeaseTTL/2 {
				return nil
			}
			p, perr := netip.ParsePrefix(b.CIDR)
			if perr != nil {
				return nil
			}
			blk := kv.Block{CIDR: b.CIDR, Pool: cidr, Host: m.cfg.Host, Expires: now.Add(m.cfg.LeaseTTL).UTC()}
			v, err := kv.PutJSON(ctx, m.store, kv.BlockPath(cidr, b.CIDR), blk, ver)
			if errors.Is(err, kv.ErrConflict) {
				return nil
			}
			if err != nil {
				return err
			}
			m.mu.Lock()
			pc := m.cached[cidr]
			m.mu.Unlock()
			if pc != nil {
				pc.mu.Lock()
				pc.own[p] = ownBlock{version: v, expires: blk.Expires}
				pc.mu.Unlock()
			}
			return nil
		}, m.skipped)
		if err != nil {
			return err
		}
	}
	return nil
}

// ReleaseAddressBefore is ReleaseAddress for a release retried later: it
// frees the record only if it was made before the release was first asked
// for (not zero), so that a retry never frees a newer allocation of the
// same address. The address's route exception goes with it.
func (m *IPAM) ReleaseAddressBefore(ctx context.Context, id PoolID, address string, before time.Time) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	ip, err := netip.ParseAddr(address)
	if err != nil {
		return errdefs.Invalid("address %q is not an IP address", address)
	}
	cidr := id.CIDR.String()
	return kv.Retry(ctx, func() error {
		var a kv.Address
		v, err := kv.GetJSON(ctx, m.store, kv.AddressPath(cidr, ip.String()), &a)
		if errors.Is(err, kv.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("release address %s: %w", ip, err)
		}
		if a.Kind != kv.KindEndpoint || (!before.IsZero() && !a.Created.Before(before)) {
			return nil
		}
		// In the global space the swarm manager releases what it
		// allocated (no MAC), and the node running a task what it took
		// over; the manager's release of a task a node still runs waits
		// for that node's own.
		if a.Host != m.cfg.Host && (id.Space != GlobalSpace || a.MAC != "") {
			if id.Space != GlobalSpace {
				m.log.WithFields(logrus.Fields{"ip": ip, "owner": a.Host}).Warn("not releasing an address another host holds")
			}
			return nil
		}
		if err := m.deleteAddress(ctx, cidr, ip.String(), v); err != nil {
			return kv.RetryOnConflict(fmt.Errorf("release address %s: %w", ip, err))
		}
		return nil
	})
}

// deleteAddress removes an address record read at version, with its route
// exception. The host's view of the pool learns that it is free.
func (m *IPAM) deleteAddress(ctx context.Context, cidr, ip string, version uint64) error {
	_, err := m.store.Txn(ctx, []kv.Op{{Key: kv.AddressPath(cidr, ip), Delete: true, Version: version}, {Key: kv.ExceptionPath(cidr, ip), Delete: true}})
	if err != nil {
		return err
	}
	m.mu.Lock()
	pc := m.cached[cidr]
	m.mu.Unlock()
	if a, perr := netip.ParseAddr(ip); perr == nil && pc != nil {
		pc.mark(a, false)
	}
	return nil
}

// feedWrite is a block feed entry this host wrote.
type feedWrite struct {
	key     string
	version uint64
	at      time.Time
}

// writeBlock writes a block that changes hands (a claim) at version, with
// its feed entry in the same transaction.
func (m *IPAM) writeBlock(ctx context.Context, blk kv.Block, version uint64) (uint64, error) {
	return m.changeBlock(ctx, blk, kv.Op{Key: kv.BlockPath(blk.Pool, blk.CIDR), Version: version}, false)
}

// dropBlock removes a block read at version, with its feed entry.
func (m *IPAM) dropBlock(ctx context.Context, pool string, blk kv.Block, version uint64) error {
	blk.Pool = pool
	_, err := m.changeBlock(ctx, blk, kv.Op{Key: kv.BlockPath(pool, blk.CIDR), Delete: true, Version: version}, true)
	return err
}

func (m *IPAM) changeBlock(ctx context.Context, blk kv.Block, op kv.Op, deleted bool) (uint64, error) {
	now := m.cfg.Now().UTC()
	entry, err := json.Marshal(kv.BlockChange{Block: blk, Deleted: deleted, At: now})
	if err != nil {
		return 0, err
	}
	if !deleted {
		if op.Value, err = json.Marshal(blk); err != nil {
			return 0, err
		}
	}
	feed := kv.BlockFeedPath(blk.Pool, blk.CIDR)
	v, err := m.store.Txn(ctx, []kv.Op{op, {Key: feed, Value: entry, Version: kv.Any}})
	if err != nil {
		return 0, err
	}
	m.mu.Lock()
	m.feed = append(m.feed, feedWrite{key: feed, version: v, at: now})
	m.mu.Unlock()
	return v, nil
}

// trimFeed removes the feed entries this host wrote that are older than
// kv.FeedRetention, in as few transactions as it can (each wakes every
// watcher of the feed). An entry rewritten since (another host claimed the
// block) is left to its writer.
func (m *IPAM) trimFeed(ctx context.Context) error {
	now := m.cfg.Now()
	m.mu.Lock()
	var due, keep []feedWrite
	for _, f := range m.feed {
		if now.Sub(f.at) >= kv.FeedRetention {
			due = append(due, f)
		} else {
			keep = append(keep, f)
		}
	}
	m.feed = keep
	m.mu.Unlock()
	var errs []error
	for chunk := range slices.Chunk(due, kv.MaxTxnOps) {
		ops := make([]kv.Op, 0, len(chunk))
		for _, f := range chunk {
			ops = append(ops, kv.Op{Key: f.key, Delete: true, Version: f.version})
		}
		if _, err := m.store.Txn(ctx, ops); errors.Is(err, kv.ErrConflict) {
			for _, op := range ops {
				if err := m.store.Delete(ctx, op.Key, op.Version); err != nil && !errors.Is(err, kv.ErrConflict) {
					errs = append(errs, err)
				}
			}
		} else if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
