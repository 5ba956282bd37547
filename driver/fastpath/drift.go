package fastpath

import (
	"fmt"
	"net"
	"reflect"

	"github.com/cilium/ebpf"
)

// Drift says how the maps and attachments differ from those of st,
// changing nothing (tartan doctor): what Sync would write, remove or
// attach.
func (f *FastPath) Drift(st State) ([]string, error) {
	want, _ := f.resolve(st)
	f.mu.Lock()
	defer f.mu.Unlock()
	ifname := func(i uint32) string {
		if l, err := net.InterfaceByIndex(int(i)); err == nil {
			return l.Name
		}
		return fmt.Sprintf("interface %d", i)
	}
	var out []string
	for _, m := range []struct {
		name string
		diff func() ([]string, error)
	}{
		{"endpoint", func() ([]string, error) {
			return diffMap(f.objs.Endpoints, want.endpoints, func(k uint32) string { return ifname(k) })
		}},
		{"device", func() ([]string, error) {
			return diffMap(f.objs.Devices, want.devices, func(k uint32) string { return ifname(k) })
		}},
		{"pool", func() ([]string, error) {
			return diffMap(f.objs.Pools4, want.pools4, func(k fastpathLpm4Key) string { return fmt.Sprintf("%d/%d", k.Addr, k.Prefixlen) })
		}},
		{"IPv6 pool", func() ([]string, error) {
			return diffMap(f.objs.Pools6, want.pools6, func(k fastpathLpm6Key) string { return fmt.Sprintf("%x/%d", k.Addr, k.Prefixlen) })
		}},
		{"published port", func() ([]string, error) {
			return diffMap(f.objs.Ports, want.ports, func(k fastpathPortKey) string { return fmt.Sprintf("%+v", k) })
		}},
	} {
		d, err := m.diff()
		if err != nil {
			return nil, err
		}
		for _, x := range d {
			out = append(out, fmt.Sprintf("the fast path's %s entry for %s", m.name, x))
		}
	}
	for name, w := range want.attach {
		if a, ok := f.links[name]; !ok || a.ifindex != w.ifindex {
			out = append(out, fmt.Sprintf("the fast path's program is not attached to %s", name))
		}
	}
	return out, nil
}

// diffMap lists how m differs from want: entries missing, different or
// extra, each named by name and what is wrong.
func diffMap[K comparable, V any](m *ebpf.Map, want map[K]V, name func(K) string) ([]string, error) {
	have := map[K]V{}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		have[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read fast-path map %s: %w", m, err)
	}
	var out []string
	for k, w := range want {
		h, ok := have[k]
		switch {
		case !ok:
			out = append(out, name(k)+" is missing")
		case !reflect.DeepEqual(h, w):
			out = append(out, name(k)+" differs")
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			out = append(out, name(k)+" is one it should not have")
		}
	}
	return out, nil
}
