package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/hostplane"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
)

// applyFirewall writes the firewall of st (the host writer's firewall
// part): tartan's rules, or none when the host has no routed pool and no
// published port, and the pools' guard routes; a complete VXLAN peer set in
// place is kept for the next start.
func (d *Driver) applyFirewall(st firewall.State, complete bool) error {
	var err error
	if len(st.Pools) == 0 && len(st.Ports) == 0 {
		err = d.fw.Remove()
	} else {
		was := d.fw.Flavour()
		err = d.fw.Apply(st)
		if now := d.fw.Flavour(); now != was {
			d.log.WithFields(logrus.Fields{"was": was, "now": now}).Info("firewall flavour changed: Docker's chains are in the other iptables; tartan's rules moved there")
		}
	}
	if err != nil {
		return err
	}
	d.flushNewlyPublished(st.Ports)
	d.keepPoliced(st.Policed, st.PolicedLive)
	switch {
	case complete && st.VXLANPort != 0:
		d.keepPeers(st.Peers)
	case st.VXLANPort == 0:
		d.keepPeers(nil) // no VXLAN network left: nothing to keep
	}
	return syncGuards(st.Pools)
}

// flushNewlyPublished flushes, once their DNAT rules are in place, the
// flows of UDP ports that this write publishes and the last one did not
// (every one at the first write of a start: the plugin may have been down
// while the port changed hands). A UDP flow that went on while the port
// was withdrawn (its entry: to the host, no DNAT) or held by a removed
// container would otherwise never reach the new container; the
// withdrawal's own flush (flushWithdrawn) cannot cover a datagram that
// arrives between the two. Docker's bridge driver flushes the same.
func (d *Driver) flushNewlyPublished(ports []firewall.Port) {
	now := make(map[firewall.Port]bool, len(ports))
	for _, p := range ports {
		if p.Proto != "udp" {
			continue
		}
		now[p] = true
		if d.published[p] {
			continue
		}
		if err := kernel.FlushPublishedPort(p.Proto, p.HostIP, p.HostPort); err != nil {
			d.log.WithFields(logrus.Fields{"port": p.HostPort, "proto": p.Proto}).Warn(err)
		}
	}
	d.published = now
}

// syncGuards gives every routed pool of the host its guard route (an
// unreachable route for the whole pool: kernel.EnsureGuard), an announced
// pool one for each block this host holds (the rest of the pool is the
// fabric's to route), and removes the guard routes of pools and blocks it
// no longer has (in the host writer's turn).
func syncGuards(pools []firewall.Pool) error {
	want := map[netip.Prefix]bool{}
	for _, p := range guards(pools) {
		want[p] = true
	}
	have, err := kernel.Guards()
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range have {
		if !want[p] {
			errs = append(errs, kernel.DeleteGuard(p))
		}
		delete(want, p)
	}
	for p := range want {
		errs = append(errs, kernel.EnsureGuard(p))
	}
	return errors.Join(errs...)
}

// guards are the prefixes whose unreachable guard route the host keeps:
// each routed pool, or an announced pool's blocks of this host (the rest
// of such a pool is the fabric's to route).
func guards(pools []firewall.Pool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range pools {
		if !p.Fabric {
			out = append(out, p.Pool.Masked())
		}
		for _, b := range p.Blocks {
			out = append(out, b.Masked())
		}
	}
	return out
}

// hostFirewallState fills in what the firewall needs of the host's
// interfaces. Called without d.mu held.
func (d *Driver) hostFirewallState(st *firewall.State) {
	if u, err := kernel.FindUnderlay(d.cfg.Advertise); err == nil {
		st.Underlay = u.Interface
	}
	st.Uplinks = []string{st.Underlay}
	if name, err := kernel.DefaultRouteInterface(); err == nil && name != st.Underlay {
		st.Uplinks = append(st.Uplinks, name)
	}
	bridges, _ := kernel.Bridges()
	for _, b := range bridges {
		if !slices.Contains(st.Uplinks, b) {
			st.Bridges = append(st.Bridges, b)
		}
	}
}

