// Package ipam is tartan's IPAM driver: pools registered once in the cluster,
// per-host blocks leased by compare-and-set, and addresses handed out from the
// host's blocks. Allocation decisions live in alloc.go, free of I/O.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/kv"
)

// Address spaces tartan announces to Docker.
const (
	LocalSpace  = "tartan-local"
	GlobalSpace = "tartan-global"
)

// Option and Docker option names the IPAM driver reads.
const (
	OptBlockSize    = "tartan.blocksize"
	OptRequestType  = "RequestAddressType"
	OptMACAddress   = "com.docker.network.endpoint.macaddress"
	GatewayType     = "com.docker.network.gateway"
	dockerOptPrefix = "com.docker."
)

// Config holds the IPAM settings.
type Config struct {
	Host      string        // this host's ID
	AutoRange netip.Prefix  // pools without --subnet come from here
	AutoBits  int           // prefix length of automatic pools
	LeaseTTL  time.Duration // block lease lifetime
	Now       func() time.Time
	// Taken, when set, says whether a prefix is in use on this host outside
	// tartan (the plugin passes a check against the host's routes): an
	// automatic pool there would capture LAN, VPN or Docker bridge
	// destinations with more specific routes, so such candidates are skipped.
	// Docker's own exclusion list (its on-link routes) never reaches a
	// remote IPAM: the RequestPool wire request has no such field, and
	// Docker applies the list itself by asking again for local pools.
	Taken func(netip.Prefix) bool
}

// IPAM implements the allocation half of tartan.
type IPAM struct {
	store kv.Store
	cfg   Config
	log   logrus.FieldLogger
}

// New returns an IPAM over store.
func New(store kv.Store, cfg Config, log logrus.FieldLogger) *IPAM {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 24 * time.Hour
	}
	return &IPAM{store: store, cfg: cfg, log: log}
}

// PoolID is what Docker holds for a pool: its address space and CIDR.
type PoolID struct {
	Space string
	CIDR  netip.Prefix
}

func (p PoolID) String() string {
	s := "local"
	if p.Space == GlobalSpace {
		s = "global"
	}
	return s + ":" + p.CIDR.String()
}

// ParsePoolID reads a pool ID made by String.
func ParsePoolID(s string) (PoolID, error) {
	space, cidr, ok := strings.Cut(s, ":")
	p, err := netip.ParsePrefix(cidr)
	if !ok || err != nil || (space != "local" && space != "global") {
		return PoolID{}, kv.Invalid("pool ID %q was not made by tartan's IPAM: create the network with --ipam-driver tartan:latest", s)
	}
	id := PoolID{Space: LocalSpace, CIDR: p}
	if space == "global" {
		id.Space = GlobalSpace
	}
	return id, nil
}

func (m *IPAM) holder(space string) string { return m.cfg.Host + "/" + space }

// PoolRequest is a RequestPool call.
type PoolRequest struct {
	Space   string
	Pool    string
	SubPool string
	Options map[string]string
	V6      bool
}

// RequestPool registers (or joins) a pool and returns its ID.
func (m *IPAM) RequestPool(ctx context.Context, r PoolRequest) (PoolID, error) {
	if r.V6 {
		return PoolID{}, kv.ErrNoIPv6
	}
	if r.Space != LocalSpace && r.Space != GlobalSpace {
		return PoolID{}, kv.Invalid("address space %q is not tartan's: use %s or %s", r.Space, LocalSpace, GlobalSpace)
	}
	blockBits := 0
	for k, v := range r.Options {
		switch {
		case k == OptBlockSize:
			n, err := strconv.Atoi(strings.TrimPrefix(v, "/"))
			if err != nil {
				return PoolID{}, kv.Invalid("--ipam-opt %s=%q is not a prefix length: use a number such as 26", OptBlockSize, v)
			}
			blockBits = n
		case strings.HasPrefix(k, dockerOptPrefix):
		default:
			return PoolID{}, kv.Invalid("unknown --ipam-opt %q: tartan's IPAM knows %s", k, OptBlockSize)
		}
	}
	if r.Pool == "" {
		if r.SubPool != "" {
			return PoolID{}, kv.Invalid("--ip-range needs --subnet")
		}
		return m.autoPool(ctx, r.Space, blockBits)
	}
	pool, err := ParsePool("--subnet", r.Pool)
	if err != nil {
		return PoolID{}, err
	}
	var rng netip.Prefix
	if r.SubPool != "" {
		if rng, err = ParsePool("--ip-range", r.SubPool); err != nil {
			return PoolID{}, err
		}
	}
	layout, err := NewLayout(pool, rng, blockBits)
	if err != nil {
		return PoolID{}, err
	}
	if err := m.register(ctx, layout, blockBits != 0, false, r.Space); err != nil {
		return PoolID{}, err
	}
	return PoolID{Space: r.Space, CIDR: pool}, nil
}

