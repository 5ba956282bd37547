package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestSettings(t *testing.T) {
	s, err := ParseSettings(envOf(nil))
	if err != nil || s.Consul != nil || s.Scope != "local" || s.VXLANPort != 8472 || s.LeaseTTL.Hours() != 24 ||
		s.WireGuardPort != 51820 || s.WireGuardMode != "auto" || s.WireGuardRotate != "" {
		t.Fatalf("defaults: %+v %v", s, err)
	}
	s, err = ParseSettings(envOf(map[string]string{"WG_PORT": "51999", "WG_MODE": "userspace", "WG_ROTATE": " 2026-12 "}))
	if err != nil || s.WireGuardPort != 51999 || s.WireGuardMode != "userspace" || s.WireGuardRotate != "2026-12" {
		t.Fatalf("WireGuard settings: %+v %v", s, err)
	}
	s, err = ParseSettings(envOf(map[string]string{"STORE": "consul://10.0.0.5/cluster-a", "SCOPE": "global", "CONSUL_HTTP_TOKEN": "tok"}))
	if err != nil || s.Consul.Addresses[0] != "10.0.0.5:8500" || s.Consul.Prefix != "cluster-a/" || s.Consul.Token != "tok" || s.Scope != "global" {
		t.Fatalf("consul: %+v %+v %v", s, s.Consul, err)
	}
	// The token from a file (issue 24, audit L4); both, or an empty file,
	// are refused naming the settings; CLOCK_SKEW is read.
	tokenFile := filepath.Join(t.TempDir(), "consul.token")
	if err := os.WriteFile(tokenFile, []byte(" filetok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = ParseSettings(envOf(map[string]string{"STORE": "consul://10.0.0.5", "CONSUL_HTTP_TOKEN_FILE": tokenFile, "CLOCK_SKEW": "-72h"}))
	if err != nil || s.Consul.Token != "filetok" || s.ClockSkew != -72*time.Hour {
		t.Fatalf("token file, clock skew: %+v %v", s, err)
	}
	for _, bad := range []map[string]string{
		{"STORE": "consul://10.0.0.5", "CONSUL_HTTP_TOKEN_FILE": tokenFile, "CONSUL_HTTP_TOKEN": "tok"},
		{"STORE": "consul://10.0.0.5", "CONSUL_HTTP_TOKEN_FILE": filepath.Join(t.TempDir(), "none")},
		{"CLOCK_SKEW": "3y"},
	} {
		if _, err := ParseSettings(envOf(bad)); err == nil || (!strings.Contains(err.Error(), "CONSUL_HTTP_TOKEN_FILE") && !strings.Contains(err.Error(), "CLOCK_SKEW=3y")) {
			t.Errorf("%v: error %v", bad, err)
		}
	}
	s, err = ParseSettings(envOf(map[string]string{"STORE": "consul://a:8500,b,c:9500/x"}))
	if err != nil || strings.Join(s.Consul.Addresses, " ") != "a:8500 b:8500 c:9500" || s.Consul.Prefix != "x/" {
		t.Fatalf("several servers: %+v %v", s.Consul, err)
	}
	s, err = ParseSettings(envOf(map[string]string{"STORE": "consul+https://c.example:8501"}))
	if err != nil || s.Consul.Scheme != "https" || s.Consul.Prefix != "tartan/" {
		t.Fatalf("https: %+v %v", s.Consul, err)
	}
	for env, word := range map[string]string{
		"STORE=etcd://x":             "STORE=etcd://x: use consul://",
		"STORE=consul://":            "STORE=consul://",
		"STORE=consul://h:99999":     "STORE=",
		"SCOPE=swarm":                "SCOPE=swarm: use local or global",
		"VXLAN_PORT=0":               "VXLAN_PORT=0",
		"WG_PORT=70000":              "WG_PORT=70000: use a UDP port number",
		"WG_PORT=8472":               "WG_PORT=8472 is VXLAN_PORT too",
		"WG_MODE=fast":               "WG_MODE=fast: use auto",
		"LEASE_TTL=1s":               "LEASE_TTL=1s",
		"LOG_LEVEL=loud":             "LOG_LEVEL=loud",
		"RESYNC=0s":                  "RESYNC=0s",
		"AUTO_POOL=10.0.0.1/8":       "AUTO_POOL=10.0.0.1/8",
		"AUTO_POOL_SIZE=4":           "AUTO_POOL_SIZE=4",
		"CONSUL_CACERT=/nonexistent": "",
	} {
		k, v, _ := strings.Cut(env, "=")
		m := map[string]string{k: v}
		if k == "CONSUL_CACERT" {
			m["STORE"] = "consul://127.0.0.1:8500"
			word = "CONSUL_CACERT=/nonexistent"
		}
		_, err := ParseSettings(envOf(m))
		if err == nil || !strings.Contains(err.Error(), word) {
			t.Errorf("%s: error %v does not say %q", env, err, word)
		}
	}
	// TLS files with a plain-HTTP store were silently unused.
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = ParseSettings(envOf(map[string]string{"STORE": "consul://127.0.0.1:8500", "CONSUL_CACERT": ca}))
	if err == nil || !strings.Contains(err.Error(), "use consul+https://") {
		t.Errorf("TLS files with consul://: %v", err)
	}
}

// A wrong setting must leave the plugin runnable (it then answers every
// request with the error): every interval and limit keeps its default.
func TestBrokenSettingsKeepDefaults(t *testing.T) {
	for _, env := range []map[string]string{{"STORE": "etcd://x"}, {"SCOPE": "x"}, {"RESYNC": "0s"}, {"LOG_LEVEL": "x"}} {
		s, err := ParseSettings(envOf(env))
		if err == nil {
			t.Fatalf("%v: no error", env)
		}
		if s.Resync <= 0 || s.LeaseTTL <= 0 || RenewEvery(s.LeaseTTL) <= 0 || s.VXLANPort == 0 || !s.AutoPool.IsValid() || s.StateDir == "" {
			t.Fatalf("%v: unusable settings after an error: %+v", env, s)
		}
	}
}

func newTestHandler(t testing.TB, broken error) *Handler {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	store := kv.NewMemory()
	fw, err := firewall.New()
	if err != nil {
		t.Skipf("SKIPPED: %v", err)
	}
	im := ipam.New(store, ipam.Config{Host: "h1", AutoRange: netip.MustParsePrefix("10.240.0.0/12"), AutoBits: 24}, log)
	drv := driver.New(store, store, im, fw, driver.Config{Host: "h1"}, log)
	return NewHandler(drv, im, nil, log, broken)
}

func call(t testing.TB, h http.Handler, path, body string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s answered non-JSON %q: %v", path, rec.Body.String(), err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != contentType {
		t.Fatalf("%s content type %q", path, ct)
	}
	return rec.Code, out
}

func TestMux(t *testing.T) {
	h := newTestHandler(t, nil)
	code, out := call(t, h, "/Plugin.Activate", "")
	if code != 200 || fmt.Sprint(out["Implements"]) != "[NetworkDriver IpamDriver]" {
		t.Fatalf("activate: %d %v", code, out)
	}
	code, out = call(t, h, "/IpamDriver.GetCapabilities", "")
	if code != 200 || out["RequiresMACAddress"] != true || out["RequiresRequestReplay"] != true {
		t.Fatalf("ipam caps: %d %v", code, out)
	}
	code, out = call(t, h, "/NetworkDriver.GetCapabilities", "{}")
	if code != 200 || out["Scope"] != "local" || out["ConnectivityScope"] != "global" || out["GwAllocChecker"] != true {
		t.Fatalf("driver caps: %d %v", code, out)
	}
	// Docker 28+ asks before it reserves a gateway address: routed
	// networks route through the host's link-local address, macvlan
	// containers through the physical router, an address of the pool.
	for _, c := range []struct {
		body string
		skip bool
	}{
		{`{"Options":{}}`, true},
		{`{"Options":{"com.docker.network.generic":{"tartan.backend":"host-gw"}}}`, true},
		{`{"Options":{"com.docker.network.generic":{"tartan.backend":"macvlan","parent":"eth0"}}}`, false},
	} {
		code, out = call(t, h, "/NetworkDriver.GwAllocCheck", c.body)
		if code != 200 || out["SkipIPv4"] != c.skip || out["SkipIPv6"] != c.skip {
			t.Fatalf("gateway check %s: %d %v", c.body, code, out)
		}
	}
	if code, out = call(t, h, "/NetworkDriver.GwAllocCheck", `{"Options":{"com.docker.network.generic":{"tartan.backend":"ipsec"}}}`); code != 400 || !strings.Contains(fmt.Sprint(out["Err"]), "unknown backend") {
		t.Fatalf("gateway check of a bad backend: %d %v", code, out)
	}
	code, out = call(t, h, "/IpamDriver.GetDefaultAddressSpaces", "")
	if code != 200 || out["LocalDefaultAddressSpace"] != ipam.LocalSpace {
		t.Fatalf("spaces: %d %v", code, out)
	}
	code, out = call(t, h, "/IpamDriver.RequestPool", `{"AddressSpace":"tartan-local","Pool":"10.9.0.0/16"}`)
	if code != 200 || out["PoolID"] != "local:10.9.0.0/16" || out["Pool"] != "10.9.0.0/16" {
		t.Fatalf("pool: %d %v", code, out)
	}
	code, out = call(t, h, "/IpamDriver.RequestAddress", `{"PoolID":"local:10.9.0.0/16","Options":{"com.docker.network.endpoint.macaddress":"02:42:00:00:00:01"}}`)
	if code != 200 || out["Address"] != "10.9.0.1/32" {
		t.Fatalf("address: %d %v", code, out)
	}
	for _, c := range []struct {
		path, body string
		code       int
		word       string
	}{
		{"/NetworkDriver.CreateNetwork", `{"NetworkID":`, 400, "malformed JSON"},
		{"/IpamDriver.RequestPool", `[1,2]`, 400, "malformed JSON"},
		{"/IpamDriver.RequestPool", `{"AddressSpace":"tartan-local","Pool":"10.9.128.0/17"}`, 409, "overlaps tartan pool 10.9.0.0/16"},
		{"/IpamDriver.RequestAddress", `{"PoolID":"LocalDefault/10.1.0.0/16"}`, 400, "--ipam-driver tartan:latest"},
		{"/NetworkDriver.CreateNetwork", `{"NetworkID":"n1","Options":{"com.docker.network.generic":{"tartan.backend":"carrier-pigeon"}},"IPv4Data":[{"AddressSpace":"tartan-local","Pool":"10.9.0.0/16"}]}`, 400, "unknown backend"},
		{"/NetworkDriver.CreateNetwork", `{"NetworkID":"n1","Options":{"com.docker.network.generic":{"colour":"red"}},"IPv4Data":[{"AddressSpace":"tartan-local","Pool":"10.9.0.0/16"}]}`, 400, "unknown option -o colour"},
		{"/NetworkDriver.CreateNetwork", `{"NetworkID":"n1","Options":{},"IPv4Data":[{"AddressSpace":"LocalDefault","Pool":"172.19.0.0/16"}]}`, 400, "add --ipam-driver tartan:latest"},
		{"/NetworkDriver.Join", `{"NetworkID":"n1","EndpointID":"nope"}`, 400, "not known"},
		{"/NetworkDriver.Nonsense", `{}`, 404, "does not implement"},
	} {
		code, out := call(t, h, c.path, c.body)
		msg, _ := out["Err"].(string)
		if code != c.code || !strings.Contains(msg, c.word) {
			t.Errorf("%s %s: %d %q, want %d with %q", c.path, c.body, code, msg, c.code, c.word)
		}
	}
}

func TestBrokenSettingsReachTheUser(t *testing.T) {
	h := newTestHandler(t, errors.New("STORE=etcd://x: use consul://host:8500"))
	if code, _ := call(t, h, "/Plugin.Activate", ""); code != 200 {
		t.Fatal("activate must work so that Docker shows the error")
	}
	code, out := call(t, h, "/IpamDriver.RequestPool", `{"AddressSpace":"tartan-local","Pool":"10.9.0.0/16"}`)
	if code != 503 || !strings.Contains(out["Err"].(string), "STORE=etcd://x") {
		t.Fatalf("%d %v", code, out)
	}
}

func TestStatus(t *testing.T) {
	for err, want := range map[error]int{
		errdefs.Invalid("x"):                         400,
		errdefs.InUse("x"):                           409,
		fmt.Errorf("wrapped: %w", kv.ErrUnavailable): 503,
		fmt.Errorf("wrapped: %w", kv.ErrDenied):      403,
		errors.New("boom"):                           500,
	} {
		if got := Status(err); got != want {
			t.Errorf("%v: %d, want %d", err, got, want)
		}
	}
}

var fuzzPaths = []string{"/NetworkDriver.CreateNetwork", "/NetworkDriver.CreateEndpoint", "/NetworkDriver.Join",
	"/NetworkDriver.Leave", "/NetworkDriver.DeleteEndpoint", "/NetworkDriver.DeleteNetwork", "/NetworkDriver.AllocateNetwork",
	"/NetworkDriver.EndpointOperInfo", "/NetworkDriver.ProgramExternalConnectivity", "/IpamDriver.RequestPool",
	"/IpamDriver.RequestAddress", "/IpamDriver.ReleaseAddress", "/IpamDriver.ReleasePool"}

// FuzzRequestDecoding sends arbitrary bodies to every endpoint of a plugin
// whose settings are broken (so no request reaches the kernel): every answer
// must be JSON with an error, never a crash.
func FuzzRequestDecoding(f *testing.F) {
	f.Add(0, `{"NetworkID":"x","Options":{"com.docker.network.generic":{"a":1}}}`)
	f.Add(3, `{`)
	f.Add(9, `{"AddressSpace":"tartan-local","Pool":"10.0.0.0/8","Options":null}`)
	f.Add(10, `{"PoolID":"local:10.0.0.0/8","Address":"10.0.0.1"}`)
	f.Add(1, `{"Interface":{"Address":5}}`)
	h := newTestHandler(f, errors.New("broken for the fuzzer"))
	f.Fuzz(func(t *testing.T, which int, body string) {
		path := fuzzPaths[uint(which)%uint(len(fuzzPaths))]
		code, out := call(t, h, path, body)
		if code != 400 && code != 503 {
			t.Fatalf("%s %q: status %d", path, body, code)
		}
		if _, ok := out["Err"].(string); !ok {
			t.Fatalf("%s %q: no Err in %v", path, body, out)
		}
	})
}

// FuzzIPAMRequests drives the real IPAM (in memory) with arbitrary pools,
// ranges, options and addresses: no crash, and every refusal is classified
// as the caller's mistake or a conflict, never an internal error.
func FuzzIPAMRequests(f *testing.F) {
	f.Add("10.1.0.0/16", "", "26", "10.1.0.5")
	f.Add("10.1.0.0/30", "10.1.0.0/31", "x", "")
	f.Add("::/0", "1.2.3.4/5", "", "banana")
	f.Add("", "", "", "")
	f.Fuzz(func(t *testing.T, pool, sub, bs, address string) {
		log := logrus.New()
		log.SetOutput(io.Discard)
		im := ipam.New(kv.NewMemory(), ipam.Config{Host: "h", AutoRange: netip.MustParsePrefix("10.240.0.0/12"), AutoBits: 24}, log)
		opts := map[string]string{}
		if bs != "" {
			opts[ipam.OptBlockSize] = bs
		}
		ctx := t.Context()
		id, err := im.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: pool, SubPool: sub, Options: opts})
		if err != nil {
			if s := Status(err); s != 400 && s != 409 {
				t.Fatalf("RequestPool(%q,%q,%q): %d %v", pool, sub, bs, s, err)
			}
			return
		}
		a, err := im.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Address: address, Options: map[string]string{ipam.OptMACAddress: "02:00:00:00:00:01"}})
		if err != nil {
			if s := Status(err); s != 400 && s != 409 {
				t.Fatalf("RequestAddress(%q): %d %v", address, s, err)
			}
			return
		}
		if !id.CIDR.Contains(a.Addr()) {
			t.Fatalf("address %s outside pool %s", a, id.CIDR)
		}
	})
}

