// Package scale is the control-plane scale harness (make scale): H hosts
// simulated in one process over one real Consul server on loopback. Each
// host runs tartan's real IPAM (ipam.IPAM), real registration
// (plugin.RegisterHost) and real routing (driver/routing: watches, plans,
// differences) against a kernel that counts what it is asked
// (routingtest.Kernel); each has its own Consul client and connections.
//
// Without TARTAN_SCALE it runs a smoke (10 hosts, a pool of 1,000
// addresses) as part of make test; TARTAN_SCALE=full runs the table of
// make scale. TARTAN_SCALE_HOSTS and TARTAN_SCALE_ADDRS (comma-separated)
// choose the sizes.
package scale

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/driver/routing/routingtest"
	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin"
)

const (
	poolCIDR = "10.128.0.0/12" // 16,384 blocks of /26: room for 1,000 hosts with 100k addresses
	ttl      = 24 * time.Hour
)

var poolPrefix = netip.MustParsePrefix(poolCIDR)

// sizes are the host counts and pool fills a run measures.
type sizes struct {
	hosts []int
	addrs []int
	// fillHosts is the host count of the pool-fill rows.
	fillHosts int
	idle      time.Duration
	rate      float64 // container starts per second, cluster-wide, in the fill rows
	starts    int     // container starts measured per fill row
	// settle: before the one-at-a-time claims, wait until the burst's
	// block feed entries are gone (a steady cluster's feed holds the last
	// minutes' claims only).
	settle bool
}

func fromEnv(t *testing.T) sizes {
	s := sizes{hosts: []int{10}, addrs: []int{0, 1000}, fillHosts: 10, idle: time.Minute, rate: 20, starts: 100}
	if os.Getenv("TARTAN_SCALE") == "full" {
		s = sizes{hosts: []int{10, 100, 300, 1000}, addrs: []int{0, 10000, 100000}, fillHosts: 1000, idle: 2 * time.Minute, rate: 20, starts: 600, settle: true}
	}
	ints := func(name string, into *[]int) {
		if v := os.Getenv(name); v != "" {
			*into = nil
			for _, f := range strings.Split(v, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || n < 0 {
					t.Fatalf("%s=%q: want comma-separated counts", name, v)
				}
				*into = append(*into, n)
			}
		}
	}
	ints("TARTAN_SCALE_HOSTS", &s.hosts)
	ints("TARTAN_SCALE_ADDRS", &s.addrs)
	if v := os.Getenv("TARTAN_SCALE_IDLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("TARTAN_SCALE_IDLE=%q: want a duration", v)
		}
		s.idle = d
	}
	if v := os.Getenv("TARTAN_SCALE_FILL_HOSTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("TARTAN_SCALE_FILL_HOSTS=%q: want a count", v)
		}
		s.fillHosts = n
	}
	return s
}

// meter is a host's store, counting requests, bytes read (keys and values
// of what the store answered) and lost compare-and-sets.
type meter struct {
	kv.Store
	requests, bytes, conflicts atomic.Int64
}

func pairBytes(ps ...kv.Pair) int64 {
	var n int64
	for _, p := range ps {
		n += int64(len(p.Key) + len(p.Value))
	}
	return n
}

func (m *meter) note(err error) {
	m.requests.Add(1)
	if err != nil && strings.Contains(err.Error(), kv.ErrConflict.Error()) {
		m.conflicts.Add(1)
	}
}

func (m *meter) Get(ctx context.Context, key string) (kv.Pair, error) {
	p, err := m.Store.Get(ctx, key)
	m.note(err)
	m.bytes.Add(pairBytes(p))
	return p, err
}

func (m *meter) Put(ctx context.Context, key string, value []byte, version uint64) (uint64, error) {
	v, err := m.Store.Put(ctx, key, value, version)
	m.note(err)
	return v, err
}

func (m *meter) Delete(ctx context.Context, key string, version uint64) error {
	err := m.Store.Delete(ctx, key, version)
	m.note(err)
	return err
}

