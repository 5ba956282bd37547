// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// tartan's fast path: tc (tcx) ingress programs that carry a packet between
// two containers of one tartan network without the host's IP stack, as
// Cilium's host routing does. Only traffic the kernel path would forward
// anyway is taken (same network, the sender's own address, not a published
// port, not a fragment, a live route and neighbour); everything else goes on
// to the host's stack (TC_ACT_UNSPEC), where tartan's rules decide as before.
//
//   from_container  on the host end of each endpoint veth: to a container of
//                   this host (bpf_redirect_peer straight into its namespace)
//                   or to the network's VXLAN device or the underlay toward
//                   the peer (bpf_redirect, with the route's next-hop MACs)
//   from_peer       on each VXLAN device and on the underlay: into the
//                   destination container (bpf_redirect_peer)
//
// The maps are written by driver/fastpath from the driver's records.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

// An endpoint, by the ifindex of its veth's host end.
struct endpoint {
	__u32 net;        // the network's number (driver/fastpath: netNumber)
	__u32 ip4;        // its IPv4 address, network order
	__u8 ip6[16];     // its IPv6 address, zero when it has none
	__u8 mac[6];      // the container's MAC
	__u8 host_mac[6]; // the MAC of the veth's host end
};

// A pool and the network it is of.
struct pool {
	__u32 net;
	__u32 flags;
};
#define POOL_UNDERLAY 1 // peers' traffic comes and goes unencapsulated on the underlay

struct lpm4_key {
	__u32 prefixlen;
	__u32 addr;
};

struct lpm6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

// A device other hosts' traffic arrives on.
struct device {
	__u32 net; // KIND_TUNNEL: the one network it carries
	__u32 kind;
	__u32 vni; // KIND_TUNNEL: its VXLAN network identifier
};
#define KIND_TUNNEL 1
#define KIND_UNDERLAY 2

// A published port's container side: its flows stay on the kernel path,
// whose connection tracking undoes the DNAT of hairpinned connections.
struct port_key {
	__u8 addr[16]; // IPv4 in the first four bytes
	__u8 family;
	__u8 proto;
	__u16 port; // network order
};

enum counter {
	C_LOCAL = 0,      // container to a container of this host
	C_OUT = 1,        // container to the VXLAN device or the underlay
	C_IN = 2,         // VXLAN device or underlay to a container
	C_STACK_PORT = 3, // left to the stack: a published port's flow
	C_STACK_NEIGH = 4, // left to the stack: no neighbour entry yet
	C_STACK_MTU = 5,  // left to the stack: larger than the next hop's MTU
	C_STACK_OTHER = 6, // left to the stack: another network, not routed, fragment, TTL
	C_OUT_VXLAN = 7,  // container to a peer, VXLAN-encapsulated here
	C_MAX = 8,
};

// How this host sends VXLAN: what its VXLAN devices would put around a
// packet, so that the fast path encapsulates as they do.
struct vxlan_config {
	__u32 local_ip;    // the underlay address, network order
	__u32 underlay;    // the underlay's ifindex
	__u16 port;        // the VXLAN port, network order; 0: do not encapsulate
	__u16 port_min;    // the outer source ports' range (the host's
	__u16 port_range;  // ip_local_port_range, as the kernel's VXLAN picks them)
	__u16 pad;
};

// A peer's VTEP MAC on one of this host's VXLAN devices, and where it is:
// the devices' forwarding database.
struct fdb_key {
	__u32 ifindex;
	__u8 mac[6];
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint);
	__uint(max_entries, 16384);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm4_key);
	__type(value, struct pool);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pools4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm6_key);
	__type(value, struct pool);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pools6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct device);
	__uint(max_entries, 1024);
} devices SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct port_key);
	__type(value, __u8);
	__uint(max_entries, 16384);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct vxlan_config);
	__uint(max_entries, 1);
} vxlan SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct fdb_key);
	__type(value, __u32); // the peer's underlay address, network order
	__uint(max_entries, 16384);
} fdb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, C_MAX);
} counters SEC(".maps");

