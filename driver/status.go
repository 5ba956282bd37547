package driver

import (
	"fmt"
	"maps"
	"slices"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/kernel"
)

// NetworkStatus is what this host has of one of its networks, for
// operators (tartan status).
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

// Status lists this host's networks, in ID order, with their endpoints and
// their current peer plans.
func (d *Driver) Status() []NetworkStatus {
	d.mu.Lock()
	nets := maps.Clone(d.st.networks)
	eps := maps.Clone(d.st.endpoints)
	d.mu.Unlock()
	out := make([]NetworkStatus, 0, len(nets))
	for _, id := range slices.Sorted(maps.Keys(nets)) {
		n := nets[id]
		s := NetworkStatus{ID: n.ID, Backend: n.Backend, Pool: n.Pool, Pool6: n.Pool6, VNI: n.VNI, MTU: n.MTU, Internal: n.Internal, Device: n.Device, Parent: n.Parent}
		for _, e := range eps {
			if e.Network == n.ID {
				s.Endpoints++
				s.Ports += len(e.Ports)
			}
		}
		if p, ok := d.routes.Plan(n.ID); ok {
			s.Planned = true
			s.Routes, s.Neighbors, s.FDB = len(p.Routes), len(p.Neighs), len(p.FDBs)
			s.Problems = slices.Clone(p.Problems)
		}
		out = append(out, s)
	}
	return out
}

// FirewallFlavour is the iptables flavour tartan's rules were last written
// with (it follows Docker's: iptables-nft or iptables-legacy).
func (d *Driver) FirewallFlavour() (flavour string) {
	d.host.Locked(func() { flavour = d.fw.Flavour() })
	return flavour
}

// Drift lists, per network ID, how the kernel differs from the network's
// peer plan (what the next repair would write or remove), changing nothing.
func (d *Driver) Drift() (map[string][]string, error) { return d.routes.Drift() }

// EndpointsByAddress maps pool and address to the endpoint of this host
// that has it (tartan addresses).
func (d *Driver) EndpointsByAddress() map[string]map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]map[string]string{}
	for _, e := range d.st.endpoints {
		n, ok := d.st.networks[e.Network]
		if !ok {
			continue
		}
		if out[n.Pool] == nil {
			out[n.Pool] = map[string]string{}
		}
		out[n.Pool][e.IP] = e.ID
		if e.IP6 != "" && n.Pool6 != "" {
			if out[n.Pool6] == nil {
				out[n.Pool6] = map[string]string{}
			}
			out[n.Pool6][e.IP6] = e.ID
		}
	}
	return out
}

// PublishedPorts is one endpoint's published ports (tartan ports).
type PublishedPorts struct {
	Endpoint string         `json:"endpoint"`
	Network  string         `json:"network"`
	IP       string         `json:"ip"`
	Ports    []backend.Port `json:"ports"`
}

// PublishedPorts lists this host's endpoints that publish ports, in
// endpoint ID order: docker port cannot show what a remote driver chose for
// -P (Docker reads a driver's port map only from its built-in drivers).
func (d *Driver) PublishedPorts() []PublishedPorts {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := []PublishedPorts{}
	for _, id := range slices.Sorted(maps.Keys(d.st.endpoints)) {
		if e := d.st.endpoints[id]; len(e.Ports) > 0 {
			out = append(out, PublishedPorts{Endpoint: e.ID, Network: e.Network, IP: e.IP, Ports: slices.Clone(e.Ports)})
		}
	}
	return out
}

// EndpointRecords copies this host's endpoint records, in ID order.
func (d *Driver) EndpointRecords() []backend.Endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]backend.Endpoint, 0, len(d.st.endpoints))
	for _, id := range slices.Sorted(maps.Keys(d.st.endpoints)) {
		out = append(out, d.st.endpoints[id])
	}
	return out
}

// EndpointDrift lists, for this host's live endpoints, how the host's side
// differs from what the resync makes it (tartan doctor): a link down, a
// gateway address or a route to the container missing.
func (d *Driver) EndpointDrift() ([]string, error) {
	d.mu.Lock()
	nets := maps.Clone(d.st.networks)
	eps := maps.Clone(d.st.endpoints)
	d.mu.Unlock()
	var out []string
	for _, id := range slices.Sorted(maps.Keys(eps)) {
		e := eps[id]
		n, ok := nets[e.Network]
		if !ok {
			continue
		}
		drift, err := d.backendOf(n).EndpointDrift(n, e)
		if err != nil {
			return nil, err
		}
		for _, x := range drift {
			out = append(out, fmt.Sprintf("endpoint %s (%s on network %s): %s", shortID(id), e.IP, shortID(n.ID), x))
		}
	}
	return out, nil
}

// LinkDrift lists the links this host's records name that the kernel lacks
// (tartan doctor): a network's own devices, and each endpoint's, as its
// backend tells whether it is still there.
func (d *Driver) LinkDrift() []string {
	d.mu.Lock()
	nets := maps.Clone(d.st.networks)
	eps := maps.Clone(d.st.endpoints)
	d.mu.Unlock()
	var out []string
	for _, id := range slices.Sorted(maps.Keys(nets)) {
		links := nets[id].Links()
		if tn := d.tunnelOf(nets[id]); tn != "" {
			links = append(links, tn) // the host's WireGuard device
		}
		for _, l := range links {
			if !kernel.LinkExists(l) {
				out = append(out, fmt.Sprintf("network %s: its link %s is missing", shortID(id), l))
			}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(eps)) {
		e := eps[id]
		n, ok := nets[e.Network]
		if ok && !d.backendOf(n).Live(n, e) {
			out = append(out, fmt.Sprintf("endpoint %s (%s on network %s): its link %s is missing", shortID(id), e.IP, shortID(n.ID), e.HostIf))
		}
	}
	return out
}
