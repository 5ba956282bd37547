// Package vxlan is tartan's default backend: containers are routed
// (driver/routed) and each network reaches the cluster's other hosts
// through a kernel VXLAN device of its own, as flannel's vxlan backend
// does: per remote host a neighbour entry (the host's VTEP MAC), an FDB
// entry (that MAC at the host's underlay address) and a route to each of
// its blocks through the device (routing.Compute plans them). With
// -o tartan.directrouting=true, hosts on this host's L2 segment are routed
// on the underlay instead, as host-gw does.
package vxlan

import (
	"context"
	"strconv"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routed"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/internal/dockerid"
)

// Name is the backend's -o tartan.backend value.
const Name = "vxlan"

// Options only this backend takes.
const (
	OptVNI           = "tartan.vni"
	OptDirectRouting = "tartan.directrouting"
)

// Overhead is what VXLAN over IPv4 takes from the underlay's MTU: outer
// IPv4 (20), UDP (8) and VXLAN (8) headers and the inner Ethernet header
// (14).
const Overhead = 50

// DefaultPort is the VXLAN UDP port, the Linux kernel's and flannel's.
const DefaultPort = 8472

// MaxVNI is the largest VXLAN network identifier (24 bits).
const MaxVNI = 1<<24 - 1

// Backend is the vxlan backend.
type Backend struct{ routed.Base }

// New returns the backend for a host.
func New(h backend.Host, macvlan string) Backend {
	return Backend{routed.Base{Host: h, Overhead: Overhead, Macvlan: macvlan}}
}

// Describe names the backend and its options.
func (Backend) Describe() backend.Description {
	return routed.Describe(backend.Description{Name: Name, ClaimsVNI: true, Options: []backend.Option{
		{Key: OptVNI, Parse: parseVNI},
		{Key: OptDirectRouting, Parse: func(o *backend.Options, v string) error {
			b, err := backend.BoolOption(OptDirectRouting, v)
			if err != nil {
				return err
			}
			o.DirectRouting = b
			return nil
		}},
		routed.AnnounceOption,
	}})
}

func parseVNI(o *backend.Options, v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxVNI {
		return errdefs.Invalid("-o %s=%s is not a VXLAN network identifier: use a number from 1 to %d", OptVNI, v, MaxVNI)
	}
	o.VNI = n
	return nil
}

// Create does what every routed network does and names the network's VXLAN
// device after its VNI (the cluster record's).
func (b Backend) Create(ctx context.Context, n *backend.Network, req backend.CreateRequest) error {
	if err := b.Base.Create(ctx, n, req); err != nil {
		return err
	}
	n.Device = kernel.VXLANName(n.VNI)
	return nil
}

// Ensure makes forwarding and the VXLAN device exist; a device that differs
// (another VNI, port, local address or parent) is made again.
func (b Backend) Ensure(n backend.Network) error {
	if err := b.Base.Ensure(n); err != nil {
		return err
	}
	u, err := b.Host.Underlay()
	if err != nil {
		return err
	}
	why, err := kernel.EnsureVXLAN(kernel.VXLAN{Name: n.Device, VNI: n.VNI, Port: b.Host.VXLANPort, Local: u.Address, Parent: u.Interface,
		MTU: n.MTU, MAC: kernel.VTEPMAC(b.Host.ID, n.VNI)})
	if why != "" && b.Host.Log != nil {
		b.Host.Log.WithFields(logrus.Fields{"if": n.Device, "network": dockerid.Short(n.ID)}).Warnf("made the VXLAN device again: the one found had %s", why)
	}
	if err == nil && n.Pool6 != "" {
		err = kernel.EnableIPv6(b.Host.SysctlRoot, n.Device) // it carries the IPv6 pool too
	}
	return err
}

// Remove deletes the VXLAN device (its neighbour and FDB entries and the
// routes through it go with it).
func (Backend) Remove(_ context.Context, n backend.Network, _ []backend.Network) error {
	if n.Device == "" {
		return nil
	}
	return kernel.DeleteLink(n.Device)
}

// Peers are reached through the network's VXLAN device, or on the underlay
// when directrouting is on and they share its segment.
func (Backend) Peers(n backend.Network) (routing.Network, bool) {
	return routing.Network{ID: n.ID, Pool: n.PoolPrefix(), Pool6: n.Pool6Prefix(), Device: n.Device,
		Peering: Peering{Device: n.Device, VNI: n.VNI, Direct: n.Direct}, Announce: n.Announce}, true
}

// Info adds the network's VNI.
func (b Backend) Info(n backend.Network, e backend.Endpoint) map[string]string {
	v := b.Base.Info(n, e)
	v["tartan.vni"] = strconv.Itoa(n.VNI)
	return v
}
