// Package driver is tartan's network driver: it validates networks, keeps
// their local and cluster records, and programs the routed data plane of
// DESIGN.md §3 through driver/kernel and driver/firewall.
package driver

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
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
}

// Addresses is the part of the IPAM the driver uses: macvlan host-access
// shims take an address of their network, and a deleted network releases
// the pool whose release it deferred.
type Addresses interface {
	RequestAddress(ctx context.Context, r ipam.AddressRequest) (netip.Prefix, error)
	ReleaseAddress(ctx context.Context, id ipam.PoolID, address string) error
	ReleasePool(ctx context.Context, id ipam.PoolID) error
}

// Driver implements the network half of tartan.
type Driver struct {
	mu      sync.Mutex
	cluster kv.Store
	local   kv.Store
	addrs   Addresses
	cfg     Config
	fw      *firewall.Firewall
	log     logrus.FieldLogger
	st      localState
	// inflight marks endpoints whose kernel objects a call is changing
	// outside the lock; closed channels wake calls waiting for them.
	inflight map[string]chan struct{}
	// orphans are links tartan owns but has no record of, with the time
	// they were first seen so; they go only once proven dead (reconcile.go).
	orphans map[string]time.Time
	// missing are endpoints first seen without their veth (stale.go).
	missing map[string]time.Time
	// creating maps pools to the networks being created on them, while
	// their cluster records are written without the lock.
	creating map[string]string
	// fwPeers is the VXLAN peer set the firewall was last rendered with.
	fwPeers string
	// fwGen numbers rendered firewall states (under mu); fwMu serialises
	// their writes, fwWritten is the newest written.
	fwGen     uint64
	fwMu      sync.Mutex
	fwWritten uint64
	// routes keeps the peers of the routed networks; fwPoke wakes the
	// firewall writer when their VXLAN peers changed.
	routes *routing.Router
	fwPoke chan struct{}
}

// New returns a driver; Restore must run before it serves endpoints of
// networks made before a restart.
func New(cluster, local kv.Store, addrs Addresses, fw *firewall.Firewall, cfg Config, log logrus.FieldLogger) *Driver {
	if cfg.VXLANPort == 0 {
		cfg.VXLANPort = 8472
	}
	if cfg.SysctlRoot == "" {
		cfg.SysctlRoot = "/proc/sys"
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 24 * time.Hour
	}
	if cfg.Resync == 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.OrphanGrace == 0 {
		cfg.OrphanGrace = 2 * cfg.Resync
	}
	d := &Driver{cluster: cluster, local: local, addrs: addrs, cfg: cfg, fw: fw, log: log, inflight: map[string]chan struct{}{},
		orphans: map[string]time.Time{}, creating: map[string]string{},
		st:     localState{networks: map[string]netRec{}, endpoints: map[string]epRec{}},
		fwPoke: make(chan struct{}, 1)}
	d.routes = routing.New(cluster, routing.Netlink{}, routing.Config{Host: cfg.Host, TTL: cfg.LeaseTTL, Replan: 10 * cfg.Resync,
		Underlay: func() (kernel.Underlay, error) { return kernel.FindUnderlay(cfg.Advertise) },
		OnPeers:  d.pokeFirewall, Log: log})
	return d
}

// Start runs the networks' routing and the firewall writer until ctx
// ends. Call it after Restore.
func (d *Driver) Start(ctx context.Context) {
	d.mu.Lock()
	for _, n := range d.st.networks {
		d.startWatch(n)
	}
	d.mu.Unlock()
	d.routes.Start(ctx)
	go d.firewallWriter(ctx)
}

func (d *Driver) pokeFirewall() {
	select {
	case d.fwPoke <- struct{}{}:
	default:
	}
}

// firewallWriter rewrites the firewall when the VXLAN peers changed: the
// VXLAN port admits the current peers only.
func (d *Driver) firewallWriter(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.fwPoke:
		}
		d.mu.Lock()
		if peersKey(d.routes.VXLANPeers()) != d.fwPeers {
			if err := d.applyFirewall(); err != nil {
				d.log.Warnf("firewall for the new VXLAN peers: %v", err)
			}
		}
		d.mu.Unlock()
	}
}

// startWatch gives a routed network its routing. Called with d.mu held.
func (d *Driver) startWatch(n netRec) {
	if !n.bridged() {
		d.routes.Add(n.routing())
	}
}

// stopWatch stops it and waits until its writer is done. Called with d.mu
// held (the writer never waits for d.mu).
func (d *Driver) stopWatch(id string) { d.routes.Remove(id) }

