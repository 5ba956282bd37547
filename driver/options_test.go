package driver

import (
	"errors"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/wireguard"
	"github.com/tartan-net/tartan/errdefs"
)

// parse validates options against this host's backends (root-free: the
// descriptions do no I/O).
func parse(opts map[string]any) (Options, error) {
	var descs []backend.Description
	for _, b := range Backends(backend.Host{}, nil, nil, nil, wireguard.NewDevice(wireguard.DeviceName, wireguard.DefaultPort, wireguard.ModeAuto, wireguard.Key{}, nil), "") {
		descs = append(descs, b.Describe())
	}
	return ParseOptions(opts, descs)
}

func optionsOf(kv ...string) map[string]any {
	g := map[string]any{}
	for i := 0; i+1 < len(kv); i += 2 {
		g[kv[i]] = kv[i+1]
	}
	return map[string]any{dockerGeneric: g}
}

func TestOptionErrors(t *testing.T) {
	for _, c := range []struct {
		opts map[string]any
		word string
	}{
		{optionsOf("tartan.backend", "ipvlan"), "unknown backend -o tartan.backend=ipvlan: use vxlan, host-gw, macvlan, wireguard or bgp"},
		{optionsOf("tartan.vni", "0"), "use a number from 1 to 16777215"},
		{optionsOf("tartan.vni", "5", "tartan.backend", "host-gw"), "vxlan backend only"},
		{optionsOf("tartan.directrouting", "maybe"), "not a boolean"},
		{optionsOf("com.docker.network.driver.mtu", "12"), "not a usable MTU"},
		{optionsOf("parent", "eth0"), "-o parent applies to the macvlan backend only"},
		{optionsOf("tartan.backend", "macvlan", "macvlan_mode", "l2"), "use bridge, private, vepa or passthru"},
		{optionsOf("tartan.backend", "macvlan", "parent", "eth0.5000"), "VLAN IDs go from 1 to 4094"},
		{optionsOf("tartan.backend", "macvlan", "parent", "a/b"), "is not an interface name"},
		{optionsOf("tartan.backend", "macvlan", "tartan.hostaccess", "true", "macvlan_mode", "vepa"), "needs -o macvlan_mode=bridge"},
		{optionsOf("tartan.backend", "macvlan", "tartan.vni", "3"), "vxlan backend only"},
		{optionsOf("tartan.cluster", "maybe"), "-o tartan.cluster=maybe is not a boolean"},
		{optionsOf("tartan.backend", "macvlan", "tartan.nat66", "true"), "-o tartan.nat66 is for routed networks"},
		{optionsOf("tartan.nat66", "perhaps"), "-o tartan.nat66=perhaps is not a boolean"},
		{optionsOf("encrypted", "yes please"), "-o encrypted=yes please is not a boolean"},
		{optionsOf("encrypted", "", "tartan.backend", "host-gw"), "tartan does not encrypt host-gw traffic; use -o tartan.backend=wireguard"},
		{optionsOf("encrypted", "", "tartan.backend", "macvlan"), "tartan does not encrypt macvlan traffic"},
		{optionsOf("encrypted", "", "tartan.vni", "7"), "-o tartan.vni cannot go with -o encrypted"},
		{optionsOf("encrypted", "false", "tartan.backend", "wireguard"), "WireGuard always encrypts"},
		{optionsOf("tartan.backend", "wireguard", "tartan.directrouting", "true"), "vxlan backend only"},
		{optionsOf("tartan.policy", "deny"), "-o tartan.policy=deny: use allow, isolated or default-deny"},
		{optionsOf("tartan.backend", "macvlan", "tartan.policy", "isolated"), "-o tartan.policy is for routed networks"},
	} {
		_, err := parse(c.opts)
		if err == nil || !strings.Contains(err.Error(), c.word) {
			t.Errorf("%v: %v, want %q", c.opts, err, c.word)
		}
	}
	o, err := parse(optionsOf("tartan.backend", "vxlan", "tartan.vni", "42", "tartan.directrouting", "true", "com.docker.network.driver.mtu", "1400", "com.docker.network.bridge.name", "ignored"))
	if err != nil || o.VNI != 42 || !o.DirectRouting || o.MTU != 1400 || o.IPv6 {
		t.Fatalf("%+v %v", o, err)
	}
	for _, m := range []string{"allow", "isolated", "default-deny"} {
		if o, err := parse(optionsOf("tartan.backend", "host-gw", "tartan.policy", m)); err != nil || o.Policy != m {
			t.Errorf("tartan.policy=%s: %+v %v", m, o.Policy, err)
		}
	}
}

// TestOptionsPerBackend: each backend's options reach the options, the
// defaults hold, Docker's own keys are passed over (and not recorded), and
// every refusal is an ErrInvalid.
func TestOptionsPerBackend(t *testing.T) {
	o, err := parse(optionsOf("tartan.backend", "macvlan", "parent", "eth0.100", "macvlan_mode", "bridge", "tartan.hostaccess", "true",
		"com.docker.network.bridge.name", "x"))
	if err != nil || o.Parent != "eth0.100" || o.MacvlanMode != "bridge" || !o.HostAccess || o.Backend != "macvlan" {
		t.Fatalf("macvlan: %+v %v", o, err)
	}
	if _, ok := o.Raw["com.docker.network.bridge.name"]; ok {
		t.Fatalf("Docker's own option recorded: %v", o.Raw)
	}
	o, err = parse(nil)
	if err != nil || o.Backend != DefaultBackend || len(o.Raw) != 0 {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	o, err = parse(map[string]any{dockerInternal: "true", dockerGeneric: map[string]string{"tartan.backend": "host-gw", "tartan.cluster": "true"}})
	if err != nil || !o.Internal || !o.Cluster || o.Backend != "host-gw" {
		t.Fatalf("host-gw: %+v %v", o, err)
	}
	for _, bad := range []map[string]any{optionsOf("tartan.nope", "1"), optionsOf("tartan.backend", "host-gw", "tartan.directrouting", "true"), {dockerGeneric: 7}} {
		if _, err := parse(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%v: %v, want ErrInvalid", bad, err)
		}
	}
	// -o encrypted (Docker overlay's word) makes a vxlan network a
	// wireguard one; =false leaves it vxlan.
	for _, c := range []struct {
		opts map[string]any
		want string
	}{
		{optionsOf("encrypted", ""), "wireguard"},
		{optionsOf("encrypted", "true", "tartan.backend", "vxlan"), "wireguard"},
		{optionsOf("encrypted", "false"), "vxlan"},
		{optionsOf("tartan.backend", "wireguard", "encrypted", ""), "wireguard"},
		{optionsOf("tartan.backend", "wireguard", "com.docker.network.driver.mtu", "1400"), "wireguard"},
	} {
		o, err := parse(c.opts)
		if err != nil || o.Backend != c.want {
			t.Errorf("%v: backend %q, %v; want %s", c.opts, o.Backend, err, c.want)
		}
	}
	if _, err := parse(optionsOf("tartan.nope", "1")); err == nil || !strings.Contains(err.Error(), "tartan.vni") || !strings.Contains(err.Error(), "parent") {
		t.Errorf("the refusal of an unknown option does not list the known ones: %v", err)
	}
}
