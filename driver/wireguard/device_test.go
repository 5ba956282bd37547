package wireguard

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/vishvananda/netns"
)

// The device tests run in a network namespace of their own (TestMain
// re-executes the binary under unshare --net) and make two more in it, one
// per "host", joined by a veth pair: every link goes with them.
const inNetns = "TARTAN_TEST_IN_NETNS"

func TestMain(m *testing.M) { os.Exit(testkit.MainInOwnNetns(m, inNetns)) }

// host is a namespace with a WireGuard device and a "container" address.
type host struct {
	ns   netns.NsHandle
	path string // for nsenter --net
	dev  *Device
	key  Key
}

// onThread runs fn on a locked thread that goes back to the test's
// namespace afterwards, whatever fn switched it to.
func onThread(t *testing.T, fn func() error) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err) // the thread must not go back to the pool in another namespace
		}
	}()
	if err := fn(); err != nil {
		t.Fatal(err)
	}
}

// in runs fn with the calling thread in the host's namespace (devices and
// sockets made there stay there).
func (h *host) in(t *testing.T, fn func() error) {
	t.Helper()
	onThread(t, func() error {
		if err := netns.Set(h.ns); err != nil {
			return err
		}
		return fn()
	})
}

func (h *host) sh(t *testing.T, cmd string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+h.path, "sh", "-c", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	return string(out)
}

// reach pings dst from src until one answer comes, for up to two minutes: a
// WireGuard handshake lost on the way is retried only after the protocol's
// 5 s rekey timeout, and a slow machine takes longer still, so no single
// ping's deadline decides.
func (h *host) reach(t *testing.T, src, dst string) time.Duration {
	t.Helper()
	start := time.Now()
	var out []byte
	for deadline := start.Add(2 * time.Minute); time.Now().Before(deadline); {
		var err error
		out, err = exec.Command("nsenter", "--net="+h.path, "ping", "-c", "1", "-W", "2", "-I", src, dst).CombinedOutput()
		if err == nil {
			return time.Since(start)
		}
	}
	t.Fatalf("%s never answered %s within two minutes; the last ping:\n%s", dst, src, out)
	return 0
}

