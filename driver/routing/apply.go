package routing

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/tartan-net/tartan/driver/kernel"
)

// Kernel is what routing asks of the kernel: Netlink in the plugin, a stub
// that counts operations in make scale.
type Kernel interface {
	LinkExists(name string) bool
	ReplaceRoute(kernel.Route) error
	DeleteRoute(kernel.Route) error
	// OwnedRoutes dumps every route tartan owns (its route protocol).
	OwnedRoutes() ([]kernel.Route, error)
	ReplaceNeigh(kernel.Neigh) error
	DeleteNeigh(kernel.Neigh) error
	Neighs(link string) ([]kernel.Neigh, error)
	ReplaceFDB(kernel.FDB) error
	DeleteFDB(kernel.FDB) error
	FDBs(link string) ([]kernel.FDB, error)
}

// Netlink is the host's kernel, through driver/kernel.
type Netlink struct{}

func (Netlink) LinkExists(name string) bool                { return kernel.LinkExists(name) }
func (Netlink) ReplaceRoute(r kernel.Route) error          { return kernel.ReplaceRoute(r) }
func (Netlink) DeleteRoute(r kernel.Route) error           { return kernel.DeleteRoute(r) }
func (Netlink) OwnedRoutes() ([]kernel.Route, error)       { return kernel.OwnedRoutes() }
func (Netlink) ReplaceNeigh(n kernel.Neigh) error          { return kernel.ReplaceNeigh(n) }
func (Netlink) DeleteNeigh(n kernel.Neigh) error           { return kernel.DeleteNeigh(n) }
func (Netlink) Neighs(link string) ([]kernel.Neigh, error) { return kernel.Neighs(link) }
func (Netlink) ReplaceFDB(f kernel.FDB) error              { return kernel.ReplaceFDB(f) }
func (Netlink) DeleteFDB(f kernel.FDB) error               { return kernel.DeleteFDB(f) }
func (Netlink) FDBs(link string) ([]kernel.FDB, error)     { return kernel.FDBs(link) }

// Inside says whether prefix p lies entirely within pool.
func Inside(pool, p netip.Prefix) bool {
	return p.IsValid() && p.Bits() >= pool.Bits() && pool.Contains(p.Addr())
}

// checkRoutes keeps the routes of a plan that lie inside the network's pool.
// Compute never plans another; refusing one here as well keeps a store
// record from ever replacing a host route (RouteReplace would overwrite a
// default route in the main table).
func checkRoutes(n Network, routes []kernel.Route) ([]kernel.Route, []error) {
	var ok []kernel.Route
	var errs []error
	for _, r := range routes {
		if !Inside(n.Pool, r.Dst) && !(n.Pool6.IsValid() && Inside(n.Pool6, r.Dst)) {
			errs = append(errs, fmt.Errorf("refusing peer route %s: outside the network's pools %s", r, n.pools()))
			continue
		}
		ok = append(ok, r)
	}
	return ok, errs
}

// Apply makes the kernel hold exactly the plan's peer entries for the
// network: every entry is written, and the kernel's entries on its device or
// in its pool that the plan lacks are removed. It dumps the kernel's tables:
// the periodic repair and the first apply use it; changes go through Update.
func Apply(k Kernel, n Network, plan Plan) error {
	routes, errs := checkRoutes(n, plan.Routes)
	if n.Device != "" && k.LinkExists(n.Device) {
		// Every entry on the network's own device is the network's.
		errs = append(errs, converge(plan.Neighs, func() ([]kernel.Neigh, error) { return k.Neighs(n.Device) }, every, k.ReplaceNeigh, k.DeleteNeigh)...)
		errs = append(errs, converge(plan.FDBs, func() ([]kernel.FDB, error) { return k.FDBs(n.Device) }, every, k.ReplaceFDB, k.DeleteFDB)...)
	}
	// Peer routes of this network: anything tartan routed via a peer that
	// touches the pool (also a wider prefix an older version let in from a
	// bad record) or that sits on the network's device.
	mine := func(r kernel.Route) bool {
		return r.Via.IsValid() && (n.Pool.Overlaps(r.Dst) || (n.Pool6.IsValid() && n.Pool6.Overlaps(r.Dst)) || (n.Device != "" && r.Link == n.Device))
	}
	errs = append(errs, converge(routes, k.OwnedRoutes, mine, k.ReplaceRoute, k.DeleteRoute)...)
	return errors.Join(errs...)
}