func (m *meter) Txn(ctx context.Context, ops []kv.Op) (uint64, error) {
	v, err := m.Store.Txn(ctx, ops)
	m.note(err)
	return v, err
}

func (m *meter) List(ctx context.Context, prefix string) ([]kv.Pair, uint64, error) {
	ps, i, err := m.Store.List(ctx, prefix)
	m.note(err)
	m.bytes.Add(pairBytes(ps...))
	return ps, i, err
}

func (m *meter) Watch(ctx context.Context, prefix string, index uint64) ([]kv.Pair, uint64, error) {
	ps, i, err := m.Store.Watch(ctx, prefix, index)
	if ctx.Err() == nil {
		m.note(err)
		m.bytes.Add(pairBytes(ps...))
	}
	return ps, i, err
}

type counts struct{ requests, bytes, conflicts int64 }

func (m *meter) counts() counts {
	return counts{m.requests.Load(), m.bytes.Load(), m.conflicts.Load()}
}

func (c counts) minus(o counts) counts {
	return counts{c.requests - o.requests, c.bytes - o.bytes, c.conflicts - o.conflicts}
}

// host is one simulated host.
type host struct {
	id    string
	addr  netip.Addr
	store *meter
	im    *ipam.IPAM
	k     *routingtest.Kernel
	r     *routing.Router
	pool  ipam.PoolID
	macs  atomic.Int64
	// blocks are the blocks this host's starts got addresses from.
	blocks map[netip.Prefix]bool
	reg    *plugin.Registrar
}

func (h *host) newRegistrar() *plugin.Registrar {
	return &plugin.Registrar{Store: h.store, Host: h.id, Fresh: plugin.RenewAfter(ttl), Lookup: func(string) (kernel.Underlay, error) {
		return kernel.Underlay{Interface: "eth0", Address: h.addr}, nil
	}}
}

// cluster is H hosts over one Consul prefix.
type cluster struct {
	t      *testing.T
	hosts  []*host
	ctx    context.Context
	cancel context.CancelFunc
	net    routing.Network
	// arrivals tracks, per block, how many hosts have its route and when
	// the last one got it.
	mu       sync.Mutex
	arrivals map[netip.Prefix]*arrival
}

type arrival struct {
	n    int
	last time.Time
}

var runs atomic.Int64

func newCluster(t *testing.T, consul string, n int) *cluster {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	prefix := fmt.Sprintf("scale/%d-%d/", time.Now().UnixNano(), runs.Add(1))
	ctx, cancel := context.WithCancel(context.Background())
	c := &cluster{t: t, ctx: ctx, cancel: cancel, arrivals: map[netip.Prefix]*arrival{},
		net: routing.Network{ID: "scale-net", Pool: poolPrefix, Device: "tartan.256", Peering: vxlan.Peering{Device: "tartan.256", VNI: 256}}}
	for i := range n {
		store, err := kv.NewConsul(kv.ConsulConfig{Addresses: []string{consul}, Scheme: "http", Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		h := &host{blocks: map[netip.Prefix]bool{}, id: fmt.Sprintf("host%04d", i), addr: netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i&0xff) + 1}), store: &meter{Store: store}, k: routingtest.New()}
		h.im = ipam.New(h.store, ipam.Config{Host: h.id, LeaseTTL: ttl}, log)
		h.reg = h.newRegistrar()
		under := kernel.Underlay{Interface: "eth0", Address: h.addr, Prefix: netip.PrefixFrom(h.addr, 16).Masked()}
		h.r = routing.New(h.store, h.k, routing.Config{Host: h.id, TTL: ttl, Log: log,
			Underlay: func() (kernel.Underlay, error) { return under, nil }})
		h.k.OnRoute = func(r kernel.Route, at time.Time) {
			if r.Dst.Bits() != 26 {
				return
			}
			c.mu.Lock()
			a := c.arrivals[r.Dst]
			if a == nil {
				a = &arrival{}
				c.arrivals[r.Dst] = a
			}
			a.n++
			a.last = at
			c.mu.Unlock()
		}
		c.hosts = append(c.hosts, h)
	}
	t.Cleanup(func() {
		cancel()
		for _, h := range c.hosts {
			h.r.Remove(c.net.ID)
			_ = h.store.Close()
		}
	})
	return c
}

