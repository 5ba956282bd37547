//go:build e2e

package e2e

import (
	"testing"
)

// Issue 24, audit M5: a host whose uplink is a bridge (br0, vmbr0 or, here,
// br-lan, which Docker's own bridges' names match) keeps its containers'
// way out; before, tartan dropped every container's egress into any
// bridge, the uplink's included.
func TestBridgedUplink(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "up", 10)
	s.MustIP(t, "route", "del", "default")
	s.MustIP(t, "addr", "flush", "dev", "ext0")
	s.MustIP(t, "link", "add", "br-lan", "type", "bridge")
	s.MustIP(t, "link", "set", "ext0", "master", "br-lan")
	s.MustIP(t, "link", "set", "br-lan", "up")
	s.MustIP(t, "addr", "add", "10.99.10.2/24", "dev", "br-lan")
	s.MustIP(t, "route", "add", "default", "via", "10.99.10.1")
	s.InstallPlugin(t)
	for _, backend := range []string{"vxlan", "host-gw"} {
		name := "up-" + backend
		s.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend="+backend, "--subnet", map[string]string{"vxlan": "10.36.0.0/16", "host-gw": "10.37.0.0/16"}[backend], name)
		s.mustReach(t, name, s.internet)
		s.removeNetworks(t, name)
	}
	s.kernelClean(t)
}
