package wireguard

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/kv"
)

// Peering is WireGuard's rule: every destination of another host is routed
// through the host's WireGuard device (whatever the host's segment) and
// becomes one of the allowed addresses of that host's peer, known by the
// key the host registered. A host whose key or port is unusable, or whose
// key another host registered too, gets no route.
type Peering struct {
	Device string // the host's WireGuard device
}

// Peer checks the host's key and port and makes its tunnel.
func (w Peering) Peer(p *routing.Peer) string {
	p.MAC = kernel.VTEPMAC(p.ID, 0).String() // names the peer's IPv6 next hop
	if why := tunnelProblem(p.Record); why != "" {
		return unreachable(p.ID, p.Via.String(), why)
	}
	p.Tunnel = routing.Tunnel{Host: p.ID, Key: p.Record.WireGuardKey, Endpoint: netip.AddrPortFrom(p.Via, uint16(p.Record.WireGuardPort))}
	return ""
}

// JudgeHosts refuses the hosts that registered a key another host
// registered too (a copied state folder): WireGuard cannot tell them
// apart, so neither gets routes.
func (Peering) JudgeHosts(hosts map[string]kv.Host) map[string]string {
	out := map[string]string{}
	for _, ids := range sharedKeys(hosts) {
		for _, id := range ids {
			out[id] = unreachable(id, hosts[id].Address, fmt.Sprintf("hosts %s registered the same WireGuard key (a copied state folder?): give each its own (tartan rotate-key on one)", strings.Join(ids, ", ")))
		}
	}
	return out
}

// Entries routes dst through the device to p and adds it to p's tunnel.
func (w Peering) Entries(in *routing.Input, dst netip.Prefix, p *routing.Peer, plan *routing.Plan) string {
	// A TUN device has no neighbours: the next hop only names the peer.
	plan.Routes = append(plan.Routes, kernel.Route{Dst: dst, Link: w.Device, Via: routing.NextHop(in, p), Onlink: true})
	t := p.Tunnel
	t.Allowed = []netip.Prefix{dst}
	plan.Tunnels = append(plan.Tunnels, t) // one per host once Compute merges them
	return ""
}

func unreachable(id, via, why string) string {
	return fmt.Sprintf("host %s (%s) cannot be reached through WireGuard: %s; no routes to its blocks", id, via, why)
}

// sharedKeys maps each WireGuard key that more than one host registered to
// those hosts, sorted: WireGuard knows a peer by its key alone, so such
// hosts (this one among them) cannot be told apart.
func sharedKeys(hosts map[string]kv.Host) map[string][]string {
	by := map[string][]string{}
	for id, h := range hosts {
		if h.WireGuardKey != "" {
			by[h.WireGuardKey] = append(by[h.WireGuardKey], id)
		}
	}
	out := map[string][]string{}
	for k, ids := range by {
		if len(ids) > 1 {
			slices.Sort(ids)
			out[k] = ids
		}
	}
	return out
}

// tunnelProblem says why a host's registered WireGuard key or port cannot
// be used, or "".
func tunnelProblem(h kv.Host) string {
	switch {
	case h.WireGuardKey == "":
		return "it registered no WireGuard key (is its tartan older than this host's?)"
	case h.WireGuardPort < 1 || h.WireGuardPort > 65535:
		return fmt.Sprintf("its WireGuard port %d is not a UDP port", h.WireGuardPort)
	}
	b, err := base64.StdEncoding.DecodeString(h.WireGuardKey)
	if err != nil || len(b) != 32 || !slices.ContainsFunc(b, func(c byte) bool { return c != 0 }) {
		return fmt.Sprintf("its WireGuard key %q is malformed (not 32 bytes of base64)", h.WireGuardKey)
	}
	return ""
}
