package driver

import (
	"github.com/tartan-net/tartan/driver/wireguard"
)

// tunnelOf is the WireGuard device a network's peers are routed through,
// or "" (not a wireguard network).
func (d *Driver) tunnelOf(n localNetwork) string {
	p, _ := d.backendOf(n).Peers(n)
	return p.Tunnel
}

// tunnelPeers is the WireGuard device's peers from the plans; planned is
// false while a wireguard network has no plan yet. The plans hold only
// keys Compute checked; one that does not parse is left out.
func (d *Driver) tunnelPeers() (peers []wireguard.Peer, planned bool) {
	tunnels, ok := d.routes.Tunnels()
	if !ok {
		return nil, false
	}
	peers = make([]wireguard.Peer, 0, len(tunnels))
	for _, t := range tunnels {
		k, err := wireguard.ParseKey(t.Key)
		if err != nil {
			continue
		}
		peers = append(peers, wireguard.Peer{Key: k, Endpoint: t.Endpoint, Allowed: t.Allowed})
	}
	return peers, true
}

// TunnelReady says whether the WireGuard device is up with the peers of
// every wireguard network's plan; true when the host has no wireguard
// network. A host with a new key registers it only then (or after a
// while), so that peers that re-key at once find it ready.
func (d *Driver) TunnelReady() bool {
	d.mu.Lock()
	tunnel := false
	for _, n := range d.st.networks {
		tunnel = tunnel || d.tunnelOf(n) != ""
	}
	d.mu.Unlock()
	if !tunnel {
		return true
	}
	_, planned := d.routes.Tunnels()
	return planned && d.wg.Ready()
}

// WireGuard is the host's WireGuard device.
func (d *Driver) WireGuard() *wireguard.Device { return d.wg }
