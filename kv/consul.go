package kv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// ConsulConfig says how to reach Consul and where tartan's keys live.
type ConsulConfig struct {
	Addresses []string // host:port of one or more servers (or local agents)
	Scheme    string   // http or https
	Prefix    string   // key prefix, ending in "/"
	Token     string
	CAFile    string
	CertFile  string
	KeyFile   string
}

// AttemptTimeout bounds one attempt against one server, so that a server
// that hangs leaves time to try the next.
const AttemptTimeout = 2500 * time.Millisecond

// Consul is the cluster Store over Consul's KV API. With several addresses
// it sticks to one server and moves to the next when that one is
// unreachable; every domain write is idempotent, so a retried write is safe.
type Consul struct {
	kvs      []*api.KV
	sessions []*api.Session
	idle     []*http.Transport
	cfg      ConsulConfig
	prefix   string
	cur      atomic.Int32
}

// NewConsul builds a Consul store; it does not contact the servers.
func NewConsul(cfg ConsulConfig) (*Consul, error) {
	if len(cfg.Addresses) == 0 {
		return nil, errors.New("consul: no address")
	}
	c := &Consul{cfg: cfg}
	for _, addr := range cfg.Addresses {
		// Pooled connections: a blocking query re-issued on a kept-alive
		// connection costs no TCP (or TLS) setup. Keep enough idle ones
		// for every watch of a host to find its own. No cap on open
		// connections: requests stuck on a dead connection (a partition)
		// must not keep the next ones waiting once the network is back;
		// the callers bound their bursts (routing lists a few pools at a
		// time).
		ac := api.DefaultConfig()
		ac.Transport.MaxIdleConnsPerHost = MaxIdleConns
		ac.Transport.DialContext = dialer().DialContext // dead connections found in seconds (dial.go)
		ac.Address = addr
		ac.Scheme = cfg.Scheme
		ac.Token = cfg.Token
		ac.TLSConfig = api.TLSConfig{CAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile}
		hc, err := api.NewHttpClient(ac.Transport, ac.TLSConfig)
		if err != nil {
			return nil, fmt.Errorf("consul client for %s: %w", addr, err)
		}
		hc.Transport = statusRecorder{hc.Transport}
		ac.HttpClient = hc
		client, err := api.NewClient(ac)
		if err != nil {
			return nil, fmt.Errorf("consul client for %s: %w", addr, err)
		}
		c.kvs = append(c.kvs, client.KV())
		c.sessions = append(c.sessions, client.Session())
		c.idle = append(c.idle, ac.Transport)
	}
	c.prefix = strings.TrimPrefix(cfg.Prefix, "/")
	if c.prefix != "" && !strings.HasSuffix(c.prefix, "/") {
		c.prefix += "/"
	}
	return c, nil
}

func (c *Consul) String() string {
	return fmt.Sprintf("consul at %s://%s (prefix %q)", c.cfg.Scheme, strings.Join(c.cfg.Addresses, ","), c.prefix)
}

// MaxIdleConns is how many idle connections a Consul store keeps per
// server: Consul allows 200 per client address by default
// (http_max_conns_per_client), idle ones included, and a host's blocking
// queries hold 4 of them whatever its number of networks.
const MaxIdleConns = 32

// Close drops the store's idle connections.
func (c *Consul) Close() error {
	for _, t := range c.idle {
		t.CloseIdleConnections()
	}
	return nil
}

// The api package gives some failures as text only (its Txn turns every
// status but 200 and 409 into "Failed request: <body>"): statusRecorder
// notes each answer's HTTP status in the request's context, and withStatus
// makes such a failure the api.StatusError it is, so that failure classifies
// by type.
type statusKey struct{}

type statusRecorder struct{ next http.RoundTripper }

func (s statusRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := s.next.RoundTrip(req)
	if h, ok := req.Context().Value(statusKey{}).(*atomic.Int32); ok && err == nil {
		h.Store(int32(resp.StatusCode))
	}
	return resp, err
}

// withStatus gives a failure answered with an error status its status.
func withStatus(err error, status int) error {
	var se api.StatusError
	if err == nil || status < 400 || errors.As(err, &se) {
		return err
	}
	return api.StatusError{Code: status, Body: strings.TrimPrefix(err.Error(), "Failed request: ")}
}

// failure says what kind of failure err is: ErrUnavailable (Consul cannot
// answer now: try the next server, or later), ErrDenied (the token may not
// do this: nothing but a fix helps), or nil (anything else).
func failure(err error) error {
	switch {
	case errors.Is(err, ErrDenied):
		return ErrDenied
	case errors.Is(err, ErrUnavailable):
		return ErrUnavailable
	}
	var se api.StatusError
	if errors.As(err, &se) {
		switch {
		case se.Code == http.StatusForbidden:
			return ErrDenied
		case se.Code >= 500, se.Code == http.StatusTooManyRequests:
			return ErrUnavailable
		}
		return nil
	}
	var ue *url.Error
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ue) || errors.As(err, &ne) {
		return ErrUnavailable
	}
	return nil
}

