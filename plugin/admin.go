package plugin

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/bgp/speaker"
	"github.com/tartan-net/tartan/driver/wireguard"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin/api"
)

// Admin is what the operator endpoints report from.
type Admin struct {
	Host     string
	Store    string
	Scope    string
	Cluster  kv.Store
	LeaseTTL time.Duration
	Now      func() time.Time
	// Witness is the process's kv.Witness, shared with the IPAM and
	// routing: hosts are alive by what it saw (nil: one of the admin's own).
	Witness *kv.Witness
	// Docker is the engine's view of this host's tartan networks, which
	// doctor and gc compare with the records; nil: not compared.
	Docker DockerView
	// RotateKey gives the host a new WireGuard key pair and returns its
	// public key (nil: not offered).
	RotateKey func(context.Context) (string, error)
	// Repair runs the resync now, in turn with the periodic one (nil: not
	// offered).
	Repair func(context.Context) error
	// BGP is the host's BGP speaker (nil: BGP is off).
	BGP *speaker.Speaker
}

// ServeAdmin adds the operator endpoints (plugin/api), served on the
// plugin's socket beside libnetwork's. They only read, but for POST
// api.GCPath, api.RotateKeyPath and api.RepairPath: what they show is what
// the driver and the store hold at the time of the call.
func (h *Handler) ServeAdmin(a Admin) {
	if a.Witness == nil {
		a.Witness = kv.NewWitness()
	}
	h.admin("GET "+api.StatusPath, false, func(context.Context, *http.Request) (any, error) {
		return h.status(a), nil
	})
	if a.RotateKey != nil {
		h.admin("POST "+api.RotateKeyPath, false, func(ctx context.Context, _ *http.Request) (any, error) {
			pub, err := a.RotateKey(ctx)
			return api.RotatedKey{PublicKey: pub}, err
		})
	}
	if a.Repair != nil {
		h.admin("POST "+api.RepairPath, false, func(ctx context.Context, _ *http.Request) (any, error) {
			start := time.Now()
			err := a.Repair(ctx)
			return api.Repaired{Took: time.Since(start).Round(time.Millisecond).String()}, err
		})
	}
	h.admin("GET "+api.DoctorPath, false, func(ctx context.Context, _ *http.Request) (any, error) {
		return h.doctor(ctx, a)
	})
	h.admin("GET "+api.HostsPath, true, func(ctx context.Context, _ *http.Request) (any, error) {
		hosts, err := kv.Census(ctx, a.Cluster, a.Witness, a.Now(), a.LeaseTTL, nil)
		return each(hosts, apiHost), err
	})
	h.admin("GET "+api.NetworksPath, true, func(ctx context.Context, _ *http.Request) (any, error) {
		pools, err := kv.Pools(ctx, a.Cluster, nil)
		return each(pools, apiPool), err
	})
	h.admin("GET "+api.AddressesPath, true, func(ctx context.Context, r *http.Request) (any, error) {
		return h.addresses(ctx, a, r.URL.Query().Get("pool"))
	})
	h.admin("GET "+api.PortsPath, false, func(context.Context, *http.Request) (any, error) {
		if h.drv == nil {
			return []api.PublishedPorts{}, nil
		}
		return each(h.drv.PublishedPorts(), apiPorts), nil
	})
	h.admin("GET "+api.GCPath, true, func(ctx context.Context, _ *http.Request) (any, error) {
		return h.gcPlan(ctx, a)
	})
	h.admin("POST "+api.GCPath, true, func(ctx context.Context, _ *http.Request) (any, error) {
		return h.collect(ctx, a)
	})
	h.servePolicies(a)
	h.serveBGP(a.BGP)
}

