package kernel

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// Dumps (netlink's …List calls) are the only netlink calls whose answer
// can be torn: since netlink v1.3.1 a dump that the kernel interrupted
// (the table changed while it was read) returns ErrDumpInterrupted with
// partial results. Every dump of this package goes through these helpers,
// which read again until a dump is whole (CNI's pkg/netlinksafe); `make
// lint` refuses a netlink …List call anywhere else.

// dumpAttempts bounds the reads of one dump; a table that changes under
// every read for this long is reported as the error it is.
const dumpAttempts = 5

// whole reads a dump until it is not interrupted.
func whole[T any](dump func() (T, error)) (T, error) {
	var out T
	var err error
	for range dumpAttempts {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}

func linkList() ([]netlink.Link, error) { return whole(netlink.LinkList) }

func addrList(l netlink.Link, family int) ([]netlink.Addr, error) {
	return whole(func() ([]netlink.Addr, error) { return netlink.AddrList(l, family) })
}

func routeList(filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	return routeListFamily(netlink.FAMILY_V4, filter, mask)
}

func routeListFamily(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	return whole(func() ([]netlink.Route, error) { return netlink.RouteListFiltered(family, filter, mask) })
}

func neighList(linkIndex, family int) ([]netlink.Neigh, error) {
	return whole(func() ([]netlink.Neigh, error) { return netlink.NeighList(linkIndex, family) })
}

func xfrmPolicyList(family int) ([]netlink.XfrmPolicy, error) {
	return whole(func() ([]netlink.XfrmPolicy, error) { return netlink.XfrmPolicyList(family) })
}

// IpsetList reads one ipset with its entries, whole.
func IpsetList(name string) (*netlink.IPSetResult, error) {
	return whole(func() (*netlink.IPSetResult, error) { return netlink.IpsetList(name) })
}

// IpsetListAll reads every ipset of this network namespace, whole.
func IpsetListAll() ([]netlink.IPSetResult, error) { return whole(netlink.IpsetListAll) }
