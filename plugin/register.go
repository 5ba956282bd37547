package plugin

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin/api"
)

// Registrar keeps this host's registration. Its record (hosts/<id>, which
// every host watches) is written when its underlay address or version
// changes; that the host is alive is renewed every Fresh under
// renewals/<id>, which nobody watches (others read it every few minutes):
// an idle host wakes no watcher (issue 10). While a host of a version that
// reads liveness only from the record is registered, the record's renewal
// time is kept fresh as well.
//
// When the lookup fails (a default route that flaps during a DHCP renewal
// or a link bounce) the registered address is kept: an empty address would
// make every peer withdraw its routes to this host's containers at once.
// Register then returns an error saying so, for the log. A host that has no
// address registered yet is not registered at all until the lookup works.
type Registrar struct {
	Store     kv.Store
	Host      string
	Advertise string
	Fresh     time.Duration
	Lookup    func(advertise string) (kernel.Underlay, error)
	// WireGuard is the host's WireGuard public key (base64) and port, which
	// its record carries (nil: none).
	WireGuard func() (key string, port int)
	// Now is the host's clock (nil: time.Now).
	Now func() time.Time
	// Created, if set, is called when Register had to write the host's
	// record anew: its first registration, or the record was gone (the
	// host was collected while cut off, or a hand removed it). It must not
	// block.
	Created func()

	mu         sync.Mutex
	renewed    time.Time // the last renewal written
	oldReaders bool      // a registered host reads liveness from records only
}

// Register checks the registration and writes what is due.
func (r *Registrar) Register(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	clock := r.Now
	if clock == nil {
		clock = time.Now
	}
	now := clock().UTC()
	renew := r.renewed.IsZero() || now.Sub(r.renewed) >= r.Fresh
	if renew {
		// Who reads liveness from records only, once per renewal.
		old := false
		if _, err := kv.ListJSON(ctx, r.Store, kv.HostsPrefix, func(_ string, _ uint64, h kv.Host) error {
			old = old || (!h.Renewals && h.ID != r.Host)
			return nil
		}, func(*kv.DecodeError) {}); err != nil {
			return err
		}
		r.oldReaders = old
	}
	u, lerr := r.Lookup(r.Advertise)
	if lerr == nil && !u.Address.IsValid() {
		lerr = fmt.Errorf("the underlay interface %s has no usable address: set ADVERTISE to an interface or address (docker plugin set tartan:latest ADVERTISE=eth0)", u.Interface)
	}
	kept, created := "", false
	_, err := kv.Update(ctx, r.Store, kv.HostPath(r.Host), func(h *kv.Host, exists bool) error {
		created = !exists
		addr := ""
		switch {
		case lerr == nil:
			addr = u.Address.String()
		case exists && h.Address != "":
			addr, kept = h.Address, h.Address
		default:
			return fmt.Errorf("host %s is not registered until its underlay address is found: %w", r.Host, lerr)
		}
		ll := ""
		if lerr == nil && u.LinkLocal6.IsValid() {
			ll = u.LinkLocal6.String()
		} else if lerr != nil && exists {
			ll = h.LinkLocal6
		}
		wgKey, wgPort := "", 0
		if r.WireGuard != nil {
			wgKey, wgPort = r.WireGuard()
		}
		same := exists && h.Address == addr && h.LinkLocal6 == ll && h.Version == api.Version && h.Renewals &&
			h.WireGuardKey == wgKey && h.WireGuardPort == wgPort
		if same && (!r.oldReaders || now.Sub(h.Renewed) < r.Fresh) {
			return kv.ErrUnchanged
		}
		*h = kv.Host{ID: r.Host, Address: addr, LinkLocal6: ll, Version: api.Version, Renewed: now, Renewals: true,
			WireGuardKey: wgKey, WireGuardPort: wgPort}
		return nil
	})
	if err != nil {
		return err
	}
	if created && r.Created != nil {
		r.Created()
	}
	if renew {
		if _, err := kv.PutJSON(ctx, r.Store, kv.RenewalPath(r.Host), kv.Renewal{Renewed: now}, kv.Any); err != nil {
			return err
		}
		r.renewed = now
	}
	if kept != "" {
		return fmt.Errorf("registration kept with the last known address %s: %w", kept, lerr)
	}
	return nil
}
