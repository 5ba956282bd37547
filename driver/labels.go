package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/kv"
)

// The labels of this host's endpoints reach the other hosts' network
// policy through the cluster store, one record per labelled endpoint
// (kv.EndpointLabelsPath). CreateEndpoint and DeleteEndpoint write and
// remove a record as they go, without failing for it (a store that cannot
// be reached then leaves the endpoint unknown by its labels elsewhere:
// rules that allow by labels do not allow it yet, the safe side);
// SyncLabels makes the records match the endpoints again.

// labelsTimeout bounds a request's write of a label record: a slow store
// must not hold up Docker (which holds its locks while it calls).
const labelsTimeout = 3 * time.Second

// labelsRecord is the record endpoint e should have (false: none, it has
// no labels).
func (d *Driver) labelsRecord(e localEndpoint) (kv.EndpointLabels, bool) {
	if len(e.Labels) == 0 {
		return kv.EndpointLabels{}, false
	}
	d.mu.Lock()
	pool := d.st.networks[e.Network].Pool
	d.mu.Unlock()
	return kv.EndpointLabels{IP: e.IP, IP6: e.IP6, Pool: pool, Endpoint: e.ID, Host: d.cfg.Host, Labels: e.Labels}, true
}

// publishLabels writes endpoint e's record, if it has labels; a failure is
// logged (SyncLabels retries).
func (d *Driver) publishLabels(ctx context.Context, e localEndpoint) {
	rec, ok := d.labelsRecord(e)
	if !ok {
		return
	}
	if _, err := kv.PutJSON(ctx, d.cluster, kv.EndpointLabelsPath(d.cfg.Host, e.ID), rec, kv.Any); err != nil {
		d.log.WithFields(logrus.Fields{"endpoint": shortID(e.ID)}).Warnf("publish the endpoint's labels (the resync retries; meanwhile other hosts' policies do not know them): %v", err)
	}
}

// withdrawLabels removes endpoint e's record; a failure is logged
// (SyncLabels retries).
func (d *Driver) withdrawLabels(ctx context.Context, e localEndpoint) {
	if len(e.Labels) == 0 {
		return
	}
	if err := d.cluster.Delete(ctx, kv.EndpointLabelsPath(d.cfg.Host, e.ID), 0); err != nil {
		d.log.WithFields(logrus.Fields{"endpoint": shortID(e.ID)}).Warnf("withdraw the endpoint's labels (the resync retries): %v", err)
	}
}

// SyncLabels makes this host's label records in the store match its
// labelled endpoints: missing and different ones written, those of
// endpoints it no longer has removed. It returns how many it wrote and
// removed.
func (d *Driver) SyncLabels(ctx context.Context) (wrote, removed int, err error) {
	d.mu.Lock()
	eps := maps.Clone(d.st.endpoints)
	d.mu.Unlock()
	want := map[string]kv.EndpointLabels{}
	for id, e := range eps {
		if rec, ok := d.labelsRecord(e); ok {
			want[id] = rec
		}
	}
	prefix := kv.EndpointLabelsPrefix(d.cfg.Host)
	have, _, err := d.cluster.List(ctx, prefix)
	if err != nil {
		return 0, 0, fmt.Errorf("list this host's endpoint labels in %s: %w", d.cluster, err)
	}
	var errs []error
	for _, p := range have {
		id := strings.TrimPrefix(p.Key, prefix)
		rec, ok := want[id]
		if !ok {
			if err := d.cluster.Delete(ctx, p.Key, p.Version); err != nil && !errors.Is(err, kv.ErrConflict) {
				errs = append(errs, err)
				continue
			}
			removed++
			continue
		}
		delete(want, id)
		if b, err := json.Marshal(rec); err == nil && string(b) == string(p.Value) {
			continue
		}
		if _, err := kv.PutJSON(ctx, d.cluster, p.Key, rec, p.Version); err != nil && !errors.Is(err, kv.ErrConflict) {
			errs = append(errs, err)
			continue
		}
		wrote++
	}
	for id, rec := range want {
		if _, err := kv.PutJSON(ctx, d.cluster, kv.EndpointLabelsPath(d.cfg.Host, id), rec, 0); err != nil && !errors.Is(err, kv.ErrConflict) {
			errs = append(errs, err)
			continue
		}
		wrote++
	}
	if err := errors.Join(errs...); err != nil {
		return wrote, removed, fmt.Errorf("endpoint labels in %s: %w", d.cluster, err)
	}
	return wrote, removed, nil
}