// FirewallDrift says how tartan's rules in the kernel differ from what it
// would write now (tartan doctor), changing nothing.
func (d *Driver) FirewallDrift() (out []string, err error) {
	d.host.Locked(func() {
		st := d.hostState(hostplane.Firewall).Firewall
		if out, err = d.fw.Check(st); err != nil {
			return
		}
		var have []netip.Prefix
		if have, err = kernel.Guards(); err != nil {
			return
		}
		for _, p := range guards(st.Pools) {
			if !slices.Contains(have, p) {
				out = append(out, fmt.Sprintf("the route \"unreachable %s\" that keeps the pool's unused addresses from leaving the host is missing", p))
			}
		}
	})
	return out, err
}

// firewallStateLocked is the desired firewall but for the host's
// interfaces (hostFirewallState reads them), and whether its VXLAN peers
// were complete (every VXLAN network had a plan), from the one reading of
// them. Called with d.mu held.
func (d *Driver) firewallStateLocked() (st firewall.State, complete bool) {
	st = firewall.State{Ports: portRules(d.st.endpoints)}
	seen := map[string]bool{}
	vxlan := false
	for _, n := range d.st.networks {
		p, ok := d.backendOf(n).Firewall(n)
		if ok && p.Fabric {
			p.Blocks = d.ownBlocks(n.ID)
		}
		if ok && !seen[n.Pool] {
			seen[n.Pool] = true
			st.Pools = append(st.Pools, p)
			vxlan = vxlan || p.Device != ""
		}
		if ok && n.Pool6 != "" && !seen[n.Pool6] {
			seen[n.Pool6] = true
			p.Pool, p.NAT66 = n.Pool6Prefix(), n.NAT66
			st.Pools = append(st.Pools, p)
		}
	}
	if vxlan {
		st.VXLANPort = d.cfg.VXLANPort
		st.Peers, complete = d.vxlanPeersLocked()
	}
	return st, complete
}

// ownBlocks is the blocks this host announces for a network (its plan's
// prefixes shorter than one address), sorted; none before its first plan.
func (d *Driver) ownBlocks(id string) []netip.Prefix {
	plan, ok := d.routes.Plan(id)
	if !ok {
		return nil
	}
	var out []netip.Prefix
	for _, p := range plan.Announce {
		if p.Bits() < p.Addr().BitLen() {
			out = append(out, p)
		}
	}
	return out
}

// vxlanPeersLocked is who may send VXLAN here: the peers of every VXLAN
// network's plan, and while a network has no plan yet (after a start, or
// through a store outage), the last complete set as well (kept in the local
// store across restarts). Never "anyone": the port fails closed (issue 24,
// audit M2). complete says whether every plan was in. Called with d.mu held.
func (d *Driver) vxlanPeersLocked() (peers []netip.Addr, complete bool) {
	peers, complete = d.routes.VXLANPeers()
	if !complete {
		for _, a := range d.knownPeers {
			if !slices.Contains(peers, a) {
				peers = append(peers, a)
			}
		}
		slices.SortFunc(peers, func(a, b netip.Addr) int { return a.Compare(b) })
	}
	return peers, complete
}

// knownPeersKey is where the last complete VXLAN peer set is kept.
const knownPeersKey = "local/vxlan-peers"

// keepPeers records a complete VXLAN peer set that the firewall now holds,
// in memory and in the local store, when it changed. Called without d.mu.
func (d *Driver) keepPeers(peers []netip.Addr) {
	d.mu.Lock()
	same := slices.Equal(peers, d.knownPeers)
	if !same {
		d.knownPeers = slices.Clone(peers)
	}
	d.mu.Unlock()
	if same {
		return
	}
	var err error
	if peers == nil {
		err = d.local.Delete(context.Background(), knownPeersKey, 0)
	} else {
		_, err = kv.PutJSON(context.Background(), d.local, knownPeersKey, peers, kv.Any)
	}
	if err != nil && !errors.Is(err, kv.ErrNotFound) {
		d.log.Warnf("keep the VXLAN peer set in the local store: %v", err)
	}
}

// loadPeers reads the last complete VXLAN peer set from the local store.
func (d *Driver) loadPeers(ctx context.Context) {
	var peers []netip.Addr
	if _, err := kv.GetJSON(ctx, d.local, knownPeersKey, &peers); err == nil {
		d.mu.Lock()
		d.knownPeers = peers
		d.mu.Unlock()
	}
}