// parallel runs fn for every host at once and returns each call's time.
func (c *cluster) parallel(fn func(h *host) error) []time.Duration {
	c.t.Helper()
	out := make([]time.Duration, len(c.hosts))
	var wg sync.WaitGroup
	errs := make(chan error, len(c.hosts))
	for i, h := range c.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			if err := fn(h); err != nil {
				errs <- fmt.Errorf("%s: %w", h.id, err)
			}
			out[i] = time.Since(start)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		c.t.Fatal(err)
	}
	return out
}

func (c *cluster) totals() counts {
	var sum counts
	for _, h := range c.hosts {
		x := h.store.counts()
		sum.requests += x.requests
		sum.bytes += x.bytes
		sum.conflicts += x.conflicts
	}
	return sum
}

func (c *cluster) kernelWrites() int {
	n := 0
	for _, h := range c.hosts {
		n += h.k.Ops().Writes
	}
	return n
}

// register registers every host (the plugin's registration) and joins the
// pool on every host at once; it returns the joins' times and conflicts.
func (c *cluster) register() ([]time.Duration, int64) {
	c.parallel(func(h *host) error { return h.reg.Register(c.ctx) })
	before := c.totals()
	// The pool exists before the hosts join it (a network created on one
	// host first, as docker network create does).
	id, err := c.hosts[0].im.RequestPool(c.ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: poolCIDR, Options: map[string]string{ipam.OptBlockSize: "26"}})
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := kv.PutJSON(c.ctx, c.hosts[0].store, kv.NetworkPath(poolCIDR), kv.PoolNetwork{Pool: poolCIDR, Backend: "vxlan", VNI: 256}, 0); err != nil {
		c.t.Fatal(err)
	}
	joins := c.parallel(func(h *host) error {
		h.pool = id
		_, err := h.im.RequestPool(c.ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: poolCIDR})
		return err
	})
	return joins, c.totals().minus(before).conflicts
}

