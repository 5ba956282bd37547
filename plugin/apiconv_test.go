package plugin

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/fastpath"
	"github.com/tartan-net/tartan/driver/wireguard"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin/api"
)

// sameShape says how the JSON forms of two types differ: field names, JSON
// tags, embedding and types, through pointers, slices and maps to the
// structs within ("" when they do not).
func sameShape(a, b reflect.Type) string {
	if a == b {
		return ""
	}
	if a.Kind() != b.Kind() {
		return a.String() + " is a " + a.Kind().String() + ", " + b.String() + " a " + b.Kind().String()
	}
	switch a.Kind() {
	case reflect.Pointer, reflect.Slice:
		return sameShape(a.Elem(), b.Elem())
	case reflect.Map:
		if d := sameShape(a.Key(), b.Key()); d != "" {
			return d
		}
		return sameShape(a.Elem(), b.Elem())
	case reflect.Struct:
		if a.NumField() != b.NumField() {
			return a.String() + " and " + b.String() + " have different fields"
		}
		for i := range a.NumField() {
			fa, fb := a.Field(i), b.Field(i)
			if fa.Name != fb.Name || fa.Tag != fb.Tag || fa.Anonymous != fb.Anonymous {
				return a.String() + "." + fa.Name + " `" + string(fa.Tag) + "` is " + b.String() + "." + fb.Name + " `" + string(fb.Tag) + "`"
			}
			if d := sameShape(fa.Type, fb.Type); d != "" {
				return d
			}
		}
		return ""
	}
	return a.String() + " is not " + b.String()
}

// The admin API's types are the reports they are made from, tag for tag.
func TestAPIMirrors(t *testing.T) {
	for _, c := range []struct{ from, to any }{
		{driver.NetworkStatus{}, api.NetworkStatus{}},
		{wireguard.Status{}, api.WireGuardStatus{}},
		{kv.HostReport{}, api.HostReport{}},
		{kv.PoolReport{}, api.PoolReport{}},
		{kv.Address{}, api.Address{}},
		{driver.PublishedPorts{}, api.PublishedPorts{}},
		{ipam.Collected{}, api.Collected{}},
	} {
		if d := sameShape(reflect.TypeOf(c.from), reflect.TypeOf(c.to)); d != "" {
			t.Errorf("%T and %T differ: %s", c.from, c.to, d)
		}
	}
	if got, want := api.FastPathCounters(), fastpath.CounterNames(); !slices.Equal(got, want) {
		t.Errorf("api.FastPathCounters() = %v, fastpath.CounterNames() = %v", got, want)
	}
	ports := []backend.Port{{Proto: "tcp", HostPort: 32768, Port: 80}, {Proto: "udp", HostIP: "10.0.0.1", HostPort: 5353, Port: 53}}
	if got, want := api.PortsText(apiPorts(driver.PublishedPorts{Ports: ports}).Ports), driver.PortsText(ports); got != want {
		t.Errorf("api.PortsText = %q, driver.PortsText = %q", got, want)
	}
}

// A report converted says in JSON what it said before.
func TestAPIConversionsKeepJSON(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	same := func(what string, from, to any) {
		t.Helper()
		a, err := json.Marshal(from)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(to)
		if err != nil {
			t.Fatal(err)
		}
		if string(a) != string(b) {
			t.Errorf("%s:\n%s\n%s", what, a, b)
		}
	}
	ns := []driver.NetworkStatus{{ID: "n1", Backend: "vxlan", Pool: "10.1.0.0/16", VNI: 7, MTU: 1450, Planned: true, Problems: []string{"p"}}, {ID: "n2"}}
	same("networks", ns, each(ns, apiNetwork))
	same("no networks", []driver.NetworkStatus{}, each([]driver.NetworkStatus{}, apiNetwork))
	same("nil networks", []driver.NetworkStatus(nil), each([]driver.NetworkStatus(nil), apiNetwork))
	wg := wireguard.Status{Name: "tartan-wg", Mode: "kernel", PublicKey: "k", Port: 51820, Peers: []wireguard.PeerStatus{{PublicKey: "p", Endpoint: "10.0.0.2:51820", Allowed: []string{"10.1.0.0/26"}, LastHandshake: now, RxBytes: 1}, {Allowed: []string{}}}}
	same("wireguard", wg, apiWireGuard(wg))
	same("wireguard without peers", wireguard.Status{}, apiWireGuard(wireguard.Status{}))
	hs := []kv.HostReport{{ID: "h1", Address: "10.0.0.1", Renewed: now, Seen: now, Alive: true, Known: true, Blocks: []kv.BlockReport{{Pool: "10.1.0.0/16", Block: "10.1.0.0/26", Expires: now, Alive: true}}}, {ID: "h2"}}
	same("hosts", hs, each(hs, apiHost))
	ps := []kv.PoolReport{{Pool: "10.1.0.0/16", BlockBits: 26, Network: &kv.PoolNetwork{Pool: "10.1.0.0/16", Backend: "vxlan", VNI: 7, Options: map[string]string{"a": "b"}, Created: now}, Blocks: 2}, {Pool: "10.2.0.0/16"}}
	same("pools", ps, each(ps, apiPool))
	a := kv.Address{IP: "10.1.0.5", Pool: "10.1.0.0/16", Host: "h1", Kind: kv.KindEndpoint, MAC: "02:42:0a:01:00:05", Created: now}
	same("address", a, apiAddress(a))
	pp := []driver.PublishedPorts{{Endpoint: "e1", Network: "n1", IP: "10.1.0.5", Ports: []backend.Port{{Proto: "tcp", HostPort: 8080, Port: 80, HostIP: netip.MustParseAddr("10.0.0.1").String()}}}}
	same("ports", pp, each(pp, apiPorts))
	c := ipam.Collected{Addresses: 1, Blocks: 2, Hosts: 3, Orphans: 4}
	same("collected", c, apiCollected(c))
}
