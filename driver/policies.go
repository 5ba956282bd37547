package driver

import (
	"cmp"
	"context"
	"net/netip"
	"reflect"
	"slices"
	"sync"

	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/hostplane"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/policy"
)

// policyView is what this host knows of the cluster's network policy: the
// policies, and the labels of every labelled endpoint of the cluster, each
// followed from the store by one watch. The host writer compiles this
// host's endpoints from it (policedLocked) into the firewall's rules.
type policyView struct {
	mu       sync.Mutex
	policies []policy.Policy
	labels   []kv.EndpointLabels
	// policiesIn and labelsIn: each watch has answered since the start.
	// Until both have, this host's endpoints keep the rules they had
	// (keptPoliced): a restart, or a start with the store away, never
	// opens what a policy closed.
	policiesIn, labelsIn bool
	warned               map[string]string // skipped records, logged once per reason
}

// followPolicy follows the policies and the endpoint labels until ctx ends;
// every change is a poke of the host writer (which rewrites only what
// changed).
func (d *Driver) followPolicy(ctx context.Context) {
	skipped := func(key string, err error) {
		d.pol.mu.Lock()
		first := d.pol.warned[key] != err.Error()
		if first {
			if d.pol.warned == nil {
				d.pol.warned = map[string]string{}
			}
			d.pol.warned[key] = err.Error()
		}
		d.pol.mu.Unlock()
		if first {
			d.log.WithField("key", key).Warnf("network policy record skipped (the others apply): %v", err)
		}
	}
	go kv.Follow(ctx, d.cluster, kv.PoliciesPrefix, kv.FollowOptions{}, func(ps []kv.Pair) {
		pols := policy.Decode(ps, skipped)
		d.pol.mu.Lock()
		d.pol.policies, d.pol.policiesIn = pols, true
		d.pol.mu.Unlock()
		d.log.WithField("policies", len(pols)).Info("network policies changed")
		d.host.Poke(hostplane.FastPath | hostplane.Firewall)
	})
	go kv.Follow(ctx, d.cluster, kv.EndpointLabelsRoot, kv.FollowOptions{}, func(ps []kv.Pair) {
		var ls []kv.EndpointLabels
		_ = kv.DecodeJSON(d.cluster, ps, func(_ string, _ uint64, l kv.EndpointLabels) error {
			ls = append(ls, l)
			return nil
		}, func(e *kv.DecodeError) { skipped(e.Key, e) })
		d.pol.mu.Lock()
		d.pol.labels, d.pol.labelsIn = ls, true
		d.pol.mu.Unlock()
		d.host.Poke(hostplane.FastPath | hostplane.Firewall)
	})
}

// snapshot is the policies and labels now, and whether both watches have
// answered (live).
func (v *policyView) snapshot() (pols []policy.Policy, labels []kv.EndpointLabels, live bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.policies, v.labels, v.policiesIn && v.labelsIn
}

