// Package driver is tartan's network driver: it validates networks, keeps
// this host's records of them and their endpoints, and asks each network's
// backend (driver/backend: driver/vxlan, driver/hostgw, driver/wireguard,
// driver/macvlan) to make the kernel objects; driver/routing keeps the
// routed networks' peers, and driver/hostplane writes the host-wide state
// (fast path, firewall, WireGuard peers) from snapshots the driver takes
// (hoststate.go).
//
// Locks: d.mu guards the tables (records, endpoints in flight) and is
// never held across a store, netlink or exec call; helpers that need it say
// so in their names (…Locked). d.netMu orders network creations, deletions
// and reconcile's repair of networks (it is held across their I/O: no
// endpoint request waits on it); d.portsMu orders changes of published
// ports; lockEndpoint keeps two calls for one endpoint apart. The host
// writer's turn comes before d.mu (its snapshot takes d.mu), never after.
package driver

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/bgp"
	"github.com/tartan-net/tartan/driver/bgp/speaker"
	"github.com/tartan-net/tartan/driver/fastpath"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/hostgw"
	"github.com/tartan-net/tartan/driver/hostplane"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/macvlan"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/driver/wireguard"
	"github.com/tartan-net/tartan/internal/dockerid"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/policy"
)

// Config holds the driver's settings.
type Config struct {
	Host       string // this host's ID
	Scope      string // local or global
	VXLANPort  int
	Advertise  string        // ADVERTISE setting
	SysctlRoot string        // where the host's /proc/sys is mounted
	LeaseTTL   time.Duration // a host silent this long is gone
	Resync     time.Duration // full peer resync period
	// OrphanGrace is how long a link tartan owns but has no record of
	// stays before it is removed (default: two resync periods).
	OrphanGrace time.Duration
	// NoClusterNetworks says why -o tartan.cluster=true cannot work on this
	// host (nil when it can).
	NoClusterNetworks error
	// WireGuard is the host's WireGuard device, with its key (nil: one
	// with a new key on the default port, for tests).
	WireGuard *wireguard.Device
	// FastPath is the eBPF fast path of the routed networks (nil: the
	// kernel path only).
	FastPath *fastpath.FastPath
	// Witness times the hosts' renewals on this host's clock, for
	// routing (kv.Witness; nil: routing's own), and Now is that clock
	// (nil: time.Now).
	Witness *kv.Witness
	Now     func() time.Time
	// BGP is the host's BGP speaker (nil: BGP is off, and bgp networks
	// are refused).
	BGP *speaker.Speaker
}

// Addresses is the part of the IPAM the driver uses: macvlan host-access
// shims take an address of their network, and a deleted network releases
// the pool whose release it deferred.
type Addresses interface {
	macvlan.Addresses
	ReleasePool(ctx context.Context, id ipam.PoolID) error
}

// The local records' types: backend.Network and backend.Endpoint, as this
// host keeps them.
type (
	localNetwork  = backend.Network
	localEndpoint = backend.Endpoint
)

// Driver implements the network half of tartan.
type Driver struct {
	cluster  kv.Store
	local    kv.Store
	addrs    Addresses
	cfg      Config
	fw       *firewall.Firewall
	log      logrus.FieldLogger
	backends map[string]backend.Backend
	descs    []backend.Description // the backends in Backends' order
	routes   *routing.Router
	wg       *wireguard.Device
	// host writes the host-wide state (fast path, firewall, WireGuard
	// peers) from one snapshot at a time (hoststate.go).
	host *hostplane.Writer

	netMu   sync.Mutex // orders CreateNetwork, DeleteNetwork and reconcile's Ensure
	portsMu sync.Mutex // orders changes of published ports

	mu sync.Mutex
	st localState
	// inflight marks endpoints whose kernel objects a call is changing
	// outside the lock; closed channels wake calls waiting for them.
	inflight map[string]chan struct{}
	// arriving are endpoints a CreateEndpoint is making, with their
	// addresses (held: Holding), until it returns.
	arriving map[string]localEndpoint
	// orphans are links tartan owns but has no record of, with the time
	// they were first seen so; they go only once proven dead (reconcile.go).
	orphans map[string]time.Time
	// missing are endpoints first seen without their veth (stale.go).
	missing map[string]time.Time
	// creating maps pools to the networks being created on them.
	creating map[string]string
	// pol is the cluster's network policy as this host follows it, and
	// deny the flows it denied here.
	pol  policyView
	deny denyLog
	// knownPeers is the last complete VXLAN peer set the firewall held
	// (also in the local store): what the port stays open to while a
	// network has no plan yet.
	knownPeers []netip.Addr
	// published are the UDP ports the firewall last written DNATs (the
	// host writer's turn only): a port new in a write has its stale flows
	// flushed after it.
	published map[firewall.Port]bool
	// keptPoliced are the rules last applied to this host's policed
	// endpoints, by host interface (also in the local store): what they
	// keep until the policy view is live (policies.go).
	keptPoliced map[string]policy.Rules
}

