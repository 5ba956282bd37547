// Package api is the plugin's admin API: the paths of the operator
// endpoints served on the plugin's socket beside libnetwork's, and the JSON
// they answer with. It imports nothing of tartan's, so that a client (the
// tartan subcommands, plugin/cli) needs neither the driver nor the store.
//
// Some answers are reports that lower packages make (kv.Census's hosts,
// kv.Pools's pools, driver.Status's networks, the WireGuard device's
// state): their types here are the same structs, field for field and tag
// for tag (the plugin converts them with Go conversions, and its tests hold
// the tags equal), so the JSON is the same whichever side encodes it.
package api

import (
	"cmp"
	"fmt"
	"strings"
	"time"
)

// Version is the binary's version, set at build time (-ldflags -X).
var Version = "dev"

// Paths of the operator endpoints (they read, but for POST GCPath,
// RotateKeyPath and RepairPath).
const (
	StatusPath    = "/tartan/v1/status"
	HostsPath     = "/tartan/v1/hosts"
	DoctorPath    = "/tartan/v1/doctor"
	NetworksPath  = "/tartan/v1/networks"
	AddressesPath = "/tartan/v1/addresses" // ?pool=CIDR
	PortsPath     = "/tartan/v1/ports"
	GCPath        = "/tartan/v1/gc"               // GET: what a collection would remove; POST: collect now
	RotateKeyPath = "/tartan/v1/wireguard/rotate" // POST: a new WireGuard key pair for this host
	RepairPath    = "/tartan/v1/repair"           // POST: the resync now
	// PoliciesPath: GET the policies (?name=N: one, as stored), POST a
	// policy file (YAML or JSON: applied whole or not at all), DELETE
	// ?name=N.
	PoliciesPath = "/tartan/v1/policies"
	// ExplainPath: GET ?from=A&to=B&proto=P&port=N, the verdict of a flow
	// between two addresses with the rules that decided it.
	ExplainPath = "/tartan/v1/policies/explain"
	// DenyLogPath: GET the flows network policy denied on this host.
	DenyLogPath = "/tartan/v1/policies/log"
	// BGPPath: GET this host's BGP speaker: its sessions and what it
	// announces.
	BGPPath = "/tartan/v1/bgp"
)

// BGPStatus is this host's BGP speaker (tartan bgp).
type BGPStatus struct {
	On        bool         `json:"on"` // BGP_AS is set
	AS        uint32       `json:"as,omitempty"`
	RouterID  string       `json:"routerId,omitempty"`
	Sessions  []BGPSession `json:"sessions"`
	Announced []string     `json:"announced"` // "prefix via next hop", sorted
}

// BGPSession is one peer's session.
type BGPSession struct {
	Peer     string    `json:"peer"`
	AS       uint32    `json:"as"`
	State    string    `json:"state"` // idle, connect, active, opensent, openconfirm, established
	Since    time.Time `json:"since,omitzero"`
	Sent     uint64    `json:"prefixesSent"`
	Received uint64    `json:"prefixesReceived"`
	Reason   string    `json:"lastDown,omitempty"`
}

// DenyLog is what network policy denied on this host (tartan policy log):
// the flows, most recent first, and the denied connections counted per
// direction since the plugin started.
type DenyLog struct {
	Flows []DeniedFlow      `json:"flows"`
	Total map[string]uint64 `json:"total"`
}

// DeniedFlow is one denied flow with its count (driver.DeniedFlow).
type DeniedFlow struct {
	Direction string    `json:"direction"`
	Interface string    `json:"interface"`
	Src       string    `json:"src"`
	Dst       string    `json:"dst"`
	Proto     string    `json:"proto"`
	Port      uint16    `json:"port,omitempty"`
	Count     uint64    `json:"count"`
	First     time.Time `json:"first"`
	Last      time.Time `json:"last"`
}

// PolicySummary is one policy in a listing (tartan policy ls).
type PolicySummary struct {
	Name     string   `json:"name"`
	Selector string   `json:"selector"`
	Networks []string `json:"networks,omitempty"`
	Types    []string `json:"types"`
	Ingress  int      `json:"ingressRules"`
	Egress   int      `json:"egressRules"`
}

// PoliciesApplied names the policies an apply wrote.
type PoliciesApplied struct {
	Applied []string `json:"applied"`
}

// PolicyRemoved names the policy a removal took.
type PolicyRemoved struct {
	Removed string `json:"removed"`
}