// policedLocked compiles this host's endpoints of routed networks under
// the policies: those isolated in a direction, with their rules (the
// firewall's Policed). Until the view is live, an endpoint that had rules
// keeps them (keptPoliced) and the others are compiled from what the view
// has (their networks' defaults at least). live says the view was.
// Called with d.mu held.
func (d *Driver) policedLocked() (out []firewall.Policed, live bool) {
	pols, labels, live := d.pol.snapshot()
	kept := d.keptPoliced
	if live {
		kept = nil
	}
	modes := false
	for _, n := range d.st.networks {
		modes = modes || n.Policy != "" && n.Policy != string(policy.ModeAllow)
	}
	if len(pols) == 0 && !modes && len(kept) == 0 {
		return nil, live
	}
	view := policy.View{Pools: map[string][]netip.Prefix{}}
	routed := map[string]bool{}
	for _, n := range d.st.networks {
		if _, ok := d.backendOf(n).Firewall(n); !ok {
			continue // macvlan: its traffic never crosses the host
		}
		routed[n.ID] = true
		pools := []netip.Prefix{n.PoolPrefix()}
		if n.Pool6 != "" {
			pools = append(pools, n.Pool6Prefix())
		}
		view.Pools[n.PoolPrefix().String()] = pools
	}
	local := map[string]bool{}
	for _, e := range d.st.endpoints {
		local[e.ID] = true
		view.Endpoints = append(view.Endpoints, policyEndpoints(e.IP, e.IP6, d.st.networks[e.Network].PoolPrefix().String(), e.Labels)...)
	}
	for _, l := range labels {
		if l.Host == d.cfg.Host && local[l.Endpoint] {
			continue // this host's own, from its records
		}
		view.Endpoints = append(view.Endpoints, policyEndpoints(l.IP, l.IP6, l.Pool, l.Labels)...)
		if p, err := netip.ParsePrefix(l.Pool); err == nil {
			if _, ok := view.Pools[l.Pool]; !ok {
				view.Pools[l.Pool] = []netip.Prefix{p}
			}
		}
	}
	for _, e := range d.st.endpoints {
		if !routed[e.Network] {
			continue
		}
		if r, ok := kept[e.HostIf]; ok {
			out = append(out, firewall.Policed{HostIf: e.HostIf, Rules: r})
			continue
		}
		n := d.st.networks[e.Network]
		self := policy.Endpoint{Addr: e.Addr(), Network: n.PoolPrefix().String(), Mode: policy.Mode(cmp.Or(n.Policy, string(policy.ModeAllow))), Labels: e.Labels}
		r := policy.Compile(pols, self, view)
		if r.Ingress.Isolated || r.Egress.Isolated {
			out = append(out, firewall.Policed{HostIf: e.HostIf, Rules: r})
		}
	}
	slices.SortFunc(out, func(a, b firewall.Policed) int { return cmp.Compare(a.HostIf, b.HostIf) })
	return out, live
}

// policyEndpoints are an endpoint's identities for the view: one per
// address (IPv4, and IPv6 on a dual-stack network).
func policyEndpoints(ip, ip6, pool string, labels map[string]string) []policy.Endpoint {
	var out []policy.Endpoint
	for _, s := range []string{ip, ip6} {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, policy.Endpoint{Addr: a, Network: pool, Mode: policy.ModeAllow, Labels: labels})
		}
	}
	return out
}

// keptPolicedKey is where the rules last applied to this host's policed
// endpoints are kept (by host interface), for the next start.
const keptPolicedKey = "local/policed"

// keepPoliced records the rules the firewall now holds for the policed
// endpoints, in memory and in the local store, when they were compiled
// from a live view (live: as the snapshot said) and changed. Called
// without d.mu, in the host writer's turn.
func (d *Driver) keepPoliced(ps []firewall.Policed, live bool) {
	if !live {
		return
	}
	kept := make(map[string]policy.Rules, len(ps))
	for _, p := range ps {
		kept[p.HostIf] = p.Rules
	}
	d.mu.Lock()
	same := d.keptPoliced != nil && reflect.DeepEqual(kept, d.keptPoliced)
	d.mu.Unlock()
	if same {
		return
	}
	if _, err := kv.PutJSON(context.Background(), d.local, keptPolicedKey, kept, kv.Any); err != nil {
		d.log.Warnf("keep the network policy rules in the local store: %v", err)
		return // the next write tries again
	}
	d.mu.Lock()
	d.keptPoliced = kept
	d.mu.Unlock()
}

// loadPoliced reads the rules kept by the last run (none kept: the view
// decides from the start).
func (d *Driver) loadPoliced(ctx context.Context) {
	var kept map[string]policy.Rules
	if _, err := kv.GetJSON(ctx, d.local, keptPolicedKey, &kept); err == nil {
		if kept == nil {
			kept = map[string]policy.Rules{}
		}
		d.mu.Lock()
		d.keptPoliced = kept
		d.mu.Unlock()
	}
}
