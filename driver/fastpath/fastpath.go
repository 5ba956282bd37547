// Package fastpath is tartan's eBPF fast path for the routed backends:
// tc (tcx) ingress programs on the host end of each endpoint veth, on each
// VXLAN device and on the underlay carry a packet between two containers of
// one network without the host's IP stack (no netfilter, no conntrack, no
// second routing pass), with bpf_redirect_peer into the destination
// container and bpf_redirect toward the next hop, as Cilium's host routing
// does. The programs (bpf/fastpath.c) take only traffic that the kernel
// path would forward anyway: within one network, from the container's own
// address, not a published port's flow, not a fragment, along a route whose
// neighbour is known; everything else goes on to the host's stack, where
// tartan's rules decide as before.
//
// Nothing is pinned: the programs live as long as the plugin's process (its
// links close with it), a restarted plugin attaches them again, and the
// kernel path carries the traffic in between. Removing the plugin leaves
// nothing behind.
package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/internal/dockerid"
)

// Pool flags and device kinds, as bpf/fastpath.c has them.
const (
	poolUnderlay = 1
	kindTunnel   = 1
	kindUnderlay = 2
)

// Counter names, in the order of bpf/fastpath.c's enum counter.
var counterNames = []string{"local", "out", "in", "stack_port", "stack_neigh", "stack_mtu", "stack_other", "out_vxlan"}

// State is what the fast path carries: the host's routed networks that
// are not encrypted, their endpoints and published ports.
type State struct {
	Networks  []Network
	Endpoints []Endpoint
	Ports     []Port
	// Underlay is the interface other hosts' unencapsulated traffic
	// arrives on (host-gw, direct routing) and VXLAN leaves by; "" when
	// unknown. Local is its address, the VXLAN devices' source.
	Underlay string
	Local    netip.Addr
	// VXLANPort is the VXLAN devices' UDP port; PortMin and PortMax the
	// range of the outer source ports (the host's ip_local_port_range, as
	// the kernel's udp_flow_src_port uses it).
	// 0: the devices encapsulate.
	VXLANPort        int
	PortMin, PortMax int
}

// Network is a routed network.
type Network struct {
	ID    string         // Docker's network ID
	Pools []netip.Prefix // its IPv4 pool and, on dual stack, its IPv6 one
	// Device is its VXLAN device ("" for none): the only device its
	// peers' encapsulated traffic arrives on. VNI is its identifier, FDB
	// where its peers' VTEP MACs are (the device's forwarding database).
	Device string
	VNI    int
	FDB    []FDB
	// Underlay: its peers' traffic travels unencapsulated on the underlay
	// (host-gw, and VXLAN's direct routing).
	Underlay bool
}

// FDB is a peer's VTEP: its MAC on the network's VXLAN device, and its
// underlay address.
type FDB struct {
	MAC string
	Dst netip.Addr
}

// Endpoint is a container's endpoint on a routed network.
type Endpoint struct {
	Network string // Docker's network ID
	HostIf  string // the host end of its veth
	IP      netip.Addr
	IP6     netip.Addr // invalid when it has none
	MAC     string     // the container's MAC
}

// Port is the container side of a published port.
type Port struct {
	IP    netip.Addr
	Proto string // tcp, udp or sctp
	Port  int
}

// FastPath is the loaded programs and maps, and the links that attach the
// programs. Its methods are safe for concurrent use.
type FastPath struct {
	log  logrus.FieldLogger
	mu   sync.Mutex
	objs fastpathObjects
	// links are the attached programs, by interface name.
	links map[string]attachment
}

type attachment struct {
	ifindex int
	link    link.Link
}

// Load loads the programs and their maps into the kernel; nothing is
// attached until Sync. The error says why the kernel refused them.
func Load(log logrus.FieldLogger) (*FastPath, error) {
	f := &FastPath{log: log, links: map[string]attachment{}}
	if err := loadFastpathObjects(&f.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("the kernel's verifier refused tartan's programs: %v", ve)
		}
		return nil, fmt.Errorf("load tartan's eBPF programs: %w", err)
	}
	// tcx (Linux 6.6) is what the programs are attached with: try it on
	// loopback now, so that a kernel without it falls back at start.
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		f.objs.Close()
		return nil, fmt.Errorf("find lo: %w", err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: lo.Index, Program: f.objs.FromPeer, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		f.objs.Close()
		return nil, fmt.Errorf("attach a tcx program (Linux 6.6 or later): %w", err)
	}
	_ = l.Close()
	return f, nil
}

// Close detaches the programs and frees them and their maps.
func (f *FastPath) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for name, a := range f.links {
		errs = append(errs, a.link.Close())
		delete(f.links, name)
	}
	errs = append(errs, f.objs.Close())
	return errors.Join(errs...)
}

// netNumber is a network's number in the maps: stable for a network
// (so that no rewrite ever lets two networks' numbers meet), never 0.
func netNumber(id string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(id))
	return h.Sum32() | 1
}

