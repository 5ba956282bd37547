package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/kv"
)

func (m *IPAM) requestAddress(ctx context.Context, r AddressRequest) (netip.Addr, error) {
	cidr := r.Pool.CIDR.String()
	kind := KindFor(r)
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
		rec := kv.Address{IP: ip.String(), Pool: cidr, Host: m.cfg.Host, Kind: kind, MAC: r.Options[OptMACAddress], Created: m.cfg.Now().UTC()}
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
		cur, err := m.holderOf(ctx, pc, ip, want)
		if err != nil {
			return err
		}
		if m.confirms(cur, rec) {
			got = ip
			return m.noteGateway(ctx, pc, kind, ip)
		}
		if swarmTask(r, rec, cur, want) {
			if err := m.takeOverTask(ctx, pc, rec); err != nil {
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

// holderOf reads the record of an address whose create failed because its
// key exists, and marks the address taken. kv.ErrRetry when the request
// should look again: the record cannot be read (the key exists, so the
// address is taken whatever the value says) and the address was picked, or
// the address is free after all (the pool record changed: a gateway noted,
// a release begun; it is read again).
func (m *IPAM) holderOf(ctx context.Context, pc *poolCache, ip netip.Addr, want bool) (kv.Address, error) {
	var cur kv.Address
	var derr *kv.DecodeError
	if _, gerr := kv.GetJSON(ctx, m.store, kv.AddressPath(pc.cidr, ip.String()), &cur); gerr != nil {
		if errors.As(gerr, &derr) && !want {
			m.skipped(derr)
			pc.mark(ip, true)
			return kv.Address{}, kv.ErrRetry
		}
		if errors.Is(gerr, kv.ErrNotFound) {
			pc.mark(ip, false)
			pc.mu.Lock()
			err := m.readPool(ctx, pc)
			pc.mu.Unlock()
			if err != nil {
				return kv.Address{}, err
			}
			return kv.Address{}, kv.ErrRetry
		}
		return kv.Address{}, gerr
	}
	pc.mark(ip, true)
	return cur, nil
}

// swarmTask says whether an endpoint address held by cur is a swarm
// allocation that this request (rec) confirms or takes over: the swarm
// manager allocates in the global space, without MACs; its replays confirm,
// and the node that runs the task (which asks in either space, with the
// task's MAC) takes the address over so that every other host routes it
// there.
func swarmTask(r AddressRequest, rec, cur kv.Address, want bool) bool {
	return rec.Kind == kv.KindEndpoint && cur.Kind == kv.KindEndpoint &&
		(r.Pool.Space == GlobalSpace || (cur.MAC == "" && want))
}

// takeOverTask takes over a swarm allocation for the node that runs its
// task (rec has the task's MAC); the manager's own replay (no MAC) takes
// nothing. kv.ErrRetry when the record changed meanwhile.
func (m *IPAM) takeOverTask(ctx context.Context, pc *poolCache, rec kv.Address) error {
	if rec.MAC == "" {
		return nil
	}
	if err := m.takeOver(ctx, pc, rec); err != nil {
		if errors.Is(err, kv.ErrConflict) {
			return kv.ErrRetry
		}
		return err
	}
	return nil
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

// usedAddresses reads every address of the pool (a record that cannot be
// read still takes its address: its key exists, so handing the address out
// again would only fail the create-only write).
func (m *IPAM) usedAddresses(ctx context.Context, cidr string) (map[netip.Addr]bool, error) {
	used := map[netip.Addr]bool{}
	_, err := kv.ListJSON(ctx, m.store, kv.AddressPrefix(cidr), func(_ string, _ uint64, a kv.Address) error {
		if ip, err := netip.ParseAddr(a.IP); err == nil {
			used[ip] = true
		}
		return nil
	}, func(e *kv.DecodeError) {
		m.skipped(e)
		if ip, err := netip.ParseAddr(strings.TrimPrefix(e.Key, kv.AddressPrefix(cidr))); err == nil {
			used[ip] = true
		}
	})
	return used, err
}

// AddressRequest is a RequestAddress call.
type AddressRequest struct {
	Pool    PoolID
	Address string
	Options map[string]string
}

// RequestAddress hands out an address, as the prefix Docker gives the
// container: the gateway and addresses on bridged (macvlan) networks carry the
// pool's mask, addresses on routed networks are /32 (IPv6: /128) so that
// containers send everything through their host.
func (m *IPAM) RequestAddress(ctx context.Context, r AddressRequest) (netip.Prefix, error) {
	if err := m.ready(ctx); err != nil {
		return netip.Prefix{}, err
	}
	ip, err := m.requestAddress(ctx, r)
	if err != nil {
		return netip.Prefix{}, err
	}
	bits := ip.BitLen() // a /32, or a /128 in an IPv6 pool
	if KindFor(r) != kv.KindEndpoint || !m.routed(ctx, r.Pool.CIDR.String()) {
		bits = r.Pool.CIDR.Bits()
	}
	return netip.PrefixFrom(ip, bits), nil
}

// BackendBridged is the backend whose containers sit on the pool's L2.
const BackendBridged = "macvlan"

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
func (m *IPAM) noteGateway(ctx context.Context, pc *poolCache, kind string, ip netip.Addr) error {
	if kind != kv.KindGateway {
		return nil
	}
	cidr := pc.cidr
	var conflict string
	_, err := kv.Update(ctx, m.store, kv.PoolPath(cidr), func(p *kv.Pool, exists bool) error {
		switch {
		case !exists:
			return errdefs.Invalid("pool %s was released while its gateway was reserved: try again", cidr)
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
		return errdefs.InUse("pool %s already has gateway %s: use --gateway %s or leave it out", cidr, conflict, conflict)
	}
	pc.mu.Lock()
	if pc.gateway == "" {
		pc.gateway = ip.String()
	}
	pc.mu.Unlock()
	return nil
}

// ReleaseAddress frees an endpoint address. Gateway and aux reservations
// belong to the pool and go with it; releasing a missing address succeeds.
func (m *IPAM) ReleaseAddress(ctx context.Context, id PoolID, address string) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	return m.ReleaseAddressBefore(ctx, id, address, time.Time{})
}