func newHost(t *testing.T, name, underlay, inner string) *host {
	t.Helper()
	var ns netns.NsHandle
	onThread(t, func() (err error) {
		ns, err = netns.New() // and the thread is in it, until onThread ends
		return err
	})
	h := &host{ns: ns, path: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))}
	t.Cleanup(func() { ns.Close() })
	var err error
	if h.key, err = NewPrivateKey(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-c", fmt.Sprintf("ip link add %s type veth peer name %s-p && ip link set %s netns %s && ip link set %s-p up && ip link set %s-p master wgtbr",
		name, name, name, h.path, name, name)).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	h.sh(t, fmt.Sprintf("ip link set lo up && ip addr add %s/24 dev %s && ip link set %s up && ip addr add %s/32 dev lo", underlay, name, name, inner))
	log := logrus.New()
	log.SetOutput(testWriter{t})
	h.dev = NewDevice(DeviceName, DefaultPort, ModeAuto, h.key, log) // no WireGuard in this kernel: user space
	t.Cleanup(h.dev.Close)
	return h
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestDeviceCarriesTraffic: two hosts' devices, each told of the other,
// carry ping and TCP between their inner addresses, encrypted (the veth
// carries UDP to the WireGuard port); a key rotation on one side heals once
// the other has the new public key; Close removes the interface.
func TestDeviceCarriesTraffic(t *testing.T) {
	testkit.Require(t, os.Getenv(inNetns) != "", "WireGuard device tests need root and unshare (they run in their own network namespace)")
	testkit.RequireRoot(t, "ip", "nsenter", "ping", "iperf3")
	if out, err := exec.Command("sh", "-c", "ip link del wgtbr 2>/dev/null; ip link add wgtbr type bridge && ip link set wgtbr up").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", "wgtbr").Run() })
	a := newHost(t, "wga", "10.88.0.1", "10.99.1.1")
	b := newHost(t, "wgb", "10.88.0.2", "10.99.2.1")
	peerOf := func(h *host, underlay string, inner string) Peer {
		return Peer{Key: h.dev.PublicKey(), Endpoint: netip.MustParseAddrPort(underlay + ":51820"), Allowed: []netip.Prefix{netip.MustParsePrefix(inner)}}
	}
	a.in(t, func() error {
		if err := a.dev.SetPeers([]Peer{peerOf(b, "10.88.0.2", "10.99.2.0/24")}); err != nil { // before the device: kept for Ensure
			return err
		}
		return a.dev.Ensure(1420)
	})
	b.in(t, func() error {
		if err := b.dev.Ensure(1420); err != nil {
			return err
		}
		return b.dev.SetPeers([]Peer{peerOf(a, "10.88.0.1", "10.99.1.0/24")})
	})
	a.sh(t, "ip route add 10.99.2.0/24 dev tartan-wg src 10.99.1.1")
	b.sh(t, "ip route add 10.99.1.0/24 dev tartan-wg src 10.99.2.1")
	// Ensure again is a no-op: the same device, its peers kept.
	a.in(t, func() error { return a.dev.Ensure(1420) })
	if l := a.sh(t, "ip -o link show tartan-wg"); !strings.Contains(l, " mtu 1420 ") || !strings.Contains(l, ",UP") {
		t.Fatalf("want an interface up with MTU 1420: %s", l)
	}
	a.reach(t, "10.99.1.1", "10.99.2.1")
	st, err := a.dev.Status()
	t.Logf("WireGuard mode chosen by auto: %s", st.Mode)
	if err != nil || (st.Mode != ModeUserspace && st.Mode != ModeKernel) || len(st.Peers) != 1 || st.Peers[0].PublicKey != b.dev.PublicKey().String() ||
		st.Peers[0].LastHandshake.IsZero() || st.Peers[0].RxBytes == 0 || strings.Join(st.Peers[0].Allowed, ",") != "10.99.2.0/24" {
		t.Fatalf("status after a ping: %+v %v", st, err)
	}
	// TCP, with the throughput for the record (not asserted).
	b.sh(t, "iperf3 -s -D -1 -B 10.99.2.1 --logfile /dev/null")
	for deadline := time.Now().Add(time.Minute); !strings.Contains(b.sh(t, "ss -Hltn sport = :5201"), "5201"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("iperf3's server never listened on 10.99.2.1:5201")
		}
	}
	out := a.sh(t, "iperf3 -c 10.99.2.1 -B 10.99.1.1 -t 5 -f m | grep receiver")
	t.Logf("iperf3 through two user-space WireGuard devices (both on this machine's cores): %s; this process's peak RSS %s", strings.TrimSpace(out), testkit.PeakRSS(0))

	// B rotates: until A has B's new key nothing passes; then it heals.
	nk, err := NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.dev.Rotate(nk); err != nil {
		t.Fatal(err)
	}
	if b.dev.PublicKey() != nk.Public() {
		t.Fatal("the device kept its old public key")
	}
	a.in(t, func() error { return a.dev.SetPeers([]Peer{peerOf(b, "10.88.0.2", "10.99.2.0/24")}) })
	t.Logf("after the rotation, the first ping answered in %v (not asserted)", a.reach(t, "10.99.1.1", "10.99.2.1").Round(time.Millisecond))
	if st, _ := a.dev.Status(); len(st.Peers) != 1 || st.Peers[0].PublicKey != nk.Public().String() {
		t.Fatalf("A still has B's old key: %+v", st)
	}
	// A peer removed is gone from the device.
	a.in(t, func() error { return a.dev.SetPeers(nil) })
	if st, _ := a.dev.Status(); len(st.Peers) != 0 {
		t.Fatalf("peers after SetPeers(nil): %+v", st.Peers)
	}
	// The interface deleted by hand comes back with Ensure, with its peers.
	a.in(t, func() error { return a.dev.SetPeers([]Peer{peerOf(b, "10.88.0.2", "10.99.2.0/24")}) })
	a.sh(t, "ip link del tartan-wg")
	a.in(t, func() error { return a.dev.Ensure(1420) })
	a.sh(t, "ip route add 10.99.2.0/24 dev tartan-wg src 10.99.1.1")
	a.reach(t, "10.99.1.1", "10.99.2.1")
	a.dev.Close()
	if out := a.sh(t, "ip -o link show"); strings.Contains(out, DeviceName) {
		t.Fatalf("%s left after Close:\n%s", DeviceName, out)
	}
}

// TestKeyFile: the key is made once, kept 0600, read back the same, and
// made again when WG_ROTATE's value changes; a bad key is refused.
func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	k1, made, err := LoadKey(dir, "")
	if err != nil || !made || k1.IsZero() {
		t.Fatalf("first start: %v %v", made, err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v %v, want 0600", fi.Mode(), err)
	}
	k2, made, err := LoadKey(dir, "")
	if err != nil || made || k2 != k1 {
		t.Fatalf("second start made a new key (%v) or failed: %v", made, err)
	}
	k3, made, err := LoadKey(dir, "2026-12-04")
	if err != nil || !made || k3 == k1 {
		t.Fatalf("WG_ROTATE changed, key kept (%v) or failed: %v", made, err)
	}
	if k4, made, _ := LoadKey(dir, "2026-12-04"); made || k4 != k3 {
		t.Fatal("the rotated key was not kept")
	}
	if k1.Public() == k3.Public() || k1.Public() == k1 {
		t.Fatal("public keys do not follow the private ones")
	}
	if p, err := ParseKey(k1.Public().String()); err != nil || p != k1.Public() {
		t.Fatalf("a public key does not read back: %v", err)
	}
	for _, bad := range []string{"", "abc", strings.Repeat("A", 44), "AAAA" + k1.Public().String()[4:40]} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("key %q accepted", bad)
		}
	}
	if s := fmt.Sprint(k1.Public()); len(s) != 44 {
		t.Fatalf("public key %q is not 44 characters of base64", s)
	}
}