// rewatch gives a network its routing back when it is still here: a
// DeleteNetwork that stopped it and then failed leaves the network in
// place, and without routing it would get no new peers until a plugin
// restart. Called with d.mu held.
func (d *Driver) rewatch(id string) {
	if n, ok := d.st.networks[id]; ok {
		d.startWatch(n)
	}
}

// PeerState describes the peers of every network, for logs and tests.
func (d *Driver) PeerState() string { return d.routes.State() }

// Capabilities answers GetCapabilities.
func (d *Driver) Capabilities() *network.CapabilitiesResponse {
	scope := network.LocalScope
	if d.cfg.Scope == network.GlobalScope {
		scope = network.GlobalScope
	}
	return &network.CapabilitiesResponse{Scope: scope, ConnectivityScope: network.GlobalScope}
}

// Restore loads the local state written before a restart. It is cheap (the
// embedded store) and runs before the socket is served.
func (d *Driver) Restore(ctx context.Context) error {
	st, err := loadLocal(ctx, d.local, d.skipped)
	if err != nil {
		return fmt.Errorf("load local state: %w", err)
	}
	shareParentOwnership(st.networks)
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
		if n.Pool == pool.String() {
			return n.ID
		}
	}
	return d.creating[pool.String()]
}

// LocalAddress is an address a live endpoint of this host has.
type LocalAddress struct {
	Pool ipam.PoolID
	IP   string
	MAC  string
}

// LocalAddresses lists the addresses of this host's endpoints.
func (d *Driver) LocalAddresses() []LocalAddress {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []LocalAddress
	for _, e := range d.st.endpoints {
		n, ok := d.st.networks[e.Network]
		if !ok || (!n.bridged() && !kernel.LinkExists(e.HostIf)) {
			continue // not live: its record is not to be taken back
		}
		space := n.Space
		if space == "" {
			space = ipam.LocalSpace
		}
		out = append(out, LocalAddress{Pool: ipam.PoolID{Space: space, CIDR: n.pool()}, IP: e.IP, MAC: e.MAC})
	}
	return out
}

// Holding lists, for each pool of a local-scope network of this host, the
// addresses its endpoints have (every record, live or not: a record not yet
// proven stale still holds its address). It is ipam.Holding for the sweep
// of this host's orphaned address records.
func (d *Driver) Holding() map[string]map[string]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]map[string]bool{}
	for _, n := range d.st.networks {
		if n.Space == "" || n.Space == ipam.LocalSpace {
			if out[n.Pool] == nil {
				out[n.Pool] = map[string]bool{}
			}
		}
	}
	for _, e := range d.st.endpoints {
		if n, ok := d.st.networks[e.Network]; ok && out[n.Pool] != nil {
			out[n.Pool][e.IP] = true
		}
	}
	return out
}

// EndpointHas says whether an endpoint of this host on a network of pool
// has the address: asked before Docker's ReleaseAddress reaches the IPAM.
// Docker releases after DeleteEndpoint, so an endpoint that has the address
// now is a newer holder and the release a late second one (audit S6).
func (d *Driver) EndpointHas(pool netip.Prefix, ip netip.Addr) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.st.endpoints {
		if e.IP == ip.String() && d.st.networks[e.Network].Pool == pool.String() {
			return true
		}
	}
	return false
}

