package driver

import (
	"context"
	"errors"
	"fmt"

	"github.com/tartan-net/tartan/driver/bgp/speaker"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/hostplane"
	"github.com/tartan-net/tartan/driver/kernel"
)

// newHostWriter is the host's one writer of host-wide state, reading it
// with hostState.
func (d *Driver) newHostWriter() *hostplane.Writer {
	ap := hostplane.Appliers{Firewall: d.applyFirewall, Tunnels: d.wg.SetPeers}
	if fp := d.cfg.FastPath; fp != nil {
		ap.FastPath = fp.Sync
	}
	if sp := d.cfg.BGP; sp != nil {
		ap.Announce = func(rs []speaker.Route) error { return sp.Announce(context.Background(), rs) }
	}
	return hostplane.New(d.hostState, ap)
}

// hostState is the snapshot the host writer applies: for each part asked
// for, what the records and the plans say now, with the host's interfaces.
// Called without d.mu held.
func (d *Driver) hostState(parts hostplane.Part) hostplane.State {
	var st hostplane.State
	d.mu.Lock()
	// The endpoints network policy isolates: the firewall's rules, and
	// which endpoints leave the fast path (compiled once per snapshot).
	var policed []firewall.Policed
	live := false
	if parts&(hostplane.Firewall|hostplane.FastPath) != 0 {
		policed, live = d.policedLocked()
	}
	if parts&hostplane.Firewall != 0 {
		st.Firewall, st.PeersComplete = d.firewallStateLocked()
		st.Firewall.PolicedLive = live
		if len(st.Firewall.Pools) > 0 {
			st.Firewall.Policed = policed
		}
	}
	if parts&hostplane.FastPath != 0 {
		st.FastPath = d.fastPathStateLocked(policed)
	}
	d.mu.Unlock()
	if parts&hostplane.Firewall != 0 {
		d.hostFirewallState(&st.Firewall)
	}
	if parts&hostplane.FastPath != 0 {
		d.fastPathHost(&st.FastPath)
	}
	if parts&hostplane.Tunnels != 0 {
		st.Tunnels, st.TunnelsPlanned = d.tunnelPeers()
	}
	if parts&hostplane.Announce != 0 {
		st.Announce, st.AnnouncePlanned = d.announcements()
	}
	return st
}

// announcements is what this host announces to its BGP peers, each prefix
// through its underlay address of the prefix's family (IPv6 prefixes only
// while the underlay has a global IPv6 address); planned is false while a
// network that announces has no plan yet, or the underlay has no IPv4
// address (the speaker keeps what it announces).
func (d *Driver) announcements() (routes []speaker.Route, planned bool) {
	prefixes, planned := d.routes.Announced()
	if !planned {
		return nil, false
	}
	u, err := kernel.FindUnderlay(d.cfg.Advertise)
	if err != nil || !u.Address.Is4() {
		return nil, false
	}
	routes = make([]speaker.Route, 0, len(prefixes))
	for _, p := range prefixes {
		switch {
		case p.Addr().Is4():
			routes = append(routes, speaker.Route{Prefix: p, NextHop: u.Address})
		case u.Global6.IsValid():
			routes = append(routes, speaker.Route{Prefix: p, NextHop: u.Global6})
		}
	}
	return routes, true
}

// AnnounceDrift says how what the BGP speaker announces differs from what
// the plans say it should (tartan doctor), read in the host writer's turn;
// nothing while BGP is off or a plan is missing.
func (d *Driver) AnnounceDrift() []string {
	sp := d.cfg.BGP
	if sp == nil {
		return nil
	}
	var out []string
	d.host.Locked(func() {
		want, planned := d.announcements()
		if !planned {
			return
		}
		announced := sp.Announced()
		have := map[speaker.Route]bool{}
		for _, r := range announced {
			have[r] = true
		}
		for _, r := range want {
			if !have[r] {
				out = append(out, fmt.Sprintf("%s is this host's but not announced to its BGP peers (via %s)", r.Prefix, r.NextHop))
			}
			delete(have, r)
		}
		for _, r := range announced {
			if have[r] {
				out = append(out, fmt.Sprintf("%s is announced to the BGP peers (via %s) but is no longer this host's", r.Prefix, r.NextHop))
			}
		}
	})
	return out
}

// writeFirewall writes the fast path and then the firewall from the state
// of now, and returns once they (or a newer state) are in place: nil only
// when the firewall was written (a fast path that failed is logged; the
// kernel path carries its traffic). Called without d.mu held.
func (d *Driver) writeFirewall() error {
	r := d.host.Write(hostplane.FastPath | hostplane.Firewall)
	d.logOthers(r, hostplane.Firewall)
	return r.Err(hostplane.Firewall)
}

// logOthers logs the failures of a write in the parts its caller does not
// answer for (a fast path that failed: the kernel path carries its
// traffic; a part retried because its last write failed).
func (d *Driver) logOthers(r hostplane.Result, answered hostplane.Part) {
	for _, p := range []hostplane.Part{hostplane.FastPath, hostplane.Firewall, hostplane.Tunnels, hostplane.Announce} {
		if err := r.Err(p); err != nil && answered&p == 0 {
			d.log.Warnf("%s: %v", p, err)
		}
	}
}

// writePeers sets the WireGuard device's peers and what the BGP speaker
// announces from the plans (reconcile: a failed write is retried here).
func (d *Driver) writePeers() error {
	r := d.host.Write(hostplane.Tunnels | hostplane.Announce)
	d.logOthers(r, hostplane.Tunnels|hostplane.Announce)
	return errors.Join(r.Err(hostplane.Tunnels), r.Err(hostplane.Announce))
}

// pokeFastPath has the host writer write the fast path soon, and the
// firewall (network policy's rules are per endpoint; the writer skips an
// unchanged firewall): an endpoint came or went.
func (d *Driver) pokeFastPath() { d.host.Poke(hostplane.FastPath | hostplane.Firewall) }

// peersChanged is the router's word that a network's peers changed: the
// firewall admits VXLAN from peers only, the fast path encapsulates for
// the VXLAN peers, and the WireGuard device's peers are the wireguard
// networks' hosts.
func (d *Driver) peersChanged() { d.host.Poke(hostplane.All) }
