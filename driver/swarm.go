package driver

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/kv"
)

// AllocateNetwork runs on the swarm manager (SCOPE=global): it validates
// the options, so that a bad network fails there before it reaches a node,
// records the network cluster-wide (claiming its VNI) and returns the
// options every node's CreateNetwork gets: the user's, the VNI and the
// store's identity.
func (d *Driver) AllocateNetwork(ctx context.Context, r AllocateRequest) (map[string]string, error) {
	opts := map[string]any{}
	out := map[string]string{}
	for k, v := range r.Options {
		opts[k], out[k] = v, v
	}
	o, err := d.ParseOptions(map[string]any{dockerGeneric: opts})
	if err != nil {
		return nil, err
	}
	if !r.Pool.IsValid() {
		return out, nil // IPAM is not tartan's: CreateNetwork refuses it
	}
	if o.IPv6 {
		return nil, errdefs.Invalid("swarm-scoped tartan networks are IPv4 only: remove --ipv6 (local-scope networks are dual-stack)")
	}
	rec, _, err := d.clusterNetwork(ctx, r.Pool, netip.Prefix{}, o, true)
	if err != nil {
		return nil, err
	}
	if rec.VNI != 0 {
		out[vxlan.OptVNI] = fmt.Sprint(rec.VNI)
	}
	if out[OptStoreID], err = kv.ClusterID(ctx, d.cluster); err != nil {
		return nil, err
	}
	return out, nil
}

// FreeNetwork (swarm manager) has nothing to free: the cluster record and
// VNI go with the pool's last holder (ipam.ReleasePool).
func (d *Driver) FreeNetwork(context.Context, string) error { return nil }

// checkStore refuses a swarm network allocated against another store.
func (d *Driver) checkStore(ctx context.Context, o Options) error {
	if o.StoreID == "" {
		return nil
	}
	id, err := kv.ClusterID(ctx, d.cluster)
	if err != nil {
		return err
	}
	if id != o.StoreID {
		return errdefs.Invalid("the swarm manager's plugin uses another store than this node's (%s): set the same STORE on every node", d.cluster)
	}
	return nil
}
