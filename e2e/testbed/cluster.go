package testbed

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/internal/testkit"
)

// Cluster is N hosts on one isolated L2 underlay: a bridge inside a
// "switch" namespace of its own (so the root namespace's netfilter is never
// touched), each host a namespace with its own dockerd, and a Consul server
// on the same segment. Hosts have no default route.
type Cluster struct {
	Name    string
	Switch  testkit.NS
	Hosts   []*Host
	Consul  *testkit.Consul   // the first server
	Servers []*testkit.Consul // every server (one, or three with NewClusterHA)
	MTU     int
	// Addr is each host's underlay address, by index.
	Addr []string
	// ConsulNS is the first Consul server's namespace.
	ConsulNS testkit.NS
	routers  int
}

// Underlay addresses: 10.98.0.0/24; hosts from .11, Consul at .100.
const (
	UnderlayPrefix = "10.98.0."
	ConsulAddr     = UnderlayPrefix + "100"
)

// NewCluster builds the switch and Consul; hosts come with AddHost.
func NewCluster(t testing.TB, name string, mtu int) *Cluster {
	t.Helper()
	c := newSwitch(t, name, mtu)
	cns := testkit.NewNS(t, "tt-"+name+"-cs")
	c.plug(t, cns, "cs", ConsulAddr)
	c.ConsulNS = cns
	c.Consul = testkit.StartConsul(t, &cns, ConsulAddr, 8500)
	c.Servers = []*testkit.Consul{c.Consul}
	return c
}

// NewClusterHA is NewCluster with a three-server Consul cluster (.100-.102),
// for the fault cases; hosts are given all three addresses.
func NewClusterHA(t testing.TB, name string, mtu int) *Cluster {
	t.Helper()
	c := newSwitch(t, name, mtu)
	addrs := []string{ConsulAddr, UnderlayPrefix + "101", UnderlayPrefix + "102"}
	nss := make([]testkit.NS, 3)
	for i, a := range addrs {
		nss[i] = testkit.NewNS(t, fmt.Sprintf("tt-%s-cs%d", name, i+1))
		c.plug(t, nss[i], fmt.Sprintf("cs%d", i+1), a)
	}
	bin := testkit.ConsulBin(t)
	type result struct {
		c    *testkit.Consul
		stop func() string
		err  error
	}
	results := make([]chan result, 3)
	for i := range addrs {
		results[i] = make(chan result, 1)
		var join []string
		for j, a := range addrs {
			if j != i {
				join = append(join, a+":8502")
			}
		}
		go func() {
			s, stop, err := testkit.LaunchConsul(bin, &nss[i], addrs[i], 8500, join...)
			results[i] <- result{s, stop, err}
		}()
	}
	for i := range addrs {
		r := <-results[i]
		if r.err != nil {
			t.Fatalf("consul server %d: %v", i+1, r.err)
		}
		t.Cleanup(func() {
			if log := r.stop(); t.Failed() {
				t.Logf("consul server %d log:\n%s", i+1, log)
			}
		})
		c.Servers = append(c.Servers, r.c)
	}
	c.Consul = c.Servers[0]
	return c
}

// StoreURL is the STORE setting that names every Consul server.
func (c *Cluster) StoreURL() string {
	url := "consul://"
	for i, s := range c.Servers {
		if i > 0 {
			url += ","
		}
		url += s.Addr
	}
	return url
}

// newSwitch makes the cluster's switch: a bridge in a namespace of its own.
func newSwitch(t testing.TB, name string, mtu int) *Cluster {
	t.Helper()
	c := &Cluster{Name: name, MTU: mtu}
	c.Switch = testkit.NewNS(t, "tt-"+name+"-sw")
	c.Switch.MustIP(t, "link", "add", "br0", "mtu", fmt.Sprint(mtu), "type", "bridge")
	c.Switch.MustIP(t, "link", "set", "br0", "up")
	return c
}