// M7: a failed underlay lookup used to register Address "" and every peer
// then withdrew its routes to this host at once. Before the fix the second
// renewal below stored "" (and the first registration of h2 stored "" too).
func TestRegisterHostKeepsAddressWhenLookupFails(t *testing.T) {
	ctx := context.Background()
	store := kv.NewMemory()
	found := func(string) (kernel.Underlay, error) {
		return kernel.Underlay{Interface: "eth0", Address: netip.MustParseAddr("10.98.0.11")}, nil
	}
	flap := func(string) (kernel.Underlay, error) {
		return kernel.Underlay{}, errors.New("no default route to find the advertise address: set ADVERTISE")
	}
	reg := &Registrar{Store: store, Host: "h1", Lookup: found}
	if err := reg.Register(ctx); err != nil {
		t.Fatal(err)
	}
	var first kv.Host
	if _, err := kv.GetJSON(ctx, store, kv.HostPath("h1"), &first); err != nil || first.Address != "10.98.0.11" || !first.Renewals {
		t.Fatalf("first registration: %+v %v", first, err)
	}
	var r1 kv.Renewal
	if _, err := kv.GetJSON(ctx, store, kv.RenewalPath("h1"), &r1); err != nil {
		t.Fatalf("first renewal: %v", err)
	}
	time.Sleep(2 * time.Millisecond)
	reg.Lookup = flap
	err := reg.Register(ctx)
	if err == nil || !strings.Contains(err.Error(), "last known address 10.98.0.11") || !strings.Contains(err.Error(), "no default route") {
		t.Fatalf("a renewal without a lookup must say it kept the address: %v", err)
	}
	var kept kv.Host
	var r2 kv.Renewal
	if _, err := kv.GetJSON(ctx, store, kv.HostPath("h1"), &kept); err != nil || kept.Address != "10.98.0.11" {
		t.Fatalf("record after a failed lookup: %+v %v", kept, err)
	}
	if _, err := kv.GetJSON(ctx, store, kv.RenewalPath("h1"), &r2); err != nil || !r2.Renewed.After(r1.Renewed) {
		t.Fatalf("the host's liveness was not renewed: %+v (first %+v) %v", r2, r1, err)
	}
	// A host that never had an address is not registered with none.
	err = (&Registrar{Store: store, Host: "h2", Lookup: flap}).Register(ctx)
	if err == nil || !strings.Contains(err.Error(), "h2 is not registered") {
		t.Fatalf("first registration without an address: %v", err)
	}
	if _, err := store.Get(ctx, kv.HostPath("h2")); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("h2 was registered without an address: %v", err)
	}
	// An invalid answer is a failed lookup too.
	reg.Lookup = func(string) (kernel.Underlay, error) { return kernel.Underlay{Interface: "eth9"}, nil }
	if err := reg.Register(ctx); err == nil {
		t.Fatal("an underlay without an address must not be registered")
	}
	if _, err := kv.GetJSON(ctx, store, kv.HostPath("h1"), &kept); err != nil || kept.Address != "10.98.0.11" {
		t.Fatalf("after an empty lookup: %+v %v", kept, err)
	}
}

