package plugin

import (
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/wireguard"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin/api"
)

// The admin API answers with plugin/api's types. These convert the reports
// of the packages below into them: the types are the same structs field for
// field (the compiler checks the Go conversions; apiconv_test.go checks the
// JSON tags and the fields of the structs built here by hand).

// each maps s with f, keeping nil nil (JSON null) and empty empty ([]).
func each[S, D any](s []S, f func(S) D) []D {
	if s == nil {
		return nil
	}
	out := make([]D, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}

func apiNetwork(n driver.NetworkStatus) api.NetworkStatus { return api.NetworkStatus(n) }

func apiAddress(a kv.Address) api.Address { return api.Address(a) }

func apiCollected(c ipam.Collected) api.Collected { return api.Collected(c) }

func apiWireGuard(s wireguard.Status) api.WireGuardStatus {
	return api.WireGuardStatus{Name: s.Name, Mode: s.Mode, PublicKey: s.PublicKey, Port: s.Port, MTU: s.MTU,
		Peers: each(s.Peers, func(p wireguard.PeerStatus) api.WireGuardPeer { return api.WireGuardPeer(p) })}
}

func apiHost(h kv.HostReport) api.HostReport {
	return api.HostReport{ID: h.ID, Address: h.Address, Version: h.Version, Renewed: h.Renewed, Seen: h.Seen, Alive: h.Alive, Known: h.Known,
		Blocks: each(h.Blocks, func(b kv.BlockReport) api.BlockReport { return api.BlockReport(b) })}
}

func apiPool(p kv.PoolReport) api.PoolReport {
	return api.PoolReport{Pool: p.Pool, Range: p.Range, BlockBits: p.BlockBits, Gateway: p.Gateway, Auto: p.Auto, Releasing: p.Releasing,
		Network: (*api.PoolNetwork)(p.Network), Blocks: p.Blocks, Addresses: p.Addresses}
}

func apiPorts(p driver.PublishedPorts) api.PublishedPorts {
	return api.PublishedPorts{Endpoint: p.Endpoint, Network: p.Network, IP: p.IP,
		Ports: each(p.Ports, func(x backend.Port) api.Port { return api.Port(x) })}
}
