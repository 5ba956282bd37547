package kv_test

import (
	"context"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/kv"
)

// lostAnswer commits the first create under vnis/ and answers ErrConflict:
// what Consul's client says when a committed write's answer was lost and
// the write was tried again on the next server.
type lostAnswer struct {
	kv.Store
	lost bool
}

func (l *lostAnswer) Put(ctx context.Context, key string, value []byte, version uint64) (uint64, error) {
	v, err := l.Store.Put(ctx, key, value, version)
	if err == nil && version == 0 && !l.lost && strings.HasPrefix(key, kv.VNIsPrefix) {
		l.lost = true
		return 0, kv.ErrConflict
	}
	return v, err
}

// Audit S4 and L7: a claim whose answer was lost is this network's, not
// another's (before the fix the next VNI was claimed and the first leaked);
// a network's existing claim is reused; automatic VNIs start above
// flannel's default VNI 1.
func TestClaimVNI(t *testing.T) {
	ctx := context.Background()
	for name, mk := range stores(t) {
		t.Run(name, func(t *testing.T) {
			s := mk(t)
			vni, created, err := kv.ClaimVNI(ctx, &lostAnswer{Store: s}, 0, "10.1.0.0/16")
			if err != nil || vni != kv.FirstAutoVNI || !created {
				t.Fatalf("claim with a lost answer: %d %v %v, want %d created", vni, created, err, kv.FirstAutoVNI)
			}
			if ps, _, err := s.List(ctx, kv.VNIsPrefix); err != nil || len(ps) != 1 {
				t.Fatalf("claims after a lost answer: %v %v, want one", ps, err)
			}
			again, created, err := kv.ClaimVNI(ctx, s, 0, "10.1.0.0/16")
			if err != nil || again != vni || created {
				t.Fatalf("the network's claim again: %d %v %v, want %d not created", again, created, err, vni)
			}
			other, created, err := kv.ClaimVNI(ctx, s, 0, "10.2.0.0/16")
			if err != nil || other != kv.FirstAutoVNI+1 || !created {
				t.Fatalf("another network: %d %v %v", other, created, err)
			}
			if _, _, err := kv.ClaimVNI(ctx, s, other, "10.3.0.0/16"); err == nil || !strings.Contains(err.Error(), "10.2.0.0/16") {
				t.Fatalf("an explicit VNI another network has: %v", err)
			}
			if v, created, err := kv.ClaimVNI(ctx, s, 1, "10.3.0.0/16"); err != nil || v != 1 || !created {
				t.Fatalf("an explicit low VNI: %d %v %v", v, created, err)
			}
		})
	}
}
