// Package routingtest has a kernel for routing that keeps its tables in
// memory and counts the operations it is asked for: unit tests and the scale
// harness run tartan's real routing code against it.
package routingtest

import (
	"net/netip"
	"sync"
	"time"

	"github.com/tartan-net/tartan/driver/kernel"
)

// Ops counts kernel operations by kind.
type Ops struct {
	Writes int // route, neighbour and FDB replaces and deletes
	Dumps  int // route, neighbour and FDB listings
}

// Kernel is an in-memory routing.Kernel. Every link exists.
type Kernel struct {
	mu     sync.Mutex
	routes map[netip.Prefix]kernel.Route
	neighs map[string]kernel.Neigh
	fdbs   map[string]kernel.FDB
	ops    Ops
	// OnRoute, when set, is called (without the lock) with every route
	// written and the time it was written.
	OnRoute func(kernel.Route, time.Time)
}

// New returns an empty kernel.
func New() *Kernel {
	return &Kernel{routes: map[netip.Prefix]kernel.Route{}, neighs: map[string]kernel.Neigh{}, fdbs: map[string]kernel.FDB{}}
}

// Ops is what the kernel was asked for so far.
func (k *Kernel) Ops() Ops {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ops
}

// Routes is the route table.
func (k *Kernel) Routes() map[netip.Prefix]kernel.Route {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[netip.Prefix]kernel.Route, len(k.routes))
	for d, r := range k.routes {
		out[d] = r
	}
	return out
}

func (k *Kernel) LinkExists(string) bool { return true }

func (k *Kernel) ReplaceRoute(r kernel.Route) error {
	k.mu.Lock()
	k.ops.Writes++
	k.routes[r.Dst] = r
	on := k.OnRoute
	k.mu.Unlock()
	if on != nil {
		on(r, time.Now())
	}
	return nil
}

func (k *Kernel) DeleteRoute(r kernel.Route) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ops.Writes++
	if cur, ok := k.routes[r.Dst]; ok && (!r.Via.IsValid() || cur.Via == r.Via) {
		delete(k.routes, r.Dst)
	}
	return nil
}

func (k *Kernel) OwnedRoutes() ([]kernel.Route, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ops.Dumps++
	out := make([]kernel.Route, 0, len(k.routes))
	for _, r := range k.routes {
		out = append(out, r)
	}
	return out, nil
}

func neighKey(n kernel.Neigh) string { return n.Link + "/" + n.IP.String() }
func fdbKey(f kernel.FDB) string     { return f.Link + "/" + f.MAC + "/" + f.Dst.String() }

func (k *Kernel) ReplaceNeigh(n kernel.Neigh) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ops.Writes++
	k.neighs[neighKey(n)] = n
	return nil
}

func (k *Kernel) DeleteNeigh(n kernel.Neigh) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ops.Writes++
	delete(k.neighs, neighKey(n))
	return nil
}

func (k *Kernel) Neighs(link string) ([]kernel.Neigh, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ops.Dumps++
	var out []kernel.Neigh
	for _, n := range k.neighs {
		if n.Link == link {
			out = append(out, n)
		}
	}
	return out, nil
}

func (k *Kernel) ReplaceFDB(f kernel.FDB) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ops.Writes++
	k.fdbs[fdbKey(f)] = f
	return nil
}

func (k *Kernel) DeleteFDB(f kernel.FDB) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ops.Writes++
	delete(k.fdbs, fdbKey(f))
	return nil
}

func (k *Kernel) FDBs(link string) ([]kernel.FDB, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ops.Dumps++
	var out []kernel.FDB
	for _, f := range k.fdbs {
		if f.Link == link {
			out = append(out, f)
		}
	}
	return out, nil
}
