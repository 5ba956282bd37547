package driver

import (
	"context"
	"errors"
	"net/netip"

	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/kv"
)

// Local state lives in the host's embedded store: Docker never replays
// CreateNetwork, so this is how a restarted plugin knows its networks.
const (
	localNetworks  = "local/networks/"
	localEndpoints = "local/endpoints/"
)

// netRec is this host's record of a Docker network.
type netRec struct {
	ID       string `json:"id"`
	Pool     string `json:"pool"`
	Backend  string `json:"backend"`
	VNI      int    `json:"vni,omitempty"`
	MTU      int    `json:"mtu"`
	Internal bool   `json:"internal,omitempty"`
	Direct   bool   `json:"directRouting,omitempty"`
	// Gateway is the link-local address that containers of this network
	// ARP for; one per network on this host, so that a container on two
	// networks gets two distinct connected routes.
	// On macvlan networks it is the physical router (--gateway).
	Gateway string `json:"gateway"`
	Device  string `json:"device,omitempty"`
	Space   string `json:"space,omitempty"` // the pool's address space
	// macvlan: the parent interface (ParentCreated: a VLAN link tartan
	// made, set on every local network that shares it), the mode, and the
	// host-access shim with its address.
	Parent        string `json:"parent,omitempty"`
	ParentCreated bool   `json:"parentCreated,omitempty"`
	Mode          string `json:"mode,omitempty"`
	Shim          string `json:"shim,omitempty"`
	ShimMAC       string `json:"shimMAC,omitempty"`
	ShimIP        string `json:"shimIP,omitempty"`
	// ReleasePending: Docker released the pool while this network used
	// it; the pool goes when the network is deleted.
	ReleasePending bool `json:"releasePending,omitempty"`
}

func (n netRec) bridged() bool { return n.Backend == BackendMacvlan }

// routing is the network as its routing sees it (routed networks only).
func (n netRec) routing() routing.Network {
	return routing.Network{ID: n.ID, Pool: n.pool(), HostGW: n.Backend == BackendHostGW, Device: n.Device, VNI: n.VNI, Direct: n.Direct}
}

func (n netRec) pool() netip.Prefix {
	p, _ := netip.ParsePrefix(n.Pool)
	return p
}

func (n netRec) gateway() netip.Addr {
	a, _ := netip.ParseAddr(n.Gateway)
	return a
}

// epRec is this host's record of an endpoint.
type epRec struct {
	ID      string `json:"id"`
	Network string `json:"network"`
	IP      string `json:"ip"`
	MAC     string `json:"mac"`
	Block   string `json:"block,omitempty"`
	HostIf  string `json:"hostIf"`
	PeerIf  string `json:"peerIf"`
	// Ports are published with docker run -p.
	Ports []published `json:"ports,omitempty"`
}

func (e epRec) ip() netip.Addr {
	a, _ := netip.ParseAddr(e.IP)
	return a
}

type localState struct {
	networks  map[string]netRec
	endpoints map[string]epRec
}

// loadLocal reads this host's records. One that cannot be read (a damaged
// file) is handed to skipped and left out, so that the plugin still starts
// with everything else.
func loadLocal(ctx context.Context, s kv.Store, skipped func(*kv.DecodeError)) (localState, error) {
	st := localState{networks: map[string]netRec{}, endpoints: map[string]epRec{}}
	if _, err := kv.ListJSON(ctx, s, localNetworks, func(_ string, _ uint64, n netRec) error {
		st.networks[n.ID] = n
		return nil
	}, skipped); err != nil {
		return st, err
	}
	_, err := kv.ListJSON(ctx, s, localEndpoints, func(_ string, _ uint64, e epRec) error {
		st.endpoints[e.ID] = e
		return nil
	}, skipped)
	return st, err
}

// putLocal writes a local record whatever its version (this host is its only
// writer, under the driver's lock).
func putLocal(ctx context.Context, s kv.Store, key string, v any) error {
	for {
		p, err := s.Get(ctx, key)
		if err != nil && !errors.Is(err, kv.ErrNotFound) {
			return err
		}
		_, err = kv.PutJSON(ctx, s, key, v, p.Version)
		if !errors.Is(err, kv.ErrConflict) {
			return err
		}
	}
}
