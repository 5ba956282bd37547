package routing

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
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
	// Seen is when this host last saw each host renew, and BlockSeen each
	// block's lease (by kv.BlockPath), on its own clock (kv.Witness): the
	// times liveness is judged by.
	Seen       map[string]time.Time
	BlockSeen  map[string]time.Time
	Blocks     []kv.Block
	Exceptions []kv.Address
	// BlockBits is the prefix length of the pool's blocks, from its pool
	// record (0: unknown, the record is gone).
	BlockBits int
	// Problems are records the listings left out (they cannot be read);
	// the plan reports them with its own.
	Problems []string
}

// Plan is the desired cross-host state of one network on this host: the
// entries its Peering asks for, for every block of another live host and
// every address that lives on a host other than its block's owner (a /32
// or /128 of its own).
type Plan struct {
	Routes []kernel.Route
	Neighs []kernel.Neigh
	FDBs   []kernel.FDB
	// Tunnels are the peers of a network with a Tunnel device: one per
	// remote host, with the destinations it is routed for (its allowed
	// addresses), sorted by host.
	Tunnels []Tunnel
	// Announce is what this host announces to its BGP peers for the
	// network (Network.Announce): its own live blocks, and its containers'
	// addresses away from their block's owner (a /32 or /128 each),
	// sorted.
	Announce []netip.Prefix
	Problems []string // peers that cannot be reached, said plainly
	// Next is the first time at which, with no change in the store, the
	// plan would change (a lease or a host's liveness runs out); zero: none.
	Next time.Time
}

// Network is a routed network of this host, as routing sees it.
type Network struct {
	ID   string
	Pool netip.Prefix
	// Pool6 is the IPv6 pool of a dual-stack network (invalid: none): its
	// blocks are routed to the same peers, through their IPv6 link-local
	// addresses (Compute6).
	Pool6 netip.Prefix
	// Peering is the backend's rule for reaching another host's
	// destinations (nil: none are routed).
	Peering Peering
	// Device is the device whose neighbour and FDB entries the plans own
	// ("": none): a network's own encapsulating device.
	Device string
	// Announce: this host announces its part of the pools to its BGP
	// peers (Plan.Announce).
	Announce bool
	// Tunnel is the tunnel device that every peer is routed through
	// (a device may serve several networks); the device picks the peer
	// of a packet by its destination among the Plan's Tunnels.
	Tunnel string
}

// Tunnel is a remote host as a tunnel device knows it: its public key,
// its endpoint and the destinations routed to it.
type Tunnel struct {
	Host     string
	Key      string // base64, as the host registered it (checked)
	Endpoint netip.AddrPort
	Allowed  []netip.Prefix // sorted
}

// Equal says whether two tunnels are the same.
func (t Tunnel) Equal(o Tunnel) bool {
	return t.Host == o.Host && t.Key == o.Key && t.Endpoint == o.Endpoint && slices.Equal(t.Allowed, o.Allowed)
}

// pools names the network's pools, for messages.
func (n Network) pools() string {
	if n.Pool6.IsValid() {
		return n.Pool.String() + " and " + n.Pool6.String()
	}
	return n.Pool.String()
}

// Input is everything Compute needs; it does no I/O.
type Input struct {
	Self string
	// Local says whether an address is one of this host's own endpoints'
	// (nil: none is): no record may route it elsewhere.
	Local    func(netip.Addr) bool
	Net      Network
	Underlay kernel.Underlay
	TTL      time.Duration // a host silent this long is gone
	Now      time.Time
	View     View
	Memo     *Memo // optional: what an earlier call derived for this network
	// V6: Net.Pool is the network's IPv6 pool (Compute6), routed through
	// the peers' link-local addresses.
	V6 bool
}