// Issue 10: every rewrite of hosts/<id> wakes every watcher of hosts/ on
// every host, and each host rewrote its record every minute. Now the
// record is written when the address or the version changes; liveness is
// renewed every Fresh under renewals/, which nobody watches; and the
// record's renewal time is kept fresh only while a host of an older version
// (which reads liveness there) is registered.
func TestRegisterHostWritesOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	store := kv.NewMemory()
	addr := "10.98.0.11"
	lookup := func(string) (kernel.Underlay, error) {
		return kernel.Underlay{Interface: "eth0", Address: netip.MustParseAddr(addr)}, nil
	}
	version := func(key string) uint64 {
		t.Helper()
		p, err := store.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return p.Version
	}
	reg := &Registrar{Store: store, Host: "h1", Fresh: time.Hour, Lookup: lookup}
	if err := reg.Register(ctx); err != nil {
		t.Fatal(err)
	}
	first, renewal := version(kv.HostPath("h1")), version(kv.RenewalPath("h1"))
	for i := 0; i < 5; i++ {
		if err := reg.Register(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if v, r := version(kv.HostPath("h1")), version(kv.RenewalPath("h1")); v != first || r != renewal {
		t.Fatalf("five checks of a fresh registration wrote (record %d→%d, renewal %d→%d)", first, v, renewal, r)
	}
	addr = "10.98.0.12"
	if err := reg.Register(ctx); err != nil {
		t.Fatal(err)
	}
	var h kv.Host
	if _, err := kv.GetJSON(ctx, store, kv.HostPath("h1"), &h); err != nil || h.Address != "10.98.0.12" || version(kv.HostPath("h1")) == first {
		t.Fatalf("a new address is written at the next check: %+v %v", h, err)
	}
	second := version(kv.HostPath("h1"))
	// Renewals go to renewals/ only, every Fresh.
	reg.Fresh = time.Millisecond
	time.Sleep(2 * time.Millisecond)
	if err := reg.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if version(kv.RenewalPath("h1")) == renewal || version(kv.HostPath("h1")) != second {
		t.Fatal("a due renewal must be written to renewals/ and leave the record alone")
	}
	// A host of an older version reads liveness from records only: the
	// record is kept fresh for it.
	if _, err := kv.PutJSON(ctx, store, kv.HostPath("old"), kv.Host{ID: "old", Address: "10.98.0.13", Renewed: time.Now()}, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	if err := reg.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if version(kv.HostPath("h1")) == second {
		t.Fatal("with an older host registered, the record's renewal was not kept fresh")
	}
	if got := RenewAfter(24 * time.Hour); got != time.Hour {
		t.Fatalf("RenewAfter(24h) = %s, want 1h", got)
	}
	if got := RenewAfter(10 * time.Second); got != 2500*time.Millisecond {
		t.Fatalf("RenewAfter(10s) = %s", got)
	}
}

// TestRegisterWireGuardKey: the host record carries the WireGuard public
// key and port, and a new key (tartan rotate-key) is written at the next
// registration, with nothing else changed.
func TestRegisterWireGuardKey(t *testing.T) {
	ctx := context.Background()
	store := kv.NewMemory()
	key := "YJHIPxAZTj+lWshYbkCKy78Q0wjDVE4iqjOv2GtuKlk="
	reg := &Registrar{Store: store, Host: "h1", Fresh: time.Hour, WireGuard: func() (string, int) { return key, 51820 },
		Lookup: func(string) (kernel.Underlay, error) {
			return kernel.Underlay{Interface: "eth0", Address: netip.MustParseAddr("10.98.0.11")}, nil
		}}
	var h kv.Host
	if err := reg.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.GetJSON(ctx, store, kv.HostPath("h1"), &h); err != nil || h.WireGuardKey != key || h.WireGuardPort != 51820 {
		t.Fatalf("record %+v %v", h, err)
	}
	key = "StMdz7wFXgyW9vmlAXMZaABxFlniWIOZ3XnPJCfjyWM="
	if err := reg.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.GetJSON(ctx, store, kv.HostPath("h1"), &h); err != nil || h.WireGuardKey != key || h.Address != "10.98.0.11" {
		t.Fatalf("record after the rotation %+v %v", h, err)
	}
}