// plug connects a namespace to the switch with underlay address addr.
func (c *Cluster) plug(t testing.TB, ns testkit.NS, port, addr string) {
	t.Helper()
	c.PlugInto(t, ns, "br0", "eth1", port, addr+"/24")
}

// AddSegment adds another L2 segment to the switch: a bridge of its own,
// which namespaces join with PlugInto (a router joins the segments).
func (c *Cluster) AddSegment(t testing.TB, bridge string) {
	t.Helper()
	c.Switch.MustIP(t, "link", "add", bridge, "mtu", fmt.Sprint(c.MTU), "type", "bridge")
	c.Switch.MustIP(t, "link", "set", bridge, "up")
}

// PlugInto connects a namespace to the switch's bridge by a veth pair:
// ifname inside it with address addr (a CIDR), port on the bridge.
func (c *Cluster) PlugInto(t testing.TB, ns testkit.NS, bridge, ifname, port, addr string) {
	t.Helper()
	testkit.MustRun(t, "ip", "link", "add", ifname, "mtu", fmt.Sprint(c.MTU), "netns", ns.Name, "type", "veth",
		"peer", "name", port, "mtu", fmt.Sprint(c.MTU), "netns", c.Switch.Name)
	c.Switch.MustIP(t, "link", "set", port, "master", bridge)
	c.Switch.MustIP(t, "link", "set", port, "up")
	ns.MustIP(t, "addr", "add", addr, "dev", ifname)
	ns.MustIP(t, "link", "set", ifname, "up")
}

// AddHost adds host i (1-based) with dockerd, the test image and the plugin
// pointed at the cluster's Consul; settings are extra plugin settings.
func (c *Cluster) AddHost(t testing.TB, settings ...string) *Host {
	t.Helper()
	h := c.AddBareHost(t)
	h.InstallPlugin(t, append(c.Settings(), settings...)...)
	return h
}

// AddBareHost adds host i (1-based) with dockerd and the test image, but no
// plugin: the test installs one itself (with Settings).
func (c *Cluster) AddBareHost(t testing.TB) *Host {
	t.Helper()
	return c.AddBareHostOn(t, "br0", fmt.Sprintf("%s%d/24", UnderlayPrefix, 11+len(c.Hosts)))
}

// AddBareHostOn is AddBareHost on another segment (AddSegment), with
// underlay address addr (a CIDR) on its eth1.
func (c *Cluster) AddBareHostOn(t testing.TB, bridge, addr string) *Host {
	t.Helper()
	i := len(c.Hosts) + 1
	ns := testkit.NewNS(t, fmt.Sprintf("tt-%s-h%d", c.Name, i))
	c.PlugInto(t, ns, bridge, "eth1", fmt.Sprintf("h%d", i), addr)
	addr, _, _ = strings.Cut(addr, "/")
	h := StartDockerd(t, ns)
	h.Image(t)
	c.Hosts = append(c.Hosts, h)
	c.Addr = append(c.Addr, addr)
	return h
}

// Settings are the plugin settings every host of the cluster gets: its
// Consul and its underlay interface.
func (c *Cluster) Settings() []string {
	return []string{"STORE=" + c.StoreURL(), "ADVERTISE=eth1"}
}

// AddRouter plugs a namespace into the segment with an underlay address
// (.200 and up) and addr, say the physical router of a macvlan network.
func (c *Cluster) AddRouter(t testing.TB, name, addr string) testkit.NS {
	t.Helper()
	c.routers++
	ns := testkit.NewNS(t, fmt.Sprintf("tt-%s-%s", c.Name, name))
	c.plug(t, ns, name, fmt.Sprintf("%s%d", UnderlayPrefix, 199+c.routers))
	ns.MustIP(t, "addr", "add", addr, "dev", "eth1")
	ns.MustIP(t, "link", "set", "lo", "up")
	return ns
}