static __always_inline void count(__u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &c);
	if (v)
		*v += 1;
}

// A parsed IP packet.
struct pkt {
	__u8 family;
	__u8 proto;
	__u8 has_ports;
	__u8 ttl;
	__u16 sport, dport; // network order
	__u32 src4, dst4;
	__u8 src6[16], dst6[16];
	struct ethhdr *eth;
	struct iphdr *ip4;
	struct ipv6hdr *ip6;
};

// parse returns 0 for an IP packet tartan may carry, -1 otherwise (not IP,
// a fragment, IPv4 options, an IPv6 extension header).
static __always_inline int parse_at(struct __sk_buff *skb, struct pkt *p, const int off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data + off;
	__u32 l4; // the L4 header's offset

	if ((void *)(eth + 1) > data_end)
		return -1;
	p->eth = eth;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		// IP options (ihl above 5) go to the stack: a variable header
		// length needs pointer arithmetic that the verifier allows only
		// with CAP_PERFMON, which the plugin does not ask for.
		if ((void *)(ip + 1) > data_end || ip->ihl != 5)
			return -1;
		if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return -1;
		p->family = AF_INET;
		p->ip4 = ip;
		p->proto = ip->protocol;
		p->ttl = ip->ttl;
		p->src4 = ip->saddr;
		p->dst4 = ip->daddr;
		l4 = off + sizeof(*eth) + sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		p->family = AF_INET6;
		p->ip6 = ip6;
		p->proto = ip6->nexthdr;
		p->ttl = ip6->hop_limit;
		__builtin_memcpy(p->src6, &ip6->saddr, 16);
		__builtin_memcpy(p->dst6, &ip6->daddr, 16);
		l4 = off + sizeof(*eth) + sizeof(*ip6);
		if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP && p->proto != IPPROTO_SCTP &&
		    p->proto != IPPROTO_ICMPV6)
			return -1; // an extension header: the stack's
	} else {
		return -1;
	}
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == IPPROTO_SCTP) {
		// Loaded, not read through a pointer: the two families' offsets
		// would meet in one variable-offset packet pointer, which the
		// verifier refuses without CAP_PERFMON.
		__u16 ports[2];
		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return -1;
		p->sport = ports[0];
		p->dport = ports[1];
		p->has_ports = 1;
	}
	return 0;
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	return parse_at(skb, p, 0);
}

static __always_inline struct pool *pool_of(struct pkt *p, int dst)
{
	if (p->family == AF_INET) {
		struct lpm4_key k = {.prefixlen = 32, .addr = dst ? p->dst4 : p->src4};
		return bpf_map_lookup_elem(&pools4, &k);
	}
	struct lpm6_key k = {.prefixlen = 128};
	__builtin_memcpy(k.addr, dst ? p->dst6 : p->src6, 16);
	return bpf_map_lookup_elem(&pools6, &k);
}

// published says whether the packet is to or from a published port's
// container side.
static __always_inline int published(struct pkt *p)
{
	struct port_key k = {};

	if (!p->has_ports)
		return 0;
	k.family = p->family;
	k.proto = p->proto;
	if (p->family == AF_INET)
		__builtin_memcpy(k.addr, &p->dst4, 4);
	else
		__builtin_memcpy(k.addr, p->dst6, 16);
	k.port = p->dport;
	if (bpf_map_lookup_elem(&ports, &k))
		return 1;
	__builtin_memset(k.addr, 0, 16);
	if (p->family == AF_INET)
		__builtin_memcpy(k.addr, &p->src4, 4);
	else
		__builtin_memcpy(k.addr, p->src6, 16);
	k.port = p->sport;
	return bpf_map_lookup_elem(&ports, &k) != 0;
}

// same6 compares two IPv6 addresses (clang has no memcmp for BPF). No
// branch between the words: clang would merge them into one load at a
// variable offset, which the verifier refuses without CAP_PERFMON.
static __always_inline int same6(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return ((a0 ^ b0) | (a1 ^ b1)) == 0;
}

