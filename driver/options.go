package driver

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// Backends.
const (
	BackendVXLAN  = "vxlan"
	BackendHostGW = "host-gw"
	// BackendMacvlan puts containers straight on the parent's L2 segment.
	BackendMacvlan = ipam.BackendBridged
)

// Option names (-o on docker network create).
const (
	OptBackend       = "tartan.backend"
	OptVNI           = "tartan.vni"
	OptDirectRouting = "tartan.directrouting"
	OptMTU           = "com.docker.network.driver.mtu"
	// macvlan, with the names of Docker's own macvlan driver
	OptParent      = "parent"
	OptMacvlanMode = "macvlan_mode"
	OptHostAccess  = "tartan.hostaccess"
	// OptCluster makes the network appear on every host (plugin/clusternet).
	OptCluster = "tartan.cluster"
	// OptStoreID is set by AllocateNetwork on the swarm manager (never by
	// users): the identity of the manager's store, checked on every node.
	OptStoreID      = "tartan.store.id"
	defaultMacvlanM = "bridge"
)

// Docker's own keys in a CreateNetwork request.
const (
	dockerGeneric  = "com.docker.network.generic"
	dockerInternal = "com.docker.network.internal"
	dockerIPv6     = "com.docker.network.enable_ipv6"
	dockerPrefix   = "com.docker."
)

var knownOptions = []string{OptBackend, OptVNI, OptDirectRouting, OptMTU, OptParent, OptMacvlanMode, OptHostAccess, OptCluster}

// NetworkOptions are a network's validated options.
type NetworkOptions struct {
	Backend       string
	VNI           int // 0: allocate
	DirectRouting bool
	MTU           int    // 0: from the underlay (or the macvlan parent)
	Parent        string // macvlan: "" for the default route's interface
	MacvlanMode   string // macvlan: bridge, private, vepa or passthru
	HostAccess    bool   // macvlan: a shim so the host reaches its containers
	Cluster       bool   // created on every host by the replicator
	StoreID       string // swarm: the manager's store identity
	Internal      bool
	IPv6          bool
	Raw           map[string]string // the -o options as given
}

// ParseNetworkOptions validates the options of a CreateNetwork (or
// AllocateNetwork) request. Unknown options are refused by name.
func ParseNetworkOptions(opts map[string]any) (NetworkOptions, error) {
	o := NetworkOptions{Backend: BackendVXLAN, MacvlanMode: defaultMacvlanM, Raw: map[string]string{}}
	o.Internal = truthy(opts[dockerInternal])
	o.IPv6 = truthy(opts[dockerIPv6])
	generic := map[string]string{}
	switch g := opts[dockerGeneric].(type) {
	case nil:
	case map[string]any:
		for k, v := range g {
			generic[k] = fmt.Sprint(v)
		}
	case map[string]string:
		for k, v := range g {
			generic[k] = v
		}
	default:
		return o, kv.Invalid("driver options have an unexpected form (%T)", g)
	}
	keys := make([]string, 0, len(generic))
	for k := range generic {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var err error
	for _, k := range keys {
		v := strings.TrimSpace(generic[k])
		switch k {
		case OptBackend:
			if v != BackendVXLAN && v != BackendHostGW && v != BackendMacvlan {
				return o, kv.Invalid("unknown backend -o %s=%s: use %s, %s or %s", OptBackend, v, BackendVXLAN, BackendHostGW, BackendMacvlan)
			}
			o.Backend = v
		case OptVNI:
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1<<24-1 {
				return o, kv.Invalid("-o %s=%s is not a VXLAN network identifier: use a number from 1 to 16777215", OptVNI, v)
			}
			o.VNI = n
		case OptDirectRouting:
			if o.DirectRouting, err = boolOption(k, v); err != nil {
				return o, err
			}
		case OptParent:
			if v == "" || len(v) > 15 || strings.ContainsAny(v, "/ \t:") {
				return o, kv.Invalid("-o %s=%q is not an interface name: use a host interface such as eth0, or eth0.100 for VLAN 100", OptParent, v)
			}
			if _, _, _, err := kernel.ParseVLANParent(v); err != nil {
				return o, kv.Invalid("-o %s=%s: %v", OptParent, v, err)
			}
			o.Parent = v
		case OptMacvlanMode:
			if !kernel.MacvlanMode(v) {
				return o, kv.Invalid("unknown -o %s=%s: use bridge, private, vepa or passthru", OptMacvlanMode, v)
			}
			o.MacvlanMode = v
		case OptHostAccess:
			if o.HostAccess, err = boolOption(k, v); err != nil {
				return o, err
			}
		case OptCluster:
			if o.Cluster, err = boolOption(k, v); err != nil {
				return o, err
			}
		case OptStoreID:
			o.StoreID = v
		case OptMTU:
			n, err := strconv.Atoi(v)
			if err != nil || n < 576 || n > 65535 {
				return o, kv.Invalid("-o %s=%s is not a usable MTU: use a number from 576 to 65535", OptMTU, v)
			}
			o.MTU = n
		default:
			if strings.HasPrefix(k, dockerPrefix) {
				continue // Docker's own labels and options for other drivers
			}
			return o, kv.Invalid("unknown option -o %s: tartan knows %s", k, strings.Join(knownOptions, ", "))
		}
		o.Raw[k] = v
	}
	if o.Backend != BackendVXLAN {
		if o.VNI != 0 {
			return o, kv.Invalid("-o %s applies to the vxlan backend only: remove it or use -o %s=vxlan", OptVNI, OptBackend)
		}
		if o.DirectRouting {
			return o, kv.Invalid("-o %s applies to the vxlan backend only: remove it or use -o %s=vxlan", OptDirectRouting, OptBackend)
		}
	}
	if o.Backend != BackendMacvlan {
		for _, k := range []string{OptParent, OptMacvlanMode, OptHostAccess} {
			if _, ok := o.Raw[k]; ok {
				return o, kv.Invalid("-o %s applies to the macvlan backend only: remove it or use -o %s=%s", k, OptBackend, BackendMacvlan)
			}
		}
	}
	if o.HostAccess && o.MacvlanMode != "bridge" {
		return o, kv.Invalid("-o %s=true needs -o %s=bridge (the host's shim reaches containers only in bridge mode)", OptHostAccess, OptMacvlanMode)
	}
	if o.IPv6 {
		return o, kv.ErrNoIPv6
	}
	return o, nil
}

// boolOption reads a true/false -o option.
func boolOption(k, v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, kv.Invalid("-o %s=%s is not a boolean: use true or false", k, v)
	}
	return b, nil
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
