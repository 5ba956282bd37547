package wireguard

import (
	"fmt"
	"net"
	"time"

	"github.com/tartan-net/tartan/driver/kernel"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// kernelWG is the kernel's WireGuard: a "wireguard" link configured over
// generic netlink (wgctrl). The interface and its sessions outlive the
// plugin; a restarted plugin adopts them.
type kernelWG struct {
	name   string
	client *wgctrl.Client
}

// openKernel adopts the kernel WireGuard interface name, or makes it; held
// are the peers an adopted one has. It fails where the kernel has no
// WireGuard.
func openKernel(name string, mtu int) (*kernelWG, []Key, error) {
	switch kernel.LinkType(name) {
	case "wireguard":
	case "":
		if err := kernel.AddWireGuard(name, mtu); err != nil {
			return nil, nil, err
		}
	default:
		// Not a WireGuard link (a TUN device the user-space mode made,
		// made persistent): the kernel's replaces it.
		if err := kernel.DeleteLink(name); err != nil {
			return nil, nil, err
		}
		if err := kernel.AddWireGuard(name, mtu); err != nil {
			return nil, nil, err
		}
	}
	client, err := wgctrl.New()
	if err != nil {
		_ = kernel.DeleteLink(name)
		return nil, nil, fmt.Errorf("WireGuard's netlink interface: %w", err)
	}
	dev, err := client.Device(name)
	if err != nil {
		client.Close()
		_ = kernel.DeleteLink(name)
		return nil, nil, fmt.Errorf("read WireGuard link %s: %w", name, err)
	}
	held := make([]Key, 0, len(dev.Peers))
	for _, p := range dev.Peers {
		held = append(held, Key(p.PublicKey))
	}
	return &kernelWG{name: name, client: client}, held, nil
}

func (*kernelWG) mode() string { return ModeKernel }

func (k *kernelWG) configure(key *Key, port int, remove []Key, set []Peer) error {
	cfg := wgtypes.Config{}
	if key != nil {
		pk := wgtypes.Key(*key)
		cfg.PrivateKey = &pk
	}
	if port != 0 {
		cfg.ListenPort = &port
	}
	for _, r := range remove {
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: wgtypes.Key(r), Remove: true})
	}
	keepalive := Keepalive * time.Second
	for _, p := range set {
		pc := wgtypes.PeerConfig{PublicKey: wgtypes.Key(p.Key), Endpoint: net.UDPAddrFromAddrPort(p.Endpoint),
			PersistentKeepaliveInterval: &keepalive, ReplaceAllowedIPs: true}
		for _, a := range p.Allowed {
			pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())})
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	return k.client.ConfigureDevice(k.name, cfg)
}

func (k *kernelWG) peers() ([]PeerStatus, error) {
	dev, err := k.client.Device(k.name)
	if err != nil {
		return nil, err
	}
	out := make([]PeerStatus, 0, len(dev.Peers))
	for _, p := range dev.Peers {
		ps := PeerStatus{PublicKey: Key(p.PublicKey).String(), RxBytes: uint64(p.ReceiveBytes), TxBytes: uint64(p.TransmitBytes), Allowed: []string{}}
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.String()
		}
		if !p.LastHandshakeTime.IsZero() {
			ps.LastHandshake = p.LastHandshakeTime.UTC()
		}
		for _, a := range p.AllowedIPs {
			ps.Allowed = append(ps.Allowed, a.String())
		}
		out = append(out, ps)
	}
	return out, nil
}

func (k *kernelWG) close() {
	_ = kernel.DeleteLink(k.name)
	k.client.Close()
}
