// Package ipam is tartan's IPAM driver: pools registered once in the cluster,
// per-host blocks leased by compare-and-set, and addresses handed out from the
// host's blocks. Allocation decisions live in alloc.go, free of I/O.
package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/kv"
)

// Address spaces tartan announces to Docker.
const (
	LocalSpace  = "tartan-local"
	GlobalSpace = "tartan-global"
)

// Option and Docker option names the IPAM driver reads.
const (
	OptBlockSize    = "tartan.blocksize"  // IPv4 pools
	OptBlockSize6   = "tartan.blocksize6" // IPv6 pools
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
	// Witness times the hosts' renewals and the blocks' leases on this
	// host's clock (kv.Witness): liveness, for claiming a lapsed block and
	// for collecting a gone host, never compares another machine's clock
	// with this one's. One per process, shared with routing. Default: a
	// new one.
	Witness *kv.Witness
	// Ready, when set, is asked before anything is claimed, renewed,
	// released or swept in the store: it waits until this machine holds
	// its host ID (plugin.Identity) and says why not when it does not.
	Ready func(context.Context) error
}

// IPAM implements the allocation half of tartan.
type IPAM struct {
	store kv.Store
	cfg   Config
	log   logrus.FieldLogger
	// mu guards cached (this host's view of the pools it allocates in,
	// cache.go), local and scanned.
	mu      sync.Mutex
	cached  map[string]*poolCache
	local   Holding
	scanned time.Time   // the last lease renewal that read every pool
	feed    []feedWrite // block feed entries this host wrote, until they go
}

// New returns an IPAM over store.
func New(store kv.Store, cfg Config, log logrus.FieldLogger) *IPAM {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = kv.DefaultLeaseTTL
	}
	if cfg.Witness == nil {
		cfg.Witness = kv.NewWitness()
	}
	return &IPAM{store: store, cfg: cfg, log: log, cached: map[string]*poolCache{}}
}

// ready is Config.Ready, or nil.
func (m *IPAM) ready(ctx context.Context) error {
	if m.cfg.Ready == nil {
		return nil
	}
	return m.cfg.Ready(ctx)
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
		return PoolID{}, errdefs.Invalid("pool ID %q was not made by tartan's IPAM: create the network with --ipam-driver tartan:latest", s)
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
	if err := m.ready(ctx); err != nil {
		return PoolID{}, err
	}
	if r.Space != LocalSpace && r.Space != GlobalSpace {
		return PoolID{}, errdefs.Invalid("address space %q is not tartan's: use %s or %s", r.Space, LocalSpace, GlobalSpace)
	}
	// Docker sends the network's --ipam-opt to both of a dual-stack
	// network's pool requests: each family reads its own block size.
	blockBits := 0
	for k, v := range r.Options {
		switch {
		case k == OptBlockSize || k == OptBlockSize6:
			n, err := strconv.Atoi(strings.TrimPrefix(v, "/"))
			if err != nil {
				return PoolID{}, errdefs.Invalid("--ipam-opt %s=%q is not a prefix length: use a number such as %s", k, v, map[string]string{OptBlockSize: "26", OptBlockSize6: "112"}[k])
			}
			if (k == OptBlockSize6) == r.V6 {
				blockBits = n
			}
		case strings.HasPrefix(k, dockerOptPrefix):
		default:
			return PoolID{}, errdefs.Invalid("unknown --ipam-opt %q: tartan's IPAM knows %s and %s", k, OptBlockSize, OptBlockSize6)
		}
	}
	if r.V6 {
		return m.requestPool6(ctx, r, blockBits)
	}
	auto, bits, err := m.automatic(r.Pool)
	if err != nil {
		return PoolID{}, err
	}
	if auto {
		if r.SubPool != "" {
			return PoolID{}, errdefs.Invalid("--ip-range needs a --subnet with an address: it must lie inside a known subnet")
		}
		return m.autoPool(ctx, r.Space, blockBits, bits)
	}
	return m.givenPool(ctx, r, blockBits)
}

