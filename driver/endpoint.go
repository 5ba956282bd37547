package driver

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routed"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/kv"
)

// CreateEndpoint has the network's backend make the endpoint's interface
// and the host's route to it. It returns the MAC address it picked when
// the request had none.
func (d *Driver) CreateEndpoint(ctx context.Context, r EndpointRequest) (picked string, err error) {
	addr := r.Addr
	// Its addresses are held from now (Holding): a call that waits here
	// for the endpoint's lock, or on a slow store, must not find them swept
	// as orphans when it records the endpoint (issue 24, audit L5).
	d.mu.Lock()
	d.arriving[r.EndpointID] = localEndpoint{ID: r.EndpointID, Network: r.NetworkID, IP: addr.Addr().String(), IP6: addrString(r.Addr6)}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.arriving, r.EndpointID)
		d.mu.Unlock()
	}()
	release := d.lockEndpoint(r.EndpointID)
	defer release()
	d.mu.Lock()
	n, ok := d.st.networks[r.NetworkID]
	if !ok {
		d.mu.Unlock()
		return "", errdefs.Invalid("network %s is not known to tartan on this host: remove it and create it again", shortID(r.NetworkID))
	}
	if r.Addr6.IsValid() && n.Pool6 == "" {
		d.mu.Unlock()
		return "", errdefs.Invalid("endpoint %s has IPv6 address %s but network %s has no IPv6 subnet: create the network with --ipv6", shortID(r.EndpointID), r.Addr6, shortID(n.ID))
	}
	ip6 := ""
	if r.Addr6.IsValid() {
		ip6 = r.Addr6.Addr().String()
	}
	mac := r.MAC
	if e, ok := d.st.endpoints[r.EndpointID]; ok && e.IP == addr.Addr().String() && e.IP6 == ip6 {
		mac = e.MAC
	} else if mac == "" {
		mac = randomMAC()
	}
	if r.MAC == "" {
		picked = mac
	}
	host, peer := kernel.EndpointNames(r.EndpointID)
	other := d.interfaceUserLocked(host, r.EndpointID)
	d.mu.Unlock()
	if other != "" {
		return "", errdefs.InUse("endpoint %s would share interface %s with endpoint %s: retry with a new endpoint", shortID(r.EndpointID), host, shortID(other))
	}

	b := d.backendOf(n)
	e := localEndpoint{ID: r.EndpointID, Network: n.ID, IP: addr.Addr().String(), IP6: ip6, MAC: mac, HostIf: host, PeerIf: peer,
		Block: d.blockOf(ctx, n.Pool, addr.Addr()), Labels: r.Labels}
	if err := b.EnsureEndpoint(n, e); err != nil {
		_ = b.DeleteEndpoint(n, e)
		return "", err
	}
	if err := putLocal(ctx, d.local, localEndpoints+e.ID, e); err != nil {
		_ = b.DeleteEndpoint(n, e)
		return "", fmt.Errorf("save endpoint %s: %w", shortID(e.ID), err)
	}
	d.mu.Lock()
	d.st.endpoints[e.ID] = e
	d.mu.Unlock()
	lctx, cancel := context.WithTimeout(ctx, labelsTimeout)
	d.publishLabels(lctx, e)
	cancel()
	d.pokeFastPath()
	d.log.WithFields(logrus.Fields{"network": shortID(n.ID), "endpoint": shortID(e.ID), "ip": e.IP, "ip6": e.IP6, "if": host, "labels": e.Labels}).Info("endpoint created")
	return picked, nil
}

// lockEndpoint waits until no other call works on the endpoint and marks it
// busy until the returned function is called. Reconcile leaves busy
// endpoints' links alone. Called without d.mu held.
func (d *Driver) lockEndpoint(id string) (unlock func()) {
	d.mu.Lock()
	for {
		ch, busy := d.inflight[id]
		if !busy {
			break
		}
		d.mu.Unlock()
		<-ch
		d.mu.Lock()
	}
	unlock = d.markBusyLocked(id)
	d.mu.Unlock()
	return unlock
}

// tryLockEndpoint is lockEndpoint for callers that would rather skip a busy
// endpoint (reconcile). Called without d.mu held.
func (d *Driver) tryLockEndpoint(id string) (unlock func(), ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, busy := d.inflight[id]; busy {
		return nil, false
	}
	return d.markBusyLocked(id), true
}

// markBusyLocked marks the endpoint busy. Called with d.mu held; the
// returned function takes d.mu itself.
func (d *Driver) markBusyLocked(id string) func() {
	ch := make(chan struct{})
	d.inflight[id] = ch
	return func() {
		d.mu.Lock()
		delete(d.inflight, id)
		close(ch)
		d.mu.Unlock()
	}
}

// interfaceUserLocked returns another endpoint (known or in flight) whose
// veth has the name host. Called with d.mu held.
func (d *Driver) interfaceUserLocked(host, id string) string {
	for _, other := range d.st.endpoints {
		if other.HostIf == host && other.ID != id {
			return other.ID
		}
	}
	for other := range d.inflight {
		if h, _ := kernel.EndpointNames(other); h == host && other != id {
			return other
		}
	}
	return ""
}