func (m *IPAM) autoPool(ctx context.Context, space string, blockBits int) (PoolID, error) {
	if !m.cfg.AutoRange.IsValid() {
		return PoolID{}, kv.Invalid("no --subnet given and no automatic range is set: add --subnet")
	}
	for attempt := 0; attempt < 100; attempt++ {
		pools, err := m.pools(ctx)
		if err != nil {
			return PoolID{}, err
		}
		var chosen netip.Prefix
		span := Layout{Pool: m.cfg.AutoRange, Range: m.cfg.AutoRange, BlockBits: m.cfg.AutoBits}
		span.Blocks(func(p netip.Prefix) bool {
			for _, q := range pools {
				if q.Overlaps(p) {
					return true
				}
			}
			if m.excluded(p) {
				return true
			}
			chosen = p
			return false
		})
		if !chosen.IsValid() {
			return PoolID{}, kv.InUse("automatic pool range %s is used up (by tartan pools and this host's routes): give --subnet", m.cfg.AutoRange)
		}
		layout, err := NewLayout(chosen, netip.Prefix{}, blockBits)
		if err != nil {
			return PoolID{}, err
		}
		err = m.register(ctx, layout, blockBits != 0, true, space)
		if errors.Is(err, kv.ErrInUse) {
			continue // lost the race for that pool; pick another
		}
		if err != nil {
			return PoolID{}, err
		}
		return PoolID{Space: space, CIDR: chosen}, nil
	}
	return PoolID{}, fmt.Errorf("automatic pool: too many concurrent registrations: %w", kv.ErrConflict)
}

// excluded says whether an automatic pool candidate must be skipped: it
// touches a special range (AUTO_POOL may be set to anything) or something
// of this host (Config.Taken).
func (m *IPAM) excluded(p netip.Prefix) bool {
	return CheckSpecial("", p) != nil || (m.cfg.Taken != nil && m.cfg.Taken(p))
}

func (m *IPAM) pools(ctx context.Context) (map[string]netip.Prefix, error) {
	out := map[string]netip.Prefix{}
	_, err := kv.ListJSON(ctx, m.store, kv.PoolsPrefix, func(_ string, _ uint64, p kv.Pool) error {
		if c, err := netip.ParsePrefix(p.CIDR); err == nil {
			out[p.CIDR] = c
		}
		return nil
	}, func(e *kv.DecodeError) {
		m.skipped(e)
		// Its key still names the pool: keep it out of other pools' way.
		if c, err := kv.PrefixFromKey(strings.TrimPrefix(e.Key, kv.PoolsPrefix)); err == nil {
			out[c.String()] = c
		}
	})
	return out, err
}

// skipped reports a record that a listing left out because it cannot be
// read; the listing goes on without it.
func (m *IPAM) skipped(e *kv.DecodeError) {
	m.log.WithField("key", e.Key).Warnf("ignoring a record: %v", e)
}