// tlsFailure says whether err is a TLS handshake's: a certificate that
// does not verify, or TLS spoken to a server that does not.
func tlsFailure(err error) bool {
	var cv *tls.CertificateVerificationError
	var rh tls.RecordHeaderError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &cv) || errors.As(err, &rh) || errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci)
}

// deniedText recognises Consul's ACL refusals: "Permission denied" (the
// token lacks a permission) and "ACL not found" (the token is unknown).
func deniedText(msg string) bool {
	return strings.Contains(msg, "Permission denied") || strings.Contains(msg, "ACL not found")
}

func unavailable(err error) bool { return failure(err) == ErrUnavailable }

// classify turns failures into ErrUnavailable and ErrDenied so that callers
// can tell "Consul is down" and "the token may not" from "Consul said no".
func (c *Consul) classify(op, key string, err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	switch failure(err) {
	case ErrUnavailable:
		if tlsFailure(err) {
			// Named as what it is: a wrong CA looked like an outage
			// (issue 24, audit L4).
			return fmt.Errorf("%s %s: %s: %w: TLS with the server failed (%w): check CONSUL_CACERT (the CA that signed the server's certificate), the server's name in STORE and CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY",
				op, key, c, ErrUnavailable, err)
		}
		return fmt.Errorf("%s %s: %s: %w (%w)", op, key, c, ErrUnavailable, err)
	case ErrDenied:
		return fmt.Errorf("%s %s: %s: %w (%w): set CONSUL_HTTP_TOKEN to a Consul token with write access to key_prefix %q",
			op, key, c, ErrDenied, err, c.prefix)
	}
	return fmt.Errorf("%s %s: %s: %w", op, key, c, err)
}

// do runs op against the current server and, while servers are unreachable,
// against the next ones, each attempt with its own timeout (blocking queries
// bring their own, with attempt false).
func (c *Consul) do(ctx context.Context, name, key string, attempt bool, op func(ctx context.Context, kv *api.KV) error) error {
	return c.doServer(ctx, name, key, attempt, func(ctx context.Context, idx int) error { return op(ctx, c.kvs[idx]) })
}

// doServer is do for an op that needs more of the server than its KV API
// (idx: the server's index in kvs and sessions).
func (c *Consul) doServer(ctx context.Context, name, key string, attempt bool, op func(ctx context.Context, idx int) error) error {
	var err error
	start := int(c.cur.Load())
	for i := 0; i < len(c.kvs); i++ {
		idx := (start + i) % len(c.kvs)
		actx, cancel := ctx, context.CancelFunc(func() {})
		if attempt && len(c.kvs) > 1 {
			actx, cancel = context.WithTimeout(ctx, AttemptTimeout)
		}
		status := new(atomic.Int32)
		err = withStatus(op(context.WithValue(actx, statusKey{}, status), idx), int(status.Load()))
		cancel()
		if err == nil || !unavailable(err) || ctx.Err() != nil {
			break
		}
		c.cur.CompareAndSwap(int32(start), int32((idx+1)%len(c.kvs)))
	}
	if err != nil {
		return c.classify(name, key, err)
	}
	return nil
}

func (c *Consul) query(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{}).WithContext(ctx)
}

func (c *Consul) Get(ctx context.Context, key string) (Pair, error) {
	var p *api.KVPair
	err := c.do(ctx, "get", key, true, func(ctx context.Context, kv *api.KV) (err error) {
		p, _, err = kv.Get(c.prefix+key, c.query(ctx))
		return err
	})
	if err != nil {
		return Pair{}, err
	}
	if p == nil {
		return Pair{}, ErrNotFound
	}
	return Pair{Key: key, Value: p.Value, Version: p.ModifyIndex}, nil
}

func (c *Consul) Put(ctx context.Context, key string, value []byte, version uint64) (uint64, error) {
	var ok bool
	var resp *api.KVTxnResponse
	ops := api.KVTxnOps{{Verb: api.KVCAS, Key: c.prefix + key, Value: value, Index: version}}
	if version == Any {
		ops[0] = &api.KVTxnOp{Verb: api.KVSet, Key: c.prefix + key, Value: value}
	}
	err := c.do(ctx, "put", key, true, func(ctx context.Context, kv *api.KV) (err error) {
		ok, resp, _, err = kv.Txn(ops, c.query(ctx))
		return err
	})
	if err != nil {
		return 0, err
	}
	next, err := txnOutcome(ok, resp)
	if err != nil && !errors.Is(err, ErrConflict) {
		return 0, c.classify("put", key, err)
	}
	return next, err
}

