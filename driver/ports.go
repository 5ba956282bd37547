package driver

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/errdefs"
)

// published is one port an endpoint publishes, as kept in its record.
type published = backend.Port

// PublishPorts publishes the endpoint's ports (docker run -p: libnetwork's
// ProgramExternalConnectivity).
// Requests with no fixed host port get a free one (choosePorts).
func (d *Driver) PublishPorts(ctx context.Context, endpointID string, ports []PortRequest) error {
	return d.setPorts(ctx, endpointID, ports)
}

// WithdrawPorts withdraws the endpoint's published ports
// (RevokeExternalConnectivity).
func (d *Driver) WithdrawPorts(ctx context.Context, endpointID string) error {
	return d.setPorts(ctx, endpointID, nil)
}

// setPorts makes the ports asked for the endpoint's published ports.
// d.portsMu orders changes of ports (a port checked free stays free until
// it is taken); d.mu is held only to read and change the records.
func (d *Driver) setPorts(ctx context.Context, endpointID string, asked []PortRequest) error {
	d.portsMu.Lock()
	defer d.portsMu.Unlock()
	d.mu.Lock()
	e, ok := d.st.endpoints[endpointID]
	n := d.st.networks[e.Network]
	endpoints, networks := maps.Clone(d.st.endpoints), maps.Clone(d.st.networks)
	busy := map[string]bool{}
	for id := range d.inflight {
		busy[id] = true // a call is making or removing its links
	}
	d.mu.Unlock()
	if !ok {
		if len(asked) == 0 {
			return nil
		}
		return errdefs.Invalid("endpoint %s is not known to tartan on this host", shortID(endpointID))
	}
	if n.Internal {
		asked = nil // Docker's internal networks publish nothing either
	}
	if len(asked) > 0 {
		if err := d.backendOf(n).PublishRefused(n, e); err != nil {
			return err
		}
	}
	alive := func(o localEndpoint) bool {
		on := networks[o.Network]
		return busy[o.ID] || d.backendOf(on).Live(on, o)
	}
	prev := e.Ports
	ports, err := d.choosePorts(e.ID, asked, prev, endpoints, networks, alive)
	if err != nil {
		return err
	}
	if slices.Equal(prev, ports) {
		return nil // Docker revokes on every stop: nothing to rewrite
	}
	dead := deadHolders(e.ID, ports, endpoints, networks, alive)
	if err := checkPorts(e.ID, ports, prev, endpoints, dead); err != nil {
		return err
	}
	d.mu.Lock()
	held := withdrawPorts(d.st.endpoints, dead)
	if cur, ok := d.st.endpoints[e.ID]; ok {
		cur.Ports = ports
		d.st.endpoints[e.ID] = cur
	}
	d.mu.Unlock()
	if err := d.writeFirewall(); err != nil {
		d.restorePorts(e.ID, prev, held)
		return err
	}
	if err := d.savePorts(ctx, e.ID, dead, held); err != nil {
		return err
	}
	if len(ports) > 0 {
		d.log.WithFields(logrus.Fields{"endpoint": shortID(e.ID), "ports": ports}).Info("ports published")
	}
	d.flushWithdrawn(e, withdrawn(prev, ports), held)
	return nil
}

// restorePorts puts back the ports an endpoint and the dead holders had
// before a change whose firewall could not be written.
func (d *Driver) restorePorts(id string, prev []published, held map[string]localEndpoint) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for hid, h := range held {
		if cur, ok := d.st.endpoints[hid]; ok {
			cur.Ports = h.Ports
			d.st.endpoints[hid] = cur
		}
	}
	if cur, ok := d.st.endpoints[id]; ok {
		cur.Ports = prev
		d.st.endpoints[id] = cur
	}
}

// savePorts keeps the records of the endpoint and of the dead holders
// whose ports it took in the local store.
func (d *Driver) savePorts(ctx context.Context, id string, dead []string, held map[string]localEndpoint) error {
	for _, eid := range append(dead, id) {
		d.mu.Lock()
		cur, ok := d.st.endpoints[eid]
		d.mu.Unlock()
		if !ok {
			continue // deleted meanwhile
		}
		if eid != id {
			d.log.WithFields(logrus.Fields{"endpoint": shortID(eid), "ports": held[eid].Ports}).Warn("withdrew the published ports of an endpoint whose veth is gone")
		}
		if err := putLocal(ctx, d.local, localEndpoints+eid, cur); err != nil {
			return fmt.Errorf("save endpoint %s: %w", shortID(eid), err)
		}
	}
	return nil
}

// flushWithdrawn flushes the flows of ports withdrawn from e (gone) and
// from the dead holders: a UDP flow to a port published again must reach
// its new container.
func (d *Driver) flushWithdrawn(e localEndpoint, gone []published, held map[string]localEndpoint) {
	flush := func(id string, ip netip.Addr, ps []published) {
		for _, p := range ps {
			if err := kernel.FlushPortConntrack(ip, p.Proto, p.HostPort); err != nil {
				d.log.WithField("endpoint", shortID(id)).Warn(err)
			}
		}
	}
	flush(e.ID, e.Addr(), gone)
	for id, h := range held {
		flush(id, h.Addr(), h.Ports)
	}
}