// Explained is a flow's verdict (tartan policy explain): the source's
// egress and the destination's ingress, each with what decided it.
type Explained struct {
	From    string   `json:"from"`
	To      string   `json:"to"`
	Flow    string   `json:"flow"`
	Allowed bool     `json:"allowed"`
	Egress  Decision `json:"egress"`
	Ingress Decision `json:"ingress"`
}

// Decision is one direction's answer: the policy and rule that allowed
// the flow (none: Rule -1), and why in words.
type Decision struct {
	Allowed bool   `json:"allowed"`
	Policy  string `json:"policy,omitempty"`
	Rule    int    `json:"rule"`
	Reason  string `json:"reason"`
}

// HostStatus is this host as its plugin sees it (tartan status).
type HostStatus struct {
	Host     string          `json:"host"`
	Version  string          `json:"version"`
	Store    string          `json:"store"`
	Firewall string          `json:"firewall"`
	Scope    string          `json:"scope"`
	Settings string          `json:"settingsError,omitempty"` // why every request fails, if one does
	Networks []NetworkStatus `json:"networks"`
	// WireGuard is the host's WireGuard device (its mode is empty while
	// the host has no wireguard network); WireGuardError says why its
	// state could not be read.
	WireGuard      *WireGuardStatus `json:"wireguard,omitempty"`
	WireGuardError string           `json:"wireguardError,omitempty"`
	// FastPath is the eBPF fast path: on or off, where its programs are
	// attached, its packet counters.
	FastPath *FastPathStatus `json:"fastpath,omitempty"`
}

// NetworkStatus is what this host has of one of its networks
// (driver.NetworkStatus).
type NetworkStatus struct {
	ID        string   `json:"id"`
	Backend   string   `json:"backend"`
	Pool      string   `json:"pool"`
	Pool6     string   `json:"pool6,omitempty"`
	VNI       int      `json:"vni,omitempty"`
	MTU       int      `json:"mtu"`
	Internal  bool     `json:"internal,omitempty"`
	Device    string   `json:"device,omitempty"`
	Parent    string   `json:"parent,omitempty"`
	Endpoints int      `json:"endpoints"`
	Ports     int      `json:"publishedPorts"`
	Planned   bool     `json:"planned"` // the network has a peer plan (routed networks, once the store was read)
	Routes    int      `json:"routes"`
	Neighbors int      `json:"neighbors"`
	FDB       int      `json:"fdb"`
	Problems  []string `json:"problems,omitempty"`
}

// WireGuardStatus is the host's WireGuard device (wireguard.Status).
type WireGuardStatus struct {
	Name      string          `json:"name"`
	Mode      string          `json:"mode"` // "" while the host has no wireguard network
	PublicKey string          `json:"publicKey"`
	Port      int             `json:"port"`
	MTU       int             `json:"mtu,omitempty"`
	Peers     []WireGuardPeer `json:"peers,omitempty"`
}

// WireGuardPeer is one peer's state (wireguard.PeerStatus).
type WireGuardPeer struct {
	PublicKey     string    `json:"publicKey"`
	Endpoint      string    `json:"endpoint"`
	Allowed       []string  `json:"allowedIPs"`
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	RxBytes       uint64    `json:"rxBytes"`
	TxBytes       uint64    `json:"txBytes"`
}

// FastPathStatus is the eBPF fast path as tartan status shows it.
type FastPathStatus struct {
	On       bool              `json:"on"`
	Attached []string          `json:"attached,omitempty"`
	Packets  map[string]uint64 `json:"packets,omitempty"`
	Error    string            `json:"error,omitempty"`
}

// FastPathCounters are the fast path's packet counters' names, in the order
// they are shown (driver/fastpath.CounterNames).
func FastPathCounters() []string {
	return []string{"local", "out", "in", "stack_port", "stack_neigh", "stack_mtu", "stack_other", "out_vxlan"}
}

// HostReport is one host the store knows (kv.HostReport).
type HostReport struct {
	ID      string `json:"id"`
	Address string `json:"address,omitempty"`
	Version string `json:"version,omitempty"`
	// Renewed is the time the host wrote into its last renewal, by its own
	// clock (shown, never compared with this host's); Seen is when this
	// host last saw it renew, by its own clock (what Alive is judged by).
	Renewed time.Time     `json:"renewed"`
	Seen    time.Time     `json:"seen"`
	Alive   bool          `json:"alive"`
	Known   bool          `json:"known"` // it has a host record (a block's host may not)
	Blocks  []BlockReport `json:"blocks"`
}