// liveness is the cluster's rule for live hosts and blocks (kv.Liveness).
func (in Input) liveness() kv.Liveness {
	return kv.Liveness{Hosts: in.View.Hosts, Seen: in.View.Seen, BlockSeen: in.View.BlockSeen, Now: in.Now, TTL: in.TTL}
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
	case !Inside(pool, p):
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
		return "not an IPv4 address" // the underlay is IPv4, whatever the pools
	case !ip.IsGlobalUnicast():
		// Rules out unspecified, loopback, multicast, link-local, broadcast.
		return "not a unicast address another host can reach"
	case in.Net.Pool.Contains(ip):
		return fmt.Sprintf("inside the network's own pool %s", in.Net.Pool)
	}
	return ""
}

// Compute6 plans the peer entries of a dual-stack network's IPv6 pool: in
// with Net.Pool replaced by Net.Pool6 and View the IPv6 pool's.
func Compute6(in Input) Plan {
	in.Net.Pool, in.V6 = in.Net.Pool6, true
	return Compute(in)
}

// Merge joins the plans of a dual-stack network's two pools into one: the
// routes of both, and one neighbour and FDB entry per peer.
func Merge(a, b Plan) Plan {
	out := Plan{Routes: slices.Concat(a.Routes, b.Routes), Neighs: slices.Concat(a.Neighs, b.Neighs), FDBs: slices.Concat(a.FDBs, b.FDBs),
		Tunnels: MergeTunnels(a.Tunnels, b.Tunnels), Announce: slices.Concat(a.Announce, b.Announce), Problems: slices.Concat(a.Problems, b.Problems), Next: a.Next}
	out.until(b.Next, time.Time{})
	slices.SortFunc(out.Routes, func(x, y kernel.Route) int { return comparePrefix(x.Dst, y.Dst) })
	slices.SortFunc(out.Neighs, compareNeigh)
	out.Neighs = slices.Compact(out.Neighs)
	slices.SortFunc(out.FDBs, compareFDB)
	out.FDBs = slices.Compact(out.FDBs)
	slices.SortFunc(out.Announce, comparePrefix)
	return out
}

// MergeTunnels joins tunnel lists: one per host, with the destinations of
// all (a host registers one key: the first list's wins if two differ).
func MergeTunnels(lists ...[]Tunnel) []Tunnel {
	var out []Tunnel
	at := map[string]int{}
	for _, l := range lists {
		for _, t := range l {
			i, ok := at[t.Host]
			if !ok {
				at[t.Host] = len(out)
				t.Allowed = slices.Clone(t.Allowed)
				out = append(out, t)
				continue
			}
			out[i].Allowed = append(out[i].Allowed, t.Allowed...)
		}
	}
	for i := range out {
		slices.SortFunc(out[i].Allowed, comparePrefix)
		out[i].Allowed = slices.Compact(out[i].Allowed)
	}
	slices.SortFunc(out, func(a, b Tunnel) int { return strings.Compare(a.Host, b.Host) })
	return out
}

// Compute plans the peer state of a network. Records that cannot be routed
// safely are left out, each with a problem that says why.
func Compute(in Input) Plan {
	c := &planner{in: &in, live: in.liveness(), memo: in.Memo, badHost: map[string]bool{},
		plan: Plan{Problems: append([]string(nil), in.View.Problems...)}}
	if c.memo == nil {
		c.memo = &Memo{}
	}
	c.memo.begin(in)
	if j, ok := in.Net.Peering.(HostsJudge); ok {
		c.judged = j.JudgeHosts(in.View.Hosts)
	}
	blocks := c.liveBlocks()
	c.plan.Routes = make([]kernel.Route, 0, len(blocks)+len(in.View.Exceptions))
	for _, b := range blocks {
		switch {
		case b.host != in.Self:
			c.add(b.p, b.host)
		case in.Net.Announce:
			c.plan.Announce = append(c.plan.Announce, b.p)
		}
	}
	c.exceptions(blocks)
	return c.finish()
}

// planner is one Compute call.
type planner struct {
	in      *Input
	live    kv.Liveness
	memo    *Memo
	plan    Plan
	badHost map[string]bool   // hosts refused (said once)
	judged  map[string]string // hosts the peering refuses together
}

// owned is a live block and its host.
type owned struct {
	p    netip.Prefix
	host string
}

