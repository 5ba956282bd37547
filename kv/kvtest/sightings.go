package kvtest

import (
	"time"

	"github.com/tartan-net/tartan/kv"
)

// Sightings are what a witness would hold had it seen each host renew at
// the time its record says (Renewed) and each block's lease renewed a
// lease lifetime before it expires: for tests that build a routing view by
// hand with hosts and leases of given ages.
func Sightings(hosts map[string]kv.Host, blocks []kv.Block, ttl time.Duration) (seen, blockSeen map[string]time.Time) {
	seen = make(map[string]time.Time, len(hosts))
	for id, h := range hosts {
		seen[id] = h.Renewed
	}
	blockSeen = make(map[string]time.Time, len(blocks))
	for _, b := range blocks {
		blockSeen[kv.BlockPath(b.Pool, b.CIDR)] = b.Expires.Add(-ttl)
	}
	return seen, blockSeen
}
