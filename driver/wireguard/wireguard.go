// Package wireguard is the wireguard backend, flannel's wireguard: containers
// are routed (driver/routed) and every remote host's blocks are routed
// through the host's WireGuard device (Device), which encrypts and
// authenticates every packet to that host's public key. One device per host
// carries every wireguard network; each peer's allowed addresses are its
// blocks (and /32 exceptions) of those networks, so a peer can send only
// from addresses that are its own. -o encrypted on a vxlan network (Docker
// overlay's option name) makes it a wireguard network.
//
// The keys: each host makes its key pair on first start and keeps the
// private key in its state folder (LoadKey: mode 0600, never logged, never
// in the store); its record (kv.Host) carries the public key and port.
package wireguard

import (
	"context"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/routed"
	"github.com/tartan-net/tartan/driver/routing"
)

// Name is the backend's -o tartan.backend value.
const Name = "wireguard"

// OptEncrypted is Docker overlay's option for encrypted networks: on a
// vxlan network it chooses this backend.
const OptEncrypted = "encrypted"

// Overhead is what the backend takes from the underlay's MTU: WireGuard
// over IPv4 costs 60 bytes (outer IPv4 20, UDP 8, WireGuard header 16 and
// authentication tag 16), over IPv6 80. tartan's underlay is IPv4 today, so
// 60 would do; it takes 80, as wg-quick does, so that the default stays
// right when a host's underlay is IPv6, for 1.3 % of a 1500 MTU (1420).
const Overhead = 80

// DefaultPort is WireGuard's usual UDP port.
const DefaultPort = 51820

// Backend is the wireguard backend.
type Backend struct {
	routed.Base
	// Dev is the host's WireGuard device, which every wireguard network
	// of the host shares: the one piece of state the backend reaches.
	Dev *Device
}

// New returns the backend for a host.
func New(h backend.Host, macvlan string, dev *Device) Backend {
	return Backend{Base: routed.Base{Host: h, Overhead: Overhead, Macvlan: macvlan}, Dev: dev}
}

// Describe names the backend; it takes no options of its own.
func (Backend) Describe() backend.Description {
	return routed.Describe(backend.Description{Name: Name})
}

// Ensure turns forwarding on and makes the host's WireGuard device exist,
// with the underlay's MTU less the overhead (the largest any wireguard
// network may ask for).
func (b Backend) Ensure(n backend.Network) error {
	if err := b.Base.Ensure(n); err != nil {
		return err
	}
	u, err := b.Host.Underlay()
	if err != nil {
		return err
	}
	return b.Dev.Ensure(u.MTU - Overhead)
}

// Remove removes the host's WireGuard device with its last wireguard
// network.
func (b Backend) Remove(_ context.Context, n backend.Network, others []backend.Network) error {
	for _, o := range others {
		if o.Backend == Name && o.ID != n.ID {
			return nil
		}
	}
	b.Dev.Close()
	return nil
}

// Peers are routed through the host's WireGuard device, each to its host's
// key.
func (b Backend) Peers(n backend.Network) (routing.Network, bool) {
	return routing.Network{ID: n.ID, Pool: n.PoolPrefix(), Pool6: n.Pool6Prefix(), Tunnel: b.Dev.Name(),
		Peering: Peering{Device: b.Dev.Name()}}, true
}

// Firewall is the routed network's, arriving on the WireGuard device.
func (b Backend) Firewall(n backend.Network) (firewall.Pool, bool) {
	p, ok := b.Base.Firewall(n)
	p.Tunnel = b.Dev.Name()
	return p, ok
}

// Info adds how the network's traffic is encrypted.
func (b Backend) Info(n backend.Network, e backend.Endpoint) map[string]string {
	v := b.Base.Info(n, e)
	if m := b.Dev.Mode(); m != "" {
		v["tartan.encryption"] = "wireguard-" + m
	}
	return v
}
