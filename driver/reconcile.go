package driver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
)

// Reconcile makes the kernel match the local state: every network's device
// and every endpoint whose veth still exists are ensured, the firewall is
// rewritten, and links and routes tartan owns that nothing needs are removed.
// It runs once after a (re)start and then periodically; it repairs objects
// deleted by hand and adopts what a previous plugin process left.
func (d *Driver) Reconcile(ctx context.Context) error {
	err := d.reconcileLocal(ctx)
	// Peer entries: every network's last plan applied in full, outside
	// d.mu (this repairs what was deleted by hand), and the WireGuard
	// device's peers set again (a failed write is retried here).
	return errors.Join(err, d.routes.Repair(), d.writePeers())
}

// reconcileLocal is Reconcile's part for this host's own objects. It holds
// d.mu only to read and change the tables: the kernel and the local store
// are called without it.
func (d *Driver) reconcileLocal(ctx context.Context) error {
	// Networks are ensured in turn with their creations and deletions
	// (d.netMu): a device ensured for a network being deleted would
	// outlive it.
	d.netMu.Lock()
	d.mu.Lock()
	nets := maps.Clone(d.st.networks)
	eps := maps.Clone(d.st.endpoints)
	d.mu.Unlock()
	var errs []error
	tunnel := false
	for _, n := range nets {
		if err := d.backendOf(n).Ensure(n); err != nil {
			errs = append(errs, err)
		}
		tunnel = tunnel || d.tunnelOf(n) != ""
	}
	if !tunnel {
		// No wireguard network: no WireGuard device either (a kernel one
		// outlives the plugin, and its last network may have gone while
		// the plugin was away).
		d.wg.Close()
		if err := kernel.DeleteLink(d.wg.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	d.netMu.Unlock()
	checked := d.checkEndpoints(nets, eps)
	errs = append(errs, checked.errs...)
	now := time.Now()
	errs = append(errs, d.dropStale(ctx, checked, now))
	// The links tartan owns, listed after the check: a link made since is
	// a call's in flight (lockEndpoint) or a record's.
	names, err := kernel.Links("")
	if err != nil {
		errs = append(errs, err)
	} else {
		present := map[string]bool{}
		for _, name := range names {
			if owned(name) {
				present[name] = true
			}
		}
		errs = append(errs, d.pruneLinks(present, now)...)
		errs = append(errs, d.pruneRoutes(checked, present)...)
	}
	if err := d.writeFirewall(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkResult is what the endpoints' check found.
type checkResult struct {
	seen     map[string]bool // endpoints checked (the others are new or busy)
	gone     map[string]bool
	unjoined map[string]bool
	routes   map[netip.Prefix]string // destination: link
	errs     []error
}

// checkEndpoints has each endpoint's backend repair the host's side of it
// and report its state. An endpoint another call is changing is left to
// that call.
func (d *Driver) checkEndpoints(nets map[string]localNetwork, eps map[string]localEndpoint) checkResult {
	res := checkResult{seen: map[string]bool{}, gone: map[string]bool{}, unjoined: map[string]bool{}, routes: map[netip.Prefix]string{}}
	for _, id := range slices.Sorted(maps.Keys(eps)) {
		n, ok := nets[eps[id].Network]
		if !ok {
			continue
		}
		unlock, ok := d.tryLockEndpoint(id)
		if !ok {
			continue
		}
		d.mu.Lock()
		e, still := d.st.endpoints[id]
		d.mu.Unlock()
		if still {
			res.seen[id] = true
			st, err := d.backendOf(n).CheckEndpoint(n, e)
			if err != nil {
				res.errs = append(res.errs, err)
			}
			res.gone[id], res.unjoined[id] = st.Gone, st.Unjoined
			for _, r := range st.Routes {
				res.routes[r.Dst] = r.Link
			}
		}
		unlock()
	}
	return res
}

// dropStale removes local endpoint records that nothing uses any more
// (staleEndpoints says which): Docker never sent DeleteEndpoint for them.
func (d *Driver) dropStale(ctx context.Context, checked checkResult, now time.Time) error {
	d.mu.Lock()
	busy := map[string]bool{}
	for id := range d.st.endpoints {
		busy[id] = !checked.seen[id]
	}
	res := staleEndpoints(staleInput{Endpoints: d.st.endpoints, Networks: d.st.networks, Busy: busy, VethGone: checked.gone,
		Unjoined: checked.unjoined, JoinGrace: max(d.cfg.OrphanGrace, JoinGrace), Missing: d.missing, Now: now, Grace: d.cfg.OrphanGrace})
	d.missing = res.Missing
	dropped := make([]localEndpoint, 0, len(res.Drop))
	ports := false
	for _, id := range res.Drop {
		e := d.st.endpoints[id]
		if _, busy := d.inflight[id]; busy {
			continue
		}
		delete(d.st.endpoints, id)
		dropped = append(dropped, e)
		ports = ports || len(e.Ports) > 0
	}
	d.mu.Unlock()
	var errs []error
	for _, e := range dropped {
		if err := d.local.Delete(ctx, localEndpoints+e.ID, 0); err != nil {
			errs = append(errs, fmt.Errorf("forget stale endpoint %s: %w", shortID(e.ID), err))
			continue
		}
		d.log.WithFields(logrus.Fields{"endpoint": shortID(e.ID), "ip": e.IP, "network": shortID(e.Network)}).Info("forgot an endpoint Docker never deleted: its veth or its network is gone, or no container took its veth")
	}
	if ports {
		errs = append(errs, d.writeFirewall())
	}
	return errors.Join(errs...)
}

// wantedLinksLocked are the links the records and the calls in flight
// need. Called with d.mu held.
func (d *Driver) wantedLinksLocked() map[string]bool {
	want := map[string]bool{}
	for _, n := range d.st.networks {
		for _, l := range n.Links() {
			want[l] = true
		}
	}
	for id := range d.inflight {
		host, peer := kernel.EndpointNames(id)
		want[host], want[peer] = true, true
	}
	for _, e := range d.st.endpoints {
		want[e.HostIf], want[e.PeerIf] = true, true
	}
	return want
}

// pruneLinks removes links tartan owns that nothing needs, once they are
// proven dead (provenDeadLocked).
// present are the links tartan owns.
func (d *Driver) pruneLinks(present map[string]bool, now time.Time) []error {
	var errs []error
	d.mu.Lock()
	want := d.wantedLinksLocked()
	d.mu.Unlock()
	// Whether a container holds the other end of an unknown endpoint link
	// (netlink, so asked before the lock is taken again).
	inContainer := map[string]bool{}
	for name := range present {
		if !want[name] && strings.HasPrefix(name, kernel.EndpointPrefix) {
			inContainer[name] = kernel.PeerInContainer(name)
		}
	}
	d.mu.Lock()
	want = d.wantedLinksLocked() // a call may have made links meanwhile
	var dead []string
	for _, name := range slices.Sorted(maps.Keys(present)) {
		if !want[name] && d.provenDeadLocked(name, inContainer[name], now) {
			dead = append(dead, name)
		}
	}
	for name := range d.orphans {
		if _, ok := present[name]; !ok || want[name] {
			delete(d.orphans, name)
		}
	}
	d.mu.Unlock()
	for _, name := range dead {
		d.log.WithField("if", name).Info("removing a link tartan owns and no longer needs")
		if err := kernel.DeleteLink(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// pruneRoutes removes routes tartan owns that nothing needs: not an
// endpoint's (checked.routes), not a peer's (routing owns those), not on a
// link that is kept until it is proven dead, and not an endpoint's that a
// call made after the check.
func (d *Driver) pruneRoutes(checked checkResult, present map[string]bool) []error {
	routes, err := kernel.OwnedRoutes()
	if err != nil {
		return []error{err}
	}
	d.mu.Lock()
	want := d.wantedLinksLocked()
	fresh := map[netip.Prefix]bool{} // endpoints the check did not see
	for id, e := range d.st.endpoints {
		if !checked.seen[id] {
			fresh[netip.PrefixFrom(e.Addr(), 32)] = true
			if e.IP6 != "" {
				fresh[netip.PrefixFrom(e.Addr6(), 128)] = true
			}
		}
	}
	busy := map[string]bool{}
	for id := range d.inflight {
		host, _ := kernel.EndpointNames(id)
		busy[host] = true
	}
	var drop []kernel.Route
	for _, r := range routes {
		switch {
		case checked.routes[r.Dst] == r.Link && r.Link != "" && !r.Via.IsValid():
		case r.Via.IsValid() && d.inLocalPoolLocked(r.Dst): // a peer route: routing owns it
		case busy[r.Link] || fresh[r.Dst]:
		case r.Link != "" && present[r.Link] && !want[r.Link]: // a link kept until it is proven dead keeps its route
		default:
			drop = append(drop, r)
		}
	}
	d.mu.Unlock()
	var errs []error
	for _, r := range drop {
		d.log.WithField("route", r.String()).Info("removing a route tartan owns and no longer needs")
		if err := kernel.DeleteRoute(r); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// JoinGrace is the least time an endpoint's veth may stay out of every
// container before its record is taken for stale (staleInput.Unjoined).
const JoinGrace = time.Minute

// provenDeadLocked says whether a link tartan owns but has no record of may
// go. The plugin deletes only what it can prove is dead: the host end of a
// veth whose other end a container holds is alive (the pair goes with the
// container's namespace), whatever the local records say; anything else is
// removed once it has stayed unknown for OrphanGrace (an endpoint
// between Docker's CreateEndpoint and Join has both ends here, briefly).
// Called with d.mu held.
func (d *Driver) provenDeadLocked(name string, inContainer bool, now time.Time) bool {
	if inContainer {
		if _, seen := d.orphans[name]; !seen {
			d.orphans[name] = now
			d.log.WithField("if", name).Warn("keeping an endpoint link tartan has no record of: a container still holds its other end")
		}
		return false
	}
	first, seen := d.orphans[name]
	if !seen {
		d.orphans[name] = now
		d.log.WithField("if", name).Info("a link tartan owns has no record: removing it if it is still unknown in two resync periods")
		return false
	}
	return now.Sub(first) >= d.cfg.OrphanGrace
}

// owned tells tartan's link names from others that share a prefix: endpoint
// links are tn/tp plus 11 hex digits (host-access shims tm), VXLAN devices
// tartan.<number>.
func owned(name string) bool {
	switch {
	case strings.HasPrefix(name, kernel.VXLANPrefix):
		rest := strings.TrimPrefix(name, kernel.VXLANPrefix)
		return rest != "" && strings.Trim(rest, "0123456789") == ""
	case strings.HasPrefix(name, kernel.EndpointPrefix), strings.HasPrefix(name, kernel.PeerPrefix), strings.HasPrefix(name, kernel.ShimPrefix):
		rest := name[2:]
		return len(rest) == 11 && strings.Trim(rest, "0123456789abcdef") == ""
	}
	return false
}

// inLocalPoolLocked says whether dst is inside the pool of a network of
// this host. Called with d.mu held.
func (d *Driver) inLocalPoolLocked(dst netip.Prefix) bool {
	for _, n := range d.st.networks {
		if routing.Inside(n.PoolPrefix(), dst) || (n.Pool6 != "" && routing.Inside(n.Pool6Prefix(), dst)) {
			return true
		}
	}
	return false
}