// desired is the maps' contents and the attachments for a State.
type desired struct {
	endpoints map[uint32]fastpathEndpoint
	pools4    map[fastpathLpm4Key]fastpathPool
	pools6    map[fastpathLpm6Key]fastpathPool
	devices   map[uint32]fastpathDevice
	ports     map[fastpathPortKey]uint8
	fdb       map[fastpathFdbKey]uint32
	vxlan     fastpathVxlanConfig
	// attach: interface name -> (ifindex, program is from_container)
	attach map[string]attachSpec
}

type attachSpec struct {
	ifindex   int
	container bool
}

// Sync makes the maps and attachments those of st: entries and links it
// no longer has go, interfaces that are gone are skipped. Running it twice
// changes nothing.
func (f *FastPath) Sync(st State) error {
	want, problems := f.resolve(st)
	f.mu.Lock()
	defer f.mu.Unlock()
	// Stale entries go before new ones come: an ifindex the kernel gives
	// again is never found with an old network's number.
	errs := []error{
		syncMap(f.objs.Endpoints, want.endpoints),
		syncMap(f.objs.Pools4, want.pools4),
		syncMap(f.objs.Pools6, want.pools6),
		syncMap(f.objs.Devices, want.devices),
		syncMap(f.objs.Ports, want.ports),
		syncMap(f.objs.Fdb, want.fdb),
	}
	if err := f.objs.Vxlan.Put(uint32(0), want.vxlan); err != nil {
		errs = append(errs, fmt.Errorf("write the fast path's VXLAN settings: %w", err))
	}
	for name, a := range f.links {
		w, ok := want.attach[name]
		if ok && w.ifindex == a.ifindex {
			continue
		}
		_ = a.link.Close() // gone with its interface, or replaced
		delete(f.links, name)
	}
	for name, w := range want.attach {
		if _, ok := f.links[name]; ok {
			continue
		}
		prog := f.objs.FromPeer
		if w.container {
			prog = f.objs.FromContainer
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: w.ifindex, Program: prog, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			if !kernel.IndexExists(w.ifindex) {
				continue // it went meanwhile
			}
			errs = append(errs, fmt.Errorf("attach the fast path to %s: %w", name, err))
			continue
		}
		f.links[name] = attachment{ifindex: w.ifindex, link: l}
	}
	errs = append(errs, problems...)
	return errors.Join(errs...)
}

// resolve turns st into the maps' contents, looking up the interfaces'
// indexes in the kernel (driver/kernel).
func (f *FastPath) resolve(st State) (desired, []error) {
	want := desired{endpoints: map[uint32]fastpathEndpoint{}, pools4: map[fastpathLpm4Key]fastpathPool{}, pools6: map[fastpathLpm6Key]fastpathPool{},
		devices: map[uint32]fastpathDevice{}, ports: map[fastpathPortKey]uint8{}, attach: map[string]attachSpec{},
		fdb: map[fastpathFdbKey]uint32{}}
	nets, problems := numbers(st.Networks)
	underlay, vxlan := false, false
	for _, n := range st.Networks {
		num, ok := nets[n.ID]
		if !ok {
			continue
		}
		u, v := want.addNetwork(n, num)
		underlay, vxlan = underlay || u, vxlan || v
	}
	if st.Underlay != "" && (underlay || vxlan) {
		want.addUnderlay(st, underlay, vxlan)
	}
	for _, e := range st.Endpoints {
		if num, ok := nets[e.Network]; ok {
			want.addEndpoint(e, num)
		}
	}
	for _, p := range st.Ports {
		want.addPort(p)
	}
	return want, problems
}

// numbers are the fast-path numbers of the networks, by network ID. Two
// networks whose numbers meet are left to the kernel path (a problem each).
func numbers(networks []Network) (map[string]uint32, []error) {
	owner := map[uint32]string{}
	clash := map[uint32]bool{}
	for _, n := range networks {
		num := netNumber(n.ID)
		if o, ok := owner[num]; ok && o != n.ID {
			clash[num] = true
		}
		owner[num] = n.ID
	}
	nets := map[string]uint32{}
	var problems []error
	for _, n := range networks {
		num := netNumber(n.ID)
		if clash[num] {
			problems = append(problems, fmt.Errorf("network %s shares its fast-path number with another network: its traffic takes the kernel path", dockerid.Short(n.ID)))
			continue
		}
		nets[n.ID] = num
	}
	return nets, problems
}