// BlockReport is one block lease of a host (kv.BlockReport).
type BlockReport struct {
	Pool    string    `json:"pool"`
	Block   string    `json:"block"`
	Expires time.Time `json:"expires"`
	Alive   bool      `json:"alive"` // it still counts as its host's
}

// PoolReport is one pool with its network and what it holds
// (kv.PoolReport).
type PoolReport struct {
	Pool      string       `json:"pool"`
	Range     string       `json:"range,omitempty"`
	BlockBits int          `json:"blockBits"`
	Gateway   string       `json:"gateway,omitempty"`
	Auto      bool         `json:"auto,omitempty"`
	Releasing bool         `json:"releasing,omitempty"`
	Network   *PoolNetwork `json:"network,omitempty"` // none until a driver made a network on the pool
	Blocks    int          `json:"blocks"`
	Addresses int          `json:"addresses"`
}

// PoolNetwork is the cluster-wide record of a network (kv.PoolNetwork).
type PoolNetwork struct {
	Pool          string            `json:"pool"`
	Pool6         string            `json:"pool6,omitempty"`
	IPv4Pool      string            `json:"ipv4Pool,omitempty"`
	Backend       string            `json:"backend"`
	VNI           int               `json:"vni,omitempty"`
	MTU           int               `json:"mtu,omitempty"`
	Internal      bool              `json:"internal,omitempty"`
	Swarm         bool              `json:"swarm,omitempty"`
	DirectRouting bool              `json:"directRouting,omitempty"`
	Policy        string            `json:"policy,omitempty"`
	Options       map[string]string `json:"options,omitempty"`
	Created       time.Time         `json:"created"`
}

// Address is an address record of a pool (kv.Address).
type Address struct {
	IP      string    `json:"ip"`
	Pool    string    `json:"pool"`
	Host    string    `json:"host"`
	Kind    string    `json:"kind"`
	MAC     string    `json:"mac,omitempty"`
	Created time.Time `json:"created"`
}

// AddressReport is one address of a pool, with the endpoint of this host
// that has it, if one does (tartan addresses).
type AddressReport struct {
	Address
	Endpoint string `json:"endpoint,omitempty"`
}

// PublishedPorts is one endpoint's published ports (tartan ports;
// driver.PublishedPorts).
type PublishedPorts struct {
	Endpoint string `json:"endpoint"`
	Network  string `json:"network"`
	IP       string `json:"ip"`
	Ports    []Port `json:"ports"`
}

// Port is a published port (backend.Port).
type Port struct {
	Proto    string `json:"proto"`
	HostIP   string `json:"hostIP,omitempty"`
	HostPort int    `json:"hostPort"`
	Port     int    `json:"port"`
}

// PortsText says where an endpoint's ports are published as docker port
// says it: "80/tcp -> 0.0.0.0:32768, 53/udp -> 10.0.0.1:5353"
// (driver.PortsText).
func PortsText(ports []Port) string {
	var out []string
	for _, p := range ports {
		out = append(out, fmt.Sprintf("%d/%s -> %s:%d", p.Port, p.Proto, cmp.Or(p.HostIP, "0.0.0.0"), p.HostPort))
	}
	return strings.Join(out, ", ")
}

// Finding is one thing tartan doctor found wrong on this host, with the
// way to fix it.
type Finding struct {
	Network string `json:"network,omitempty"`
	What    string `json:"what"`
	Fix     string `json:"fix"`
}

// GCPlan is what the next collection would remove (tartan gc).
type GCPlan struct {
	// Orphans are address records of this host that no endpoint has.
	Orphans []Address `json:"orphans"`
	// Gone are hosts not renewed for ipam.GoneAfter lease lifetimes: their
	// records, blocks and endpoint addresses go.
	Gone []HostReport `json:"gone"`
	// Networks are this host's network records that Docker no longer has
	// and no endpoint uses: they go with what they made in the kernel.
	Networks []NetworkStatus `json:"networks"`
}

// GCDone is what tartan gc --yes removed.
type GCDone struct {
	Collected
	Networks int `json:"networks"` // network records Docker no longer had
}

// Collected says what a collection removed (ipam.Collected).
type Collected struct {
	// Addresses, Blocks and Hosts are those of gone hosts.
	Addresses, Blocks, Hosts int
	// Orphans are this host's own address records that no endpoint has.
	Orphans int
}

// RotatedKey is tartan rotate-key's answer.
type RotatedKey struct {
	PublicKey string `json:"publicKey"`
}

// Repaired is tartan repair's answer: how long the resync took.
type Repaired struct {
	Took string `json:"took"`
}