// DeferRelease is asked before Docker's ReleasePool reaches the IPAM: when
// a network of this host uses the pool (Docker releases a network's pool
// before it deletes the network, and releases the pool of a refused create
// that another network of the host holds, audit H1), the network is marked
// and the pool is released when the network is deleted (DeleteNetwork).
func (d *Driver) DeferRelease(id ipam.PoolID) bool {
	d.mu.Lock()
	for _, n := range d.st.networks {
		if n.Pool == id.CIDR.String() && (n.Space == id.Space || n.Space == "") {
			n.ReleasePending = true
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

// ipv4Data checks the IPAM data of a network request.
func ipv4Data(v4 []*network.IPAMData, v6 []*network.IPAMData) (netip.Prefix, *network.IPAMData, error) {
	if len(v6) > 0 {
		return netip.Prefix{}, nil, kv.ErrNoIPv6
	}
	if len(v4) != 1 || v4[0] == nil {
		return netip.Prefix{}, nil, kv.Invalid("give exactly one IPv4 --subnet (got %d)", len(v4))
	}
	if s := v4[0].AddressSpace; s != ipam.LocalSpace && s != ipam.GlobalSpace {
		return netip.Prefix{}, nil, kv.Invalid("this network needs tartan's IPAM as well: add --ipam-driver tartan:latest (the plugin's name) to docker network create")
	}
	p, err := netip.ParsePrefix(v4[0].Pool)
	if err != nil {
		return netip.Prefix{}, nil, kv.Invalid("pool %q from IPAM is not a CIDR", v4[0].Pool)
	}
	return p, v4[0], nil
}

// CreateNetwork validates and creates a network on this host.
func (d *Driver) CreateNetwork(ctx context.Context, r *network.CreateNetworkRequest) error {
	if r.NetworkID == "" {
		return kv.Invalid("CreateNetwork without a NetworkID")
	}
	opts, err := ParseNetworkOptions(r.Options)
	if err != nil {
		return err
	}
	if opts.Cluster && d.cfg.NoClusterNetworks != nil {
		return kv.Invalid("-o %s=true: %v", OptCluster, d.cfg.NoClusterNetworks)
	}
	if err := d.checkStore(ctx, opts); err != nil {
		return err
	}
	pool, data, err := ipv4Data(r.IPv4Data, r.IPv6Data)
	if err != nil {
		return err
	}
	if err := d.checkUnderlay(pool, opts.Backend); err != nil {
		return err
	}
	d.mu.Lock()
	if n, ok := d.st.networks[r.NetworkID]; ok && n.Pool == pool.String() {
		d.mu.Unlock()
		return d.ensureNetwork(n) // a replay
	}
	if other := d.poolUserLocked(pool); other != "" {
		d.mu.Unlock()
		return kv.InUse("subnet %s is already used by tartan network %.12s on this host: use another --subnet", pool, other)
	}
	d.creating[pool.String()] = r.NetworkID
	d.mu.Unlock()
	// The cluster record is the store's work: done without the lock that
	// every other request of this host waits on (audit M13).
	rec, undoRecord, err := d.clusterNetwork(ctx, pool, opts, false)
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.creating, pool.String())
	if err != nil {
		return err
	}
	n := netRec{ID: r.NetworkID, Pool: pool.String(), Backend: rec.Backend, VNI: rec.VNI, Space: data.AddressSpace,
		Internal: opts.Internal, Direct: opts.DirectRouting, Gateway: d.nextGateway().String()}
	if n.Backend == BackendVXLAN {
		n.Device = kernel.VXLANName(n.VNI)
	}
	undo := func() {
		if n.Device != "" {
			_ = kernel.DeleteLink(n.Device)
		}
		if n.bridged() {
			_ = d.undoMacvlan(context.WithoutCancel(ctx), n)
		}
		undoRecord(context.WithoutCancel(ctx))
	}
	if n.bridged() {
		err = d.prepareMacvlan(ctx, &n, opts, data)
	} else {
		n.MTU, err = d.mtu(n.Backend, opts.MTU)
	}
	if err != nil {
		undo()
		return err
	}
	if err := d.ensureNetwork(n); err != nil {
		undo()
		return err
	}
	d.st.networks[n.ID] = n
	if err := d.applyFirewall(); err != nil {
		delete(d.st.networks, n.ID)
		undo()
		return err
	}
	if err := putLocal(ctx, d.local, localNetworks+n.ID, n); err != nil {
		delete(d.st.networks, n.ID)
		undo()
		return fmt.Errorf("save network %.12s: %w", n.ID, err)
	}
	d.startWatch(n)
	d.log.WithFields(logrus.Fields{"network": shortID(n.ID), "pool": n.Pool, "backend": n.Backend, "vni": n.VNI, "mtu": n.MTU}).Info("network created")
	return nil
}

// clusterNetwork creates the cluster record of the network, or checks that
// the one another host made agrees with these options. The record and its
// VNI live as long as the pool (the last holder's ipam.ReleasePool removes
// both); undo takes back a record this call made when the create fails on
// this host, unless another host holds the pool and may use the record.
// swarm says the caller is a swarm manager's AllocateNetwork.
func (d *Driver) clusterNetwork(ctx context.Context, pool netip.Prefix, o NetworkOptions, swarm bool) (kv.Network, func(context.Context), error) {
	undo := func(context.Context) {}
	key := kv.NetworkPath(pool.String())
	for attempt := 0; attempt < 20; attempt++ {
		var cur kv.Network
		_, err := kv.GetJSON(ctx, d.cluster, key, &cur)
		if err == nil {
			if swarm {
				cur.Swarm = true // Docker tells the manager nothing of --internal
			}
			return cur, undo, agrees(pool, cur, o)
		}
		if !errors.Is(err, kv.ErrNotFound) {
			return cur, undo, fmt.Errorf("read network %s: %w", pool, err)
		}
		rec := kv.Network{Pool: pool.String(), Backend: o.Backend, Internal: o.Internal, MTU: o.MTU, DirectRouting: o.DirectRouting,
			Swarm: swarm, Options: o.Raw, Created: time.Now().UTC()}
		vniCreated := false
		if o.Backend == BackendVXLAN {
			if rec.VNI, vniCreated, err = kv.ClaimVNI(ctx, d.cluster, o.VNI, pool.String()); err != nil {
				return rec, undo, err
			}
		}
		version, err := kv.PutJSON(ctx, d.cluster, key, rec, 0)
		if err == nil {
			return rec, func(ctx context.Context) { d.dropRecord(ctx, rec, version, vniCreated) }, nil
		}
		// Another host recorded the network first (or the write failed).
		// A VNI claim this call made is given back unless the winner's
		// record uses it: the claim names the pool, so the winner may have
		// found it and kept it (audit M10).
		if vniCreated {
			var winner kv.Network
			if _, gerr := kv.GetJSON(ctx, d.cluster, key, &winner); gerr != nil || winner.VNI != rec.VNI {
				_ = kv.DeleteVNIOf(context.WithoutCancel(ctx), d.cluster, rec.VNI, rec.Pool)
			}
		}
		if !errors.Is(err, kv.ErrConflict) {
			return rec, undo, fmt.Errorf("record network %s: %w", pool, err)
		}
	}
	return kv.Network{}, undo, fmt.Errorf("record network %s: %w", pool, kv.ErrConflict)
}

// dropRecord removes a network record this host wrote (at version) and the
// VNI claim it made, when no other host holds the pool: a host that holds it
// may have found the record and created the network with it.
func (d *Driver) dropRecord(ctx context.Context, rec kv.Network, version uint64, vniCreated bool) {
	var p kv.Pool
	if _, err := kv.GetJSON(ctx, d.cluster, kv.PoolPath(rec.Pool), &p); err == nil {
		holders, err := kv.PoolHolders(ctx, d.cluster, rec.Pool, p.Holders)
		if err != nil {
			return
		}
		for h := range holders {
			if !strings.HasPrefix(h, d.cfg.Host+"/") {
				return
			}
		}
	}
	if err := d.cluster.Delete(ctx, kv.NetworkPath(rec.Pool), version); err != nil {
		return
	}
	if vniCreated {
		_ = kv.DeleteVNIOf(ctx, d.cluster, rec.VNI, rec.Pool)
	}
}

// agrees checks this host's options for a network against the cluster's
// record: one subnet is one network, so a host must not make it internal,
// give it another MTU or route it differently (audit M14).
func agrees(pool netip.Prefix, cur kv.Network, o NetworkOptions) error {
	switch {
	case cur.Backend != o.Backend:
		return kv.Invalid("subnet %s is a %s network in the cluster: use -o %s=%s on every host", pool, cur.Backend, OptBackend, cur.Backend)
	case o.VNI != 0 && cur.VNI != o.VNI:
		return kv.Invalid("subnet %s has VNI %d in the cluster: use -o %s=%d or leave it out", pool, cur.VNI, OptVNI, cur.VNI)
	case cur.Internal != o.Internal && !cur.Swarm:
		if cur.Internal {
			return kv.Invalid("subnet %s is an --internal network in the cluster: add --internal on every host", pool)
		}
		return kv.Invalid("subnet %s is not --internal in the cluster: remove --internal, or use another --subnet", pool)
	case cur.MTU != o.MTU:
		if cur.MTU == 0 {
			return kv.Invalid("subnet %s takes its MTU from the underlay in the cluster: remove -o %s", pool, OptMTU)
		}
		return kv.Invalid("subnet %s has -o %s=%d in the cluster: use the same value on every host", pool, OptMTU, cur.MTU)
	case cur.DirectRouting != o.DirectRouting:
		return kv.Invalid("subnet %s has -o %s=%t in the cluster: use the same value on every host", pool, OptDirectRouting, cur.DirectRouting)
	}
	return nil
}

// nextGateway picks the first link-local gateway address no local network uses.
func (d *Driver) nextGateway() netip.Addr {
	used := map[string]bool{}
	for _, n := range d.st.networks {
		used[n.Gateway] = true
	}
	a := netip.MustParseAddr("169.254.1.1")
	for used[a.String()] {
		a = a.Next()
	}
	return a
}

func (d *Driver) mtu(backend string, want int) (int, error) {
	u, err := kernel.FindUnderlay(d.cfg.Advertise)
	if err != nil {
		return 0, err
	}
	limit := u.MTU
	if backend == BackendVXLAN {
		limit -= 50
	}
	if want == 0 {
		return limit, nil
	}
	if want > limit {
		return 0, kv.Invalid("-o %s=%d is larger than the underlay allows (%d on %s): use %d or less", OptMTU, want, limit, u.Interface, limit)
	}
	return want, nil
}

// ensureNetwork makes the network's kernel objects exist. Routed networks
// need forwarding; Docker turns it on too, but tartan does not rely on that.
func (d *Driver) ensureNetwork(n netRec) error {
	if n.bridged() {
		return ensureMacvlanNetwork(n)
	}
	if err := kernel.Sysctl(d.cfg.SysctlRoot, "net.ipv4.ip_forward", "1"); err != nil {
		return fmt.Errorf("routed networks need forwarding: %w (the plugin mounts the host's /proc/sys at %s)", err, d.cfg.SysctlRoot)
	}
	if n.Backend != BackendVXLAN {
		return nil
	}
	u, err := kernel.FindUnderlay(d.cfg.Advertise)
	if err != nil {
		return err
	}
	return kernel.EnsureVXLAN(kernel.VXLAN{Name: n.Device, VNI: n.VNI, Port: d.cfg.VXLANPort, Local: u.Address, Parent: u.Interface,
		MTU: n.MTU, MAC: kernel.VTEPMAC(d.cfg.Host, n.VNI)})
}

// applyFirewall renders the firewall from the local networks, their
// published ports and the peers of the plans, under d.mu, and writes it
// without d.mu (iptables may wait for its lock: no request of this host
// waits on that, audit M13). Called with d.mu held, which it releases while
// iptables runs and holds again on return: callers read the tables afresh
// afterwards. Writes are serialised and never go back to an older state
// than one already written.
func (d *Driver) applyFirewall() error {
	st := d.firewallStateLocked()
	d.fwGen++
	gen := d.fwGen
	d.mu.Unlock()
	defer d.mu.Lock()
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	if gen < d.fwWritten {
		return nil // a newer state is in place already
	}
	d.fwWritten = gen
	if len(st.Networks) == 0 && len(st.Ports) == 0 {
		return d.fw.Remove()
	}
	was := d.fw.Flavour()
	err := d.fw.Apply(st)
	if now := d.fw.Flavour(); now != was {
		d.log.WithFields(logrus.Fields{"was": was, "now": now}).Info("firewall flavour changed: Docker's chains are in the other iptables; tartan's rules moved there")
	}
	return err
}

// firewallStateLocked is the desired firewall. Called with d.mu held.
func (d *Driver) firewallStateLocked() firewall.State {
	st := firewall.State{Ports: d.firewallPorts()}
	seen := map[string]bool{}
	vxlan := false
	for _, n := range d.st.networks {
		if !seen[n.Pool] && !n.bridged() {
			seen[n.Pool] = true
			st.Networks = append(st.Networks, firewall.Network{Pool: n.pool(), Internal: n.Internal, Device: n.Device})
			vxlan = vxlan || n.Device != ""
		}
	}
	if vxlan {
		st.VXLANPort = d.cfg.VXLANPort
		st.Peers = d.vxlanPeersLocked()
	}
	if u, err := kernel.FindUnderlay(d.cfg.Advertise); err == nil {
		st.Underlay = u.Interface
	}
	st.Bridges, _ = kernel.Bridges()
	d.fwPeers = peersKey(st.Peers)
	return st
}

// peersKey tells peer sets apart, unknown (nil) from empty.
func peersKey(p []netip.Addr) string {
	if p == nil {
		return "unknown"
	}
	return fmt.Sprint(p)
}

// vxlanPeersLocked is the underlay addresses of every VXLAN peer of the
// routed networks, or nil while one has no plan yet (routing.VXLANPeers).
// Called with d.mu held.
func (d *Driver) vxlanPeersLocked() []netip.Addr { return d.routes.VXLANPeers() }

// DeleteNetwork removes the network from this host. The cluster record stays
// until the pool's last holder releases it (ipam.ReleasePool).
func (d *Driver) DeleteNetwork(ctx context.Context, r *network.DeleteNetworkRequest) error {
	var release *ipam.PoolID
	defer func() { // after the unlock below: store I/O
		if release != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if err := d.addrs.ReleasePool(rctx, *release); err != nil {
				d.log.WithField("pool", release.CIDR).Warnf("release the pool of the deleted network: %v", err)
			}
		}
	}()
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.st.networks[r.NetworkID]
	if !ok {
		return nil
	}
	var left []epRec // a copy: removing one releases d.mu while the firewall is written
	for _, e := range d.st.endpoints {
		if e.Network == n.ID {
			left = append(left, e)
		}
	}
	for _, e := range left {
		if err := d.removeEndpoint(ctx, e); err != nil {
			return err
		}
	}
	d.stopWatch(n.ID)
	defer d.rewatch(n.ID)
	if err := routing.Apply(routing.Netlink{}, n.routing(), routing.Plan{}); err != nil {
		return err
	}
	if n.Device != "" {
		if err := kernel.DeleteLink(n.Device); err != nil {
			return err
		}
	}
	if n.bridged() {
		if err := d.undoMacvlan(ctx, n); err != nil {
			return err
		}
	}
	delete(d.st.networks, n.ID)
	if err := d.applyFirewall(); err != nil {
		d.st.networks[n.ID] = n
		return err
	}
	if err := d.local.Delete(ctx, localNetworks+n.ID, 0); err != nil {
		return fmt.Errorf("forget network %.12s: %w", n.ID, err)
	}
	d.log.WithFields(logrus.Fields{"network": shortID(n.ID), "pool": n.Pool}).Info("network deleted")
	if cur, ok := d.st.networks[n.ID]; (ok && cur.ReleasePending) || n.ReleasePending {
		release = &ipam.PoolID{Space: n.Space, CIDR: n.pool()}
		if release.Space == "" {
			release.Space = ipam.LocalSpace
		}
	}
	return nil
}

func shortID(id string) string { return id[:min(12, len(id))] }

// CreateEndpoint makes the endpoint's veth pair and its /32 route.
func (d *Driver) CreateEndpoint(ctx context.Context, r *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	if r.Interface == nil || r.Interface.Address == "" {
		return nil, kv.Invalid("endpoint %s has no IPv4 address: tartan networks need --ipam-driver tartan:latest", shortID(r.EndpointID))
	}
	if r.Interface.AddressIPv6 != "" {
		return nil, kv.ErrNoIPv6
	}
	addr, err := netip.ParsePrefix(r.Interface.Address)
	if err != nil {
		return nil, kv.Invalid("endpoint address %q is not a CIDR", r.Interface.Address)
	}
	release := d.claim(r.EndpointID)
	defer release()
	d.mu.Lock()
	n, ok := d.st.networks[r.NetworkID]
	if !ok {
		d.mu.Unlock()
		return nil, kv.Invalid("network %s is not known to tartan on this host: remove it and create it again", shortID(r.NetworkID))
	}
	resp := &network.CreateEndpointResponse{}
	mac := r.Interface.MacAddress
	if e, ok := d.st.endpoints[r.EndpointID]; ok && e.IP == addr.Addr().String() {
		mac = e.MAC
	} else if mac == "" {
		mac = randomMAC()
	}
	if r.Interface.MacAddress == "" {
		resp.Interface = &network.EndpointInterface{MacAddress: mac}
	}
	host, peer := kernel.EndpointNames(r.EndpointID)
	if other := d.interfaceUser(host, r.EndpointID); other != "" {
		d.mu.Unlock()
		return nil, kv.InUse("endpoint %s would share interface %s with endpoint %s: retry with a new endpoint", shortID(r.EndpointID), host, shortID(other))
	}
	d.mu.Unlock()

	// Kernel and store work happens outside the lock: endpoints are
	// independent, and claim keeps two calls for one endpoint apart.
	e := epRec{ID: r.EndpointID, Network: n.ID, IP: addr.Addr().String(), MAC: mac, HostIf: host, PeerIf: peer,
		Block: d.blockOf(ctx, n.Pool, addr.Addr())}
	if err := d.ensureEndpoint(n, e); err != nil {
		_ = deleteEndpointLinks(n, e)
		return nil, err
	}
	if err := putLocal(ctx, d.local, localEndpoints+e.ID, e); err != nil {
		_ = deleteEndpointLinks(n, e)
		return nil, fmt.Errorf("save endpoint %s: %w", shortID(e.ID), err)
	}
	d.mu.Lock()
	d.st.endpoints[e.ID] = e
	d.mu.Unlock()
	d.log.WithFields(logrus.Fields{"network": shortID(n.ID), "endpoint": shortID(e.ID), "ip": e.IP, "if": host}).Info("endpoint created")
	return resp, nil
}

// claim waits until no other call works on the endpoint and marks it busy
// until the returned function is called. Reconcile leaves busy endpoints'
// links alone. Called without d.mu held.
func (d *Driver) claim(id string) (release func()) {
	d.mu.Lock()
	for {
		ch, busy := d.inflight[id]
		if !busy {
			break
		}
		d.mu.Unlock()
		<-ch
		d.mu.Lock()
	}
	ch := make(chan struct{})
	d.inflight[id] = ch
	d.mu.Unlock()
	return func() {
		d.mu.Lock()
		delete(d.inflight, id)
		close(ch)
		d.mu.Unlock()
	}
}

// interfaceUser returns another endpoint (known or in flight) whose veth
// has the name host. Called with d.mu held.
func (d *Driver) interfaceUser(host, id string) string {
	for _, other := range d.st.endpoints {
		if other.HostIf == host && other.ID != id {
			return other.ID
		}
	}
	for other := range d.inflight {
		if h, _ := kernel.EndpointNames(other); h == host && other != id {
			return other
		}
	}
	return ""
}

func (d *Driver) ensureEndpoint(n netRec, e epRec) error {
	if n.bridged() {
		return ensureMacvlanEndpoint(n, e)
	}
	if err := kernel.EnsureVeth(e.HostIf, e.PeerIf, n.MTU, e.MAC); err != nil {
		return err
	}
	return kernel.ConfigureHostSide(e.HostIf, n.gateway(), e.ip())
}

// blockOf names the block an address belongs to, for EndpointOperInfo.
func (d *Driver) blockOf(ctx context.Context, pool string, ip netip.Addr) string {
	var p kv.Pool
	if _, err := kv.GetJSON(ctx, d.cluster, kv.PoolPath(pool), &p); err != nil || p.BlockBits == 0 {
		return ""
	}
	b, _ := ip.Prefix(p.BlockBits)
	return b.String()
}

func randomMAC() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	b[0] = (b[0] | 0x02) & 0xfe // locally administered, unicast
	return net.HardwareAddr(b).String()
}