// status is this host as the plugin sees it (tartan status).
func (h *Handler) status(a Admin) api.HostStatus {
	s := api.HostStatus{Host: a.Host, Version: api.Version, Store: a.Store, Scope: a.Scope, Networks: []api.NetworkStatus{}}
	if err := h.refusal(); err != nil {
		s.Settings = err.Error()
	}
	if h.drv != nil {
		s.Networks, s.Firewall = each(h.drv.Status(), apiNetwork), h.drv.FirewallFlavour()
		wg, err := h.drv.WireGuard().Status()
		ws := apiWireGuard(wg)
		s.WireGuard = &ws
		if err != nil {
			s.WireGuardError = err.Error()
		}
		on, attached, packets, err := h.drv.FastPath()
		s.FastPath = &api.FastPathStatus{On: on, Attached: attached, Packets: packets}
		if err != nil {
			s.FastPath.Error = err.Error()
		}
	}
	return s
}

// collect removes the network records Docker no longer has, then what gone
// hosts held and this host's orphans (tartan gc --yes).
func (h *Handler) collect(ctx context.Context, a Admin) (api.GCDone, error) {
	var done api.GCDone
	gone, err := h.dockerGone(ctx, a)
	if err != nil {
		return done, err
	}
	for _, n := range gone {
		// Docker asked again right before each removal: a network it
		// made since the first listing stays (issue 24, audit L6).
		if still, err := h.dockerGone(ctx, a); err != nil {
			return done, err
		} else if !slices.ContainsFunc(still, func(s driver.NetworkStatus) bool { return s.ID == n.ID }) {
			continue
		}
		if err := h.drv.DeleteNetwork(ctx, n.ID); err != nil {
			return done, fmt.Errorf("remove network record %s: %w", n.ID, err)
		}
		h.log.WithFields(logrus.Fields{"network": n.ID, "pool": n.Pool}).Info("removed a network record Docker no longer has (tartan gc --yes)")
		done.Networks++
	}
	collected, err := h.ipam.CollectGone(ctx, h.drv.Holding)
	done.Collected = apiCollected(collected)
	if err == nil {
		h.log.WithFields(logrus.Fields{"addresses": done.Addresses, "blocks": done.Blocks, "hosts": done.Hosts, "orphans": done.Orphans}).Info("collected on the operator's request (tartan gc --yes)")
	}
	return done, err
}

// admin serves one operator endpoint: fn's answer as JSON, its error
// classified as the libnetwork calls' are. needStore: the endpoint reads
// the store (a plugin whose settings are broken has none).
func (h *Handler) admin(pattern string, needStore bool, fn func(context.Context, *http.Request) (any, error)) {
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if needStore && h.ipam == nil {
			reply(w, http.StatusServiceUnavailable, errorBody{Err: "tartan: no store: " + errorText(h.broken)})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
		defer cancel()
		v, err := fn(ctx, r)
		if err != nil {
			reply(w, Status(err), errorBody{Err: "tartan: " + err.Error()})
			return
		}
		reply(w, http.StatusOK, v)
	})
}

// StaleHandshake is how old a WireGuard peer's last handshake may be before
// doctor reports it: with a keepalive every 25 s a live peer handshakes
// again every two minutes (WireGuard's rekey time).
const StaleHandshake = 5 * time.Minute

// wireguardFindings are the WireGuard peers that do not answer: sent to
// and never heard from, or silent for StaleHandshake.
func wireguardFindings(wg wireguard.Status, now time.Time) []api.Finding {
	var out []api.Finding
	fix := fmt.Sprintf("check that UDP %d reaches that host from this one and back (a firewall on the path, a wrong ADVERTISE address), and that its plugin runs", wg.Port)
	for _, p := range wg.Peers {
		switch {
		case p.LastHandshake.IsZero() && p.TxBytes > 0 && p.RxBytes == 0:
			out = append(out, api.Finding{What: fmt.Sprintf("WireGuard peer %s at %s never answered (%d bytes sent, none received)", p.PublicKey, p.Endpoint, p.TxBytes), Fix: fix})
		case !p.LastHandshake.IsZero() && now.Sub(p.LastHandshake) > StaleHandshake:
			out = append(out, api.Finding{What: fmt.Sprintf("WireGuard peer %s at %s has not handshaken for %s", p.PublicKey, p.Endpoint, now.Sub(p.LastHandshake).Round(time.Second)), Fix: fix})
		}
	}
	return out
}

