package plugin

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin/api"
	"github.com/tartan-net/tartan/policy"
)

// MaxPolicyFile is the largest policy file an apply takes.
const MaxPolicyFile = 1 << 20

// servePolicies adds the network policy endpoints (tartan policy).
func (h *Handler) servePolicies(a Admin) {
	skipped := func(key string, err error) {
		h.log.WithField("key", key).Warnf("network policy record skipped: %v", err)
	}
	h.admin("GET "+api.PoliciesPath, true, func(ctx context.Context, r *http.Request) (any, error) {
		if name := r.URL.Query().Get("name"); name != "" {
			p, err := policy.Get(ctx, a.Cluster, name)
			return p, err
		}
		ps, _, err := policy.Load(ctx, a.Cluster, skipped)
		return each(ps, policySummary), err
	})
	h.admin("POST "+api.PoliciesPath, true, func(ctx context.Context, r *http.Request) (any, error) {
		body, err := io.ReadAll(io.LimitReader(r.Body, MaxPolicyFile+1))
		if err != nil {
			return nil, fmt.Errorf("read the policy file: %w", err)
		}
		if len(body) > MaxPolicyFile {
			return nil, errdefs.Invalid("the policy file is over %d bytes: split it", MaxPolicyFile)
		}
		ps, err := policy.Parse(body)
		if err != nil {
			return nil, errdefs.Invalid("%v", err)
		}
		if err := refuseMacvlan(ctx, a.Cluster, ps); err != nil {
			return nil, err
		}
		if err := policy.Apply(ctx, a.Cluster, ps); err != nil {
			return nil, err
		}
		out := api.PoliciesApplied{Applied: []string{}}
		for _, p := range ps {
			out.Applied = append(out.Applied, p.Name)
		}
		h.log.WithField("policies", out.Applied).Info("network policies applied")
		return out, nil
	})
	h.admin("DELETE "+api.PoliciesPath, true, func(ctx context.Context, r *http.Request) (any, error) {
		name := r.URL.Query().Get("name")
		if err := policy.Remove(ctx, a.Cluster, name); err != nil {
			return nil, err
		}
		h.log.WithField("policy", name).Info("network policy removed")
		return api.PolicyRemoved{Removed: name}, nil
	})
	h.admin("GET "+api.ExplainPath, true, func(ctx context.Context, r *http.Request) (any, error) {
		return explain(ctx, a.Cluster, r.URL.Query(), skipped)
	})
	h.admin("GET "+api.DenyLogPath, false, func(context.Context, *http.Request) (any, error) {
		out := api.DenyLog{Flows: []api.DeniedFlow{}, Total: map[string]uint64{}}
		if h.drv == nil {
			return out, nil
		}
		flows, total := h.drv.DeniedFlows()
		for _, f := range flows {
			out.Flows = append(out.Flows, api.DeniedFlow{Direction: f.Direction, Interface: f.Interface, Src: f.Src.String(), Dst: f.Dst.String(),
				Proto: f.Proto, Port: f.Port, Count: f.Count, First: f.First, Last: f.Last})
		}
		out.Total = total
		return out, nil
	})
}

// refuseMacvlan refuses policies that would select macvlan endpoints: a
// macvlan network by its subnet, or a labelled endpoint of one. Their
// traffic never crosses the host, so no rule of tartan's could hold it.
func refuseMacvlan(ctx context.Context, s kv.Store, ps []policy.Policy) error {
	v, err := identities(ctx, s)
	if err != nil {
		return err
	}
	if len(v.macvlan) == 0 {
		return nil
	}
	for _, p := range ps {
		for i, n := range p.Networks {
			if v.macvlan[n] {
				return errdefs.Invalid("policy %q: networks[%d]: %s is a macvlan network, whose traffic never crosses the host: no rule could hold it", p.Name, i, n)
			}
		}
		for a, l := range v.ids {
			if v.macvlan[l.Pool] && p.Applies(v.endpointAt(a)) {
				return errdefs.Invalid("policy %q selects endpoint %s of macvlan network %s, whose traffic never crosses the host: narrow its selector or networks", p.Name, a, l.Pool)
			}
		}
	}
	return nil
}

// policySummary is one policy in a listing.
func policySummary(p policy.Policy) api.PolicySummary {
	s := api.PolicySummary{Name: p.Name, Selector: selectorText(p.Selector), Networks: p.Networks, Ingress: len(p.Ingress), Egress: len(p.Egress)}
	for _, d := range p.Directions() {
		s.Types = append(s.Types, string(d))
	}
	return s
}