// DeleteEndpoint removes the veth pair (the route goes with it).
func (d *Driver) DeleteEndpoint(ctx context.Context, r *network.DeleteEndpointRequest) error {
	release := d.claim(r.EndpointID)
	defer release()
	d.mu.Lock()
	e, ok := d.st.endpoints[r.EndpointID]
	n := d.st.networks[e.Network]
	d.mu.Unlock()
	if !ok {
		host, peer := kernel.EndpointNames(r.EndpointID)
		return errors.Join(kernel.DeleteLink(host), kernel.DeleteLink(peer))
	}
	if err := d.deleteEndpointObjects(ctx, n, e); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.forgetEndpoint(e)
}

// removeEndpoint deletes an endpoint entirely. Called with d.mu held.
func (d *Driver) removeEndpoint(ctx context.Context, e epRec) error {
	if err := d.deleteEndpointObjects(ctx, d.st.networks[e.Network], e); err != nil {
		return err
	}
	return d.forgetEndpoint(e)
}

// deleteEndpointObjects removes the endpoint's links and the local record.
func (d *Driver) deleteEndpointObjects(ctx context.Context, n netRec, e epRec) error {
	if err := deleteEndpointLinks(n, e); err != nil {
		return err
	}
	if err := d.local.Delete(ctx, localEndpoints+e.ID, 0); err != nil {
		return fmt.Errorf("forget endpoint %s: %w", shortID(e.ID), err)
	}
	return nil
}

