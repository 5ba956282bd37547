package plugin

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/bgp/speaker"
)

// A speaker whose router does not answer: tartan bgp shows the session
// and its state, doctor names it with the fix, the metrics count it by
// state; with BGP off, tartan bgp says so and doctor has nothing.
func TestBGPStatusAndFindings(t *testing.T) {
	ctx := context.Background()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close() // nobody listens there now
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	sp, err := speaker.Start(ctx, speaker.Config{AS: 64512, RouterID: netip.MustParseAddr("10.0.0.1"), HoldTime: 9 * time.Second, Keepalive: 3 * time.Second,
		Peers: []speaker.Peer{{Addr: netip.MustParseAddr("127.0.0.1"), AS: 64500, Port: port}}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Stop()
	route := speaker.Route{Prefix: netip.MustParsePrefix("10.182.0.0/26"), NextHop: netip.MustParseAddr("10.0.0.1")}
	if err := sp.Announce(ctx, []speaker.Route{route}); err != nil {
		t.Fatal(err)
	}
	st, err := bgpStatus(ctx, sp)
	if err != nil || !st.On || st.AS != 64512 || st.RouterID != "10.0.0.1" || len(st.Sessions) != 1 || st.Sessions[0].State == "established" ||
		st.Sessions[0].Peer != "127.0.0.1" || len(st.Announced) != 1 || st.Announced[0] != "10.182.0.0/26 via 10.0.0.1" {
		t.Fatalf("status %+v, %v", st, err)
	}
	fs := bgpFindings(ctx, sp, []string{"10.182.0.64/26 is this host's but not announced to its BGP peers (via 10.0.0.1)"})
	if len(fs) != 2 || !strings.Contains(fs[0].What, "BGP session with 127.0.0.1") || !strings.Contains(fs[0].Fix, "TCP port 179") ||
		!strings.Contains(fs[1].What, "not announced") || !strings.Contains(fs[1].Fix, "tartan repair") {
		t.Fatalf("findings %+v", fs)
	}
	m := NewMetrics()
	m.BGP(sp)
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			name := f.GetName()
			for _, l := range mt.GetLabel() {
				name += "{" + l.GetValue() + "}"
			}
			got[name] = mt.GetGauge().GetValue()
		}
	}
	if got["tartan_bgp_sessions{established}"] != 0 || got["tartan_bgp_prefixes_announced"] != 1 ||
		got["tartan_bgp_sessions{active}"]+got["tartan_bgp_sessions{connect}"]+got["tartan_bgp_sessions{idle}"]+got["tartan_bgp_sessions{opensent}"] != 1 {
		t.Fatalf("metrics %v", got)
	}

	off, err := bgpStatus(ctx, nil)
	if err != nil || off.On || len(off.Sessions) != 0 || bgpFindings(ctx, nil, nil) != nil {
		t.Fatalf("BGP off: %+v %v", off, err)
	}
}