// liveBlocks is the view's blocks that may be routed: well-formed, inside
// the pool, alive.
func (c *planner) liveBlocks() []owned {
	in := c.in
	blocks := make([]owned, 0, len(in.View.Blocks))
	for _, b := range in.View.Blocks {
		p, why := c.memo.block(*in, b.CIDR)
		if why != "" {
			c.plan.Problems = append(c.plan.Problems, fmt.Sprintf("block record %q of host %s ignored: %s", b.CIDR, b.Host, why))
			continue
		}
		if !c.live.BlockAlive(b) {
			continue
		}
		if seen, ok := in.View.BlockSeen[kv.BlockPath(b.Pool, b.CIDR)]; ok {
			c.plan.until(seen.Add(in.TTL), in.Now)
		}
		c.plan.until(c.live.LastSeen(b.Host).Add(in.TTL), in.Now)
		blocks = append(blocks, owned{p, b.Host})
	}
	return blocks
}

// add asks the peering for the entries of dst at hostID.
func (c *planner) add(dst netip.Prefix, hostID string) {
	h, ok := c.in.View.Hosts[hostID]
	if !ok || h.Address == "" {
		c.plan.Problems = append(c.plan.Problems, fmt.Sprintf("%s belongs to host %s, which has no registered address", dst, hostID))
		return
	}
	if c.in.Net.Peering == nil {
		return
	}
	p := c.memo.peer(c.in, hostID, h)
	why := p.problem
	if why == "" {
		why = c.judged[hostID]
	}
	if why != "" {
		if !c.badHost[hostID] {
			c.badHost[hostID] = true
			c.plan.Problems = append(c.plan.Problems, why)
		}
		return
	}
	p.Record = h
	p.First, p.done = p.done != c.memo.gen, c.memo.gen
	if why := c.in.Net.Peering.Entries(c.in, dst, p, &c.plan); why != "" {
		c.plan.Problems = append(c.plan.Problems, why)
	}
}

// exceptions routes the addresses that live away from their block's owner
// (borrowed, or allocated on a swarm manager for a task elsewhere): a /32
// or /128 each.
func (c *planner) exceptions(blocks []owned) {
	in := c.in
	if len(in.View.Exceptions) == 0 {
		return
	}
	owner := make(map[netip.Prefix]string, len(blocks))
	var sizes []int // block prefix lengths (one, unless records disagree)
	for _, b := range blocks {
		owner[b.p] = b.host
		if !slices.Contains(sizes, b.p.Bits()) {
			sizes = append(sizes, b.p.Bits())
		}
	}
	pool := in.Net.Pool
	for _, a := range in.View.Exceptions {
		ip, err := netip.ParseAddr(a.IP)
		if err != nil || !pool.Contains(ip) {
			c.plan.Problems = append(c.plan.Problems, fmt.Sprintf("address record %q of host %s ignored: not an address of the network's pool %s", a.IP, a.Host, pool))
			continue
		}
		if a.Kind == kv.KindEndpoint && a.Host != in.Self && in.Local != nil && in.Local(ip) {
			// A record (a bad one, or a duplicate) that would replace a
			// local container's own route (issue 24, audit L10).
			c.plan.Problems = append(c.plan.Problems, fmt.Sprintf("address record %s of host %s ignored: a container of this host has that address", a.IP, a.Host))
			continue
		}
		if a.Kind != kv.KindEndpoint {
			continue
		}
		if a.Host == in.Self {
			// This host's own container away from its block's owner:
			// announced, when the network is.
			if blockOwner, _ := kv.BlockHolding(owner, sizes, ip); in.Net.Announce && blockOwner != in.Self {
				c.plan.Announce = append(c.plan.Announce, netip.PrefixFrom(ip, ip.BitLen()))
			}
			continue
		}
		if !c.live.HostAlive(a.Host) {
			continue
		}
		c.plan.until(c.live.LastSeen(a.Host).Add(in.TTL), in.Now)
		if blockOwner, _ := kv.BlockHolding(owner, sizes, ip); blockOwner != a.Host {
			c.add(netip.PrefixFrom(ip, ip.BitLen()), a.Host)
		}
	}
}