// givenPool registers (or joins) the --subnet of a pool request, of the
// request's family.
func (m *IPAM) givenPool(ctx context.Context, r PoolRequest, blockBits int) (PoolID, error) {
	pool, err := ParsePool("--subnet", r.Pool)
	if err != nil {
		return PoolID{}, err
	}
	switch {
	case r.V6 && pool.Addr().Is4():
		return PoolID{}, errdefs.Invalid("--subnet %s was given as the network's IPv6 subnet: give an IPv6 one, such as fd00:10::/64", pool)
	case !r.V6 && pool.Addr().Is6():
		return PoolID{}, errdefs.Invalid("--subnet %s is IPv6: add --ipv6 to docker network create, beside an IPv4 --subnet", pool)
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

// requestPool6 registers (or joins) an IPv6 pool: always a --subnet of the
// user's (there is no automatic IPv6 range), with blocks leased per host
// as in IPv4 pools.
func (m *IPAM) requestPool6(ctx context.Context, r PoolRequest, blockBits int) (PoolID, error) {
	if p, err := netip.ParsePrefix(r.Pool); r.Pool == "" || (err == nil && p.Addr().IsUnspecified()) {
		return PoolID{}, errdefs.Invalid("--ipv6 needs an IPv6 --subnet of yours, such as fd00:10::/64 (tartan has no automatic IPv6 pools): add a second --subnet")
	}
	return m.givenPool(ctx, r, blockBits)
}

// automatic says whether a pool request asks for an automatic pool, and of
// which prefix length: no --subnet (the configured size), or, as Docker's
// own IPAM reads it (and Docker 29 passes it on), a --subnet with the
// unspecified address such as 0.0.0.0/24 (a /24 from the automatic range).
// 0.0.0.0/0 names no size: it is refused as before.
func (m *IPAM) automatic(pool string) (bool, int, error) {
	if pool == "" {
		return true, m.cfg.AutoBits, nil
	}
	p, err := netip.ParsePrefix(pool)
	if err != nil || !p.Addr().IsUnspecified() || !p.Addr().Is4() || p.Bits() == 0 {
		// ParsePool says what is wrong with it (0.0.0.0/0 is refused as
		// the special range it overlaps, as it always was).
		return false, 0, nil
	}
	if lo := m.cfg.AutoRange.Bits(); p.Bits() < lo || p.Bits() > 30 {
		return false, 0, errdefs.Invalid("--subnet %s asks for an automatic /%d pool, but automatic pools come from %s (AUTO_POOL): give a prefix length from /%d to /30, or a subnet of your own",
			p, p.Bits(), m.cfg.AutoRange, lo)
	}
	return true, p.Bits(), nil
}

// autoPool registers the first free pool of prefix length bits in the
// automatic range.
func (m *IPAM) autoPool(ctx context.Context, space string, blockBits, bits int) (PoolID, error) {
	if !m.cfg.AutoRange.IsValid() {
		return PoolID{}, errdefs.Invalid("no --subnet given and no automatic range is set: add --subnet")
	}
	var chosen netip.Prefix
	err := kv.Retry(ctx, func() error {
		pools, err := m.pools(ctx)
		if err != nil {
			return err
		}
		chosen = netip.Prefix{}
		span := Layout{Pool: m.cfg.AutoRange, Range: m.cfg.AutoRange, BlockBits: bits}
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
			return errdefs.InUse("automatic pool range %s is used up (by tartan pools and this host's routes): give --subnet", m.cfg.AutoRange)
		}
		layout, err := NewLayout(chosen, netip.Prefix{}, blockBits)
		if err != nil {
			return err
		}
		err = m.register(ctx, layout, blockBits != 0, true, space)
		if errors.Is(err, errdefs.ErrInUse) {
			return fmt.Errorf("%w: %w", kv.ErrRetry, err) // lost the race for that pool; pick another
		}
		return err
	})
	if errors.Is(err, kv.ErrRetry) {
		return PoolID{}, fmt.Errorf("automatic pool: too many concurrent registrations: %w", err)
	}
	if err != nil {
		return PoolID{}, err
	}
	return PoolID{Space: space, CIDR: chosen}, nil
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
	err := kv.Retry(ctx, func() error {
		var existing kv.Pool
		version, err := kv.GetJSON(ctx, m.store, key, &existing)
		if err == nil && existing.Releasing {
			// The last holder is removing it (or died doing so): finish
			// the removal, then register afresh.
			if err := m.finishRelease(ctx, l.Pool.String()); err != nil {
				return err
			}
			return kv.ErrRetry
		}
		if err == nil {
			return m.joinPool(ctx, l, existing, version, explicitBits, auto, rng, space)
		}
		if !errors.Is(err, kv.ErrNotFound) {
			return err
		}
		return m.createPool(ctx, l, auto, rng, space)
	})
	if errors.Is(err, kv.ErrRetry) {
		return fmt.Errorf("register pool %s: too many concurrent registrations: %w", l.Pool, err)
	}
	return err
}

// joinPool makes this host a holder of a pool another host registered, once
// the request agrees with it (one registration of one subnet). Its holder key
// is written only while the pool record is as read (not being released:
// ReleasePool); ErrRetry when it changed meanwhile.
func (m *IPAM) joinPool(ctx context.Context, l Layout, existing kv.Pool, version uint64, explicitBits, auto bool, rng, space string) error {
	key := kv.PoolPath(l.Pool.String())
	held := existing.Holders[m.holder(space)]
	if !held {
		_, gerr := m.store.Get(ctx, kv.HolderPath(l.Pool.String(), m.holder(space)))
		if gerr != nil && !errors.Is(gerr, kv.ErrNotFound) {
			return gerr
		}
		held = gerr == nil
	}
	switch {
	case auto:
		// An automatic pick never joins: another network, maybe
		// on another host, picked it first.
		return errdefs.InUse("automatic pool %s was just taken by another network", l.Pool)
	case existing.Auto && !held:
		return errdefs.InUse("pool %s is already registered by another network: pick another --subnet", l.Pool)
	}
	// An explicit request for an automatic pool this host holds is
	// Docker replaying the pool it got (daemon restart).
	if existing.Range != rng {
		have := existing.Range
		if have == "" {
			have = "none"
		}
		return errdefs.Invalid("pool %s is registered with --ip-range %s: use the same --ip-range on every host", l.Pool, have)
	}
	if explicitBits && existing.BlockBits != l.BlockBits {
		return errdefs.Invalid("pool %s is registered with %s=%d: use the same value or leave it out", l.Pool, OptBlockSize, existing.BlockBits)
	}
	if held {
		m.keepOldFolders(ctx, existing)
		return nil
	}
	// Join: this host's own holder key, written only while the pool
	// is as read (not being released: ReleasePool). A pool an
	// older version registered lists its holders in its record:
	// this host goes there too, so that those versions see it.
	ops := []kv.Op{{Key: kv.HolderPath(l.Pool.String(), m.holder(space)), Value: []byte(m.cfg.Host), Version: kv.Any}}
	if existing.Holders[kv.HoldersInKeys] {
		ops = append(ops, kv.Op{Key: key, Version: version, Check: true})
	} else {
		if existing.Holders == nil {
			existing.Holders = map[string]bool{}
		}
		existing.Holders[m.holder(space)] = true
		b, err := json.Marshal(existing)
		if err != nil {
			return err
		}
		ops = append(ops, kv.Op{Key: key, Value: b, Version: version})
	}
	if _, err := m.store.Txn(ctx, ops); errors.Is(err, kv.ErrConflict) {
		return kv.ErrRetry
	} else if err != nil {
		return err
	}
	m.keepOldFolders(ctx, existing)
	return nil
}

// createPool registers a pool no host has: overlap checks are serialised
// through the guard key (register's protocol); ErrRetry when another
// registration got there first.
func (m *IPAM) createPool(ctx context.Context, l Layout, auto bool, rng, space string) error {
	key := kv.PoolPath(l.Pool.String())
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
			return errdefs.InUse("--subnet %s overlaps tartan pool %s that is already registered: pick a subnet outside it", l.Pool, cidr)
		}
	}
	if same {
		if auto {
			return errdefs.InUse("automatic pool %s was just taken by another network", l.Pool)
		}
		return kv.ErrRetry
	}
	pool := kv.Pool{CIDR: l.Pool.String(), Range: rng, BlockBits: l.BlockBits, Auto: auto,
		Holders: map[string]bool{kv.HoldersInKeys: true}, Created: m.cfg.Now().UTC()}
	b, err := json.Marshal(pool)
	if err != nil {
		return err
	}
	holderKey := kv.HolderPath(pool.CIDR, m.holder(space))
	pv, err := m.store.Txn(ctx, []kv.Op{{Key: key, Value: b}, {Key: holderKey, Value: []byte(m.cfg.Host), Version: kv.Any}})
	if errors.Is(err, kv.ErrConflict) {
		return kv.ErrRetry
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
	if _, derr := m.store.Txn(ctx, []kv.Op{{Key: key, Delete: true, Version: pv}, {Key: holderKey, Delete: true}}); derr != nil && !errors.Is(derr, kv.ErrConflict) {
		return fmt.Errorf("withdraw pool %s after a concurrent registration: %w", pool.CIDR, derr)
	}
	return kv.RetryOnConflict(err)
}

// keepOldFolders marks the watched prefixes of a pool an older version
// registered (without markers, or some of them); pools registered since got
// them with the pool.
func (m *IPAM) keepOldFolders(ctx context.Context, p kv.Pool) {
	if !p.Holders[kv.HoldersInKeys] {
		m.keepFolders(ctx, p.CIDR)
	}
}

// keepFolders marks the pool's block and address prefixes, which every
// host of the network watches, so that they are never empty (kv.KeepFolder).
// The markers live as long as the pool: the last holder's removal deletes
// them with the prefixes. A failure costs only wake-ups, so it is logged.
func (m *IPAM) keepFolders(ctx context.Context, cidr string) {
	for _, prefix := range []string{kv.BlockPrefix(cidr), kv.AddressPrefix(cidr), kv.ExceptionPrefix(cidr), kv.BlockFeedPrefix(cidr)} {
		if err := kv.KeepFolder(ctx, m.store, prefix); err != nil {
			m.log.WithField("prefix", prefix).Warnf("mark the watched prefix: %v", err)
		}
	}
}