// forgetEndpoint drops the endpoint from the tables (and its published
// ports from the firewall). Called with d.mu held.
func (d *Driver) forgetEndpoint(e epRec) error {
	delete(d.st.endpoints, e.ID)
	if len(e.Ports) > 0 {
		if err := d.applyFirewall(); err != nil {
			return err
		}
	}
	d.log.WithFields(logrus.Fields{"network": shortID(e.Network), "endpoint": shortID(e.ID), "ip": e.IP}).Info("endpoint deleted")
	return nil
}

// deleteEndpointLinks removes an endpoint's veth (its route goes with it), or
// its macvlan when Docker has moved it back (a link inside a container goes
// with the container) and the shim's route to it.
func deleteEndpointLinks(n netRec, e epRec) error {
	errs := []error{kernel.DeleteLink(e.HostIf), kernel.DeleteLink(e.PeerIf)}
	if r, ok := shimRoute(n, e); ok {
		errs = append(errs, kernel.DeleteRoute(r))
	}
	return errors.Join(errs...)
}

// endpoint returns a known endpoint and its network.
func (d *Driver) endpoint(id string) (epRec, netRec, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.st.endpoints[id]
	if !ok {
		return e, netRec{}, kv.Invalid("endpoint %s is not known to tartan on this host", shortID(id))
	}
	return e, d.st.networks[e.Network], nil
}