// New returns a driver; Restore must run before it serves endpoints of
// networks made before a restart.
func New(cluster, local kv.Store, addrs Addresses, fw *firewall.Firewall, cfg Config, log logrus.FieldLogger) *Driver {
	if cfg.VXLANPort == 0 {
		cfg.VXLANPort = vxlan.DefaultPort
	}
	if cfg.SysctlRoot == "" {
		cfg.SysctlRoot = "/proc/sys"
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = kv.DefaultLeaseTTL
	}
	if cfg.Resync == 0 {
		cfg.Resync = DefaultResync
	}
	if cfg.OrphanGrace == 0 {
		cfg.OrphanGrace = 2 * cfg.Resync
	}
	if cfg.WireGuard == nil {
		key, err := wireguard.NewPrivateKey()
		if err != nil {
			log.Errorf("no WireGuard key for the test device: %v", err)
		}
		cfg.WireGuard = wireguard.NewDevice(wireguard.DeviceName, wireguard.DefaultPort, wireguard.ModeAuto, key, log)
	}
	d := &Driver{cluster: cluster, local: local, addrs: addrs, cfg: cfg, fw: fw, log: log, inflight: map[string]chan struct{}{}, arriving: map[string]localEndpoint{},
		orphans: map[string]time.Time{}, creating: map[string]string{}, backends: map[string]backend.Backend{},
		st: localState{networks: map[string]localNetwork{}, endpoints: map[string]localEndpoint{}},
		wg: cfg.WireGuard}
	d.host = d.newHostWriter()
	underlay := func() (kernel.Underlay, error) { return kernel.FindUnderlay(cfg.Advertise) }
	host := backend.Host{ID: cfg.Host, VXLANPort: cfg.VXLANPort, SysctlRoot: cfg.SysctlRoot, Underlay: underlay, Log: log}
	for _, b := range Backends(host, addrs, cluster, d.skipped, d.wg, d.bgpOff()) {
		d.backends[b.Describe().Name] = b
		d.descs = append(d.descs, b.Describe())
	}
	d.routes = routing.New(cluster, routing.Netlink{}, routing.Config{Host: cfg.Host, TTL: cfg.LeaseTTL, Replan: 10 * cfg.Resync,
		Underlay: underlay, OnPeers: d.peersChanged, Witness: cfg.Witness, Now: cfg.Now, Local: d.localAddress, Log: log})
	return d
}

// bgpOff says why this host cannot announce ("" when its BGP speaker runs).
func (d *Driver) bgpOff() string {
	if d.cfg.BGP != nil {
		return ""
	}
	return "BGP is off on this host: set its AS and its routers (docker plugin set tartan BGP_AS=64512 BGP_PEERS=10.0.0.1:64500), or use host-gw or vxlan"
}

// DefaultResync is how often reconcile runs by default.
const DefaultResync = 30 * time.Second

// Backends are the backends a host offers, the default first: the one
// place that knows them all.
// bgpOff says why bgp networks cannot be made ("": they can).
func Backends(h backend.Host, addrs macvlan.Addresses, cluster kv.Store, skipped func(*kv.DecodeError), wg *wireguard.Device, bgpOff string) []backend.Backend {
	return []backend.Backend{
		vxlan.New(h, macvlan.Name),
		hostgw.New(h, macvlan.Name),
		macvlan.New(h, addrs, cluster, skipped),
		wireguard.New(h, macvlan.Name, wg),
		bgp.New(h, macvlan.Name, bgpOff),
	}
}

// DefaultBackend is the backend of networks that name none.
const DefaultBackend = vxlan.Name

// backendOf is the backend of a network of the local state (Restore and
// CreateNetwork keep only networks whose backend this host has).
func (d *Driver) backendOf(n localNetwork) backend.Backend { return d.backends[n.Backend] }

// Start runs the networks' routing and the host writer until ctx ends. Call it after Restore.
func (d *Driver) Start(ctx context.Context) {
	d.mu.Lock()
	for _, n := range d.st.networks {
		d.startRoutingLocked(n)
	}
	d.mu.Unlock()
	d.routes.Start(ctx)
	d.followPolicy(ctx)
	go d.readDenyLog(ctx)
	go d.host.Run(ctx, func(r hostplane.Result) { d.log.Warnf("host-wide state: %v", r.Error()) })
}

