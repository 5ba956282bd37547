package driver

import (
	"cmp"
	"context"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"golang.org/x/sys/unix"
)

// MaxDeniedFlows is how many distinct denied flows the deny log keeps (the
// least recent go first).
const MaxDeniedFlows = 1000

// DeniedFlow is a flow network policy denied on this host, with how many
// of its new connections were denied and when.
type DeniedFlow struct {
	Direction string // ingress or egress
	Interface string // the endpoint's host interface
	Src, Dst  netip.Addr
	Proto     string // tcp, udp, icmp, or the protocol number
	Port      uint16
	Count     uint64
	First     time.Time
	Last      time.Time
}

// denyLog counts the denied flows the firewall's NFLOG rules report.
type denyLog struct {
	mu    sync.Mutex
	flows map[denyKey]*DeniedFlow
	total map[string]uint64 // by direction
}

type denyKey struct {
	dir, ifname string
	src, dst    netip.Addr
	proto       uint8
	port        uint16
}

// readDenyLog reads the deny log until ctx ends; a host where it cannot
// bind (no NFLOG) says so once and enforces all the same.
func (d *Driver) readDenyLog(ctx context.Context) {
	err := kernel.ReadNFLOG(ctx, firewall.DenyLogGroup, d.deny.add)
	if err != nil && ctx.Err() == nil {
		d.log.Warnf("network policy's deny log is off (denied flows are still dropped): %v", err)
	}
}

// add counts one logged packet ("tartan deny <direction> <interface>").
func (l *denyLog) add(p kernel.Logged) {
	f := strings.Fields(p.Prefix)
	if len(f) != 4 || f[0] != "tartan" || f[1] != "deny" {
		return
	}
	k := denyKey{dir: f[2], ifname: f[3], src: p.Src, dst: p.Dst, proto: p.Proto, port: p.Port}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.flows == nil {
		l.flows, l.total = map[denyKey]*DeniedFlow{}, map[string]uint64{}
	}
	l.total[k.dir]++
	if e, ok := l.flows[k]; ok {
		e.Count++
		e.Last = now
		return
	}
	if len(l.flows) >= MaxDeniedFlows {
		var oldest denyKey
		var when time.Time
		for key, e := range l.flows {
			if when.IsZero() || e.Last.Before(when) {
				oldest, when = key, e.Last
			}
		}
		delete(l.flows, oldest)
	}
	l.flows[k] = &DeniedFlow{Direction: k.dir, Interface: k.ifname, Src: k.src, Dst: k.dst, Proto: protoName(k.proto), Port: k.port, Count: 1, First: now, Last: now}
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6:
		return "icmp"
	}
	return strconv.Itoa(int(p))
}

// DeniedFlows are the denied flows of this host, the most recent first,
// and how many denied connections each direction counted since the start.
func (d *Driver) DeniedFlows() ([]DeniedFlow, map[string]uint64) {
	d.deny.mu.Lock()
	defer d.deny.mu.Unlock()
	out := make([]DeniedFlow, 0, len(d.deny.flows))
	for _, e := range d.deny.flows {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b DeniedFlow) int { return cmp.Compare(b.Last.UnixNano(), a.Last.UnixNano()) })
	total := map[string]uint64{"ingress": d.deny.total["ingress"], "egress": d.deny.total["egress"]}
	return out, total
}
