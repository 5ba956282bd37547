package driver

import (
	"net/netip"

	"github.com/tartan-net/tartan/driver/fastpath"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/hostplane"
	"github.com/tartan-net/tartan/driver/kernel"
)

// fastPathHost fills in what the fast path needs of the host's
// interfaces. Called without d.mu held.
func (d *Driver) fastPathHost(st *fastpath.State) {
	if u, err := kernel.FindUnderlay(d.cfg.Advertise); err == nil {
		st.Underlay, st.Local = u.Interface, u.Address
	}
	// The kernel's VXLAN picks outer source ports in the host's ephemeral
	// range: the fast path's encapsulation does too.
	if lo, hi, err := kernel.EphemeralPorts(); err == nil {
		st.VXLANPort, st.PortMin, st.PortMax = d.cfg.VXLANPort, lo, hi
	}
}

// FastPathDrift says how the fast path's maps and attachments differ from
// what the next write would make them (tartan doctor), changing nothing.
func (d *Driver) FastPathDrift() (out []string, err error) {
	fp := d.cfg.FastPath
	if fp == nil {
		return nil, nil
	}
	d.host.Locked(func() { out, err = fp.Drift(d.hostState(hostplane.FastPath).FastPath) })
	return out, err
}

// fastPathStateLocked is what the fast path carries: the routed networks
// whose traffic crosses the host in clear (not WireGuard's), their
// endpoints, and the container side of every published port. Called with
// d.mu held.
func (d *Driver) fastPathStateLocked(policed []firewall.Policed) fastpath.State {
	var st fastpath.State
	routed := map[string]bool{}
	for _, n := range d.st.networks {
		p, ok := d.backendOf(n).Firewall(n)
		if !ok || p.Tunnel != "" {
			continue
		}
		fn := fastpath.Network{ID: n.ID, Pools: []netip.Prefix{n.PoolPrefix()}, Device: p.Device, VNI: n.VNI, Underlay: p.Device == "" || n.Direct}
		if plan, ok := d.routes.Plan(n.ID); ok && p.Device != "" {
			for _, f := range plan.FDBs {
				fn.FDB = append(fn.FDB, fastpath.FDB{MAC: f.MAC, Dst: f.Dst})
			}
		}
		if n.Pool6 != "" {
			fn.Pools = append(fn.Pools, n.Pool6Prefix())
		}
		st.Networks = append(st.Networks, fn)
		routed[n.ID] = true
	}
	// An endpoint that network policy isolates (policed) takes the kernel
	// path, where its rules are (the fast path's redirect skips netfilter).
	isolated := map[string]bool{}
	for _, p := range policed {
		isolated[p.HostIf] = true
	}
	for _, e := range d.st.endpoints {
		if routed[e.Network] && !isolated[e.HostIf] {
			st.Endpoints = append(st.Endpoints, fastpath.Endpoint{Network: e.Network, HostIf: e.HostIf, IP: e.Addr(), IP6: e.Addr6(), MAC: e.MAC})
		}
	}
	for _, p := range portRules(d.st.endpoints) {
		st.Ports = append(st.Ports, fastpath.Port{IP: p.IP, Proto: p.Proto, Port: p.Port})
	}
	return st
}

// FastPath says whether the eBPF fast path is on, the interfaces its
// programs are attached to, and its counters (nil when off).
func (d *Driver) FastPath() (on bool, attached []string, counters map[string]uint64, err error) {
	fp := d.cfg.FastPath
	if fp == nil {
		return false, nil, nil, nil
	}
	counters, err = fp.Counters()
	return true, fp.Attached(), counters, err
}
