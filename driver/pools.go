package driver

import (
	"net/netip"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
)

// checkPoolAgainstUnderlay refuses a routed (vxlan, host-gw) network whose
// pool overlaps the host's underlay subnet: its more specific routes would
// send traffic for the hosts' own neighbours, the gateway and the store into
// the overlay. macvlan pools are the physical segment by design.
func checkPoolAgainstUnderlay(pool netip.Prefix, backend string, u kernel.Underlay) error {
	if backend == BackendMacvlan || !u.Prefix.IsValid() || !pool.Overlaps(u.Prefix) {
		return nil
	}
	return kv.Invalid("--subnet %s overlaps this host's underlay network %s (on %s): pick a subnet outside it, or use -o %s=%s to put containers on that segment",
		pool, u.Prefix, u.Interface, OptBackend, BackendMacvlan)
}

// checkUnderlay applies checkPoolAgainstUnderlay to this host's underlay.
// When the underlay cannot be found, the steps that need it (MTU, VXLAN
// device) report why; this check adds nothing then.
func (d *Driver) checkUnderlay(pool netip.Prefix, backend string) error {
	if backend == BackendMacvlan {
		return nil
	}
	u, err := kernel.FindUnderlay(d.cfg.Advertise)
	if err != nil {
		return nil
	}
	return checkPoolAgainstUnderlay(pool, backend, u)
}
