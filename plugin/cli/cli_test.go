package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin"
	"github.com/tartan-net/tartan/plugin/api"
	"github.com/tartan-net/tartan/plugin/cli"
)

// serve runs a plugin handler (in-memory stores, no kernel) on a unix
// socket and returns the socket.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "tartan.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	rc := cli.Run(args, &out, &errb)
	return rc, out.String(), errb.String()
}

func TestStatusAndHosts(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	log := logrus.New()
	log.SetOutput(io.Discard)
	store := kv.NewMemory()
	for key, v := range map[string]any{
		kv.HostPath("h1"):                          kv.Host{ID: "h1", Address: "10.0.0.1", Version: "v1", Renewed: now.Add(-time.Minute)},
		kv.HostPath("h2"):                          kv.Host{ID: "h2", Address: "10.0.0.2", Version: "v1", Renewed: now.Add(-3 * time.Hour)},
		kv.BlockPath("10.1.0.0/16", "10.1.0.0/26"): kv.Block{CIDR: "10.1.0.0/26", Pool: "10.1.0.0/16", Host: "h1", Expires: now.Add(time.Hour)},
	} {
		if _, err := kv.PutJSON(ctx, store, key, v, kv.Any); err != nil {
			t.Fatal(err)
		}
	}
	// The plugin's witness first saw both hosts three hours ago; h1 has
	// renewed since (its record changed), h2 has not.
	witness := kv.NewWitness()
	if _, err := kv.Census(ctx, store, witness, now.Add(-3*time.Hour), time.Hour, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutJSON(ctx, store, kv.HostPath("h1"), kv.Host{ID: "h1", Address: "10.0.0.1", Version: "v1", Renewed: now}, kv.Any); err != nil {
		t.Fatal(err)
	}
	im := ipam.New(store, ipam.Config{Host: "h1", AutoRange: netip.MustParsePrefix("10.240.0.0/12"), AutoBits: 24, LeaseTTL: time.Hour,
		Now: func() time.Time { return now }, Witness: witness}, log)
	drv := driver.New(store, store, im, &firewall.Firewall{}, driver.Config{Host: "h1"}, log)
	h := plugin.NewHandler(drv, im, nil, log, nil)
	h.ServeAdmin(plugin.Admin{Host: "h1", Store: store.String(), Scope: "local", Cluster: store, LeaseTTL: time.Hour, Now: func() time.Time { return now }, Witness: witness})
	sock := serve(t, h)

	rc, out, errs := run("status", "--socket", sock, "--json")
	var st api.HostStatus
	if rc != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Host != "h1" || st.Scope != "local" || st.Store != store.String() || st.Networks == nil {
		t.Fatalf("status --json: rc %d, %q, stderr %q", rc, out, errs)
	}
	rc, out, _ = run("status", "--socket", sock)
	if rc != 0 || !strings.Contains(out, "h1") || !strings.Contains(out, "no tartan networks on this host") {
		t.Fatalf("status: rc %d\n%s", rc, out)
	}
	if rc, out, _ := run("ports", "--socket", sock); rc != 0 || !strings.Contains(out, "no published port on this host") {
		t.Fatalf("ports with no endpoint: rc %d\n%s", rc, out)
	}
	if rc, out, _ := run("ports", "--socket", sock, "--json"); rc != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("ports --json with no endpoint: rc %d\n%s", rc, out)
	}
	rc, out, _ = run("hosts", "--socket", sock)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if rc != 0 || len(lines) != 3 || !strings.Contains(lines[1], "h1") || !strings.Contains(lines[1], "alive") || !strings.Contains(lines[1], "10.1.0.0/26") ||
		!strings.Contains(lines[2], "h2") || !strings.Contains(lines[2], "lapsed") {
		t.Fatalf("hosts: rc %d\n%s", rc, out)
	}
	rc, out, _ = run("hosts", "--socket", sock, "--json")
	var hs []api.HostReport
	if rc != 0 || json.Unmarshal([]byte(out), &hs) != nil || len(hs) != 2 || len(hs[0].Blocks) != 1 {
		t.Fatalf("hosts --json: rc %d\n%s", rc, out)
	}

	// doctor: h2 lapsed but holds nothing, so nothing is wrong; once it
	// holds a block, that is a finding (exit status 1).
	if rc, out, errs := run("doctor", "--socket", sock); rc != 0 || !strings.Contains(out, "nothing wrong") {
		t.Fatalf("doctor on a healthy store: rc %d %q %q", rc, out, errs)
	}
	lapsed := kv.Block{CIDR: "10.1.0.64/26", Pool: "10.1.0.0/16", Host: "h2", Expires: now.Add(-time.Hour)}
	if _, err := kv.PutJSON(ctx, store, kv.BlockPath("10.1.0.0/16", "10.1.0.64/26"), lapsed, kv.Any); err != nil {
		t.Fatal(err)
	}
	witness.Block(lapsed, now.Add(-2*time.Hour)) // its lease, as the witness saw it two hours ago
	rc, out, _ = run("doctor", "--socket", sock)
	if rc != 1 || !strings.Contains(out, "host h2 (10.0.0.2) lapsed") || !strings.Contains(out, "10.1.0.64/26") || !strings.Contains(out, "fix:") {
		t.Fatalf("doctor with a lapsed host holding a block: rc %d\n%s", rc, out)
	}
	var fs []api.Finding
	if rc, out, _ = run("doctor", "--socket", sock, "--json"); rc != 1 || json.Unmarshal([]byte(out), &fs) != nil || len(fs) != 1 {
		t.Fatalf("doctor --json: rc %d\n%s", rc, out)
	}

	// networks and addresses: the store's pools, a pool's addresses.
	for key, v := range map[string]any{
		kv.PoolPath("10.1.0.0/16"):                 kv.Pool{CIDR: "10.1.0.0/16", BlockBits: 26, Gateway: "10.1.0.1"},
		kv.NetworkPath("10.1.0.0/16"):              kv.PoolNetwork{Pool: "10.1.0.0/16", Backend: "vxlan", VNI: 300, Internal: true},
		kv.AddressPath("10.1.0.0/16", "10.1.0.10"): kv.Address{IP: "10.1.0.10", Pool: "10.1.0.0/16", Host: "h1", Kind: kv.KindEndpoint, MAC: "02:42:00:00:00:0a", Created: now},
		kv.AddressPath("10.1.0.0/16", "10.1.0.9"):  kv.Address{IP: "10.1.0.9", Pool: "10.1.0.0/16", Host: "h2", Kind: kv.KindEndpoint, Created: now},
	} {
		if _, err := kv.PutJSON(ctx, store, key, v, kv.Any); err != nil {
			t.Fatal(err)
		}
	}
	rc, out, errs = run("networks", "--socket", sock)
	if rc != 0 || !regexp.MustCompile(`10\.1\.0\.0/16\s+vxlan\s+300\s+/26\s+10\.1\.0\.1\s+2\s+2\s+internal`).MatchString(out) {
		t.Fatalf("networks: rc %d %q\n%s", rc, errs, out)
	}
	rc, out, errs = run("addresses", "10.1.0.0/16", "--socket", sock)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); rc != 0 || len(lines) != 3 || !strings.HasPrefix(lines[1], "10.1.0.9 ") || !strings.Contains(lines[2], "02:42:00:00:00:0a") {
		t.Fatalf("addresses (in address order): rc %d %q\n%s", rc, errs, out)
	}
	for _, c := range []struct {
		arg  string
		rc   int
		word string
	}{{"10.1.0.5/16", 1, "not a subnet"}, {"banana", 1, "give it as a CIDR"}, {"10.9.0.0/16", 1, "no pool 10.9.0.0/16 in the store"}} {
		if rc, _, errs := run("addresses", "--socket", sock, c.arg); rc != c.rc || !strings.Contains(errs, c.word) {
			t.Fatalf("addresses %s: rc %d %q", c.arg, rc, errs)
		}
	}
	if rc, _, errs := run("addresses", "--socket", sock); rc != 2 || !strings.Contains(errs, "takes one pool") {
		t.Fatalf("addresses with no pool: rc %d %q", rc, errs)
	}

	// gc: h2 was last renewed 3 hours ago, more than two lease lifetimes
	// of an hour: it is gone, and gc --yes removes it, its block and its
	// address.
	rc, out, errs = run("gc", "--socket", sock)
	if rc != 0 || !strings.Contains(out, "would remove gone host h2 (10.0.0.2") || !strings.Contains(out, "10.1.0.64/26") || strings.Contains(out, "host h1") {
		t.Fatalf("gc: rc %d %q\n%s", rc, errs, out)
	}
	rc, out, errs = run("gc", "--yes", "--socket", sock)
	if rc != 0 || !strings.Contains(out, "removed 1 gone hosts, 1 of their blocks and 1 of their addresses") {
		t.Fatalf("gc --yes: rc %d %q\n%s", rc, errs, out)
	}
	if rc, out, _ = run("gc", "--socket", sock); rc != 0 || !strings.Contains(out, "nothing to collect") {
		t.Fatalf("gc after gc --yes: rc %d\n%s", rc, out)
	}
	if _, err := kv.GetJSON(ctx, store, kv.HostPath("h2"), &kv.Host{}); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("h2's record after gc --yes: %v", err)
	}
	if rc, _, errs := run("status", "--yes", "--socket", sock); rc != 2 || !strings.Contains(errs, "-yes") {
		t.Fatalf("--yes outside gc: rc %d %q", rc, errs)
	}

	// Mistakes say what to do.
	if rc, _, errs := run("status", "--socket", filepath.Join(t.TempDir(), "none.sock")); rc != 1 || !strings.Contains(errs, "ask the plugin at") {
		t.Fatalf("missing socket: rc %d %q", rc, errs)
	}
	if rc, _, errs := run("frobnicate"); rc != 2 || !strings.Contains(errs, "usage: tartan <command>") {
		t.Fatalf("unknown command: rc %d %q", rc, errs)
	}
	if rc, _, errs := run("status", "extra", "--socket", sock); rc != 2 || !strings.Contains(errs, "takes no arguments") {
		t.Fatalf("extra argument: rc %d %q", rc, errs)
	}
	old := serve(t, http.NotFoundHandler())
	if rc, _, errs := run("hosts", "--socket", old); rc != 1 || !strings.Contains(errs, "older than this tartan binary") {
		t.Fatalf("an older plugin: rc %d %q", rc, errs)
	}
}

// tartan repair asks the plugin for a resync now and says how long it took;
// a resync that failed fails the command with the plugin's reason.
func TestRepair(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	store := kv.NewMemory()
	drv := driver.New(store, store, nil, &firewall.Firewall{}, driver.Config{Host: "h1"}, log)
	calls := 0
	var fail error
	h := plugin.NewHandler(drv, nil, nil, log, nil)
	h.ServeAdmin(plugin.Admin{Host: "h1", Scope: "local", Now: time.Now, Repair: func(context.Context) error { calls++; return fail }})
	sock := serve(t, h)
	if rc, out, errs := run("repair", "--socket", sock); rc != 0 || calls != 1 || !strings.Contains(out, "repaired in ") {
		t.Fatalf("tartan repair: exit %d, %d resyncs, %q %q", rc, calls, out, errs)
	}
	fail = errors.New("peer entries: no such device")
	if rc, _, errs := run("repair", "--socket", sock); rc != 1 || calls != 2 || !strings.Contains(errs, "no such device") {
		t.Fatalf("tartan repair of a failing resync: exit %d, %d resyncs, %q", rc, calls, errs)
	}
}
