package plugin

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/bgp/speaker"
)

func TestBGPSettings(t *testing.T) {
	s, err := ParseSettings(envOf(nil))
	if err != nil || s.BGP != nil {
		t.Fatalf("BGP is off by default: %+v %v", s.BGP, err)
	}
	s, err = ParseSettings(envOf(map[string]string{"BGP_AS": "4200000001", "BGP_PEERS": " 10.98.0.1:64500, [fd00::1]:64501 "}))
	want := []speaker.Peer{{Addr: netip.MustParseAddr("10.98.0.1"), AS: 64500}, {Addr: netip.MustParseAddr("fd00::1"), AS: 64501}}
	if err != nil || s.BGP.AS != 4200000001 || len(s.BGP.Peers) != 2 || s.BGP.Peers[0] != want[0] || s.BGP.Peers[1] != want[1] ||
		s.BGP.HoldTime != 90*time.Second || s.BGP.Keepalive != 30*time.Second || s.BGP.RestartTime != 120*time.Second || s.BGP.RouterID.IsValid() {
		t.Fatalf("BGP settings and defaults: %+v %v", s.BGP, err)
	}
	s, err = ParseSettings(envOf(map[string]string{"BGP_AS": "64512", "BGP_PEERS": "10.98.0.1:64500", "BGP_ROUTER_ID": "10.0.0.7",
		"BGP_HOLD_TIME": "9s", "BGP_RESTART_TIME": "0s"}))
	if err != nil || s.BGP.RouterID != netip.MustParseAddr("10.0.0.7") || s.BGP.HoldTime != 9*time.Second || s.BGP.Keepalive != 3*time.Second || s.BGP.RestartTime != 0 {
		t.Fatalf("BGP timers: %+v %v", s.BGP, err)
	}
	// Each bad value names its setting and says what to use.
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"BGP_PEERS": "10.98.0.1:64500"}, "BGP_PEERS is set but BGP_AS is not"},
		{map[string]string{"BGP_AS": "64512"}, "BGP_PEERS is not"},
		{map[string]string{"BGP_AS": "0", "BGP_PEERS": "10.98.0.1:64500"}, "BGP_AS=0: use an AS number"},
		{map[string]string{"BGP_AS": "4294967296", "BGP_PEERS": "10.98.0.1:64500"}, "BGP_AS=4294967296"},
		{map[string]string{"BGP_AS": "23456", "BGP_PEERS": "10.98.0.1:64500"}, "AS_TRANS"},
		{map[string]string{"BGP_AS": "64512", "BGP_PEERS": "10.98.0.1"}, "is not ADDRESS:AS"},
		{map[string]string{"BGP_AS": "64512", "BGP_PEERS": "10.98.0.1:-1"}, "AS -1"},
		{map[string]string{"BGP_AS": "64512", "BGP_PEERS": "router1:64500"}, "router1 is not a router's unicast address"},
		{map[string]string{"BGP_AS": "64512", "BGP_PEERS": "127.0.0.1:64500"}, "not a router's unicast address"},
		{map[string]string{"BGP_AS": "64512", "BGP_PEERS": "10.98.0.1:64500,10.98.0.1:64501"}, "named twice"},
		{map[string]string{"BGP_AS": "64512", "BGP_PEERS": "10.98.0.1:64500", "BGP_ROUTER_ID": "fd00::1"}, "BGP_ROUTER_ID=fd00::1"},
		{map[string]string{"BGP_AS": "64512", "BGP_PEERS": "10.98.0.1:64500", "BGP_HOLD_TIME": "2s"}, "BGP_HOLD_TIME=2s"},
		{map[string]string{"BGP_AS": "64512", "BGP_PEERS": "10.98.0.1:64500", "BGP_HOLD_TIME": "9.5s"}, "BGP_HOLD_TIME=9.5s"},
		{map[string]string{"BGP_AS": "64512", "BGP_PEERS": "10.98.0.1:64500", "BGP_KEEPALIVE": "90s"}, "BGP_KEEPALIVE=90s"},
		{map[string]string{"BGP_AS": "64512", "BGP_PEERS": "10.98.0.1:64500", "BGP_RESTART_TIME": "2h"}, "BGP_RESTART_TIME=2h"},
	} {
		if _, err := ParseSettings(envOf(c.env)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want one that says %q", c.env, err, c.want)
		}
	}
}