// addNetwork adds a network's pools, and its VXLAN device with the device's
// forwarding entries; underlay says that its peers' traffic arrives on the
// underlay, vxlan that it has a VXLAN device here.
func (want *desired) addNetwork(n Network, num uint32) (underlay, vxlan bool) {
	flags := uint32(0)
	if n.Underlay {
		flags, underlay = poolUnderlay, true
	}
	for _, p := range n.Pools {
		p = p.Masked()
		v := fastpathPool{Net: num, Flags: flags}
		if p.Addr().Is4() {
			want.pools4[fastpathLpm4Key{Prefixlen: uint32(p.Bits()), Addr: wire4(p.Addr())}] = v
		} else {
			want.pools6[fastpathLpm6Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}] = v
		}
	}
	if n.Device == "" {
		return underlay, false
	}
	index, _, err := kernel.LinkIndex(n.Device)
	if err != nil {
		return underlay, false
	}
	want.devices[uint32(index)] = fastpathDevice{Net: num, Kind: kindTunnel, Vni: uint32(n.VNI)}
	want.attach[n.Device] = attachSpec{ifindex: index}
	for _, e := range n.FDB {
		mac, err := net.ParseMAC(e.MAC)
		if err != nil || len(mac) != 6 || !e.Dst.Is4() {
			continue
		}
		k := fastpathFdbKey{Ifindex: uint32(index)}
		copy(k.Mac[:], mac)
		want.fdb[k] = wire4(e.Dst)
	}
	return underlay, n.VNI > 0
}

// addUnderlay adds the underlay interface: a device the programs attach to
// when a network's peers' traffic arrives there, and the VXLAN settings of
// the fast path's own encapsulation when a network has a VXLAN device.
func (want *desired) addUnderlay(st State, underlay, vxlan bool) {
	index, _, err := kernel.LinkIndex(st.Underlay)
	if err != nil {
		return
	}
	if underlay {
		want.devices[uint32(index)] = fastpathDevice{Kind: kindUnderlay}
		want.attach[st.Underlay] = attachSpec{ifindex: index}
	}
	if vxlan && st.VXLANPort > 0 && st.Local.Is4() && st.PortMax > st.PortMin && st.PortMin > 0 {
		want.vxlan = fastpathVxlanConfig{LocalIp: wire4(st.Local), Underlay: uint32(index),
			Port: wire16(st.VXLANPort), PortMin: uint16(st.PortMin), PortRange: uint16(st.PortMax - st.PortMin)}
	}
}

// addEndpoint adds an IPv4 endpoint of network num whose veth is here.
func (want *desired) addEndpoint(e Endpoint, num uint32) {
	if !e.IP.Is4() {
		return
	}
	mac, err := net.ParseMAC(e.MAC)
	if err != nil || len(mac) != 6 {
		return
	}
	index, hostMAC, err := kernel.LinkIndex(e.HostIf)
	if err != nil || len(hostMAC) != 6 {
		return // gone, or not made yet
	}
	v := fastpathEndpoint{Net: num, Ip4: wire4(e.IP)}
	if e.IP6.IsValid() {
		v.Ip6 = e.IP6.As16()
	}
	copy(v.Mac[:], mac)
	copy(v.HostMac[:], hostMAC)
	want.endpoints[uint32(index)] = v
	want.attach[e.HostIf] = attachSpec{ifindex: index, container: true}
}

// addPort adds a published port.
func (want *desired) addPort(p Port) {
	k := fastpathPortKey{Proto: protoNumber(p.Proto), Port: wire16(p.Port)}
	if p.IP.Is4() {
		a := p.IP.As4()
		copy(k.Addr[:], a[:])
		k.Family = 2 // AF_INET
	} else {
		k.Addr = p.IP.As16()
		k.Family = 10 // AF_INET6
	}
	if k.Proto != 0 {
		want.ports[k] = 1
	}
}

func protoNumber(p string) uint8 {
	switch strings.ToLower(p) {
	case "tcp":
		return 6
	case "udp":
		return 17
	case "sctp":
		return 132
	}
	return 0
}

// wire4 is an IPv4 address as the programs compare it: its bytes in
// network order, read as a native integer (a __u32 of the packet).
func wire4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// wire16 is a port as the programs compare it: network order, read as a
// native integer (a __u16 of the packet).
func wire16(port int) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], uint16(port))
	return binary.NativeEndian.Uint16(b[:])
}

// syncMap makes m hold exactly want: keys it should not have go first,
// then every wanted entry is written.
func syncMap[K comparable, V any](m *ebpf.Map, want map[K]V) error {
	var stale []K
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read fast-path map %s: %w", m, err)
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from fast-path map %s: %w", m, err)
		}
	}
	for k, v := range want {
		if err := m.Put(k, v); err != nil {
			return fmt.Errorf("write fast-path map %s: %w", m, err)
		}
	}
	return nil
}

// Counters are the packets the programs carried (local, out, in) and left
// to the kernel path, with why (stack_*), summed over the CPUs.
func (f *FastPath) Counters() (map[string]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]uint64{}
	for i, name := range counterNames {
		var per []uint64
		if err := f.objs.Counters.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read fast-path counter %s: %w", name, err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		out[name] = sum
	}
	return out, nil
}

// CounterNames are the counters' names, in a fixed order.
func CounterNames() []string { return append([]string(nil), counterNames...) }

// Attached are the interfaces the programs are attached to, sorted.
func (f *FastPath) Attached() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.links))
	for name := range f.links {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}
