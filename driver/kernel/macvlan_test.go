package kernel

import "testing"

func TestParseVLANParent(t *testing.T) {
	for _, c := range []struct {
		in   string
		base string
		vlan int
		ok   bool
		bad  bool
	}{
		{"eth0.100", "eth0", 100, true, false},
		{"bond0.4094", "bond0", 4094, true, false},
		{"eth0", "", 0, false, false},
		{"en.p1.7", "en.p1", 7, true, false},
		{"eth0.0", "", 0, false, true},
		{"eth0.4095", "", 0, false, true},
		{"eth0.x", "", 0, false, false},
	} {
		base, vlan, ok, err := ParseVLANParent(c.in)
		if base != c.base || vlan != c.vlan || ok != c.ok || (err != nil) != c.bad {
			t.Errorf("%s: %q %d %v %v", c.in, base, vlan, ok, err)
		}
	}
	if ShimName("0123456789abcdef") != "tm0123456789a" {
		t.Fatal(ShimName("0123456789abcdef"))
	}
}
