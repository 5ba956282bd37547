package speaker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/sirupsen/logrus"
)

// router is a plain GoBGP speaker standing in for a datacenter router on
// loopback: it listens on addr and takes every route its peer sends.
type router struct {
	s    *server.BgpServer
	addr netip.AddrPort
}

func freePort(t *testing.T, ip string) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func startRouter(t *testing.T, ip string, as uint32, speakerAS uint32) *router {
	t.Helper()
	port := freePort(t, ip)
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelError)
	s := server.NewBgpServer(server.LoggerOption(slog.New(slog.DiscardHandler), lvl))
	go s.Serve()
	ctx := context.Background()
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: as, RouterId: ip, ListenPort: int32(port), ListenAddresses: []string{ip}}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	// The speaker connects from 127.0.0.1.
	peer := &api.Peer{Conf: &api.PeerConf{NeighborAddress: "127.0.0.1", PeerAsn: speakerAS},
		Transport: &api.Transport{PassiveMode: true},
		AfiSafis: []*api.AfiSafi{
			{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
			{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
		}}
	if err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: peer}); err != nil {
		t.Fatal(err)
	}
	return &router{s: s, addr: netip.AddrPortFrom(netip.MustParseAddr(ip), port)}
}

// table is what the router learned: "prefix via next hop", sorted.
func (r *router) table(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, fam := range []bgp.Family{bgp.RF_IPv4_UC, bgp.RF_IPv6_UC} {
		err := r.s.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: fam}, func(n bgp.NLRI, paths []*apiutil.Path) {
			for _, p := range paths {
				if p.IsFromExternal || p.PeerAddress.IsValid() && !p.PeerAddress.IsUnspecified() {
					out = append(out, fmt.Sprintf("%s via %s", n, nextHop(p)))
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(out)
	return out
}

func nextHop(p *apiutil.Path) string {
	for _, a := range p.Attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			return a.Value.String()
		case *bgp.PathAttributeMpReachNLRI:
			return a.Nexthop.String()
		}
	}
	return "?"
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func testLog() logrus.FieldLogger {
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	return l
}

func TestAnnounceWithdrawAndNothingLearnedPassedOn(t *testing.T) {
	ctx := context.Background()
	r1 := startRouter(t, "127.0.0.2", 64500, 64512)
	r2 := startRouter(t, "127.0.0.3", 64501, 64512)
	sp, err := Start(ctx, Config{AS: 64512, RouterID: netip.MustParseAddr("10.0.0.1"), HoldTime: 9 * time.Second,
		Keepalive: 3 * time.Second, RestartTime: 30 * time.Second, Log: testLog(),
		Peers: []Peer{{Addr: r1.addr.Addr(), AS: 64500, Port: r1.addr.Port()}, {Addr: r2.addr.Addr(), AS: 64501, Port: r2.addr.Port()}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sp.Stop)
	// No peer before the first set is known.
	if ss, err := sp.Sessions(ctx); err != nil || len(ss) != 0 {
		t.Fatalf("sessions before the first Announce: %v, %v; want none", ss, err)
	}
	hop := netip.MustParseAddr("10.0.0.1")
	hop6 := netip.MustParseAddr("fd00::1")
	a := Route{netip.MustParsePrefix("10.240.1.0/24"), hop}
	b := Route{netip.MustParsePrefix("10.240.7.9/32"), hop}
	c := Route{netip.MustParsePrefix("fd10:1::/80"), hop6}
	if err := sp.Announce(ctx, []Route{b, a}); err != nil {
		t.Fatal(err)
	}
	want := []string{"10.240.1.0/24 via 10.0.0.1", "10.240.7.9/32 via 10.0.0.1"}
	waitFor(t, fmt.Sprintf("router 1 holds %v", want), func() bool { return slices.Equal(r1.table(t), want) })
	waitFor(t, fmt.Sprintf("router 2 holds %v", want), func() bool { return slices.Equal(r2.table(t), want) })

	// A route router 1 sends is neither taken nor passed to router 2.
	learned := Route{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParseAddr("127.0.0.2")}
	if _, err := r1.s.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{path(learned.Prefix, learned.NextHop)}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the speaker counts router 1's route as received", func() bool {
		ss, err := sp.Sessions(ctx)
		return err == nil && len(ss) == 2 && ss[0].Received == 1
	})
	// Changes: a withdrawn, c announced, b's next hop unchanged.
	if err := sp.Announce(ctx, []Route{b, c}); err != nil {
		t.Fatal(err)
	}
	want = []string{"10.240.7.9/32 via 10.0.0.1", "fd10:1::/80 via fd00::1"}
	waitFor(t, fmt.Sprintf("router 2 holds %v (and never 192.0.2.0/24)", want), func() bool { return slices.Equal(r2.table(t), want) })
	ss, err := sp.Sessions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if s.State != "established" || s.Since.IsZero() || s.Sent != 2 {
			t.Errorf("session %+v: want established, with its uptime and 2 prefixes sent", s)
		}
	}
	if got := sp.Announced(); !slices.Equal(got, []Route{b, c}) {
		t.Errorf("Announced() = %v, want %v", got, []Route{b, c})
	}
	// The same set again changes nothing; an empty one withdraws all.
	if err := sp.Announce(ctx, []Route{c, b}); err != nil {
		t.Fatal(err)
	}
	if err := sp.Announce(ctx, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the routers hold nothing of the speaker's", func() bool { return len(r1.table(t)) == 0 && len(r2.table(t)) == 0 })
}