// EndpointInfo shows where an endpoint lives (docker network inspect).
func (d *Driver) EndpointInfo(r *network.InfoRequest) (*network.InfoResponse, error) {
	e, n, err := d.endpoint(r.EndpointID)
	if err != nil {
		return nil, err
	}
	v := map[string]string{"tartan.backend": n.Backend, "tartan.host": d.cfg.Host, "tartan.block": e.Block, "tartan.interface": e.HostIf}
	if n.bridged() {
		v["tartan.interface"], v["tartan.parent"], v["tartan.mode"] = "", n.Parent, n.Mode
	}
	if n.VNI != 0 {
		v["tartan.vni"] = fmt.Sprint(n.VNI)
	}
	if p, ok := d.routes.Plan(n.ID); ok && len(p.Problems) > 0 {
		v["tartan.problems"] = strings.Join(p.Problems, "; ")
	}
	return &network.InfoResponse{Value: v}, nil
}

// Join tells Docker which interface to move into the container and how the
// container routes: everything through the host-side link-local gateway.
func (d *Driver) Join(r *network.JoinRequest) (*network.JoinResponse, error) {
	e, n, err := d.endpoint(r.EndpointID)
	if err != nil {
		return nil, err
	}
	if n.bridged() {
		resp := &network.JoinResponse{InterfaceName: network.InterfaceName{SrcName: e.PeerIf, DstPrefix: "eth"}}
		if n.Internal || n.Gateway == "" {
			resp.DisableGatewayService = true
		} else {
			resp.Gateway = n.Gateway
		}
		return resp, nil
	}
	gw := n.Gateway
	resp := &network.JoinResponse{
		InterfaceName: network.InterfaceName{SrcName: e.PeerIf, DstPrefix: "eth"},
		StaticRoutes: []*network.StaticRoute{
			{Destination: gw + "/32", RouteType: 1}, // connected
			{Destination: n.Pool, RouteType: 0, NextHop: gw},
		},
	}
	if n.Internal {
		resp.DisableGatewayService = true
	} else {
		resp.Gateway = gw
	}
	return resp, nil
}

