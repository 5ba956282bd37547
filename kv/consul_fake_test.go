package kv_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/tartan-net/tartan/kv"
)

// fakeConsul answers the Consul HTTP API calls the store makes with canned
// replies, so that the classification of Consul's refusals is tested
// without a Consul binary. It counts transactions.
type fakeConsul struct {
	mu   sync.Mutex
	txn  func() (int, string) // status and body of PUT /v1/txn
	get  func() (int, string) // status and body of GET /v1/kv/...
	txns int
}

func (f *fakeConsul) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var code int
	var body string
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/v1/txn":
		f.txns++
		code, body = f.txn()
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/kv/"):
		code, body = f.get()
	default:
		code, body = http.StatusNotFound, ""
	}
	if strings.HasPrefix(body, "{") {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(code)
	fmt.Fprint(w, body)
}

func reply(code int, body string) func() (int, string) {
	return func() (int, string) { return code, body }
}

func txnErrors(what string) string {
	return fmt.Sprintf(`{"Results":null,"Errors":[{"OpIndex":0,"What":%q}]}`, what)
}

// M12: Put used to report every rolled-back transaction as ErrConflict, so
// an ACL refusal made kv.Update and the IPAM retry ~100 times and then say
// "changed concurrently". Before the fix the "denied" cases below were
// ErrConflict and Update made 102 transactions; now only a stale index is
// a conflict, an ACL refusal is ErrDenied naming the store and the fix, and
// Update stops after one transaction.
func TestConsulRefusalsAreClassified(t *testing.T) {
	f := &fakeConsul{get: reply(http.StatusNotFound, "")}
	srv := httptest.NewServer(f)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	s, err := kv.NewConsul(kv.ConsulConfig{Addresses: []string{addr}, Scheme: "http", Prefix: "tartan/"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	denied := "Permission denied: token with AccessorID 'a1' lacks permission 'key:write' on \"tartan/k\""
	for _, c := range []struct {
		name  string
		txn   func() (int, string)
		class error // nil: none of the classes
		words []string
	}{
		{"stale index", reply(http.StatusConflict, txnErrors(`failed to set key "tartan/k", index is stale`)), kv.ErrConflict, nil},
		{"ACL refusal", reply(http.StatusConflict, txnErrors(denied)), kv.ErrDenied,
			[]string{"put k", addr, "lacks permission 'key:write'", "CONSUL_HTTP_TOKEN", `key_prefix "tartan/"`}},
		{"unknown token", reply(http.StatusForbidden, "ACL not found"), kv.ErrDenied, []string{"ACL not found", "CONSUL_HTTP_TOKEN"}},
		{"other refusal", reply(http.StatusConflict, txnErrors(`failed to lock key "tartan/k" due to lock delay`)), nil,
			[]string{"put k", addr, "lock delay"}},
		{"no reason", reply(http.StatusConflict, `{"Results":null,"Errors":null}`), nil, []string{"no reason"}},
		{"no leader", reply(http.StatusInternalServerError, "No cluster leader"), kv.ErrUnavailable, []string{addr}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f.mu.Lock()
			f.txn = c.txn
			f.mu.Unlock()
			_, err := s.Put(ctx, "k", []byte("v"), 0)
			checkClass(t, err, c.class, c.words)
		})
	}

	// Retry loops stop at once on a refusal.
	f.mu.Lock()
	f.txn, f.txns = reply(http.StatusConflict, txnErrors(denied)), 0
	f.mu.Unlock()
	_, err = kv.Update(ctx, s, "k", func(h *kv.Host, _ bool) error { h.ID = "x"; return nil })
	if !errors.Is(err, kv.ErrDenied) || f.txns != 1 {
		t.Fatalf("Update: want ErrDenied after one transaction, got %v after %d", err, f.txns)
	}

	// Plain requests: the api package's StatusError, by code.
	for _, c := range []struct {
		name  string
		get   func() (int, string)
		class error
	}{
		{"get forbidden", reply(http.StatusForbidden, "Permission denied"), kv.ErrDenied},
		{"get server error", reply(http.StatusInternalServerError, "rpc error making call: EOF"), kv.ErrUnavailable},
		{"get rate limited", reply(http.StatusTooManyRequests, "rate limit exceeded"), kv.ErrUnavailable},
		{"get bad request", reply(http.StatusBadRequest, "Invalid key"), nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			f.mu.Lock()
			f.get = c.get
			f.mu.Unlock()
			_, err := s.Get(ctx, "k")
			checkClass(t, err, c.class, []string{addr})
		})
	}
}

func checkClass(t *testing.T, err error, class error, words []string) {
	t.Helper()
	if err == nil {
		t.Fatal("want an error")
	}
	for _, other := range []error{kv.ErrConflict, kv.ErrDenied, kv.ErrUnavailable, kv.ErrNotFound} {
		if errors.Is(err, other) != (other == class) {
			t.Fatalf("%v: errors.Is(%v) = %v, want class %v", err, other, errors.Is(err, other), class)
		}
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("%v: does not say %q", err, w)
		}
	}
}

// Issue 24, audit L4: a server whose certificate does not verify (a wrong
// CONSUL_CACERT) is named as a TLS failure, not as an outage alone.
func TestConsulTLSFailureNamed(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	c, err := kv.NewConsul(kv.ConsulConfig{Addresses: []string{strings.TrimPrefix(srv.URL, "https://")}, Scheme: "https", Prefix: "tartan/"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(context.Background(), "x")
	if err == nil || !errors.Is(err, kv.ErrUnavailable) || !strings.Contains(err.Error(), "TLS with the server failed") || !strings.Contains(err.Error(), "CONSUL_CACERT") {
		t.Fatalf("error: %v", err)
	}
}
