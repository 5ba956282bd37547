package routing

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
)

// View is what the store says about one network's pool: the hosts, the
// pool's blocks and the addresses that live away from their block's owner
// (Exceptions; a listing of every address of the pool serves as well, the
// plan keeps only those that need a route of their own).
type View struct {
	Hosts map[string]kv.Host
	// Renewals are the hosts' liveness renewals (kv.ReadRenewals).
	Renewals   map[string]time.Time
	Blocks     []kv.Block
	Exceptions []kv.Address
	// BlockBits is the prefix length of the pool's blocks, from its pool
	// record (0: unknown, the record is gone).
	BlockBits int
	// Problems are records the listings left out (they cannot be read);
	// the plan reports them with its own.
	Problems []string
}

// Plan is the desired cross-host state of one network on this host:
// flannel's three entries per remote host (neighbour, FDB, route per block)
// for vxlan, plain routes for host-gw, and /32 routes for addresses that live
// on a host other than their block's owner.
type Plan struct {
	Routes   []kernel.Route
	Neighs   []kernel.Neigh
	FDBs     []kernel.FDB
	Problems []string // peers that cannot be reached, said plainly
}

// Network is a routed network of this host, as routing sees it.
type Network struct {
	ID   string
	Pool netip.Prefix
	// HostGW: every peer is reached by a plain route on the underlay.
	// Otherwise Device is the network's VXLAN device and VNI its VNI;
	// Direct (directrouting) routes peers on the underlay's L2 directly.
	HostGW bool
	Device string
	VNI    int
	Direct bool
}

// Input is everything Compute needs; it does no I/O.
type Input struct {
	Self     string
	Net      Network
	Underlay kernel.Underlay
	TTL      time.Duration // a host silent this long is gone
	Now      time.Time
	View     View
}

// liveness is the cluster's rule for live hosts and blocks (kv.Liveness).
func (in Input) liveness() kv.Liveness {
	return kv.Liveness{Hosts: in.View.Hosts, Renewals: in.View.Renewals, Now: in.Now, TTL: in.TTL}
}

// blockProblem says why a block record must not become a route, or "".
// Store records are not trusted with the host's routing table: a block that
// merely overlapped the pool (0.0.0.0/0, 10.0.0.0/8) would replace every
// host's default route or capture a whole range.
func (in Input) blockProblem(p netip.Prefix, perr error) string {
	pool := in.Net.Pool
	switch {
	case perr != nil:
		return "not a CIDR"
	case p.Masked() != p:
		return fmt.Sprintf("host bits set (the block would be %s)", p.Masked())
	case !inside(pool, p):
		return fmt.Sprintf("not inside the network's pool %s", pool)
	case in.View.BlockBits != 0 && p.Bits() != in.View.BlockBits:
		return fmt.Sprintf("pool %s has /%d blocks", pool, in.View.BlockBits)
	}
	return ""
}

// hostAddrProblem says why a host's registered address cannot be a next
// hop, or "".
func (in Input) hostAddrProblem(ip netip.Addr, perr error) string {
	switch {
	case perr != nil:
		return "not an IP address"
	case !ip.Is4():
		return "not an IPv4 address"
	case !ip.IsGlobalUnicast():
		// Rules out unspecified, loopback, multicast, link-local, broadcast.
		return "not a unicast address another host can reach"
	case in.Net.Pool.Contains(ip):
		return fmt.Sprintf("inside the network's own pool %s", in.Net.Pool)
	}
	return ""
}

