//go:build e2e

package e2e

import (
	"strings"
	"testing"
)

// Every bad input gets a one-line error that names the thing and the fix,
// and leaves nothing half-made: each refused subnet can be used right after.
func TestBadInput(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "b1", 3)
	s.InstallPlugin(t)
	s.MustDocker(t, "network", "create", tnet, tipam, "--subnet", "10.50.0.0/16", "good")
	cases := []struct {
		name  string
		args  []string
		words []string
	}{
		{"unknown option", []string{tnet, tipam, "-o", "colour=red", "--subnet", "10.51.0.0/16"}, []string{"unknown option -o colour", "tartan.backend"}},
		{"unknown backend", []string{tnet, tipam, "-o", "tartan.backend=ipsec", "--subnet", "10.52.0.0/16"}, []string{"unknown backend -o tartan.backend=ipsec", "vxlan, host-gw, macvlan, wireguard or bgp"}},
		{"announced host-gw on a host without BGP", []string{tnet, tipam, "-o", "tartan.backend=host-gw", "-o", "tartan.bgp=true", "--subnet", "10.47.0.0/16"}, []string{"-o tartan.bgp=true", "BGP is off on this host", "leave the option out"}},
		{"bgp on a host without BGP", []string{tnet, tipam, "-o", "tartan.backend=bgp", "--subnet", "10.57.0.0/16"}, []string{"-o tartan.backend=bgp", "BGP is off on this host", "BGP_AS"}},
		{"encrypted host-gw", []string{tnet, tipam, "-o", "encrypted", "-o", "tartan.backend=host-gw", "--subnet", "10.62.0.0/16"}, []string{"tartan does not encrypt host-gw traffic", "tartan.backend=wireguard"}},
		{"encrypted with a vni", []string{tnet, tipam, "-o", "encrypted", "-o", "tartan.vni=9", "--subnet", "10.63.0.0/16"}, []string{"-o tartan.vni cannot go with -o encrypted"}},
		{"wireguard mtu above underlay", []string{tnet, tipam, "-o", "tartan.backend=wireguard", "-o", "com.docker.network.driver.mtu=1450", "--subnet", "10.64.0.0/16"}, []string{"larger than the underlay allows", "1420"}},
		{"bad vni", []string{tnet, tipam, "-o", "tartan.vni=0", "--subnet", "10.53.0.0/16"}, []string{"tartan.vni=0", "1 to 16777215"}},
		{"mtu above underlay", []string{tnet, tipam, "-o", "com.docker.network.driver.mtu=9000", "--subnet", "10.54.0.0/16"}, []string{"larger than the underlay allows", "1450"}},
		{"overlapping pool", []string{tnet, tipam, "--subnet", "10.50.128.0/20"}, []string{"overlaps tartan pool 10.50.0.0/16", "pick a subnet outside it"}},
		{"block size", []string{tnet, tipam, "--ipam-opt", "tartan.blocksize=8", "--subnet", "10.55.0.0/16"}, []string{"tartan.blocksize=8 does not fit pool 10.55.0.0/16"}},
		{"unknown ipam option", []string{tnet, tipam, "--ipam-opt", "size=big", "--subnet", "10.56.0.0/16"}, []string{`unknown --ipam-opt "size"`}},
		{"host bits", []string{tnet, tipam, "--subnet", "10.57.0.1/16"}, []string{"10.57.0.1/16"}},
		{"no tartan ipam", []string{tnet, "--subnet", "10.58.0.0/16"}, []string{"add --ipam-driver tartan:latest"}},
		{"gateway outside", []string{tnet, tipam, "--subnet", "10.59.0.0/16", "--gateway", "10.60.0.1"}, []string{"10.60.0.1"}},
		{"cluster network without a store", []string{tnet, tipam, "-o", "tartan.cluster=true", "--subnet", "10.61.0.0/16"}, []string{"cluster-wide networks need a cluster store", "STORE=consul://"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := s.Docker(append([]string{"network", "create"}, append(c.args, "bad")...)...)
			mustFail(t, out, err, c.words...)
			t.Logf("%v", err)
			if strings.Count(strings.TrimSpace(err.Error()), "\n") > 1 {
				t.Errorf("the error is not one line:\n%v", err)
			}
			if ls := s.MustDocker(t, "network", "ls", "-q", "-f", "name=bad"); ls != "" {
				t.Fatalf("network left behind: %s", ls)
			}
		})
	}
	// Nothing half-made: every refused subnet works now.
	for _, subnet := range []string{"10.51.0.0/16", "10.52.0.0/16", "10.53.0.0/16", "10.54.0.0/16", "10.55.0.0/16", "10.56.0.0/16", "10.57.0.0/16", "10.58.0.0/16", "10.47.0.0/16"} {
		s.MustDocker(t, "network", "create", tnet, tipam, "--subnet", subnet, "retry")
		s.removeNetworks(t, "retry")
	}
	if out := s.MustIP(t, "-br", "link"); strings.Count(out, "tartan.") != 1 {
		t.Fatalf("VXLAN devices other than the good network's:\n%s", out)
	}

	// Addresses: outside the pool, and taken.
	out, err := s.Docker("run", "--rm", "--network", "good", "--ip", "10.49.0.5", "tbox", "true")
	mustFail(t, out, err, "10.49.0.5")
	s.MustDocker(t, "run", "-d", "--name", "fixed", "--network", "good", "--ip", "10.50.0.7", "tbox", "sleep", "600")
	if ip := s.ip(t, "fixed"); ip != "10.50.0.7" {
		t.Fatalf("--ip 10.50.0.7 gave %s", ip)
	}
	out, err = s.Docker("run", "--rm", "--network", "good", "--ip", "10.50.0.7", "tbox", "true")
	mustFail(t, out, err, "address 10.50.0.7 is already in use")

	// Malformed JSON on the socket is a 400 with a message, not a crash.
	resp, err := s.PluginCall("/NetworkDriver.CreateNetwork", `{"NetworkID": [`)
	if err != nil || !strings.HasSuffix(resp, "400") || !strings.Contains(resp, "malformed JSON") {
		t.Fatalf("malformed JSON: %v\n%s", err, resp)
	}
	if _, err := s.PluginCall("/Plugin.Activate", "{}"); err != nil {
		t.Fatalf("plugin gone after malformed JSON: %v", err)
	}
}