// is_dst says whether the packet's destination is the endpoint's address,
// is_src whether its source is.
static __always_inline int is_dst(struct pkt *p, struct endpoint *ep)
{
	if (p->family == AF_INET)
		return p->dst4 == ep->ip4;
	return same6(p->dst6, ep->ip6);
}

static __always_inline int is_src(struct pkt *p, struct endpoint *ep)
{
	__u64 w0, w1;

	if (p->family == AF_INET)
		return p->src4 == ep->ip4;
	// An endpoint without IPv6 has ip6 zero: "::" is no one's source (the
	// kernel never forwards it; issue 24, audit L2).
	__builtin_memcpy(&w0, ep->ip6, 8);
	__builtin_memcpy(&w1, ep->ip6 + 8, 8);
	return (w0 | w1) != 0 && same6(p->src6, ep->ip6);
}

// forward does what routing a packet does to it: one hop less, new MACs.
static __always_inline void forward(struct pkt *p, const __u8 *dmac, const __u8 *smac)
{
	if (p->family == AF_INET) {
		// RFC 1141's incremental update for a TTL decrement.
		__u32 check = p->ip4->check;
		check += bpf_htons(0x0100);
		p->ip4->check = (__u16)(check + (check >= 0xFFFF));
		p->ip4->ttl--;
	} else {
		p->ip6->hop_limit--;
	}
	__builtin_memcpy(p->eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(p->eth->h_source, smac, ETH_ALEN);
}

// route asks the kernel's FIB where the packet goes from ifindex; it fills
// fib and returns bpf_fib_lookup's answer.
static __always_inline int route(struct __sk_buff *skb, struct pkt *p, __u32 ifindex, struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = p->family;
	fib->l4_protocol = p->proto;
	fib->sport = p->sport;
	fib->dport = p->dport;
	fib->tot_len = 0; // the skb's own length check, which knows GSO
	fib->ifindex = ifindex;
	if (p->family == AF_INET) {
		fib->ipv4_src = p->src4;
		fib->ipv4_dst = p->dst4;
	} else {
		__builtin_memcpy(fib->ipv6_src, p->src6, 16);
		__builtin_memcpy(fib->ipv6_dst, p->dst6, 16);
	}
	return bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
}

// routable is what both directions ask before carrying a packet: not a
// published port's flow, a route from in, within the next hop's MTU. It
// returns the FIB's answer (SUCCESS, or NO_NEIGH with the egress device
// known), or -1 having counted why the packet goes on to the stack.
static __always_inline int routable(struct __sk_buff *skb, struct pkt *p, __u32 in, struct bpf_fib_lookup *fib)
{
	int rc;

	if (published(p)) {
		count(C_STACK_PORT);
		return -1;
	}
	rc = route(skb, p, in, fib);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		count(C_STACK_MTU);
		return -1;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		count(C_STACK_OTHER);
		return -1;
	}
	return rc;
}

// deliver sends the packet into the container behind the veth whose host
// end is out, when that container is of network net and has the packet's
// destination address.
static __always_inline int deliver(struct pkt *p, __u32 out, __u32 net, __u32 c)
{
	struct endpoint *dst = bpf_map_lookup_elem(&endpoints, &out);

	if (!dst || dst->net != net || !is_dst(p, dst)) {
		count(C_STACK_OTHER);
		return TC_ACT_UNSPEC;
	}
	forward(p, dst->mac, dst->host_mac);
	count(c);
	return bpf_redirect_peer(out, 0);
}

// ecn_of is the packet's ECN codepoint.
static __always_inline __u8 ecn_of(struct pkt *p)
{
	if (p->family == AF_INET)
		return p->ip4->tos & 3;
	return (p->ip6->flow_lbl[0] >> 4) & 3;
}

#define VXLAN_ROOM 50 // what encapsulation adds: IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14

struct vxlanhdr {
	__be32 flags; // 0x08000000: the VNI is valid
	__be32 vni;   // in the upper 24 bits
};

