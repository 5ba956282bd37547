package driver

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/routed"
	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/driver/wireguard"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/policy"
)

// Options are a network's validated -o options.
type Options = backend.Options

// Option names (-o on docker network create) that every backend takes;
// each backend's own are in its folder.
const (
	OptBackend = "tartan.backend"
	OptMTU     = routed.OptMTU
	// OptCluster makes the network appear on every host (plugin/clusternet).
	OptCluster = "tartan.cluster"
	// OptStoreID is set by AllocateNetwork on the swarm manager (never by
	// users): the identity of the manager's store, checked on every node.
	OptStoreID = "tartan.store.id"
	// OptNAT66 masquerades what leaves a routed network's IPv6 pool (off
	// by default: IPv6 pools are usually routed as they are).
	OptNAT66 = "tartan.nat66"
	// OptPolicy is the network's network-policy default: allow (what no
	// policy selects passes), isolated (its endpoints reach each other only
	// where a policy allows it) or default-deny (both ways, as if a policy
	// without rules selected each endpoint).
	OptPolicy = "tartan.policy"
)

// Docker's own keys in a CreateNetwork request.
const (
	dockerGeneric  = "com.docker.network.generic"
	dockerInternal = "com.docker.network.internal"
	dockerIPv6     = "com.docker.network.enable_ipv6"
	dockerPrefix   = "com.docker."
)

// Limits of -o com.docker.network.driver.mtu: IPv4's least MTU and the
// largest an interface takes.
const (
	minMTU = 576
	maxMTU = 65535
)

// ParseOptions validates the options of a CreateNetwork (or
// AllocateNetwork) request. Unknown options are refused by name, and a
// backend's own option given to another backend names the backend it
// belongs to.
func (d *Driver) ParseOptions(opts map[string]any) (Options, error) {
	return ParseOptions(opts, d.descs)
}

// SkipsGateway answers Docker's GwAllocCheck (Docker 28+): whether a
// network with these options needs no gateway address from IPAM. The
// options are validated as CreateNetwork will.
func (d *Driver) SkipsGateway(opts map[string]any) (bool, error) {
	o, err := d.ParseOptions(opts)
	if err != nil {
		return false, err
	}
	return d.backends[o.Backend].Describe().OwnGateway, nil
}

// ParseOptions validates options against the backends' descriptions.
func ParseOptions(opts map[string]any, backends []backend.Description) (Options, error) {
	o := Options{Backend: DefaultBackend, Raw: map[string]string{}}
	o.Internal = truthy(opts[dockerInternal])
	o.IPv6 = truthy(opts[dockerIPv6])
	generic, err := genericOptions(opts[dockerGeneric])
	if err != nil {
		return o, err
	}
	if v, ok := generic[OptBackend]; ok {
		o.Backend = strings.TrimSpace(v)
	}
	if err := encrypted(&o, generic); err != nil {
		return o, err
	}
	var chosen *backend.Description
	names := make([]string, 0, len(backends))
	for i := range backends {
		names = append(names, backends[i].Name)
		if backends[i].Name == o.Backend {
			chosen = &backends[i]
		}
	}
	if chosen == nil {
		return o, errdefs.Invalid("unknown backend -o %s=%s: use %s", OptBackend, o.Backend, orList(names))
	}
	for _, k := range slices.Sorted(maps.Keys(generic)) {
		v := strings.TrimSpace(generic[k])
		known, err := parseOption(&o, k, v, *chosen, backends)
		if err != nil {
			return o, err
		}
		if known {
			o.Raw[k] = v
		}
	}
	return o, nil
}