// register creates the pool cluster-wide or joins it. Overlap checks are
// serialised through a guard key: creators read it, check, create their pool
// and then advance the guard; a creator whose guard update fails withdraws
// its pool and tries again, so two overlapping pools can never both stay.
func (m *IPAM) register(ctx context.Context, l Layout, explicitBits, auto bool, space string) error {
	key := kv.PoolPath(l.Pool.String())
	rng := ""
	if l.Range != l.Pool {
		rng = l.Range.String()
	}
	for attempt := 0; attempt < 100; attempt++ {
		var existing kv.Pool
		version, err := kv.GetJSON(ctx, m.store, key, &existing)
		if err == nil && existing.Releasing {
			// The last holder is removing it (or died doing so): finish
			// the removal, then register afresh.
			if err := m.finishRelease(ctx, l.Pool.String()); err != nil {
				return err
			}
			continue
		}
		if err == nil {
			held := existing.Holders[m.holder(space)]
			switch {
			case auto:
				// An automatic pick never joins: another network, maybe
				// on another host, picked it first.
				return kv.InUse("automatic pool %s was just taken by another network", l.Pool)
			case existing.Auto && !held:
				return kv.InUse("pool %s is already registered by another network: pick another --subnet", l.Pool)
			}
			// An explicit request for an automatic pool this host holds is
			// Docker replaying the pool it got (daemon restart).
			if existing.Range != rng {
				have := existing.Range
				if have == "" {
					have = "none"
				}
				return kv.Invalid("pool %s is registered with --ip-range %s: use the same --ip-range on every host", l.Pool, have)
			}
			if explicitBits && existing.BlockBits != l.BlockBits {
				return kv.Invalid("pool %s is registered with %s=%d: use the same value or leave it out", l.Pool, OptBlockSize, existing.BlockBits)
			}
			if held {
				m.keepFolders(ctx, l.Pool.String())
				return nil
			}
			if existing.Holders == nil {
				existing.Holders = map[string]bool{}
			}
			existing.Holders[m.holder(space)] = true
			if _, err := kv.PutJSON(ctx, m.store, key, existing, version); errors.Is(err, kv.ErrConflict) {
				continue
			} else if err != nil {
				return err
			}
			m.keepFolders(ctx, l.Pool.String())
			return nil
		}
		if !errors.Is(err, kv.ErrNotFound) {
			return err
		}
		guard, err := m.store.Get(ctx, kv.PoolsGuard)
		if err != nil && !errors.Is(err, kv.ErrNotFound) {
			return err
		}
		pools, err := m.pools(ctx)
		if err != nil {
			return err
		}
		same := false
		for cidr, p := range pools {
			if p == l.Pool {
				same = true // another host registered it just now: join it
			} else if p.Overlaps(l.Pool) {
				return kv.InUse("--subnet %s overlaps tartan pool %s that is already registered: pick a subnet outside it", l.Pool, cidr)
			}
		}
		if same {
			if auto {
				return kv.InUse("automatic pool %s was just taken by another network", l.Pool)
			}
			continue
		}
		pool := kv.Pool{CIDR: l.Pool.String(), Range: rng, BlockBits: l.BlockBits, Auto: auto,
			Holders: map[string]bool{m.holder(space): true}, Created: m.cfg.Now().UTC()}
		pv, err := kv.PutJSON(ctx, m.store, key, pool, 0)
		if errors.Is(err, kv.ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		_, err = m.store.Put(ctx, kv.PoolsGuard, []byte(pool.CIDR), guard.Version)
		if err == nil {
			m.log.WithField("pool", pool.CIDR).Info("pool registered")
			m.keepFolders(ctx, pool.CIDR)
			return nil
		}
		if derr := m.store.Delete(ctx, key, pv); derr != nil && !errors.Is(derr, kv.ErrConflict) {
			return fmt.Errorf("withdraw pool %s after a concurrent registration: %w", pool.CIDR, derr)
		}
		if !errors.Is(err, kv.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("register pool %s: too many concurrent registrations: %w", l.Pool, kv.ErrConflict)
}

// keepFolders marks the pool's block and address prefixes, which every
// host of the network watches, so that they are never empty (kv.KeepFolder).
// The markers live as long as the pool: the last holder's removal deletes
// them with the prefixes. A failure costs only wake-ups, so it is logged.
func (m *IPAM) keepFolders(ctx context.Context, cidr string) {
	for _, prefix := range []string{kv.BlockPrefix(cidr), kv.AddressPrefix(cidr)} {
		if err := kv.KeepFolder(ctx, m.store, prefix); err != nil {
			m.log.WithField("prefix", prefix).Warnf("mark the watched prefix: %v", err)
		}
	}
}

// ReleasePool drops this host's hold on the pool. The host's empty blocks
// are returned; the last holder marks the pool as being released and removes
// its blocks, addresses and network record, each by compare-and-set on the
// version it read, and the pool record last, so that a concurrent
// registration of the same subnet waits for (or finishes) the removal instead
// of losing what it writes. (Docker's own ReleasePool calls reach this only
// when no network of the host uses the pool: plugin/server.go.)
func (m *IPAM) ReleasePool(ctx context.Context, id PoolID) error {
	cidr := id.CIDR.String()
	last, gone := false, false
	_, err := kv.Update(ctx, m.store, kv.PoolPath(cidr), func(p *kv.Pool, exists bool) error {
		if !exists {
			gone = true
			return kv.ErrUnchanged
		}
		if p.Releasing {
			last = true
			return kv.ErrUnchanged
		}
		delete(p.Holders, m.holder(id.Space))
		last = len(p.Holders) == 0
		p.Releasing = last
		return nil
	})
	if err != nil {
		return fmt.Errorf("release pool %s: %w", cidr, err)
	}
	if gone {
		return nil
	}
	if last {
		m.log.WithField("pool", cidr).Info("last holder released the pool; removing it")
		return m.finishRelease(ctx, cidr)
	}
	return m.releaseEmptyBlocks(ctx, cidr)
}

// finishRelease removes a pool marked as being released: its network record
// and VNI, blocks and addresses, then the pool record. Every delete is
// compare-and-set on the version read; anyone may run it (the releaser, or a
// host registering the subnet again after the releaser died half way).
func (m *IPAM) finishRelease(ctx context.Context, cidr string) error {
	var pool kv.Pool
	pv, err := kv.GetJSON(ctx, m.store, kv.PoolPath(cidr), &pool)
	if errors.Is(err, kv.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !pool.Releasing {
		return nil
	}
	if err := kv.DeleteNetworkCAS(ctx, m.store, cidr); err != nil {
		return fmt.Errorf("remove network record of pool %s: %w", cidr, err)
	}
	for _, prefix := range []string{kv.AddressPrefix(cidr), kv.BlockPrefix(cidr)} {
		if err := kv.DeletePrefixCAS(ctx, m.store, prefix); err != nil {
			return fmt.Errorf("remove pool %s: %w", cidr, err)
		}
	}
	if err := m.store.Delete(ctx, kv.PoolPath(cidr), pv); err != nil && !errors.Is(err, kv.ErrConflict) {
		return fmt.Errorf("remove pool %s: %w", cidr, err)
	}
	return nil
}

// releaseEmptyBlocks gives back this host's blocks that hold no address.
func (m *IPAM) releaseEmptyBlocks(ctx context.Context, cidr string) error {
	st, err := m.state(ctx, cidr)
	if err != nil {
		return err
	}
	for b, blk := range st.blocks {
		if blk.block.Host != m.cfg.Host {
			continue
		}
		empty := true
		for a := range st.used {
			if b.Contains(a) {
				empty = false
				break
			}
		}
		if empty {
			if err := m.store.Delete(ctx, kv.BlockPath(cidr, b.String()), blk.version); err != nil && !errors.Is(err, kv.ErrConflict) {
				return err
			}
		}
	}
	return nil
}

type blockState struct {
	block   kv.Block
	version uint64
}

type poolState struct {
	pool    kv.Pool
	version uint64
	layout  Layout
	blocks  map[netip.Prefix]blockState
	used    map[netip.Addr]bool
	renewed map[string]time.Time // hosts' last registration renewals
	// unreadable holds blocks whose record cannot be read: their owner is
	// unknown, so they are never claimed (nor handed out from).
	unreadable map[netip.Prefix]bool
}

func (m *IPAM) state(ctx context.Context, cidr string) (*poolState, error) {
	st := &poolState{blocks: map[netip.Prefix]blockState{}, used: map[netip.Addr]bool{}, renewed: map[string]time.Time{},
		unreadable: map[netip.Prefix]bool{}}
	v, err := kv.GetJSON(ctx, m.store, kv.PoolPath(cidr), &st.pool)
	if errors.Is(err, kv.ErrNotFound) {
		return nil, kv.Invalid("pool %s is not registered (it was released): recreate the network", cidr)
	}
	if err != nil {
		return nil, err
	}
	if st.pool.Releasing {
		return nil, kv.Invalid("pool %s is being released (its network was removed on its last host): recreate the network", cidr)
	}
	st.version = v
	pool, _ := netip.ParsePrefix(st.pool.CIDR)
	var rng netip.Prefix
	if st.pool.Range != "" {
		rng, _ = netip.ParsePrefix(st.pool.Range)
	}
	if st.layout, err = NewLayout(pool, rng, st.pool.BlockBits); err != nil {
		return nil, fmt.Errorf("pool record %s is corrupt: %w", cidr, err)
	}
	if _, err := kv.ListJSON(ctx, m.store, kv.BlockPrefix(cidr), func(_ string, ver uint64, b kv.Block) error {
		if p, err := netip.ParsePrefix(b.CIDR); err == nil {
			st.blocks[p] = blockState{block: b, version: ver}
		}
		return nil
	}, func(e *kv.DecodeError) {
		m.skipped(e)
		if p, err := kv.PrefixFromKey(strings.TrimPrefix(e.Key, kv.BlockPrefix(cidr))); err == nil {
			st.unreadable[p] = true
		}
	}); err != nil {
		return nil, err
	}
	if _, err := kv.ListJSON(ctx, m.store, kv.AddressPrefix(cidr), func(_ string, _ uint64, a kv.Address) error {
		if ip, err := netip.ParseAddr(a.IP); err == nil {
			st.used[ip] = true
		}
		return nil
	}, func(e *kv.DecodeError) {
		m.skipped(e)
		// The key exists, so its address is taken whatever the value says:
		// handing it out again would only fail the create-only write.
		if ip, err := netip.ParseAddr(strings.TrimPrefix(e.Key, kv.AddressPrefix(cidr))); err == nil {
			st.used[ip] = true
		}
	}); err != nil {
		return nil, err
	}
	if _, err := kv.ListJSON(ctx, m.store, kv.HostsPrefix, func(_ string, _ uint64, h kv.Host) error {
		st.renewed[h.ID] = h.Renewed
		return nil
	}, m.skipped); err != nil {
		return nil, err
	}
	return st, nil
}

// AddressRequest is a RequestAddress call.
type AddressRequest struct {
	Pool    PoolID
	Address string
	Options map[string]string
}

// RequestAddress hands out an address, as the prefix Docker gives the
// container: the gateway and addresses on bridged (macvlan) networks carry the
// pool's mask, addresses on routed networks are /32 so that containers send
// everything through their host.
func (m *IPAM) RequestAddress(ctx context.Context, r AddressRequest) (netip.Prefix, error) {
	ip, err := m.requestAddress(ctx, r)
	if err != nil {
		return netip.Prefix{}, err
	}
	bits := 32
	if KindFor(r) != kv.KindEndpoint || !m.routed(ctx, r.Pool.CIDR.String()) {
		bits = r.Pool.CIDR.Bits()
	}
	return netip.PrefixFrom(ip, bits), nil
}

// routed says whether the pool's network is a routed one (vxlan, host-gw).
// Before the driver has recorded the network, it is taken as routed.
func (m *IPAM) routed(ctx context.Context, cidr string) bool {
	var n kv.Network
	if _, err := kv.GetJSON(ctx, m.store, kv.NetworkPath(cidr), &n); err != nil {
		return true
	}
	return n.Backend != BackendBridged
}

// BackendBridged is the backend whose containers sit on the pool's L2.
const BackendBridged = "macvlan"

func (m *IPAM) requestAddress(ctx context.Context, r AddressRequest) (netip.Addr, error) {
	cidr := r.Pool.CIDR.String()
	kind := KindFor(r)
	mac := r.Options[OptMACAddress]
	for attempt := 0; attempt < 100; attempt++ {
		st, err := m.state(ctx, cidr)
		if err != nil {
			return netip.Addr{}, err
		}
		want := r.Address
		if want == "" && kind == kv.KindGateway {
			want = st.pool.Gateway
			if want == "" {
				want = st.layout.FirstUsable().String()
			}
		}
		var ip netip.Addr
		if want != "" {
			ip, err = netip.ParseAddr(want)
			if err != nil || !ip.Is4() {
				return netip.Addr{}, kv.Invalid("address %q is not an IPv4 address", want)
			}
			if !st.layout.Usable(ip) {
				return netip.Addr{}, kv.Invalid("address %s is outside pool %s (or is its network or broadcast address): pick an address inside the subnet", ip, cidr)
			}
		} else {
			ip, err = m.pick(ctx, st)
			if err != nil {
				return netip.Addr{}, err
			}
			if !ip.IsValid() {
				continue // a block changed hands; look again
			}
		}
		rec := kv.Address{IP: ip.String(), Pool: cidr, Host: m.cfg.Host, Kind: kind, MAC: mac, Created: m.cfg.Now().UTC()}
		_, err = kv.PutJSON(ctx, m.store, kv.AddressPath(cidr, rec.IP), rec, 0)
		if errors.Is(err, kv.ErrConflict) {
			var cur kv.Address
			if _, gerr := kv.GetJSON(ctx, m.store, kv.AddressPath(cidr, rec.IP), &cur); gerr != nil {
				if errors.Is(gerr, kv.ErrNotFound) {
					continue
				}
				return netip.Addr{}, gerr
			}
			if m.confirms(cur, rec) {
				return ip, m.noteGateway(ctx, cidr, kind, ip)
			}
			// The swarm manager allocates in the global space, without
			// MACs: its replays confirm, and the node that runs the task
			// (which asks in either space, with the task's MAC) takes the
			// address over so that every other host routes it there.
			swarm := kind == kv.KindEndpoint && cur.Kind == kv.KindEndpoint &&
				(r.Pool.Space == GlobalSpace || (cur.MAC == "" && want != ""))
			if swarm {
				if mac == "" {
					return ip, nil
				}
				if err := m.takeOver(ctx, cidr, rec); err != nil {
					if errors.Is(err, kv.ErrConflict) {
						continue
					}
					return netip.Addr{}, err
				}
				return ip, nil
			}
			if want != "" {
				return netip.Addr{}, kv.InUse("address %s is already in use (%s on host %s): pick another address or leave it out", ip, cur.Kind, cur.Host)
			}
			continue
		}
		if err != nil {
			return netip.Addr{}, err
		}
		m.log.WithFields(logrus.Fields{"pool": cidr, "ip": ip, "kind": kind}).Debug("address allocated")
		return ip, m.noteGateway(ctx, cidr, kind, ip)
	}
	return netip.Addr{}, fmt.Errorf("allocate in pool %s: too many concurrent allocations: %w", cidr, kv.ErrConflict)
}

// takeOver makes this host the holder of an address the swarm manager
// allocated (a task or node attachment that runs here).
func (m *IPAM) takeOver(ctx context.Context, cidr string, rec kv.Address) error {
	_, err := kv.Update(ctx, m.store, kv.AddressPath(cidr, rec.IP), func(a *kv.Address, exists bool) error {
		if exists && a.Host == rec.Host && a.MAC == rec.MAC {
			return kv.ErrUnchanged
		}
		*a = rec
		return nil
	})
	if err == nil {
		m.log.WithFields(logrus.Fields{"pool": cidr, "ip": rec.IP, "mac": rec.MAC}).Debug("address taken over from the swarm allocator")
	}
	return err
}

// KindFor tells what an address request is for. Docker asks for the gateway
// with a request type, for endpoints with their MAC (tartan requires it), and
// for --aux-address reservations with neither.
func KindFor(r AddressRequest) string {
	switch {
	case r.Options[OptRequestType] == GatewayType:
		return kv.KindGateway
	case r.Options[OptMACAddress] != "" || r.Address == "" || r.Pool.Space == GlobalSpace:
		return kv.KindEndpoint
	default:
		return kv.KindAux
	}
}

// confirms says whether an existing record is the same allocation being
// requested again (a replay), not a conflict.
func (m *IPAM) confirms(cur, req kv.Address) bool {
	if cur.Kind != req.Kind {
		return false
	}
	switch cur.Kind {
	case kv.KindGateway, kv.KindAux:
		return true // reservations belong to the pool, shared by its hosts
	default:
		return cur.Host == req.Host && cur.MAC != "" && cur.MAC == req.MAC
	}
}

// noteGateway records the pool's gateway the first time one is reserved.
func (m *IPAM) noteGateway(ctx context.Context, cidr, kind string, ip netip.Addr) error {
	if kind != kv.KindGateway {
		return nil
	}
	var conflict string
	_, err := kv.Update(ctx, m.store, kv.PoolPath(cidr), func(p *kv.Pool, exists bool) error {
		switch {
		case !exists:
			return kv.Invalid("pool %s was released while its gateway was reserved: try again", cidr)
		case p.Gateway == "":
			p.Gateway = ip.String()
			return nil
		case p.Gateway != ip.String():
			conflict = p.Gateway
		}
		return kv.ErrUnchanged
	})
	if err != nil {
		return err
	}
	if conflict != "" {
		return kv.InUse("pool %s already has gateway %s: use --gateway %s or leave it out", cidr, conflict, conflict)
	}
	return nil
}

// pick chooses a free address: first in this host's live blocks, then in a
// newly claimed block, and when every block is taken, anywhere in the pool
// (a borrowed address, routed as a /32). An invalid address with a nil error
// means "state changed, look again".
func (m *IPAM) pick(ctx context.Context, st *poolState) (netip.Addr, error) {
	now := m.cfg.Now()
	claimed := map[netip.Prefix]bool{}
	for b, bs := range st.blocks {
		// A lease counts while it runs, and after that for as long as its
		// host keeps renewing its registration: only a gone host loses blocks.
		live := bs.block.Expires.After(now) || now.Sub(st.renewed[bs.block.Host]) < m.cfg.LeaseTTL
		if bs.block.Host == m.cfg.Host {
			if a, ok := st.layout.FreeIn(b, st.used); ok {
				if !live {
					// Our own lease ran out but nobody took it: take it back.
					// Only a lost race means "look again"; any other error
					// (store down, access denied) is the answer.
					if err := m.claimBlock(ctx, st.pool.CIDR, b, bs); errors.Is(err, kv.ErrConflict) {
						return netip.Addr{}, nil
					} else if err != nil {
						return netip.Addr{}, err
					}
				}
				return a, nil
			}
		}
		if live || bs.block.Host == m.cfg.Host {
			claimed[b] = true
		}
	}
	for b := range st.unreadable {
		claimed[b] = true
	}
	if b, ok := st.layout.FreeBlock(claimed); ok {
		if a, ok := st.layout.FreeIn(b, st.used); ok {
			err := m.claimBlock(ctx, st.pool.CIDR, b, st.blocks[b])
			if errors.Is(err, kv.ErrConflict) {
				return netip.Addr{}, nil
			}
			if err != nil {
				return netip.Addr{}, err
			}
			return a, nil
		}
	}
	var borrowed netip.Addr
	st.layout.addrs(st.layout.Range, func(a netip.Addr) bool {
		if !st.used[a] {
			borrowed = a
			return false
		}
		return true
	})
	if !borrowed.IsValid() {
		return netip.Addr{}, kv.InUse("pool %s is full (%d addresses in use): use a larger --subnet", st.pool.CIDR, len(st.used))
	}
	return borrowed, nil
}

// claimBlock takes block b for this host, or renews this host's lease on it,
// with a fresh expiry, by compare-and-set over the version it was read at.
func (m *IPAM) claimBlock(ctx context.Context, pool string, b netip.Prefix, prev blockState) error {
	blk := kv.Block{CIDR: b.String(), Pool: pool, Host: m.cfg.Host, Expires: m.cfg.Now().Add(m.cfg.LeaseTTL).UTC()}
	_, err := kv.PutJSON(ctx, m.store, kv.BlockPath(pool, blk.CIDR), blk, prev.version)
	if err == nil {
		m.log.WithFields(logrus.Fields{"pool": pool, "block": blk.CIDR, "expires": blk.Expires}).Info("block claimed")
	}
	return err
}

// RenewLeases extends every block lease of this host that has used more than
// half of its lifetime. The plugin calls it periodically.
func (m *IPAM) RenewLeases(ctx context.Context) error {
	pools, err := m.pools(ctx)
	if err != nil {
		return err
	}
	now := m.cfg.Now()
	for cidr := range pools {
		_, err := kv.ListJSON(ctx, m.store, kv.BlockPrefix(cidr), func(_ string, ver uint64, b kv.Block) error {
			if b.Host != m.cfg.Host || b.Expires.Sub(now) > m.cfg.LeaseTTL/2 {
				return nil
			}
			p, perr := netip.ParsePrefix(b.CIDR)
			if perr != nil {
				return nil
			}
			if err := m.claimBlock(ctx, cidr, p, blockState{block: b, version: ver}); err != nil && !errors.Is(err, kv.ErrConflict) {
				return err
			}
			return nil
		}, m.skipped)
		if err != nil {
			return err
		}
	}
	return nil
}

// ReleaseAddress frees an endpoint address. Gateway and aux reservations
// belong to the pool and go with it; releasing a missing address succeeds.
func (m *IPAM) ReleaseAddress(ctx context.Context, id PoolID, address string) error {
	return m.ReleaseAddressBefore(ctx, id, address, time.Time{})
}

// ReleaseAddressBefore is ReleaseAddress for a release retried later: it
// frees the record only if it was made before the release was first asked
// for (not zero), so that a retry never frees a newer allocation of the
// same address.
func (m *IPAM) ReleaseAddressBefore(ctx context.Context, id PoolID, address string, before time.Time) error {
	ip, err := netip.ParseAddr(address)
	if err != nil {
		return kv.Invalid("address %q is not an IP address", address)
	}
	cidr := id.CIDR.String()
	_, err = kv.Update(ctx, m.store, kv.AddressPath(cidr, ip.String()), func(a *kv.Address, exists bool) error {
		if !exists || a.Kind != kv.KindEndpoint || (!before.IsZero() && !a.Created.Before(before)) {
			return kv.ErrUnchanged
		}
		// In the global space the swarm manager releases what it
		// allocated (no MAC), and the node running a task what it took
		// over; the manager's release of a task a node still runs waits
		// for that node's own.
		if a.Host != m.cfg.Host && (id.Space != GlobalSpace || a.MAC != "") {
			if id.Space != GlobalSpace {
				m.log.WithFields(logrus.Fields{"ip": ip, "owner": a.Host}).Warn("not releasing an address another host holds")
			}
			return kv.ErrUnchanged
		}
		return kv.ErrDelete
	})
	if err != nil {
		return fmt.Errorf("release address %s: %w", ip, err)
	}
	return nil
}