// encap_vxlan wraps a routed packet (its MACs, for the peer's VTEP, already
// written) for the peer whose VTEP MAC the route found, in the VXLAN the
// network's device would make (the receiver's kernel takes it as its own
// device's), to be sent straight out of the underlay. It returns the
// underlay's ifindex to redirect to; 0, having changed nothing, when it
// cannot (the caller then hands the packet to the device); -1 when the
// packet is changed but not whole (cannot be: the verifier's bounds).
static __always_inline int encap_vxlan(struct __sk_buff *skb, struct device *dev, __u32 ifindex, const __u8 *vtep_mac, __u8 ecn)
{
	struct bpf_fib_lookup ofib = {};
	struct vxlan_config *cfg;
	struct fdb_key k = {};
	struct ethhdr *eth, *inner;
	struct iphdr *ip;
	struct udphdr *udp;
	struct vxlanhdr *vx;
	void *data, *data_end;
	__u32 zero = 0, *peer, hash, len;
	__u16 ip_id;
	__s64 csum;

	cfg = bpf_map_lookup_elem(&vxlan, &zero);
	if (!cfg || !cfg->port || !dev->vni)
		return 0;
	k.ifindex = ifindex;
	__builtin_memcpy(k.mac, vtep_mac, ETH_ALEN);
	peer = bpf_map_lookup_elem(&fdb, &k);
	if (!peer)
		return 0;
	len = skb->len + VXLAN_ROOM - sizeof(struct ethhdr);
	if (len > 0xffff)
		return 0; // a BIG TCP packet: the device's
	// The outer packet's route and next hop, before anything changes.
	ofib.family = AF_INET;
	ofib.ifindex = cfg->underlay;
	ofib.ipv4_src = cfg->local_ip;
	ofib.ipv4_dst = *peer;
	ofib.l4_protocol = IPPROTO_UDP;
	if (bpf_fib_lookup(skb, &ofib, sizeof(ofib), BPF_FIB_LOOKUP_OUTPUT) != BPF_FIB_LKUP_RET_SUCCESS ||
	    ofib.ifindex != cfg->underlay)
		return 0;
	// The outer source port follows the inner flow, as the kernel's VXLAN
	// picks it (udp_flow_src_port), so that the underlay spreads flows.
	hash = bpf_get_hash_recalc(skb);
	ip_id = (__u16)bpf_get_prandom_u32();
	if (bpf_skb_adjust_room(skb, VXLAN_ROOM, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
					BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(sizeof(struct ethhdr))) < 0)
		return 0;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	udp = (void *)(ip + 1);
	vx = (void *)(udp + 1);
	inner = (void *)(vx + 1);
	if ((void *)(inner + 1) > data_end)
		return -1; // cannot be: the room is in the linear part
	// The inner Ethernet header is the routed packet's; the outer one the
	// underlay's next hop.
	__builtin_memcpy(inner->h_dest, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(inner->h_source, eth->h_source, ETH_ALEN);
	inner->h_proto = eth->h_proto;
	__builtin_memcpy(eth->h_dest, ofib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ofib.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	vx->flags = bpf_htonl(0x08000000);
	vx->vni = bpf_htonl(dev->vni << 8);
	udp->source = bpf_htons(cfg->port_min + (__u16)(((__u64)hash * cfg->port_range) >> 32));
	udp->dest = cfg->port;
	udp->len = bpf_htons(len - sizeof(struct iphdr));
	udp->check = 0; // as the kernel's VXLAN over IPv4 (noudpcsum)
	ip->version = 4;
	ip->ihl = 5;
	// ECN as RFC 6040's normal mode (the kernel's ip_tunnel_ecn_encap):
	// the inner packet's codepoint, CE carried as ECT(0).
	ip->tos = ecn == 3 ? 2 : ecn;
	ip->tot_len = bpf_htons(len);
	ip->id = ip_id;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = cfg->local_ip;
	ip->daddr = *peer;
	csum = bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0);
	if (csum < 0)
		return -1;
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	ip->check = ~(__u16)csum;
	return ofib.ifindex;
}

// not_ours says whether a frame is the stack's alone to judge: one of
// another VLAN (tc sees a trunk's tagged frames before the kernel
// demultiplexes them, with the tag in the skb's metadata), or one not
// addressed to this host (a NIC in promiscuous mode: a macvlan parent, a
// bridge port, a capture). The stack drops what is not its own; the fast
// path carried them into containers (issue 24, audit M1).
static __always_inline int not_ours(struct __sk_buff *skb)
{
	return skb->vlan_present || skb->pkt_type != PACKET_HOST;
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	__u32 in = skb->ifindex;
	struct endpoint *ep = bpf_map_lookup_elem(&endpoints, &in);
	struct bpf_fib_lookup fib = {};
	struct pkt p = {};
	struct pool *pool = 0;
	struct device *dev = 0;
	__u32 net = 0;
	int rc = 0;

	if (!ep)
		return TC_ACT_UNSPEC;
	if (not_ours(skb)) {
		count(C_STACK_OTHER);
		return TC_ACT_UNSPEC;
	}
	net = ep->net;
	if (parse(skb, &p) < 0 || !is_src(&p, ep)) {
		// Not IP, a fragment, or a source not the container's own (the
		// stack's reverse-path check drops it).
		count(C_STACK_OTHER);
		return TC_ACT_UNSPEC;
	}
	pool = pool_of(&p, 1);
	if (!pool || pool->net != net || p.ttl <= 1) {
		count(C_STACK_OTHER);
		return TC_ACT_UNSPEC;
	}
	rc = routable(skb, &p, in, &fib);
	if (rc < 0)
		return TC_ACT_UNSPEC;
	if (bpf_map_lookup_elem(&endpoints, &fib.ifindex))
		return deliver(&p, fib.ifindex, net, C_LOCAL);
	dev = bpf_map_lookup_elem(&devices, &fib.ifindex);
	if (!dev || (dev->kind == KIND_TUNNEL && dev->net != net) ||
	    (dev->kind == KIND_UNDERLAY && !(pool->flags & POOL_UNDERLAY))) {
		count(C_STACK_OTHER);
		return TC_ACT_UNSPEC;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		count(C_STACK_NEIGH);
		return TC_ACT_UNSPEC;
	}
	forward(&p, fib.dmac, fib.smac);
	if (dev->kind == KIND_TUNNEL) {
		rc = encap_vxlan(skb, dev, fib.ifindex, fib.dmac, ecn_of(&p));
		if (rc > 0) {
			count(C_OUT_VXLAN);
			return bpf_redirect(rc, 0);
		}
		if (rc < 0)
			return TC_ACT_SHOT; // encapsulated but broken: cannot be
	}
	count(C_OUT);
	return bpf_redirect(fib.ifindex, 0);
}

SEC("tc")
int from_peer(struct __sk_buff *skb)
{
	__u32 in = skb->ifindex;
	struct device *dev = bpf_map_lookup_elem(&devices, &in);
	struct bpf_fib_lookup fib = {};
	struct pool *src = 0, *dst = 0;
	struct pkt p = {};
	int rc = 0;

	if (!dev)
		return TC_ACT_UNSPEC;
	if (not_ours(skb)) {
		count(C_STACK_OTHER);
		return TC_ACT_UNSPEC;
	}
	if (parse(skb, &p) < 0)
		return TC_ACT_UNSPEC;
	src = pool_of(&p, 0);
	if (!src)
		return TC_ACT_UNSPEC; // not tartan's: the host's own traffic
	dst = pool_of(&p, 1);
	if (!dst || dst->net != src->net || p.ttl <= 1 || (dev->kind == KIND_TUNNEL && dev->net != src->net) ||
	    (dev->kind == KIND_UNDERLAY && !(src->flags & POOL_UNDERLAY))) {
		count(C_STACK_OTHER);
		return TC_ACT_UNSPEC;
	}
	rc = routable(skb, &p, in, &fib);
	if (rc < 0)
		return TC_ACT_UNSPEC;
	return deliver(&p, fib.ifindex, src->net, C_IN);
}

char __license[] SEC("license") = "Dual MIT/GPL";
