package driver

import (
	"context"

	"github.com/tartan-net/tartan/driver/wireguard"
)

// tunnelOf is the WireGuard device a network's peers are routed through,
// or "" (not a wireguard network).
func (d *Driver) tunnelOf(n localNetwork) string {
	p, _ := d.backendOf(n).Peers(n)
	return p.Tunnel
}

// peersChanged is the router's word that a network's peers changed: the
// firewall admits VXLAN from peers only, the fast path encapsulates for
// the VXLAN peers, and the WireGuard device's peers are the wireguard
// networks' hosts.
func (d *Driver) peersChanged() {
	d.pokeFirewall()
	d.pokeFastPath() // the VXLAN peers' VTEPs
	select {
	case d.wgPoke <- struct{}{}:
	default:
	}
}

// tunnelWriter gives the WireGuard device the peers of the wireguard
// networks' plans whenever they change.
func (d *Driver) tunnelWriter(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.wgPoke:
		}
		if err := d.writeTunnels(); err != nil {
			d.log.Warnf("WireGuard peers: %v", err)
		}
	}
}

// writeTunnels sets the device's peers from the plans. The plans hold only
// keys Compute checked; one that does not parse is left out. The writer and
// reconcile both call it: tunnelMu keeps an older reading of the plans from
// landing after a newer one.
func (d *Driver) writeTunnels() error {
	d.tunnelMu.Lock()
	defer d.tunnelMu.Unlock()
	tunnels, ok := d.routes.Tunnels()
	if !ok {
		return nil // a wireguard network has no plan yet: keep what the device has
	}
	peers := make([]wireguard.Peer, 0, len(tunnels))
	for _, t := range tunnels {
		k, err := wireguard.ParseKey(t.Key)
		if err != nil {
			continue
		}
		peers = append(peers, wireguard.Peer{Key: k, Endpoint: t.Endpoint, Allowed: t.Allowed})
	}
	return d.wg.SetPeers(peers)
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
