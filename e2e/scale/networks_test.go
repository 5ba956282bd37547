package scale

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/driver/routing/routingtest"
	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/kv"
)

// TestNetworksPerHost: what one host's networks cost it in the store (issue
// 24, audit M7). One host routes N networks, each on a pool of its own with
// one block of another host, over a real Consul server with its default
// limits (200 connections per client address); it prints, per N, the time
// until every network's plan had its route, the host's connections to
// Consul and the blocking queries it held. Before the fix a host held two
// blocking queries per pool, each a connection: 201 watches at 100
// networks, and Consul refused the host's queries beyond 200; a start read
// every pool's blocks at once, on as many connections (64 at 100 networks,
// Consul's "429 Too Many Requests" at 1,000); it lists 8 at a time now. Without
// TARTAN_SCALE it runs 1 and 100 networks (make unit); TARTAN_SCALE=full
// adds 1,000 (make scale).
func TestNetworksPerHost(t *testing.T) {
	counts := []int{1, 100}
	if os.Getenv("TARTAN_SCALE") == "full" {
		counts = []int{1, 100, 1000}
	}
	if v := os.Getenv("TARTAN_SCALE_NETWORKS"); v != "" {
		counts = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || n > 4096 {
				t.Fatalf("TARTAN_SCALE_NETWORKS=%q: want comma-separated counts from 1 to 4096", v)
			}
			counts = append(counts, n)
		}
	}
	consul := testkit.StartConsul(t, nil, "127.0.0.1", 18950)
	port := consul.Addr[strings.LastIndex(consul.Addr, ":")+1:]
	var table strings.Builder
	table.WriteString("| networks on the host | every plan in (s) | connections to Consul | blocking queries held |\n|---|---|---|---|\n")
	for _, n := range counts {
		took, conns, watches := measureNetworks(t, consul.Addr, port, n)
		fmt.Fprintf(&table, "| %d | %.1f | %d | %d |\n", n, took.Seconds(), conns, watches)
		// A host's cost in connections does not grow with its networks:
		// Consul's default limit is 200 per client address.
		if watches > 4 || conns > kv.MaxIdleConns {
			t.Errorf("%d networks: %d connections to Consul, %d blocking queries held: more than a few, whatever the networks", n, conns, watches)
		}
	}
	t.Logf("one host's networks and the store:\n%s", table.String())
}

// watchGauge is a store that counts the blocking queries in flight.
type watchGauge struct {
	kv.Store
	mu       sync.Mutex
	now, max int
}

func (w *watchGauge) Watch(ctx context.Context, prefix string, index uint64) ([]kv.Pair, uint64, error) {
	w.mu.Lock()
	w.now++
	w.max = max(w.max, w.now)
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.now--
		w.mu.Unlock()
	}()
	return w.Store.Watch(ctx, prefix, index)
}

func measureNetworks(t *testing.T, consul, port string, n int) (took time.Duration, conns, watches int) {
	t.Helper()
	prefix := fmt.Sprintf("nets/%d-%d/", time.Now().UnixNano(), runs.Add(1))
	setup, err := kv.NewConsul(kv.ConsulConfig{Addresses: []string{consul}, Scheme: "http", Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	far := time.Now().Add(ttl).UTC().Format(time.RFC3339)
	mustPut := func(key, value string) {
		if _, err := setup.Put(ctx, key, []byte(value), 0); err != nil {
			t.Fatal(err)
		}
	}
	// The host itself (a router plans only from listings that have it)
	// and the peer that holds a block of every pool.
	mustPut(kv.HostPath("self"), `{"id":"self","address":"10.200.0.1","renewed":"`+far+`"}`)
	mustPut(kv.HostPath("peer"), `{"id":"peer","address":"10.200.0.2","renewed":"`+far+`"}`)
	var nets []routing.Network
	for i := range n {
		pool := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(64 + i/256), byte(i % 256), 0}), 24)
		block := netip.PrefixFrom(pool.Addr(), 26)
		mustPut(kv.PoolPath(pool.String()), fmt.Sprintf(`{"cidr":%q,"blockBits":26}`, pool))
		mustPut(kv.BlockPath(pool.String(), block.String()), fmt.Sprintf(`{"cidr":%q,"host":"peer","expires":%q}`, block, far))
		dev := kernel.VXLANName(1000 + i)
		nets = append(nets, routing.Network{ID: fmt.Sprintf("net%04d", i), Pool: pool, Device: dev, Peering: vxlan.Peering{Device: dev, VNI: 1000 + i}})
	}
	_ = setup.Close()

	store, err := kv.NewConsul(kv.ConsulConfig{Addresses: []string{consul}, Scheme: "http", Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	gauge := &watchGauge{Store: store}
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	under := kernel.Underlay{Interface: "eth0", Address: netip.MustParseAddr("10.200.0.1"), Prefix: netip.MustParsePrefix("10.200.0.0/16")}
	r := routing.New(gauge, routingtest.New(), routing.Config{Host: "self", TTL: ttl, Log: log,
		Underlay: func() (kernel.Underlay, error) { return under, nil }})
	start := time.Now()
	r.Start(ctx)
	for _, nw := range nets {
		r.Add(nw)
	}
	defer func() {
		for _, nw := range nets {
			r.Remove(nw.ID)
		}
	}()
	testbed.Eventually(t, 10*time.Minute, fmt.Sprintf("every one of %d networks has its peer's route", n), func() error {
		for _, nw := range nets {
			if p, ok := r.Plan(nw.ID); !ok || len(p.Routes) != 1 {
				return fmt.Errorf("network %s has no route yet (planned %v: %d routes, problems %q)", nw.ID, ok, len(p.Routes), p.Problems)
			}
		}
		return nil
	})
	took = time.Since(start)
	gauge.mu.Lock()
	watches = gauge.max
	gauge.mu.Unlock()
	return took, establishedTo(t, port), watches
}

// establishedTo counts this machine's established TCP connections to
// 127.0.0.1:port, from the client side.
func establishedTo(t *testing.T, port string) int {
	t.Helper()
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := fmt.Sprintf("0100007F:%04X", p)
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 3 && fields[2] == want && fields[3] == "01" {
			n++
		}
	}
	return n
}
