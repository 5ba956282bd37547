package kv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// ConsulConfig says how to reach Consul and where tartan's keys live.
type ConsulConfig struct {
	Address  string // host:port
	Scheme   string // http or https
	Prefix   string // key prefix, ending in "/"
	Token    string
	CAFile   string
	CertFile string
	KeyFile  string
}

// Consul is the cluster Store over Consul's KV API.
type Consul struct {
	kv     *api.KV
	cfg    ConsulConfig
	prefix string
}

// NewConsul builds a Consul store; it does not contact the server.
func NewConsul(cfg ConsulConfig) (*Consul, error) {
	c := api.DefaultNonPooledConfig()
	c.Address = cfg.Address
	c.Scheme = cfg.Scheme
	c.Token = cfg.Token
	c.TLSConfig = api.TLSConfig{CAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile}
	client, err := api.NewClient(c)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", cfg.Address, err)
	}
	prefix := strings.TrimPrefix(cfg.Prefix, "/")
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Consul{kv: client.KV(), cfg: cfg, prefix: prefix}, nil
}

func (c *Consul) String() string {
	return fmt.Sprintf("consul at %s://%s (prefix %q)", c.cfg.Scheme, c.cfg.Address, c.prefix)
}

func (c *Consul) Close() error { return nil }

// classify turns transport failures into ErrUnavailable so that callers can
// tell "Consul is down" from "Consul said no".
func (c *Consul) classify(op, key string, err error) error {
	var ue *url.Error
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ue), errors.As(err, &ne),
		strings.Contains(err.Error(), "No cluster leader"), strings.Contains(err.Error(), "Unexpected response code: 5"):
		return fmt.Errorf("%s %s: %s: %w (%v)", op, key, c, ErrUnavailable, err)
	}
	return fmt.Errorf("%s %s: %s: %w", op, key, c, err)
}

func (c *Consul) query(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{}).WithContext(ctx)
}

func (c *Consul) Get(ctx context.Context, key string) (Pair, error) {
	p, _, err := c.kv.Get(c.prefix+key, c.query(ctx))
	if err != nil {
		return Pair{}, c.classify("get", key, err)
	}
	if p == nil {
		return Pair{}, ErrNotFound
	}
	return Pair{Key: key, Value: p.Value, Version: p.ModifyIndex}, nil
}

func (c *Consul) Put(ctx context.Context, key string, value []byte, version uint64) (uint64, error) {
	ops := api.KVTxnOps{{Verb: api.KVCAS, Key: c.prefix + key, Value: value, Index: version}}
	ok, resp, _, err := c.kv.Txn(ops, c.query(ctx))
	if err != nil {
		return 0, c.classify("put", key, err)
	}
	if !ok || resp == nil || len(resp.Results) != 1 {
		return 0, ErrConflict
	}
	return resp.Results[0].ModifyIndex, nil
}

func (c *Consul) Delete(ctx context.Context, key string, version uint64) error {
	w := (&api.WriteOptions{}).WithContext(ctx)
	if version == 0 {
		_, err := c.kv.Delete(c.prefix+key, w)
		if err != nil {
			return c.classify("delete", key, err)
		}
		return nil
	}
	ok, _, err := c.kv.DeleteCAS(&api.KVPair{Key: c.prefix + key, ModifyIndex: version}, w)
	if err != nil {
		return c.classify("delete", key, err)
	}
	if !ok {
		// A CAS delete of a key that is already gone is a success.
		if _, gerr := c.Get(ctx, key); errors.Is(gerr, ErrNotFound) {
			return nil
		}
		return ErrConflict
	}
	return nil
}

func (c *Consul) list(ctx context.Context, prefix string, wait uint64) ([]Pair, uint64, error) {
	q := c.query(ctx)
	if wait > 0 {
		q.WaitIndex = wait
		q.WaitTime = 5 * time.Minute
	}
	ps, meta, err := c.kv.List(c.prefix+prefix, q)
	if err != nil {
		return nil, wait, c.classify("list", prefix, err)
	}
	out := make([]Pair, 0, len(ps))
	for _, p := range ps {
		out = append(out, Pair{Key: strings.TrimPrefix(p.Key, c.prefix), Value: p.Value, Version: p.ModifyIndex})
	}
	index := meta.LastIndex
	if index < wait {
		// Consul may reset indexes (snapshot restore); start over from 0.
		index = 0
	}
	return out, index, nil
}

func (c *Consul) List(ctx context.Context, prefix string) ([]Pair, uint64, error) {
	return c.list(ctx, prefix, 0)
}

func (c *Consul) Watch(ctx context.Context, prefix string, index uint64) ([]Pair, uint64, error) {
	if index == 0 {
		index = 1
	}
	return c.list(ctx, prefix, index)
}