// Leave has nothing to undo: the veth goes with DeleteEndpoint.
func (d *Driver) Leave(*network.LeaveRequest) error { return nil }

// AllocateNetwork runs on the swarm manager (SCOPE=global): it validates
// the options, so that a bad network fails there before it reaches a node,
// records the network cluster-wide (claiming its VNI) and returns the
// options every node's CreateNetwork gets: the user's, the VNI and the
// store's identity.
func (d *Driver) AllocateNetwork(ctx context.Context, r *network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	opts := map[string]any{}
	for k, v := range r.Options {
		opts[k] = v
	}
	o, err := ParseNetworkOptions(map[string]any{dockerGeneric: opts})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range r.Options {
		out[k] = v
	}
	if len(r.IPv4Data) == 0 {
		return &network.AllocateNetworkResponse{Options: out}, nil // IPAM is not tartan's: CreateNetwork refuses it
	}
	// The manager's allocator sends the pool without its address space;
	// every node's CreateNetwork checks that the IPAM is tartan's.
	if len(r.IPv6Data) > 0 {
		return nil, kv.ErrNoIPv6
	}
	if len(r.IPv4Data) != 1 {
		return nil, kv.Invalid("give exactly one IPv4 --subnet (got %d)", len(r.IPv4Data))
	}
	pool, err := netip.ParsePrefix(r.IPv4Data[0].Pool)
	if err != nil {
		return nil, kv.Invalid("pool %q from IPAM is not a CIDR", r.IPv4Data[0].Pool)
	}
	rec, _, err := d.clusterNetwork(ctx, pool, o, true)
	if err != nil {
		return nil, err
	}
	if rec.VNI != 0 {
		out[OptVNI] = fmt.Sprint(rec.VNI)
	}
	if out[OptStoreID], err = kv.ClusterID(ctx, d.cluster); err != nil {
		return nil, err
	}
	return &network.AllocateNetworkResponse{Options: out}, nil
}

// FreeNetwork (swarm manager) has nothing to free: the cluster record and
// VNI go with the pool's last holder (ipam.ReleasePool).
func (d *Driver) FreeNetwork(context.Context, *network.FreeNetworkRequest) error { return nil }

// checkStore refuses a swarm network allocated against another store.
func (d *Driver) checkStore(ctx context.Context, o NetworkOptions) error {
	if o.StoreID == "" {
		return nil
	}
	id, err := kv.ClusterID(ctx, d.cluster)
	if err != nil {
		return err
	}
	if id != o.StoreID {
		return kv.Invalid("the swarm manager's plugin uses another store than this node's (%s): set the same STORE on every node", d.cluster)
	}
	return nil
}
