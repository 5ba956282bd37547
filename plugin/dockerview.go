package plugin

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/internal/dockerid"
	"github.com/tartan-net/tartan/plugin/api"
	"github.com/tartan-net/tartan/plugin/clusternet"
)

// DockerView is Docker's side of tartan doctor: the tartan networks Docker
// has on this host, with their containers' endpoints.
type DockerView interface {
	TartanNetworks(ctx context.Context) ([]clusternet.NetworkView, error)
}

// dockerDrift compares Docker's view of this host's tartan networks and
// endpoints with the driver's records: a network or endpoint one side has
// and the other lacks, an address they disagree on. A swarm-scoped network
// with no container here is made on a node only when a task needs it, so
// its absence from the records is no finding.
func dockerDrift(docker []clusternet.NetworkView, nets []driver.NetworkStatus, eps []backend.Endpoint) []api.Finding {
	var out []api.Finding
	ours := map[string]driver.NetworkStatus{}
	for _, n := range nets {
		ours[n.ID] = n
	}
	byID := map[string]backend.Endpoint{}
	for _, e := range eps {
		byID[e.ID] = e
	}
	theirs := map[string]bool{}
	dockerEPs := map[string]bool{}
	slices.SortFunc(docker, func(a, b clusternet.NetworkView) int { return cmp.Compare(a.Name, b.Name) })
	for _, dn := range docker {
		theirs[dn.ID] = true
		for _, de := range dn.Endpoints {
			dockerEPs[de.ID] = true
		}
		if _, ok := ours[dn.ID]; !ok {
			if dn.Scope == "swarm" && len(dn.Endpoints) == 0 {
				continue
			}
			out = append(out, api.Finding{Network: dn.ID, What: fmt.Sprintf("network %s is a tartan network in Docker, but the plugin has no record of it: its containers here have no routes", dn.Name),
				Fix: fmt.Sprintf("docker network rm %s and create it again (Docker never sends a network's creation twice)", dn.Name)})
			continue
		}
		slices.SortFunc(dn.Endpoints, func(a, b clusternet.EndpointView) int { return cmp.Compare(a.Container, b.Container) })
		for _, de := range dn.Endpoints {
			e, ok := byID[de.ID]
			if !ok {
				out = append(out, api.Finding{Network: dn.ID, What: fmt.Sprintf("container %s on network %s (endpoint %s, %s) has no endpoint in tartan's records: no veth or route of tartan's serves it", de.Container, dn.Name, dockerid.Short(de.ID), de.IPv4),
					Fix: fmt.Sprintf("docker restart %s (or docker network disconnect and connect it)", de.Container)})
				continue
			}
			if w := mismatch(de, e); w != "" {
				out = append(out, api.Finding{Network: dn.ID, What: fmt.Sprintf("container %s on network %s: %s", de.Container, dn.Name, w),
					Fix: fmt.Sprintf("docker restart %s: its endpoint is made again with the addresses Docker holds", de.Container)})
			}
		}
	}
	for _, n := range nets {
		switch {
		case theirs[n.ID]:
		case n.Endpoints == 0:
			out = append(out, api.Finding{Network: n.ID, What: fmt.Sprintf("network %s (pool %s) is in tartan's records, but Docker has no such network here: it was removed while the plugin was away, and its record still holds the subnet on this host", dockerid.Short(n.ID), n.Pool),
				Fix: "tartan gc --yes removes the record and what it made in the kernel"})
		default:
			out = append(out, api.Finding{Network: n.ID, What: fmt.Sprintf("network %s (pool %s) is in tartan's records with %d endpoints, but Docker has no such network here", dockerid.Short(n.ID), n.Pool, n.Endpoints),
				Fix: "remove the containers that were on it (docker rm -f); once the resync forgot their endpoints, tartan gc --yes removes the network's record"})
		}
	}
	for _, e := range eps {
		if theirs[e.Network] && !dockerEPs[e.ID] {
			out = append(out, api.Finding{Network: e.Network, What: fmt.Sprintf("endpoint %s (%s) is in tartan's records, but Docker has no container with it on network %s (a container starting right now shows here for a moment)", dockerid.Short(e.ID), e.IP, dockerid.Short(e.Network)),
				Fix: "the resync forgets it once its veth is gone or was never taken (a minute); docker network disconnect -f of the container, if it still shows in docker network inspect"})
		}
	}
	return out
}

// mismatch says how Docker's endpoint and tartan's record disagree on the
// addresses, or "".
func mismatch(de clusternet.EndpointView, e backend.Endpoint) string {
	var diffs []string
	if a := addrOf(de.IPv4); a != e.Addr() {
		diffs = append(diffs, fmt.Sprintf("Docker has %s, tartan %s", cmp.Or(de.IPv4, "no IPv4 address"), e.IP))
	}
	if a := addrOf(de.IPv6); a != e.Addr6() {
		diffs = append(diffs, fmt.Sprintf("Docker has %s, tartan %s", cmp.Or(de.IPv6, "no IPv6 address"), cmp.Or(e.IP6, "none")))
	}
	return strings.Join(diffs, "; ")
}

// addrOf reads Docker's "address/length" (or a bare address); "" and
// unreadable text give the invalid address.
func addrOf(s string) netip.Addr {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr()
	}
	a, _ := netip.ParseAddr(s)
	return a
}

// goneFromDocker lists the networks in the driver's records that Docker
// does not have and no endpoint record uses (tartan gc --yes removes them).
func goneFromDocker(docker []clusternet.NetworkView, nets []driver.NetworkStatus) []driver.NetworkStatus {
	theirs := map[string]bool{}
	for _, dn := range docker {
		theirs[dn.ID] = true
	}
	out := []driver.NetworkStatus{}
	for _, n := range nets {
		if !theirs[n.ID] && n.Endpoints == 0 {
			out = append(out, n)
		}
	}
	return out
}