// selectorText writes a selector in one line: app=api,tier in (a b).
func selectorText(s policy.Selector) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		parts = append(parts, k+"="+s.Labels[k])
	}
	for _, r := range s.Match {
		switch r.Op {
		case policy.OpExists:
			parts = append(parts, r.Key)
		case policy.OpNotExists:
			parts = append(parts, "!"+r.Key)
		default:
			parts = append(parts, fmt.Sprintf("%s %s (%s)", r.Key, r.Op, strings.Join(r.Values, " ")))
		}
	}
	if len(parts) == 0 {
		return "(every endpoint)"
	}
	return strings.Join(parts, ",")
}

// explain decides a flow between two addresses as every host's rules do:
// each address is an endpoint of the cluster (its network by the pool that
// holds it, its labels by its label record) or an outside address.
func explain(ctx context.Context, s kv.Store, q map[string][]string, skipped policy.Skipped) (api.Explained, error) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return strings.TrimSpace(v[0])
		}
		return ""
	}
	f := policy.Flow{Protocol: strings.ToLower(get("proto"))}
	if f.Protocol == "" {
		f.Protocol = policy.TCP
	}
	switch f.Protocol {
	case policy.TCP, policy.UDP:
		port, err := strconv.ParseUint(get("port"), 10, 16)
		if err != nil || port == 0 {
			return api.Explained{}, errdefs.Invalid("port %q: give the destination port of a %s flow, 1 to 65535 (tartan policy explain FROM TO 80/tcp)", get("port"), f.Protocol)
		}
		f.Port = uint16(port)
	case policy.ICMP:
	default:
		return api.Explained{}, errdefs.Invalid("protocol %q: use tcp, udp or icmp", f.Protocol)
	}
	pols, _, err := policy.Load(ctx, s, skipped)
	if err != nil {
		return api.Explained{}, err
	}
	v, err := identities(ctx, s)
	if err != nil {
		return api.Explained{}, err
	}
	for _, end := range []struct {
		name string
		to   *policy.Endpoint
	}{{"from", &f.Src}, {"to", &f.Dst}} {
		a, err := netip.ParseAddr(get(end.name))
		if err != nil {
			return api.Explained{}, errdefs.Invalid("%s %q is not an address: give a container's address (docker inspect) or an outside one", end.name, get(end.name))
		}
		*end.to = v.endpointAt(a.Unmap())
	}
	verdict := policy.Evaluate(pols, f)
	flow := f.Protocol
	if f.Port != 0 {
		flow = fmt.Sprintf("%d/%s", f.Port, f.Protocol)
	}
	return api.Explained{From: f.Src.Addr.String(), To: f.Dst.Addr.String(), Flow: flow, Allowed: verdict.Allowed, Egress: decision(verdict.Egress), Ingress: decision(verdict.Ingress)}, nil
}

func decision(d policy.Decision) api.Decision {
	return api.Decision{Allowed: d.Allowed, Policy: d.Policy, Rule: d.Rule, Reason: d.Reason}
}

// clusterView is what explain and apply know of the cluster's endpoints:
// the labelled ones by address, every pool with its network (a network's
// identity is its IPv4 pool; an IPv6 pool names its IPv4 one), and the
// macvlan networks' pools.
type clusterView struct {
	ids     map[netip.Addr]kv.EndpointLabels
	pools   map[netip.Prefix]string
	macvlan map[string]bool
}

// identities reads the cluster's view from the store: its label records and
// its pools, once each.
func identities(ctx context.Context, s kv.Store) (clusterView, error) {
	v := clusterView{ids: map[netip.Addr]kv.EndpointLabels{}, pools: map[netip.Prefix]string{}, macvlan: map[string]bool{}}
	if _, err := kv.ListJSON(ctx, s, kv.EndpointLabelsRoot, func(_ string, _ uint64, l kv.EndpointLabels) error {
		for _, ip := range []string{l.IP, l.IP6} {
			if a, err := netip.ParseAddr(ip); err == nil {
				v.ids[a.Unmap()] = l
			}
		}
		return nil
	}, nil); err != nil {
		return v, fmt.Errorf("list endpoint labels in %s: %w", s, err)
	}
	reports, err := kv.Pools(ctx, s, nil)
	if err != nil {
		return v, fmt.Errorf("list pools in %s: %w", s, err)
	}
	for _, r := range reports {
		p, err := netip.ParsePrefix(r.Pool)
		if err != nil || r.Network == nil {
			continue
		}
		if r.Network.Backend == ipam.BackendBridged {
			v.macvlan[r.Pool] = true
		}
		v.pools[p] = cmp.Or(r.Network.IPv4Pool, r.Pool)
	}
	return v, nil
}

// endpointAt is the identity of address a.
func (v clusterView) endpointAt(a netip.Addr) policy.Endpoint {
	e := policy.Endpoint{Addr: a, Mode: policy.ModeAllow}
	for p, network := range v.pools {
		if p.Contains(a) {
			e.Network = network
		}
	}
	if l, ok := v.ids[a]; ok {
		e.Network, e.Labels = l.Pool, l.Labels
	}
	return e
}