// Compute plans the peer state of a network. Records that cannot be routed
// safely are left out, each with a problem that says why.
func Compute(in Input) Plan {
	plan := Plan{Problems: append([]string(nil), in.View.Problems...)}
	live := in.liveness()
	pool := in.Net.Pool
	owner := map[netip.Prefix]string{}
	var blocks []netip.Prefix
	var sizes []int // block prefix lengths (one, unless records disagree)
	for _, b := range in.View.Blocks {
		p, err := netip.ParsePrefix(b.CIDR)
		if why := in.blockProblem(p, err); why != "" {
			plan.Problems = append(plan.Problems, fmt.Sprintf("block record %q of host %s ignored: %s", b.CIDR, b.Host, why))
			continue
		}
		if !live.BlockAlive(b) {
			continue
		}
		owner[p] = b.Host
		blocks = append(blocks, p)
		if !slices.Contains(sizes, p.Bits()) {
			sizes = append(sizes, p.Bits())
		}
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i].Addr().Less(blocks[j].Addr()) })
	peersDone := map[string]bool{}
	badHost := map[string]bool{}
	add := func(dst netip.Prefix, hostID string) {
		h, ok := in.View.Hosts[hostID]
		if !ok || h.Address == "" {
			plan.Problems = append(plan.Problems, fmt.Sprintf("%s belongs to host %s, which has no registered address", dst, hostID))
			return
		}
		via, err := netip.ParseAddr(h.Address)
		if why := in.hostAddrProblem(via, err); why != "" {
			if !badHost[hostID] {
				badHost[hostID] = true
				plan.Problems = append(plan.Problems, fmt.Sprintf("host record %s ignored: its address %q is %s; no routes to its blocks", hostID, h.Address, why))
			}
			return
		}
		onL2 := in.Underlay.Prefix.Contains(via)
		direct := in.Net.HostGW || (in.Net.Direct && onL2)
		if direct {
			if !onL2 {
				plan.Problems = append(plan.Problems, fmt.Sprintf("host %s (%s) is not on this host's L2 segment %s: host-gw cannot reach %s; use -o tartan.backend=vxlan -o tartan.directrouting=true",
					hostID, via, in.Underlay.Prefix, dst))
				return
			}
			plan.Routes = append(plan.Routes, kernel.Route{Dst: dst, Link: in.Underlay.Interface, Via: via})
			return
		}
		plan.Routes = append(plan.Routes, kernel.Route{Dst: dst, Link: in.Net.Device, Via: via, Onlink: true})
		if !peersDone[hostID] {
			peersDone[hostID] = true
			mac := kernel.VTEPMAC(hostID, in.Net.VNI).String()
			plan.Neighs = append(plan.Neighs, kernel.Neigh{Link: in.Net.Device, IP: via, MAC: mac})
			plan.FDBs = append(plan.FDBs, kernel.FDB{Link: in.Net.Device, MAC: mac, Dst: via})
		}
	}
	for _, b := range blocks {
		if owner[b] != in.Self {
			add(b, owner[b])
		}
	}
	// Addresses that live away from their block's owner (borrowed, or
	// allocated on a swarm manager for a task elsewhere) get a /32.
	for _, a := range in.View.Exceptions {
		ip, err := netip.ParseAddr(a.IP)
		if err != nil || !ip.Is4() || !pool.Contains(ip) {
			plan.Problems = append(plan.Problems, fmt.Sprintf("address record %q of host %s ignored: not an address of the network's pool %s", a.IP, a.Host, pool))
			continue
		}
		if a.Kind != kv.KindEndpoint || a.Host == in.Self || !live.HostAlive(a.Host) {
			continue
		}
		blockOwner := ""
		for _, bits := range sizes {
			if o, ok := owner[netip.PrefixFrom(ip, bits).Masked()]; ok {
				blockOwner = o
				break
			}
		}
		if blockOwner != a.Host {
			add(netip.PrefixFrom(ip, 32), a.Host)
		}
	}
	sort.Slice(plan.Routes, func(i, j int) bool {
		a, b := plan.Routes[i].Dst, plan.Routes[j].Dst
		if a.Addr() != b.Addr() {
			return a.Addr().Less(b.Addr())
		}
		return a.Bits() < b.Bits()
	})
	return plan
}