// route starts every host's routing and waits until each has a plan.
func (c *cluster) route() {
	for _, h := range c.hosts {
		h.r.Start(c.ctx)
		h.r.Add(c.net)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for _, h := range c.hosts {
		for {
			if _, ok := h.r.Plan(c.net.ID); ok {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("%s has no plan after 5 minutes", h.id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// start is one container start on h: a RequestAddress as Docker sends it.
func (h *host) start(ctx context.Context) (netip.Addr, error) {
	n := h.macs.Add(1)
	mac := fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", byte(len(h.id)), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	p, err := h.im.RequestAddress(ctx, ipam.AddressRequest{Pool: h.pool, Options: map[string]string{ipam.OptMACAddress: mac}})
	return p.Addr(), err
}

// converge waits until every host but its owner has a route to each block
// (or the deadline) and returns, per block, the time from t0[block] to the
// last host's route.
func (c *cluster) converge(t0 map[netip.Prefix]time.Time, within time.Duration) []time.Duration {
	deadline := time.Now().Add(within)
	want := len(c.hosts) - 1
	for {
		c.mu.Lock()
		done := 0
		for b := range t0 {
			if a := c.arrivals[b]; a != nil && a.n >= want {
				done++
			}
		}
		c.mu.Unlock()
		if done == len(t0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Duration
	for b, start := range t0 {
		a := c.arrivals[b]
		if a == nil || a.n < want {
			out = append(out, within) // never converged: counted as the deadline
			continue
		}
		out = append(out, a.last.Sub(start))
	}
	return out
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) string {
	if d >= 10*time.Second {
		return fmt.Sprintf("%.0f s", d.Seconds())
	}
	if d >= time.Second {
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
}

func kb(b float64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

// hostRow is one column of the host-count table.
// cpu is the CPU time (user and system) of a process so far.
func cpu(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ = 100
}

type hostRow struct {
	hosts                        int
	joinP50, joinP99             time.Duration
	joinConflicts                int64
	burstP50, burstP99           time.Duration // a block claimed on every host at once: in every plan
	burstStartP50, burstStartP99 time.Duration
	claimP50, claimP99           time.Duration // one block claimed at a time
	claimRequests, claimBytes    float64       // cluster-wide, per claim
	// CPU time per claim: the Consul server, every simulated host.
	claimConsulCPU, claimHostsCPU time.Duration
	netlinkPerChange              float64 // per host, per claim
	idlePer10s                    float64 // requests per host per 10 s
	idleBytesPerMin               float64 // bytes per host per minute
}

func measureHosts(t *testing.T, consul *testkit.Consul, n int, s sizes) hostRow {
	c := newCluster(t, consul.Addr, n)
	joins, conflicts := c.register()
	c.route()
	row := hostRow{hosts: n, joinP50: pct(joins, 0.5), joinP99: pct(joins, 0.99), joinConflicts: conflicts}

	// Every host starts its first container at once: each claims a block.
	t0 := map[netip.Prefix]time.Time{}
	var mu sync.Mutex
	starts := c.parallel(func(h *host) error {
		begin := time.Now()
		ip, err := h.start(c.ctx)
		if err != nil {
			return err
		}
		b := netip.PrefixFrom(ip, 26).Masked()
		h.blocks[b] = true
		mu.Lock()
		t0[b] = begin
		mu.Unlock()
		return nil
	})
	burst := c.converge(t0, 3*time.Minute)
	row.burstP50, row.burstP99 = pct(burst, 0.5), pct(burst, 0.99)
	row.burstStartP50, row.burstStartP99 = pct(starts, 0.5), pct(starts, 0.99)
	t.Logf("%d hosts: joins p50/p99 %s/%s (%d lost CAS); burst starts %s/%s, in every kernel %s/%s", n, ms(row.joinP50), ms(row.joinP99),
		conflicts, ms(row.burstStartP50), ms(row.burstStartP99), ms(row.burstP50), ms(row.burstP99))

	if s.settle {
		time.Sleep(kv.FeedRetention)
		c.parallel(func(h *host) error { return h.im.RenewLeases(c.ctx) })
	}
	// Then one claim at a time, on random hosts: a host fills its block
	// (63 starts on /26) and the next start claims a new one.
	claims := 5
	before, kbefore := c.totals(), c.kernelWrites()
	consulCPU, hostsCPU := cpu(consul.PID()), cpu(os.Getpid())
	if f := os.Getenv("TARTAN_SCALE_PROFILE"); f != "" {
		// The hosts' CPU profile during the one-at-a-time claims.
		out, err := os.Create(fmt.Sprintf("%s.%d", f, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(out); err != nil {
			t.Fatal(err)
		}
		defer out.Close()
	}
	var claimTimes []time.Duration
	var fillCost counts
	for range claims {
		h := c.hosts[rand.IntN(len(c.hosts))]
		for {
			fb := h.store.counts()
			begin := time.Now()
			ip, err := h.start(c.ctx)
			if err != nil {
				t.Fatal(err)
			}
			b := netip.PrefixFrom(ip, 26).Masked()
			if !h.blocks[b] {
				h.blocks[b] = true
				d := c.converge(map[netip.Prefix]time.Time{b: begin}, time.Minute)
				claimTimes = append(claimTimes, d...)
				break
			}
			fillCost = addCounts(fillCost, h.store.counts().minus(fb))
		}
	}
	pprof.StopCPUProfile()
	row.claimConsulCPU = (cpu(consul.PID()) - consulCPU) / time.Duration(claims)
	row.claimHostsCPU = (cpu(os.Getpid()) - hostsCPU) / time.Duration(claims)
	after := c.totals().minus(before)
	after = counts{after.requests - fillCost.requests, after.bytes - fillCost.bytes, after.conflicts - fillCost.conflicts}
	row.claimP50, row.claimP99 = pct(claimTimes, 0.5), pct(claimTimes, 0.99)
	row.claimRequests, row.claimBytes = float64(after.requests)/float64(claims), float64(after.bytes)/float64(claims)
	row.netlinkPerChange = float64(c.kernelWrites()-kbefore) / float64(claims) / float64(n)
	t.Logf("%d hosts: one claim in every kernel %s/%s, %.0f requests and %s per claim (CPU: Consul %s, hosts %s, including each host's 63 fills), %.1f netlink writes per host", n,
		ms(row.claimP50), ms(row.claimP99), row.claimRequests, kb(row.claimBytes), ms(row.claimConsulCPU), ms(row.claimHostsCPU), row.netlinkPerChange)

	// Idle: what the cluster costs with nothing happening, over one period
	// of the plugin's registration check and lease renewal (each host runs
	// both once in it; a first, unmeasured round reads what a first run
	// reads).
	tick := func() {
		c.parallel(func(h *host) error {
			if err := h.reg.Register(c.ctx); err != nil {
				return err
			}
			return h.im.RenewLeases(c.ctx)
		})
	}
	tick()
	idle := c.totals()
	// In a minute of a steady cluster, a sixtieth of the hosts renew their
	// liveness (every RenewAfter, an hour): these do it now.
	for _, h := range c.hosts[:(n+59)/60] {
		h.reg = h.newRegistrar()
	}
	for range max(1, int(s.idle/plugin.RenewEvery(ttl))) {
		tick()
		time.Sleep(min(s.idle, plugin.RenewEvery(ttl)))
	}
	d := c.totals().minus(idle)
	per := float64(n) * s.idle.Seconds()
	row.idlePer10s = float64(d.requests) / per * 10
	row.idleBytesPerMin = float64(d.bytes) / per * 60
	return row
}

func addCounts(a, b counts) counts {
	return counts{a.requests + b.requests, a.bytes + b.bytes, a.conflicts + b.conflicts}
}

// fillRow is one column of the pool-fill table.
type fillRow struct {
	addrs                  int
	firstP50, firstP99     time.Duration // a host's first start after the pool was filled (loads its view)
	startP50, startP99     time.Duration
	startRequests, startKB float64
}

// perBlock is how many addresses fill puts in each block: a host's blocks
// keep room (the rows measure starts that need no claim).
const perBlock = 50

// fill writes A addresses into the pool directly (as many hosts made them
// over time: blocks of perBlock per host, in 64-operation transactions), and
// tells each host's IPAM which are its own (a plugin knows its endpoints).
func (c *cluster) fill(a int) {
	if a == 0 {
		return
	}
	store := c.hosts[0].store.Store
	var ops []kv.Op
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := store.Txn(c.ctx, ops); err != nil {
			c.t.Fatal(err)
		}
		ops = ops[:0]
	}
	add := func(key string, v any) {
		b, err := jsonBytes(v)
		if err != nil {
			c.t.Fatal(err)
		}
		ops = append(ops, kv.Op{Key: key, Value: b})
		if len(ops) == kv.MaxTxnOps {
			flush()
		}
	}
	mine := map[string]map[string]bool{}
	defer func() {
		for _, h := range c.hosts {
			held := mine[h.id]
			h.im.SetLocal(func() map[string]map[string]bool { return map[string]map[string]bool{poolCIDR: held} })
		}
	}()
	base := netip.MustParsePrefix(poolCIDR).Addr().As4()
	blocks := (a + perBlock - 1) / perBlock
	now := time.Now().UTC()
	for i := range blocks {
		h := c.hosts[i%len(c.hosts)]
		u := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		u += uint32(i) * 64
		b := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)}), 26)
		add(kv.BlockPath(poolCIDR, b.String()), kv.Block{CIDR: b.String(), Pool: poolCIDR, Host: h.id, Expires: now.Add(ttl)})
		ip := b.Addr().Next()
		if mine[h.id] == nil {
			mine[h.id] = map[string]bool{}
		}
		for j := 0; j < perBlock && i*perBlock+j < a; j++ {
			mine[h.id][ip.String()] = true
			add(kv.AddressPath(poolCIDR, ip.String()), kv.Address{IP: ip.String(), Pool: poolCIDR, Host: h.id, Kind: kv.KindEndpoint,
				MAC: fmt.Sprintf("02:ff:%02x:%02x:%02x:%02x", byte(i>>8), byte(i), byte(j), 0), Created: now})
			ip = ip.Next()
		}
	}
	flush()
}

func measureFill(t *testing.T, consul string, a int, s sizes) fillRow {
	c := newCluster(t, consul, s.fillHosts)
	c.register()
	c.fill(a)
	c.route()
	row := fillRow{addrs: a}
	// A host's first start after its plugin started reads the pool's block
	// list once: 100 hosts, ten a second (not every plugin at once).
	var first []time.Duration
	for _, h := range c.hosts[:min(100, len(c.hosts))] {
		begin := time.Now()
		if _, err := h.start(c.ctx); err != nil {
			t.Fatal(err)
		}
		first = append(first, time.Since(begin))
		time.Sleep(100 * time.Millisecond)
	}
	row.firstP50, row.firstP99 = pct(first, 0.5), pct(first, 0.99)
	// Container starts at a steady rate on those hosts (their view of the
	// pool loaded), while every host routes.
	var mu sync.Mutex
	var times []time.Duration
	var cost counts
	var wg sync.WaitGroup
	every := time.Duration(float64(time.Second) / s.rate)
	errs := make(chan error, s.starts)
	for range s.starts {
		h := c.hosts[rand.IntN(min(100, len(c.hosts)))]
		wg.Add(1)
		go func() {
			defer wg.Done()
			before := h.store.counts()
			begin := time.Now()
			if _, err := h.start(c.ctx); err != nil {
				errs <- err
				return
			}
			d := time.Since(begin)
			used := h.store.counts().minus(before)
			mu.Lock()
			times = append(times, d)
			cost = addCounts(cost, used)
			mu.Unlock()
		}()
		time.Sleep(every)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	row.startP50, row.startP99 = pct(times, 0.5), pct(times, 0.99)
	row.startRequests = float64(cost.requests) / float64(len(times))
	row.startKB = float64(cost.bytes) / float64(len(times))
	t.Logf("pool of %d: first starts %s/%s, starts %s/%s, %.1f requests and %s per start", a, ms(row.firstP50), ms(row.firstP99),
		ms(row.startP50), ms(row.startP99), row.startRequests, kb(row.startKB))
	return row
}

func jsonBytes(v any) ([]byte, error) { return json.Marshal(v) }

func TestScale(t *testing.T) {
	s := fromEnv(t)
	consul := testkit.StartConsulMany(t, "127.0.0.1", 18900)
	var hostRows []hostRow
	for _, n := range s.hosts {
		start := time.Now()
		r := measureHosts(t, consul, n, s)
		t.Logf("%d hosts measured in %s", n, time.Since(start).Round(time.Second))
		hostRows = append(hostRows, r)
	}
	var fillRows []fillRow
	for _, a := range s.addrs {
		start := time.Now()
		r := measureFill(t, consul.Addr, a, s)
		t.Logf("pool of %d addresses measured in %s", a, time.Since(start).Round(time.Second))
		fillRows = append(fillRows, r)
	}
	table := render(s, hostRows, fillRows)
	fmt.Println(table)
	if dir := os.Getenv("TARTAN_SCALE_OUT"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, "scale.md"), []byte(table), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The smoke's checks: a harness that measures nothing is a defect.
	for _, r := range hostRows {
		if r.burstP99 >= 3*time.Minute || r.claimP99 >= time.Minute {
			t.Errorf("%d hosts: a block never reached every host's plan", r.hosts)
		}
		if r.claimP50 <= 0 || r.claimBytes <= 0 || r.netlinkPerChange <= 0 {
			t.Errorf("%d hosts: nothing measured: %+v", r.hosts, r)
		}
	}
	for _, r := range fillRows {
		if r.startP50 <= 0 || r.startRequests <= 0 {
			t.Errorf("pool of %d: nothing measured: %+v", r.addrs, r)
		}
	}
}

func render(s sizes, hs []hostRow, fs []fillRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Control plane, %s, one Consul %s dev server on loopback, every host simulated in one process (%d CPUs)\n\n",
		time.Now().UTC().Format("2006-01-02"), "1.20", runtime.NumCPU())
	fmt.Fprint(&b, "| measure |")
	for _, r := range hs {
		fmt.Fprintf(&b, " %d hosts |", r.hosts)
	}
	fmt.Fprint(&b, "\n|---|")
	for range hs {
		fmt.Fprint(&b, "---|")
	}
	line := func(name string, f func(hostRow) string) {
		fmt.Fprintf(&b, "\n| %s |", name)
		for _, r := range hs {
			fmt.Fprintf(&b, " %s |", f(r))
		}
	}
	line("pool join of every host at once, p50 / p99", func(r hostRow) string { return ms(r.joinP50) + " / " + ms(r.joinP99) })
	line("lost compare-and-sets in those joins", func(r hostRow) string { return fmt.Sprint(r.joinConflicts) })
	line("first start on every host at once (each claims a block), p50 / p99", func(r hostRow) string { return ms(r.burstStartP50) + " / " + ms(r.burstStartP99) })
	line("those blocks in every host's kernel, p50 / p99", func(r hostRow) string { return ms(r.burstP50) + " / " + ms(r.burstP99) })
	line("one new block in every host's kernel, p50 / p99", func(r hostRow) string { return ms(r.claimP50) + " / " + ms(r.claimP99) })
	line("store requests / bytes read per block claim, cluster-wide", func(r hostRow) string {
		return fmt.Sprintf("%.0f / %s", r.claimRequests, kb(r.claimBytes))
	})
	line("CPU per block claim (with the 63 starts that filled the block): Consul / all hosts", func(r hostRow) string {
		return ms(r.claimConsulCPU) + " / " + ms(r.claimHostsCPU)
	})
	line("netlink writes per host per new block", func(r hostRow) string { return fmt.Sprintf("%.1f", r.netlinkPerChange) })
	line("idle: requests per host per 10 s / bytes per host per minute", func(r hostRow) string {
		return fmt.Sprintf("%.2f / %s", r.idlePer10s, kb(r.idleBytesPerMin))
	})
	fmt.Fprintf(&b, "\n\n| addresses in the pool (%d hosts, starts at %.0f/s) |", s.fillHosts, s.rate)
	for _, r := range fs {
		fmt.Fprintf(&b, " %d |", r.addrs)
	}
	fmt.Fprint(&b, "\n|---|")
	for range fs {
		fmt.Fprint(&b, "---|")
	}
	fline := func(name string, f func(fillRow) string) {
		fmt.Fprintf(&b, "\n| %s |", name)
		for _, r := range fs {
			fmt.Fprintf(&b, " %s |", f(r))
		}
	}
	fline("RequestAddress p50 / p99", func(r fillRow) string { return ms(r.startP50) + " / " + ms(r.startP99) })
	fline("store requests / bytes read per container start", func(r fillRow) string {
		return fmt.Sprintf("%.1f / %s", r.startRequests, kb(r.startKB))
	})
	fline("a host's first start after its plugin started (100 hosts, 10/s), p50 / p99", func(r fillRow) string { return ms(r.firstP50) + " / " + ms(r.firstP99) })
	b.WriteString("\n")
	return b.String()
}

// TestMain removes what an earlier run left (its Consul), and what this one
// makes if it is stopped or runs out of time (testkit.Main).
func TestMain(m *testing.M) { os.Exit(testkit.Main(m)) }
