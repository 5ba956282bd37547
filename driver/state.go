package driver

import (
	"context"

	"github.com/tartan-net/tartan/kv"
)

// Local state lives in the host's embedded store: Docker never replays
// CreateNetwork, so this is how a restarted plugin knows its networks.
const (
	localNetworks  = "local/networks/"
	localEndpoints = "local/endpoints/"
)

type localState struct {
	networks  map[string]localNetwork
	endpoints map[string]localEndpoint
}

// loadLocal reads this host's records. One that cannot be read (a damaged
// file) is handed to skipped and left out, so that the plugin still starts
// with everything else.
func loadLocal(ctx context.Context, s kv.Store, skipped func(*kv.DecodeError)) (localState, error) {
	st := localState{networks: map[string]localNetwork{}, endpoints: map[string]localEndpoint{}}
	if _, err := kv.ListJSON(ctx, s, localNetworks, func(_ string, _ uint64, n localNetwork) error {
		st.networks[n.ID] = n
		return nil
	}, skipped); err != nil {
		return st, err
	}
	_, err := kv.ListJSON(ctx, s, localEndpoints, func(_ string, _ uint64, e localEndpoint) error {
		st.endpoints[e.ID] = e
		return nil
	}, skipped)
	return st, err
}

// putLocal writes a local record whatever its version: this host is its
// only writer, and each call writes the record as the tables hold it.
func putLocal(ctx context.Context, s kv.Store, key string, v any) error {
	_, err := kv.PutJSON(ctx, s, key, v, kv.Any)
	return err
}
