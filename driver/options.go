package driver

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/tartan-net/tartan/kv"
)

// Backends.
const (
	BackendVXLAN  = "vxlan"
	BackendHostGW = "host-gw"
)

// Option names (-o on docker network create).
const (
	OptBackend       = "tartan.backend"
	OptVNI           = "tartan.vni"
	OptDirectRouting = "tartan.directrouting"
	OptMTU           = "com.docker.network.driver.mtu"
)

// Docker's own keys in a CreateNetwork request.
const (
	dockerGeneric  = "com.docker.network.generic"
	dockerInternal = "com.docker.network.internal"
	dockerIPv6     = "com.docker.network.enable_ipv6"
	dockerPrefix   = "com.docker."
)

var knownOptions = []string{OptBackend, OptVNI, OptDirectRouting, OptMTU}

// NetworkOptions are a network's validated options.
type NetworkOptions struct {
	Backend       string
	VNI           int // 0: allocate
	DirectRouting bool
	MTU           int // 0: from the underlay
	Internal      bool
	IPv6          bool
	Raw           map[string]string // the -o options as given
}

// ParseNetworkOptions validates the options of a CreateNetwork (or
// AllocateNetwork) request. Unknown options are refused by name.
func ParseNetworkOptions(opts map[string]any) (NetworkOptions, error) {
	o := NetworkOptions{Backend: BackendVXLAN, Raw: map[string]string{}}
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
	for _, k := range keys {
		v := strings.TrimSpace(generic[k])
		switch k {
		case OptBackend:
			if v != BackendVXLAN && v != BackendHostGW {
				return o, kv.Invalid("unknown backend -o %s=%s: use %s or %s", OptBackend, v, BackendVXLAN, BackendHostGW)
			}
			o.Backend = v
		case OptVNI:
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1<<24-1 {
				return o, kv.Invalid("-o %s=%s is not a VXLAN network identifier: use a number from 1 to 16777215", OptVNI, v)
			}
			o.VNI = n
		case OptDirectRouting:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, kv.Invalid("-o %s=%s is not a boolean: use true or false", OptDirectRouting, v)
			}
			o.DirectRouting = b
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
	if o.IPv6 {
		return o, kv.ErrNoIPv6
	}
	return o, nil
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