// finish sorts the plan and reports hosts that share an underlay address.
func (c *planner) finish() Plan {
	plan := c.plan
	slices.SortFunc(plan.Routes, func(a, b kernel.Route) int { return comparePrefix(a.Dst, b.Dst) })
	slices.SortFunc(plan.Neighs, compareNeigh)
	slices.SortFunc(plan.FDBs, compareFDB)
	slices.SortFunc(plan.Announce, comparePrefix)
	plan.Announce = slices.Compact(plan.Announce)
	plan.Tunnels = MergeTunnels(plan.Tunnels)
	// One neighbour per address: hosts registered with the same underlay
	// address cannot both be reached there.
	for i := 1; i < len(plan.Neighs); i++ {
		if plan.Neighs[i].IP == plan.Neighs[i-1].IP {
			plan.Problems = append(plan.Problems, fmt.Sprintf("two hosts are registered with underlay address %s: traffic for both goes to one; give each host its own (ADVERTISE)", plan.Neighs[i].IP))
		}
	}
	plan.Neighs = slices.CompactFunc(plan.Neighs, func(a, b kernel.Neigh) bool { return a.IP == b.IP })
	return plan
}

// until notes a time at which the plan would change, if it is the first.
func (p *Plan) until(t, now time.Time) {
	if t.After(now) && (p.Next.IsZero() || t.Before(p.Next)) {
		p.Next = t
	}
}

// Memo keeps what Compute derives per host (its parsed address and its
// problem, its VTEP MAC) and per block record (its prefix, or why it is
// refused) from one call to the next: a router keeps one per network, so
// that a change costs little more than the work of what changed.
type Memo struct {
	peers  map[string]*Peer
	blocks map[string]memoBlock
	key    string // what the block entries were judged against
	gen    int    // this call's number
}

type memoBlock struct {
	p   netip.Prefix
	why string
}

// begin starts a call: block judgements made against another pool or block
// size are dropped, as are entries of blocks long gone.
func (m *Memo) begin(in Input) {
	m.gen++
	key := fmt.Sprint(in.Net.Pool, "/", in.View.BlockBits)
	if key != m.key || len(m.blocks) > 2*len(in.View.Blocks)+64 {
		m.key, m.blocks = key, nil
	}
}

func (m *Memo) block(in Input, cidr string) (netip.Prefix, string) {
	if b, ok := m.blocks[cidr]; ok {
		return b.p, b.why
	}
	p, err := netip.ParsePrefix(cidr)
	b := memoBlock{p: p, why: in.blockProblem(p, err)}
	if m.blocks == nil {
		m.blocks = map[string]memoBlock{}
	}
	m.blocks[cidr] = b
	return b.p, b.why
}

// peer is hostID's Peer: judged again when its address or WireGuard key
// or port changed since the last call that judged it.
func (m *Memo) peer(in *Input, hostID string, h kv.Host) *Peer {
	port := strconv.Itoa(h.WireGuardPort)
	if p, ok := m.peers[hostID]; ok && p.address == h.Address && p.key == h.WireGuardKey && p.port == port {
		return p
	}
	via, err := netip.ParseAddr(h.Address)
	p := &Peer{ID: hostID, Record: h, Via: via, address: h.Address, key: h.WireGuardKey, port: port}
	if why := in.hostAddrProblem(via, err); why != "" {
		p.problem = fmt.Sprintf("host record %s ignored: its address %q is %s; no routes to its blocks", hostID, h.Address, why)
	} else {
		p.problem = in.Net.Peering.Peer(p)
	}
	if m.peers == nil {
		m.peers = map[string]*Peer{}
	}
	m.peers[hostID] = p
	return p
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func compareNeigh(a, b kernel.Neigh) int {
	if c := a.IP.Compare(b.IP); c != 0 {
		return c
	}
	return strings.Compare(a.MAC, b.MAC)
}

func compareFDB(a, b kernel.FDB) int {
	if c := strings.Compare(a.MAC, b.MAC); c != 0 {
		return c
	}
	return a.Dst.Compare(b.Dst)
}