func (c *Consul) Txn(ctx context.Context, ops []Op) (uint64, error) {
	if err := checkOps(ops); err != nil {
		return 0, err
	}
	tops := make(api.KVTxnOps, 0, len(ops))
	for _, op := range ops {
		t := &api.KVTxnOp{Verb: api.KVCAS, Key: c.prefix + op.Key, Value: op.Value, Index: op.Version}
		switch {
		case op.Check && op.Version == 0:
			t = &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: c.prefix + op.Key}
		case op.Check:
			t = &api.KVTxnOp{Verb: api.KVCheckIndex, Key: c.prefix + op.Key, Index: op.Version}
		case !op.Delete && op.Version == Any:
			t = &api.KVTxnOp{Verb: api.KVSet, Key: c.prefix + op.Key, Value: op.Value}
		case op.Delete && op.Version == 0:
			t = &api.KVTxnOp{Verb: api.KVDelete, Key: c.prefix + op.Key}
		case op.Delete:
			t = &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: c.prefix + op.Key, Index: op.Version}
		}
		tops = append(tops, t)
	}
	var ok bool
	var resp *api.KVTxnResponse
	err := c.do(ctx, "txn", ops[0].Key, true, func(ctx context.Context, kv *api.KV) (err error) {
		ok, resp, _, err = kv.Txn(tops, c.query(ctx))
		return err
	})
	if err != nil {
		return 0, err
	}
	if ok && resp != nil {
		// Written keys answer with the transaction's index; checked ones
		// with their own, older one.
		var index uint64
		for _, r := range resp.Results {
			if r != nil {
				index = max(index, r.ModifyIndex)
			}
		}
		return index, nil
	}
	if _, err := txnOutcome(false, resp); !errors.Is(err, ErrConflict) {
		return 0, c.classify("txn", ops[0].Key, err)
	}
	return 0, ErrConflict
}

// staleText recognises Consul's reasons for a compare that did not hold:
// a set or delete by index ("failed to set key \"k\", index is stale"), an
// index check ("failed index check for key…", "failed to check index, key
// … doesn't exist") and a check that a key is absent ("key \"k\" exists").
func staleText(what string) bool {
	return strings.Contains(what, "index is stale") || strings.Contains(what, "failed index check") ||
		strings.Contains(what, "failed to check index") || (strings.HasPrefix(what, "key ") && strings.HasSuffix(what, " exists"))
}

// txnError is an operation of a transaction that Consul refused.
type txnError struct {
	what  string
	class error // ErrDenied, or nil
}

func (e *txnError) Error() string        { return "Consul refused the write: " + e.what }
func (e *txnError) Is(target error) bool { return e.class != nil && target == e.class }

// txnOutcome reads the answer to a one-operation KV transaction. Consul
// rolls a transaction back with a reason per failed operation: only a stale
// index is a lost compare-and-set (ErrConflict, which callers retry); an ACL
// refusal, a value over the size limit or anything else is Consul saying no,
// which retrying cannot change.
func txnOutcome(ok bool, resp *api.KVTxnResponse) (uint64, error) {
	if ok && resp != nil && len(resp.Results) == 1 && resp.Results[0] != nil {
		return resp.Results[0].ModifyIndex, nil
	}
	if resp == nil || len(resp.Errors) == 0 {
		return 0, &txnError{what: "no result and no reason given"}
	}
	var what []string
	stale, denied := true, false
	for _, e := range resp.Errors {
		if e == nil {
			continue
		}
		what = append(what, e.What)
		switch {
		case staleText(e.What):
		case deniedText(e.What):
			stale, denied = false, true
		default:
			stale = false
		}
	}
	switch {
	case len(what) == 0:
		return 0, &txnError{what: "no result and no reason given"}
	case stale:
		return 0, ErrConflict
	case denied:
		return 0, &txnError{what: strings.Join(what, "; "), class: ErrDenied}
	}
	return 0, &txnError{what: strings.Join(what, "; ")}
}

func (c *Consul) Delete(ctx context.Context, key string, version uint64) error {
	ok := true
	err := c.do(ctx, "delete", key, true, func(ctx context.Context, kv *api.KV) (err error) {
		w := (&api.WriteOptions{}).WithContext(ctx)
		if version == 0 {
			_, err = kv.Delete(c.prefix+key, w)
			return err
		}
		ok, _, err = kv.DeleteCAS(&api.KVPair{Key: c.prefix + key, ModifyIndex: version}, w)
		return err
	})
	if err != nil {
		return err
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
	var ps api.KVPairs
	var meta *api.QueryMeta
	err := c.do(ctx, "list", prefix, wait == 0, func(ctx context.Context, kv *api.KV) (err error) {
		q := c.query(ctx)
		if wait > 0 {
			// Watches may be served by any server (a follower is at most
			// a few tens of milliseconds behind): they only say what to
			// look at, and the leader keeps its capacity for the
			// compare-and-set writes and the reads they depend on.
			q.WaitIndex = wait
			q.WaitTime = 5 * time.Minute
			q.AllowStale = true
		}
		ps, meta, err = kv.List(c.prefix+prefix, q)
		return err
	})
	if err != nil {
		return nil, wait, err
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