// startRoutingLocked gives a network that has peers its routing. Called
// with d.mu held (routing.Router.Add does no I/O).
func (d *Driver) startRoutingLocked(n localNetwork) {
	if p, ok := d.backendOf(n).Peers(n); ok {
		d.routes.Add(p)
	}
}

// PeerState describes the peers of every network, for logs and tests.
func (d *Driver) PeerState() string { return d.routes.State() }

// Scope is the driver's data scope (GetCapabilities): local, or global
// when a swarm manager allocates its networks (SCOPE=global).
func (d *Driver) Scope() string {
	if d.cfg.Scope == ScopeGlobal {
		return ScopeGlobal
	}
	return ScopeLocal
}

// Data scopes, libnetwork's names.
const (
	ScopeLocal  = "local"
	ScopeGlobal = "global"
)

// Restore loads the local state written before a restart. It is cheap (the
// embedded store) and runs before the socket is served.
func (d *Driver) Restore(ctx context.Context) error {
	st, err := loadLocal(ctx, d.local, d.skipped)
	if err != nil {
		return fmt.Errorf("load local state: %w", err)
	}
	d.loadPeers(ctx)
	d.loadPoliced(ctx)
	all := make([]localNetwork, 0, len(st.networks))
	for id, n := range st.networks {
		if n.Backend == "" {
			n.Backend = DefaultBackend // the first version's records
			st.networks[id] = n
		}
		if _, ok := d.backends[n.Backend]; !ok {
			d.log.WithField("network", shortID(id)).Warnf("ignoring the record of a network with backend %q, which this version does not have", n.Backend)
			delete(st.networks, id)
			continue
		}
		all = append(all, n)
	}
	for id, n := range st.networks {
		st.networks[id] = d.backendOf(n).Restored(n, all)
	}
	d.mu.Lock()
	d.st = st
	d.mu.Unlock()
	d.log.WithFields(logrus.Fields{"networks": len(st.networks), "endpoints": len(st.endpoints)}).Info("local state restored")
	return nil
}

// poolUserLocked names the network of this host that uses pool, or is
// being created on it. Called with d.mu held.
func (d *Driver) poolUserLocked(pool netip.Prefix) string {
	for _, n := range d.st.networks {
		if n.Pool == pool.String() || n.Pool6 == pool.String() {
			return n.ID
		}
	}
	return d.creating[pool.String()]
}

// networksLocked copies the local networks, but the one named except.
// Called with d.mu held.
func (d *Driver) networksLocked(except string) []localNetwork {
	out := make([]localNetwork, 0, len(d.st.networks))
	for _, n := range d.st.networks {
		if n.ID != except {
			out = append(out, n)
		}
	}
	return out
}

// LocalAddress is an address a live endpoint of this host has.
type LocalAddress struct {
	Pool ipam.PoolID
	IP   string
	MAC  string
}

// LocalAddresses lists the addresses of this host's live endpoints, IPv4
// and IPv6.
func (d *Driver) LocalAddresses() []LocalAddress {
	type pair struct {
		n localNetwork
		e localEndpoint
	}
	var all []pair
	d.mu.Lock()
	for _, e := range d.st.endpoints {
		if n, ok := d.st.networks[e.Network]; ok {
			all = append(all, pair{n, e})
		}
	}
	d.mu.Unlock()
	var out []LocalAddress
	for _, p := range all {
		if !d.backendOf(p.n).Live(p.n, p.e) {
			continue // not live: its record is not to be taken back
		}
		out = append(out, LocalAddress{Pool: poolID(p.n), IP: p.e.IP, MAC: p.e.MAC})
		if p.e.IP6 != "" && p.n.Pool6Prefix().IsValid() {
			out = append(out, LocalAddress{Pool: ipam.PoolID{Space: poolID(p.n).Space, CIDR: p.n.Pool6Prefix()}, IP: p.e.IP6, MAC: p.e.MAC})
		}
	}
	return out
}