// blockOf names the block an address belongs to, for EndpointOperInfo.
func (d *Driver) blockOf(ctx context.Context, pool string, ip netip.Addr) string {
	var p kv.Pool
	if _, err := kv.GetJSON(ctx, d.cluster, kv.PoolPath(pool), &p); err != nil || p.BlockBits == 0 {
		return ""
	}
	b, _ := ip.Prefix(p.BlockBits)
	return b.String()
}

func randomMAC() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	b[0] = (b[0] | 0x02) & 0xfe // locally administered, unicast
	return net.HardwareAddr(b).String()
}

// DeleteEndpoint removes the endpoint's interface and the host's route.
func (d *Driver) DeleteEndpoint(ctx context.Context, id string) error {
	return d.removeEndpoint(ctx, id)
}

// removeEndpoint deletes an endpoint entirely: its kernel objects, its
// record and its published ports. An endpoint this host has no record of
// loses the links its ID names.
func (d *Driver) removeEndpoint(ctx context.Context, id string) error {
	unlock := d.lockEndpoint(id)
	defer unlock()
	d.mu.Lock()
	e, ok := d.st.endpoints[id]
	n, netOK := d.st.networks[e.Network]
	d.mu.Unlock()
	if !ok {
		host, peer := kernel.EndpointNames(id)
		return routed.DeleteVeth(localEndpoint{HostIf: host, PeerIf: peer})
	}
	if netOK {
		if err := d.backendOf(n).DeleteEndpoint(n, e); err != nil {
			return err
		}
	} else if err := routed.DeleteVeth(e); err != nil {
		return err
	}
	if err := d.local.Delete(ctx, localEndpoints+e.ID, 0); err != nil {
		return fmt.Errorf("forget endpoint %s: %w", shortID(e.ID), err)
	}
	d.mu.Lock()
	delete(d.st.endpoints, e.ID)
	d.mu.Unlock()
	lctx, cancel := context.WithTimeout(ctx, labelsTimeout)
	d.withdrawLabels(lctx, e)
	cancel()
	d.log.WithFields(logrus.Fields{"network": shortID(e.Network), "endpoint": shortID(e.ID), "ip": e.IP}).Info("endpoint deleted")
	// Its flows go with it: the next endpoint given its address gets none
	// of them.
	for _, a := range []netip.Addr{e.Addr(), e.Addr6()} {
		if err := kernel.FlushConntrack(a); err != nil {
			d.log.WithField("endpoint", shortID(e.ID)).Warn(err)
		}
	}
	if len(e.Ports) > 0 {
		return d.writeFirewall()
	}
	d.pokeFastPath()
	return nil
}

// endpoint returns a known endpoint and its network.
func (d *Driver) endpoint(id string) (localEndpoint, localNetwork, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.st.endpoints[id]
	if !ok {
		return e, localNetwork{}, errdefs.Invalid("endpoint %s is not known to tartan on this host", shortID(id))
	}
	n, ok := d.st.networks[e.Network]
	if !ok {
		return e, n, errdefs.Invalid("endpoint %s belongs to network %s, which tartan no longer has on this host", shortID(id), shortID(e.Network))
	}
	return e, n, nil
}

// EndpointInfo shows where an endpoint lives (docker network inspect).
func (d *Driver) EndpointInfo(_ context.Context, id string) (map[string]string, error) {
	e, n, err := d.endpoint(id)
	if err != nil {
		return nil, err
	}
	v := map[string]string{"tartan.backend": n.Backend, "tartan.host": d.cfg.Host, "tartan.block": e.Block}
	for k, x := range d.backendOf(n).Info(n, e) {
		v[k] = x
	}
	if len(e.Ports) > 0 {
		v["tartan.ports"] = PortsText(e.Ports)
	}
	if p, ok := d.routes.Plan(n.ID); ok && len(p.Problems) > 0 {
		v["tartan.problems"] = strings.Join(p.Problems, "; ")
	}
	return v, nil
}

// Join says which interface Docker moves into the container and how the
// container routes (the backend's Join).
func (d *Driver) Join(_ context.Context, endpointID string) (backend.Join, error) {
	e, n, err := d.endpoint(endpointID)
	if err != nil {
		return backend.Join{}, err
	}
	return d.backendOf(n).Join(n, e), nil
}

// Leave withdraws the endpoint's published ports; the interface goes with
// DeleteEndpoint. Docker 29 sends RevokeExternalConnectivity only when an
// endpoint stops being its container's gateway, and after a live-restore
// restart it may send Leave with no Revoke before it: the container leaving
// is the last word on its ports. Withdrawing what is withdrawn already is a
// no-op, so a Revoke before the Leave (Docker up to 28) costs nothing.
func (d *Driver) Leave(ctx context.Context, endpointID string) error {
	return d.WithdrawPorts(ctx, endpointID)
}

// addrString is a prefix's address as text, "" for none.
func addrString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.Addr().String()
}