// withdrawn is what of was is not in now.
func withdrawn(was, now []backend.Port) []backend.Port {
	var out []backend.Port
	for _, p := range was {
		if !slices.Contains(now, p) {
			out = append(out, p)
		}
	}
	return out
}

// choosePorts turns the requests into ports. A fixed host port is taken as
// asked (checkPorts refuses it if it is not free). A request for any port
// of a range (-P, -p 80, -p 8000-8010:80) keeps the port the endpoint has
// for it already, since Docker replays ProgramExternalConnectivity after a
// restart; else it gets the first free port from a random point of its
// range: not one this request names, not one a live endpoint of this host
// publishes, not one a host socket holds. The host's sockets are read only
// when a port has to be found.
func (d *Driver) choosePorts(id string, asked []PortRequest, prev []published, endpoints map[string]localEndpoint, networks map[string]localNetwork, alive func(localEndpoint) bool) ([]published, error) {
	var socks []kernel.Socket
	var sockErr error
	read := false
	free := func(p published) bool {
		for oid, o := range endpoints {
			if _, known := networks[o.Network]; oid == id || !known || !alive(o) {
				continue
			}
			if slices.ContainsFunc(o.Ports, func(q published) bool { return samePort(p, q) }) {
				return false
			}
		}
		if !read {
			socks, sockErr = kernel.ListeningSockets()
			read = true
		}
		return sockErr == nil && listenerConflict([]published{p}, socks) == nil
	}
	out, err := pickPorts(asked, prev, free, kernel.EphemeralPorts, rand.IntN)
	if sockErr != nil {
		return nil, fmt.Errorf("check the host's ports before publishing: %w", sockErr)
	}
	return out, err
}

// pickPorts is choosePorts' rule: free says whether a host port is free of
// other endpoints and host sockets, ephemeral reads the host's ephemeral
// range, and start picks where a search begins in a range of n ports.
func pickPorts(asked []PortRequest, prev []published, free func(published) bool, ephemeral func() (int, int, error), start func(n int) int) ([]published, error) {
	out := make([]published, 0, len(asked))
	var named []published // the fixed ports: a chosen one must not take them
	for _, r := range asked {
		if r.fixed() {
			named = append(named, published{Proto: r.Proto, HostIP: r.HostIP, HostPort: r.HostPort, Port: r.Port})
		}
	}
	taken := func(p published) bool {
		same := func(q published) bool { return samePort(p, q) }
		return slices.ContainsFunc(named, same) || slices.ContainsFunc(out, same)
	}
	for _, r := range asked {
		p := published{Proto: r.Proto, HostIP: r.HostIP, HostPort: r.HostPort, Port: r.Port}
		if r.fixed() {
			out = append(out, p)
			continue
		}
		lo, hi := r.HostPort, r.HostPortEnd
		if lo == 0 {
			var err error
			if lo, hi, err = ephemeral(); err != nil {
				return nil, fmt.Errorf("publish %d/%s on any free host port: %w", r.Port, r.Proto, err)
			}
		}
		if i := slices.IndexFunc(prev, func(q published) bool {
			return q.Proto == p.Proto && q.HostIP == p.HostIP && q.Port == p.Port && q.HostPort >= lo && q.HostPort <= hi && !taken(q)
		}); i >= 0 {
			out = append(out, prev[i])
			continue
		}
		n, first := hi-lo+1, 0
		if n > 1 {
			first = start(n)
		}
		found := false
		for i := range n {
			p.HostPort = lo + (first+i)%n
			if !taken(p) && free(p) {
				found = true
				break
			}
		}
		if !found {
			return nil, errdefs.InUse("no free host port in %d-%d for %d/%s: every one is published or in use on this host; widen the range or free a port", lo, hi, r.Port, r.Proto)
		}
		out = append(out, p)
	}
	return out, nil
}

// portRules lists the endpoints' published ports in a fixed order (endpoint
// ID, then port): the DNAT rules are rendered in this order, and a map's
// order would let the owner of a contested port change at every rewrite.
func portRules(endpoints map[string]localEndpoint) []firewall.Port {
	var out []firewall.Port
	for _, id := range slices.Sorted(maps.Keys(endpoints)) {
		e := endpoints[id]
		ports := slices.Clone(e.Ports)
		slices.SortFunc(ports, comparePublished)
		for _, p := range ports {
			fp := firewall.Port{Proto: p.Proto, HostPort: p.HostPort, IP: e.Addr(), Port: p.Port}
			if p.HostIP != "" {
				fp.HostIP, _ = netip.ParseAddr(p.HostIP)
			}
			out = append(out, fp)
		}
	}
	return out
}

func comparePublished(a, b published) int {
	return cmp.Or(cmp.Compare(a.HostPort, b.HostPort), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.HostIP, b.HostIP), cmp.Compare(a.Port, b.Port))
}