// parseOption sets one -o option; known is false for Docker's own labels
// and options for other drivers, which are passed over.
func parseOption(o *Options, k, v string, chosen backend.Description, all []backend.Description) (known bool, err error) {
	switch k {
	case OptBackend:
	case OptCluster:
		o.Cluster, err = backend.BoolOption(k, v)
	case OptStoreID:
		o.StoreID = v
	case wireguard.OptEncrypted: // read by encrypted
	case OptNAT66:
		if !chosen.OwnGateway {
			return true, errdefs.Invalid("-o %s is for routed networks (vxlan, host-gw, wireguard): a %s network's containers sit on the segment, with no NAT", OptNAT66, chosen.Name)
		}
		o.NAT66, err = backend.BoolOption(k, v)
	case OptPolicy:
		if !chosen.OwnGateway {
			return true, errdefs.Invalid("-o %s is for routed networks (vxlan, host-gw, wireguard): a %s network's traffic never crosses the host, so no policy could hold it", OptPolicy, chosen.Name)
		}
		m, perr := policy.ParseMode(v)
		if perr != nil {
			return true, errdefs.Invalid("-o %v", perr)
		}
		o.Policy = string(m)
	case OptMTU:
		n, err := strconv.Atoi(v)
		if err != nil || n < minMTU || n > maxMTU {
			return true, errdefs.Invalid("-o %s=%s is not a usable MTU: use a number from %d to %d", OptMTU, v, minMTU, maxMTU)
		}
		o.MTU = n
	default:
		if opt, ok := findOption(chosen, k); ok {
			return true, opt.Parse(o, v)
		}
		for _, b := range all {
			if _, ok := findOption(b, k); ok {
				return true, errdefs.Invalid("-o %s applies to the %s backend only: remove it or use -o %s=%s", k, b.Name, OptBackend, b.Name)
			}
		}
		if strings.HasPrefix(k, dockerPrefix) {
			return false, nil
		}
		return true, errdefs.Invalid("unknown option -o %s: tartan knows %s", k, strings.Join(knownOptions(all), ", "))
	}
	return true, err
}

// encrypted reads -o encrypted (Docker overlay's option, given bare or as
// a boolean): a vxlan network with it is a wireguard one. Other backends
// do not encrypt, and VXLAN's own options do not apply to it.
func encrypted(o *Options, generic map[string]string) error {
	v, ok := generic[wireguard.OptEncrypted]
	if !ok {
		return nil
	}
	on := true
	if v = strings.TrimSpace(v); v != "" {
		var err error
		if on, err = strconv.ParseBool(v); err != nil {
			return errdefs.Invalid("-o %s=%s is not a boolean: give -o %s alone, or =true or =false", wireguard.OptEncrypted, v, wireguard.OptEncrypted)
		}
	}
	switch {
	case !on && o.Backend == wireguard.Name:
		return errdefs.Invalid("-o %s=false on a %s network: WireGuard always encrypts; use -o %s=vxlan for a network in clear", wireguard.OptEncrypted, wireguard.Name, OptBackend)
	case !on, o.Backend == wireguard.Name:
	case o.Backend == vxlan.Name:
		for _, k := range []string{vxlan.OptVNI, vxlan.OptDirectRouting} {
			if _, ok := generic[k]; ok {
				return errdefs.Invalid("-o %s cannot go with -o %s: an encrypted network is carried by WireGuard, not VXLAN; remove -o %s", k, wireguard.OptEncrypted, k)
			}
		}
		o.Backend = wireguard.Name
	default:
		return errdefs.Invalid("-o %s is for vxlan and wireguard networks: tartan does not encrypt %s traffic; use -o %s=%s", wireguard.OptEncrypted, o.Backend, OptBackend, wireguard.Name)
	}
	return nil
}

func findOption(b backend.Description, key string) (backend.Option, bool) {
	for _, o := range b.Options {
		if o.Key == key {
			return o, true
		}
	}
	return backend.Option{}, false
}

// knownOptions lists every -o option tartan takes.
func knownOptions(all []backend.Description) []string {
	out := []string{OptBackend, OptMTU, OptCluster, OptNAT66, OptPolicy, wireguard.OptEncrypted}
	for _, b := range all {
		for _, o := range b.Options {
			out = append(out, o.Key)
		}
	}
	return out
}

// genericOptions reads Docker's map of -o options.
func genericOptions(g any) (map[string]string, error) {
	out := map[string]string{}
	switch g := g.(type) {
	case nil:
	case map[string]any:
		for k, v := range g {
			out[k] = fmt.Sprint(v)
		}
	case map[string]string:
		for k, v := range g {
			out[k] = v
		}
	default:
		return nil, errdefs.Invalid("driver options have an unexpected form (%T)", g)
	}
	return out, nil
}

func orList(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

func truthy(v any) bool {
	switch t := v.(type) {
	case bool:
		return t
	case string:
		b, _ := strconv.ParseBool(t)
		return b
	}
	return false
}