// addresses is a pool's addresses, with the endpoint of this host that has
// each (tartan addresses).
func (h *Handler) addresses(ctx context.Context, a Admin, given string) ([]api.AddressReport, error) {
	pool, err := netip.ParsePrefix(given)
	if err != nil || pool != pool.Masked() {
		return nil, errdefs.Invalid("pool %q is not a subnet: give it as a CIDR, such as 10.244.0.0/16 (tartan networks lists them)", given)
	}
	if _, err := kv.GetJSON(ctx, a.Cluster, kv.PoolPath(pool.String()), &kv.Pool{}); err != nil {
		if errors.Is(err, kv.ErrNotFound) {
			return nil, errdefs.Invalid("no pool %s in the store (tartan networks lists them)", pool)
		}
		return nil, err
	}
	addrs, err := kv.Addresses(ctx, a.Cluster, pool.String(), nil)
	if err != nil {
		return nil, err
	}
	here := h.drv.EndpointsByAddress()[pool.String()]
	out := make([]api.AddressReport, 0, len(addrs))
	for _, ad := range addrs {
		rep := api.AddressReport{Address: apiAddress(ad)}
		if ad.Host == a.Host {
			rep.Endpoint = here[ad.IP]
		}
		out = append(out, rep)
	}
	return out, nil
}

// gcPlan is what the next collection would remove (tartan gc).
func (h *Handler) gcPlan(ctx context.Context, a Admin) (api.GCPlan, error) {
	plan := api.GCPlan{Orphans: []api.Address{}, Gone: []api.HostReport{}}
	gone, err := h.dockerGone(ctx, a)
	plan.Networks = each(gone, apiNetwork)
	if err != nil {
		return plan, err
	}
	orphans, err := h.ipam.Orphans(ctx, h.drv.Holding)
	plan.Orphans = each(orphans, apiAddress)
	if err != nil {
		return plan, err
	}
	hosts, err := kv.Census(ctx, a.Cluster, a.Witness, a.Now(), ipam.GoneAfter*a.LeaseTTL, nil)
	for _, hr := range hosts {
		if hr.ID != a.Host && !hr.Alive {
			plan.Gone = append(plan.Gone, apiHost(hr))
		}
	}
	return plan, err
}

// dockerGone is the network records Docker no longer has and no endpoint
// uses; none when Docker's view is not compared.
func (h *Handler) dockerGone(ctx context.Context, a Admin) ([]driver.NetworkStatus, error) {
	if a.Docker == nil || h.drv == nil {
		return []driver.NetworkStatus{}, nil
	}
	view, err := a.Docker.TartanNetworks(ctx)
	if err != nil {
		return nil, fmt.Errorf("read Docker's networks: %w", err)
	}
	return goneFromDocker(view, h.drv.Status()), nil
}

