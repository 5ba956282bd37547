package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// outboxPrefix holds, in the host's local store, the address releases that
// failed because the cluster store was unreachable.
const outboxPrefix = "local/outbox/"

// Outbox keeps address releases that could not reach the store and retries
// them until they land. Docker calls ReleaseAddress once and
// only logs a failure: every container removed during a Consul outage would
// otherwise leak its address for good.
type Outbox struct {
	local kv.Store
	ipam  *ipam.IPAM
	drv   *driver.Driver
	log   logrus.FieldLogger
}

// queuedRelease is one release to retry.
type queuedRelease struct {
	Pool   string    `json:"pool"` // the pool ID as Docker gave it
	IP     string    `json:"ip"`
	Queued time.Time `json:"queued"`
}

// NewOutbox returns the outbox over the host's local store.
func NewOutbox(local kv.Store, im *ipam.IPAM, drv *driver.Driver, log logrus.FieldLogger) *Outbox {
	return &Outbox{local: local, ipam: im, drv: drv, log: log}
}

// Add queues a release; a release already queued keeps its first time.
func (o *Outbox) Add(ctx context.Context, id ipam.PoolID, ip netip.Addr) error {
	q := queuedRelease{Pool: id.String(), IP: ip.String(), Queued: time.Now().UTC()}
	_, err := kv.PutJSON(ctx, o.local, outboxPrefix+kv.PoolKey(q.Pool)+"/"+q.IP, q, 0)
	if errors.Is(err, kv.ErrConflict) {
		return nil
	}
	return err
}

// Flush retries every queued release. A release lands only on a record made
// before it was queued, and never while an endpoint of this host has the
// address again; what the store still cannot take stays queued.
func (o *Outbox) Flush(ctx context.Context) (landed, left int, err error) {
	var errs []error
	_, lerr := kv.ListJSON(ctx, o.local, outboxPrefix, func(key string, version uint64, q queuedRelease) error {
		id, perr := ipam.ParsePoolID(q.Pool)
		ip, aerr := netip.ParseAddr(q.IP)
		switch {
		case perr != nil || aerr != nil:
		case o.drv.EndpointHas(id.CIDR, ip):
		default:
			if rerr := o.ipam.ReleaseAddressBefore(ctx, id, q.IP, q.Queued); rerr != nil {
				left++
				if !errors.Is(rerr, kv.ErrUnavailable) {
					errs = append(errs, rerr)
				}
				return nil
			}
			landed++
		}
		if derr := o.local.Delete(ctx, key, version); derr != nil {
			errs = append(errs, fmt.Errorf("drop the queued release %s: %w", key, derr))
		}
		return nil
	}, func(e *kv.DecodeError) {
		o.log.WithField("key", e.Key).Warnf("ignoring a queued release: %v", e)
	})
	return landed, left, errors.Join(append(errs, lerr)...)
}