// LocalPools lists the pools of this host's networks, IPv6 ones too: what
// this host holds a pool for (its holder key), in pool order.
func (d *Driver) LocalPools() []ipam.PoolID {
	d.mu.Lock()
	defer d.mu.Unlock()
	seen := map[ipam.PoolID]bool{}
	var out []ipam.PoolID
	for _, n := range d.st.networks {
		id := poolID(n)
		ids := []ipam.PoolID{id}
		if p6 := n.Pool6Prefix(); p6.IsValid() {
			ids = append(ids, ipam.PoolID{Space: id.Space, CIDR: p6})
		}
		for _, id := range ids {
			if id.CIDR.IsValid() && !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	slices.SortFunc(out, func(a, b ipam.PoolID) int { return strings.Compare(a.String(), b.String()) })
	return out
}

// localAddress says whether one of this host's endpoints has ip.
func (d *Driver) localAddress(ip netip.Addr) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.st.endpoints {
		if e.Addr() == ip || e.Addr6() == ip {
			return true
		}
	}
	return false
}

// poolID is the IPAM's name of a network's pool.
func poolID(n localNetwork) ipam.PoolID {
	space := n.Space
	if space == "" {
		space = ipam.LocalSpace
	}
	return ipam.PoolID{Space: space, CIDR: n.PoolPrefix()}
}

// poolID6 is the ID of a dual-stack network's IPv6 pool (same space).
func poolID6(n localNetwork) ipam.PoolID {
	id := poolID(n)
	id.CIDR = n.Pool6Prefix()
	return id
}

// Holding lists, for each pool of a local-scope network of this host, the
// addresses its endpoints and its macvlan host-access shim have (every
// record, live or not: a record not yet proven stale still holds its
// address). It is ipam.Holding for the sweep
// of this host's orphaned address records.
func (d *Driver) Holding() map[string]map[string]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]map[string]bool{}
	for _, n := range d.st.networks {
		if n.Space == "" || n.Space == ipam.LocalSpace {
			for _, p := range []string{n.Pool, n.Pool6} {
				if p != "" && out[p] == nil {
					out[p] = map[string]bool{}
				}
			}
		}
	}
	for _, n := range d.st.networks {
		if n.ShimIP != "" && out[n.Pool] != nil {
			out[n.Pool][n.ShimIP] = true // a macvlan host-access shim's, an endpoint-kind record too
		}
	}
	for _, eps := range []map[string]localEndpoint{d.st.endpoints, d.arriving} {
		for _, e := range eps {
			n, ok := d.st.networks[e.Network]
			if ok && out[n.Pool] != nil && e.IP != "" {
				out[n.Pool][e.IP] = true
			}
			if ok && e.IP6 != "" && out[n.Pool6] != nil {
				out[n.Pool6][e.IP6] = true
			}
		}
	}
	return out
}

// EndpointHas says whether an endpoint of this host on a network of pool
// has the address: asked before Docker's ReleaseAddress reaches the IPAM.
// Docker releases after DeleteEndpoint, so an endpoint that has the address
// now is a newer holder and the release a late second one.
func (d *Driver) EndpointHas(pool netip.Prefix, ip netip.Addr) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.st.endpoints {
		n := d.st.networks[e.Network]
		if (e.IP == ip.String() && n.Pool == pool.String()) || (e.IP6 != "" && e.IP6 == ip.String() && n.Pool6 == pool.String()) {
			return true
		}
	}
	return false
}

// DeferRelease is asked before Docker's ReleasePool reaches the IPAM: when
// a network of this host uses the pool (Docker releases a network's pool
// before it deletes the network, and releases the pool of a refused create
// that another network of the host holds), the network is marked
// and the pool is released when the network is deleted (DeleteNetwork).
func (d *Driver) DeferRelease(id ipam.PoolID) bool {
	d.mu.Lock()
	for _, n := range d.st.networks {
		if (n.Pool == id.CIDR.String() || n.Pool6 == id.CIDR.String()) && (n.Space == id.Space || n.Space == "") {
			if n.Pool == id.CIDR.String() {
				n.ReleasePending = true
			} else {
				n.ReleasePending6 = true
			}
			d.st.networks[n.ID] = n
			d.mu.Unlock()
			if err := putLocal(context.Background(), d.local, localNetworks+n.ID, n); err != nil {
				d.log.WithField("network", shortID(n.ID)).Warnf("record the deferred pool release: %v", err)
			}
			return true
		}
	}
	creating := d.creating[id.CIDR.String()] != ""
	d.mu.Unlock()
	return creating
}

// skipped reports a record that a listing left out because it cannot be
// read; the listing goes on without it.
func (d *Driver) skipped(e *kv.DecodeError) {
	d.log.WithField("key", e.Key).Warnf("ignoring a record: %v", e)
}

// shortID is dockerid.Short, for the many messages of this package.
func shortID(id string) string { return dockerid.Short(id) }