func every[T any](T) bool { return true }

// converge is the one set difference of a full apply (tailscale's
// cidrDiff): every wanted entry is written (put must replace), then the
// entries the kernel has that are its to manage (mine) and not wanted are
// removed. Adding before deleting keeps traffic flowing through a change.
func converge[T comparable](want []T, have func() ([]T, error), mine func(T) bool, put, del func(T) error) []error {
	var errs []error
	wanted := make(map[T]bool, len(want))
	for _, x := range want {
		wanted[x] = true
		if err := put(x); err != nil {
			errs = append(errs, err)
		}
	}
	cur, err := have()
	if err != nil {
		return append(errs, err)
	}
	for _, x := range cur {
		if mine(x) && !wanted[x] {
			if err := del(x); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// Update changes the kernel from the plan that was applied last to the new
// one: only entries that appeared or went are written, with no dump. An
// entry that changed (a route to the same destination via another host) is
// replaced in place, never deleted first. Plans from Compute are sorted, so
// this is one walk over both, without maps.
func Update(k Kernel, n Network, was, now Plan) error {
	routes, errs := checkRoutes(n, now.Routes)
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if n.Device != "" {
		// Neighbours: one per peer address; a changed MAC is a replace.
		walk(was.Neighs, now.Neighs, func(a, b kernel.Neigh) int { return a.IP.Compare(b.IP) },
			func(x kernel.Neigh) { note(k.ReplaceNeigh(x)) },
			func(x kernel.Neigh) { note(k.DeleteNeigh(x)) },
			func(old, x kernel.Neigh) {
				if old != x {
					note(k.ReplaceNeigh(x))
				}
			})
		// FDB entries are keyed by MAC and destination: a changed one is
		// a new entry and a removed one.
		walk(was.FDBs, now.FDBs, compareFDB,
			func(f kernel.FDB) { note(k.ReplaceFDB(f)) },
			func(f kernel.FDB) { note(k.DeleteFDB(f)) },
			func(old, f kernel.FDB) {
				if old != f {
					note(k.ReplaceFDB(f))
				}
			})
	}
	walk(was.Routes, routes, func(a, b kernel.Route) int { return comparePrefix(a.Dst, b.Dst) },
		func(r kernel.Route) { note(k.ReplaceRoute(r)) },
		func(r kernel.Route) { note(k.DeleteRoute(r)) },
		func(old, r kernel.Route) {
			if old != r {
				note(k.ReplaceRoute(r))
			}
		})
	return errors.Join(errs...)
}

// walk compares two lists sorted by cmp: added is called for what only now
// has, removed for what only was has, kept for what both have (same key).
// Lists that are not sorted (a plan not from Compute) are sorted first.
func walk[T any](was, now []T, cmp func(a, b T) int, added, removed func(T), kept func(old, cur T)) {
	if !slices.IsSortedFunc(was, cmp) {
		was = slices.SortedFunc(slices.Values(was), cmp)
	}
	if !slices.IsSortedFunc(now, cmp) {
		now = slices.SortedFunc(slices.Values(now), cmp)
	}
	i, j := 0, 0
	for i < len(was) || j < len(now) {
		switch {
		case j == len(now):
			removed(was[i])
			i++
		case i == len(was):
			added(now[j])
			j++
		default:
			switch c := cmp(was[i], now[j]); {
			case c < 0:
				removed(was[i])
				i++
			case c > 0:
				added(now[j])
				j++
			default:
				kept(was[i], now[j])
				i++
				j++
			}
		}
	}
}

// VXLANPeers is the underlay addresses of a plan's VXLAN peers.
func (p Plan) VXLANPeers() []netip.Addr {
	out := make([]netip.Addr, 0, len(p.FDBs))
	for _, f := range p.FDBs {
		out = append(out, f.Dst)
	}
	return out
}