// doctor compares what the driver's plans say with the kernel, the store
// with this host's endpoints, and Docker's networks and endpoints with the
// driver's records, changing nothing.
func (h *Handler) doctor(ctx context.Context, a Admin) ([]api.Finding, error) {
	out := []api.Finding{}
	if h.broken != nil {
		out = append(out, api.Finding{What: "settings: " + h.broken.Error(), Fix: "docker plugin disable, docker plugin set the setting right, docker plugin enable"})
	} else if h.refused != nil {
		if err := h.refused(); err != nil {
			what, fix, _ := strings.Cut(err.Error(), ": on this machine, ")
			out = append(out, api.Finding{What: "identity: " + what, Fix: "on this machine, " + fix})
		}
	}
	if h.drv == nil || h.ipam == nil || a.Cluster == nil {
		return out, nil
	}
	kernel, err := h.kernelFindings(a.Now)
	if err != nil {
		return nil, err
	}
	out = append(out, kernel...)
	out = append(out, bgpFindings(ctx, a.BGP, h.drv.AnnounceDrift())...)
	if a.Docker != nil {
		if view, err := a.Docker.TartanNetworks(ctx); err != nil {
			out = append(out, api.Finding{What: "Docker's view of this host's networks could not be read: " + err.Error(),
				Fix: "point the plugin's docker mount at the engine's socket (docker plugin set tartan:latest docker.source=/var/run/docker.sock)"})
		} else {
			out = append(out, dockerDrift(view, h.drv.Status(), h.drv.EndpointRecords())...)
		}
	}
	orphans, err := h.ipam.Orphans(ctx, h.drv.Holding)
	if err != nil {
		return nil, err
	}
	for _, o := range orphans {
		out = append(out, api.Finding{What: fmt.Sprintf("address %s of pool %s is this host's in the store, but no endpoint here has it (since %s)", o.IP, o.Pool, o.Created.UTC().Format(time.RFC3339)),
			Fix: "tartan gc --yes releases it now; the automatic collection does every LEASE_TTL"})
	}
	hosts, err := kv.Census(ctx, a.Cluster, a.Witness, a.Now(), a.LeaseTTL, nil)
	if err != nil {
		return nil, err
	}
	for _, hr := range hosts {
		if hr.Alive || len(hr.Blocks) == 0 {
			continue
		}
		var blocks []string
		for _, b := range hr.Blocks {
			blocks = append(blocks, b.Block)
		}
		what := fmt.Sprintf("host %s (%s) lapsed: this host has not seen it renew since %s (by this host's clock), more than LEASE_TTL (%s); it still holds blocks %s",
			hr.ID, cmp.Or(hr.Address, "no host record"), hr.Seen.UTC().Format(time.RFC3339), a.LeaseTTL, strings.Join(blocks, " "))
		out = append(out, api.Finding{What: what, Fix: fmt.Sprintf("if the host is gone for good, its blocks and addresses are collected once it has not been seen renewing for %d lease lifetimes (tartan gc --yes then, rather than at the next pass); if it is alive, check its plugin and its path to the store", ipam.GoneAfter)})
	}
	return out, nil
}

// kernelFindings compare what the driver's records and plans say with the
// kernel: peer entries, endpoints, the fast path's maps, links, the
// WireGuard peers (by this host's clock, now) and the firewall.
func (h *Handler) kernelFindings(now func() time.Time) ([]api.Finding, error) {
	var out []api.Finding
	drift, err := h.drv.Drift()
	if err != nil {
		return nil, err
	}
	for _, id := range slices.Sorted(maps.Keys(drift)) {
		for _, d := range drift[id] {
			out = append(out, api.Finding{Network: id, What: d, Fix: "tartan repair, or the next resync (RESYNC), repairs it"})
		}
	}
	eps, err := h.drv.EndpointDrift()
	if err != nil {
		return nil, err
	}
	fp, err := h.drv.FastPathDrift()
	if err != nil {
		return nil, err
	}
	for _, x := range append(eps, fp...) {
		out = append(out, api.Finding{What: x, Fix: "tartan repair, or the next resync (RESYNC), repairs it"})
	}
	for _, l := range h.drv.LinkDrift() {
		out = append(out, api.Finding{What: l, Fix: "a network's device comes back with tartan repair or the next resync (RESYNC); an endpoint's record goes once its link stays gone for the grace period, or with docker rm of its container"})
	}
	if wg, err := h.drv.WireGuard().Status(); err != nil {
		out = append(out, api.Finding{What: "the WireGuard device's state could not be read: " + err.Error(), Fix: "see the plugin's log; docker plugin disable -f and enable makes the device again"})
	} else {
		out = append(out, wireguardFindings(wg, now())...)
	}
	fw, err := h.drv.FirewallDrift()
	if err != nil {
		return nil, err
	}
	for _, f := range fw {
		out = append(out, api.Finding{What: "firewall: " + f, Fix: "tartan repair, or the next resync (RESYNC), rewrites tartan's rules"})
	}
	return out, nil
}

func errorText(err error) string {
	if err == nil {
		return "the plugin has none"
	}
	return err.Error()
}