// checkPorts refuses host ports that another endpoint of this host
// publishes, or that a host process holds (sshd on 22, Docker's proxy for a
// bridge container's -p, ...): tartan's DNAT would silently take their
// traffic. Ports the endpoint published already are its own.
func checkPorts(id string, ports, prev []published, endpoints map[string]localEndpoint, dead []string) error {
	live := maps.Clone(endpoints)
	for _, d := range dead {
		delete(live, d)
	}
	if err := publishedConflict(id, ports, live); err != nil {
		return err
	}
	var fresh []published
	for _, p := range ports {
		if !slices.Contains(prev, p) {
			fresh = append(fresh, p)
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	socks, err := kernel.ListeningSockets()
	if err != nil {
		return fmt.Errorf("check the host's ports before publishing: %w", err)
	}
	return listenerConflict(fresh, socks)
}

// deadHolders lists the other endpoints that publish one of ports' host
// ports although their container is gone: a routed endpoint whose host-side
// veth no longer exists, or a record whose network this host no longer has
// (Docker never removed them, see staleEndpoints). Their DNAT rules lead
// nowhere, so they must not keep a new container from the port. alive says
// whether the endpoint may still have its container (backend.Live).
func deadHolders(id string, ports []published, endpoints map[string]localEndpoint, networks map[string]localNetwork, alive func(localEndpoint) bool) []string {
	var out []string
	for _, oid := range slices.Sorted(maps.Keys(endpoints)) {
		o := endpoints[oid]
		if oid == id || !slices.ContainsFunc(o.Ports, func(q published) bool {
			return slices.ContainsFunc(ports, func(p published) bool { return samePort(p, q) })
		}) {
			continue
		}
		if _, ok := networks[o.Network]; !ok || !alive(o) {
			out = append(out, oid)
		}
	}
	return out
}

// withdrawPorts clears the published ports of the endpoints ids and returns
// their records as they were, to put back if the change fails.
func withdrawPorts(endpoints map[string]localEndpoint, ids []string) map[string]localEndpoint {
	held := map[string]localEndpoint{}
	for _, id := range ids {
		e, ok := endpoints[id]
		if !ok {
			continue
		}
		held[id] = e
		e.Ports = nil
		endpoints[id] = e
	}
	return held
}

// publishedConflict finds a host port of ports that overlaps one another
// endpoint publishes (same protocol and port; an unspecified host address
// overlaps every address), or that ports itself binds to two targets.
func publishedConflict(id string, ports []published, endpoints map[string]localEndpoint) error {
	for i, p := range ports {
		for _, q := range ports[:i] {
			if samePort(p, q) && p != q {
				return errdefs.Invalid("port %s is published twice by this container (to %d and %d): give it one -p", hostPort(p), q.Port, p.Port)
			}
		}
		for _, other := range slices.Sorted(maps.Keys(endpoints)) {
			if other == id {
				continue
			}
			for _, q := range endpoints[other].Ports {
				if samePort(p, q) {
					return errdefs.InUse("port %s is already published by endpoint %s on this host: pick another host port", hostPort(q), shortID(other))
				}
			}
		}
	}
	return nil
}

// samePort says whether two published ports claim the same traffic.
func samePort(a, b published) bool {
	return a.Proto == b.Proto && a.HostPort == b.HostPort && (a.HostIP == "" || b.HostIP == "" || a.HostIP == b.HostIP)
}

// listenerConflict finds a host port of ports that a socket of the host
// holds. Wildcard sockets (0.0.0.0, ::) hold the port on every address; an
// IPv6 socket on a specific address is left alone (tartan publishes IPv4).
func listenerConflict(ports []published, socks []kernel.Socket) error {
	for _, p := range ports {
		for _, s := range socks {
			if s.Proto != p.Proto || s.Port != p.HostPort {
				continue
			}
			a := s.Addr.Unmap()
			if !a.IsUnspecified() && (!a.Is4() || (p.HostIP != "" && p.HostIP != a.String())) {
				continue
			}
			return errdefs.InUse("port %s is in use on this host (a process listens on %s/%s): pick another host port", hostPort(p), s, s.Proto)
		}
	}
	return nil
}

// hostPort names a published port as the user wrote it: [ip:]port/proto.
func hostPort(p published) string {
	if p.HostIP == "" {
		return fmt.Sprintf("%d/%s", p.HostPort, p.Proto)
	}
	return fmt.Sprintf("%s:%d/%s", p.HostIP, p.HostPort, p.Proto)
}

// PortsText says where an endpoint's ports are published as docker port
// says it: "80/tcp -> 0.0.0.0:32768, 53/udp -> 10.0.0.1:5353".
func PortsText(ports []backend.Port) string {
	var out []string
	for _, p := range ports {
		out = append(out, fmt.Sprintf("%d/%s -> %s:%d", p.Port, p.Proto, cmp.Or(p.HostIP, "0.0.0.0"), p.HostPort))
	}
	return strings.Join(out, ", ")
}
