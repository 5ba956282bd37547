// Package plugin is the tartan process: settings, stores, the one socket that
// serves both libnetwork APIs, and the background work (reconcile, host
// registration, lease renewal).
package plugin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/bgp/speaker"
	"github.com/tartan-net/tartan/driver/fastpath"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/wireguard"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin/api"
	"github.com/tartan-net/tartan/plugin/clusternet"
	"golang.org/x/sys/unix"
)

// Run serves the plugin on socket until ctx ends.
func Run(ctx context.Context, socket string, env func(string) string, log *logrus.Logger) error {
	s, serr := ParseSettings(env)
	if serr == nil {
		log.SetLevel(s.LogLevel)
	}
	// The state lives on the host (config.json's "state" mount), not in the
	// plugin: the host ID and the local records survive docker plugin rm +
	// install and upgrade, so a new plugin adopts what the old one made.
	if err := os.MkdirAll(s.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir %s: %w", s.StateDir, err)
	}
	// One tartan plugin per host: the state folder's store is locked while
	// a plugin has it, and the host's /run holds a lock of its own, which
	// a second plugin given another state folder still meets (issue 24,
	// audit L9).
	held, err := hostLock(env)
	if err != nil {
		return err
	}
	if held != nil {
		defer held.Close()
	}
	var local *kv.Bolt
	if held != nil || !hostLockWanted(env) {
		local, err = kv.OpenBolt(filepath.Join(s.StateDir, "tartan.db"))
	}
	if (local == nil && err == nil) || errors.Is(err, kv.ErrLocked) {
		// A second tartan plugin on this host: it must not touch the first
		// one's links, routes and rules. It serves, so that Docker shows
		// the reason to whoever uses it, and does nothing else.
		why := errors.New("another tartan plugin is running on this host (it holds the host's tartan lock in /run, or the state folder, /var/lib/tartan unless its state mount was moved): " +
			"use that plugin (docker plugin ls), or disable it first; one tartan plugin per host")
		log.Error(why)
		drv := driver.New(kv.NewMemory(), kv.NewMemory(), nil, &firewall.Firewall{}, driver.Config{Scope: s.Scope}, log)
		h := NewHandler(drv, nil, nil, log.WithField("part", "api"), why)
		h.ServeAdmin(Admin{Scope: s.Scope, Now: time.Now})
		return serve(ctx, socket, h)
	}
	if err != nil {
		return err
	}
	defer local.Close()
	host, err := hostID(ctx, local)
	if err != nil {
		return err
	}
	entry := log.WithField("host", host)
	cluster, metrics, serr := openCluster(s, serr, local, entry)
	return runHost(ctx, socket, s, serr, local, cluster, metrics, host, entry)
}

// openCluster is the store the settings name, observed for the metrics
// when METRICS is set; the local store when they name none, or when they
// are broken or the store cannot be opened (serr then says why).
func openCluster(s Settings, serr error, local *kv.Bolt, entry logrus.FieldLogger) (kv.Store, *Metrics, error) {
	var cluster kv.Store = local
	if c := s.Consul; serr == nil && c != nil && c.Scheme == "http" && c.Token != "" && !loopbackOnly(c.Addresses) {
		entry.Warnf("STORE=%s sends the Consul token in clear over plain HTTP to another machine: use consul+https://… with CONSUL_CACERT", s.Store)
	}
	if serr == nil && s.Consul != nil {
		var err error
		if cluster, err = kv.NewConsul(*s.Consul); err != nil {
			serr = err
			cluster = local
		}
	}
	var metrics *Metrics
	if serr == nil && s.Metrics != "" {
		metrics = NewMetrics()
		cluster = kv.Observed(cluster, metrics.Store)
	}
	return cluster, metrics, serr
}

// runHost makes the plugin's parts for this host (firewall, identity, IPAM,
// WireGuard device, fast path, driver), starts the background work, and
// serves until ctx ends. With serr (broken settings) it serves every
// request that error and runs nothing in the background.
func runHost(ctx context.Context, socket string, s Settings, serr error, local *kv.Bolt, cluster kv.Store, metrics *Metrics, host string, entry *logrus.Entry) error {
	fw, err := firewall.New()
	if err != nil {
		return err
	}
	// One witness times every host's renewals and every block's lease on
	// this host's clock, for allocation, collection, routing and the
	// operator's view alike.
	witness := kv.NewWitness()
	now := func() time.Time { return time.Now().Add(s.ClockSkew) } // CLOCK_SKEW: a machine whose clock is off
	// One machine at a time serves as this host ID: nothing is claimed,
	// registered or swept before the store confirms it (Identity).
	address := ""
	if u, err := kernel.FindUnderlay(s.Advertise); err == nil && u.Address.IsValid() {
		address = u.Address.String()
	}
	identity := NewIdentity(cluster, host, address, BootID(), entry.WithField("part", "identity"))
	if serr == nil {
		go identity.Run(ctx)
	}
	im := ipam.New(cluster, ipam.Config{Host: host, AutoRange: s.AutoPool, AutoBits: s.AutoBits, LeaseTTL: s.LeaseTTL,
		Taken: kernel.OverlapsHostRoute, Witness: witness, Ready: identity.Ready, Now: now}, entry.WithField("part", "ipam"))
	docker, noCluster := dockerAPI(s)
	wg, made, err := wireGuardDevice(s, entry)
	if err != nil {
		return err
	}
	fp := loadFastPath(s.FastPath, entry.WithField("part", "fastpath"))
	if fp != nil {
		defer fp.Close()
	}
	var bgp *speaker.Speaker
	if serr == nil {
		if bgp, err = startBGP(ctx, s, entry.WithField("part", "bgp")); err != nil {
			serr = err
		} else if bgp != nil {
			defer bgp.Stop()
		}
	}
	drv := driver.New(cluster, local, im, fw, driver.Config{Host: host, Scope: s.Scope, VXLANPort: s.VXLANPort,
		Advertise: s.Advertise, SysctlRoot: s.SysctlRoot, LeaseTTL: s.LeaseTTL, Resync: s.Resync, NoClusterNetworks: noCluster,
		WireGuard: wg, FastPath: fp, Witness: witness, Now: now, BGP: bgp}, entry.WithField("part", "driver"))
	reg := &Registrar{Store: cluster, Host: host, Advertise: s.Advertise, Fresh: RenewAfter(s.LeaseTTL), Lookup: kernel.FindUnderlay, Now: now,
		WireGuard: func() (string, int) { return wg.PublicKey().String(), wg.Port() }}
	if err := drv.Restore(ctx); err != nil {
		return err
	}
	im.SetLocal(drv.Holding) // a pool first used after a restart starts with its endpoints' addresses taken
	if serr == nil {
		drv.Start(ctx) // the networks' watchers: background, never in a request
		if noCluster == nil {
			go clusternet.New(cluster, docker, host, s.Resync, entry.WithField("part", "clusternet")).Run(ctx)
		}
	}
	if serr != nil {
		entry.Errorf("settings: %v (every request will fail with this until it is fixed)", serr)
	}
	entry.WithFields(logrus.Fields{"socket": socket, "store": cluster.String(), "state": s.StateDir, "version": api.Version, "firewall": fw.Flavour()}).Info("tartan serving")
	go warnEngine(ctx, s.DockerSocket, entry)
	outbox := NewOutbox(local, im, drv, entry.WithField("part", "outbox"))
	repairs := make(chan chan error)
	returned := make(chan struct{}, 1)
	reg.Created = func() {
		select {
		case returned <- struct{}{}:
		default:
		}
	}
	go background(ctx, drv, im, outbox, reg, identity, returned, made, s, metrics, repairs, entry)
	serveMetrics(ctx, metrics, drv, s.Metrics, entry)
	metrics.BGP(bgp)
	h := NewHandler(drv, im, outbox, entry.WithField("part", "api"), serr)
	h.SetMetrics(metrics)
	h.SetRefusal(identity.Refused)
	h.ServeAdmin(Admin{Host: host, Store: cluster.String(), Scope: drv.Scope(), Cluster: cluster, LeaseTTL: s.LeaseTTL, Now: now, Witness: witness, Docker: engineView(s.DockerSocket),
		RotateKey: (&keyRotator{wg: wg, reg: reg, s: s, log: entry}).rotate, Repair: repairNow(repairs), BGP: bgp})
	return serve(ctx, socket, h)
}

// wireGuardDevice is this host's WireGuard device, with the key pair from
// the state folder (made, and made says so, when there is none or
// WG_ROTATE asks for a new one).
func wireGuardDevice(s Settings, entry *logrus.Entry) (*wireguard.Device, bool, error) {
	key, made, err := wireguard.LoadKey(s.StateDir, s.WireGuardRotate)
	if err != nil {
		return nil, false, err
	}
	if made {
		entry.WithField("publicKey", key.Public().String()).Info("made this host's WireGuard key pair (the private key stays in the state folder)")
	}
	return wireguard.NewDevice(wireguard.DeviceName, s.WireGuardPort, s.WireGuardMode, key, entry.WithField("part", "wireguard")), made, nil
}

// serveMetrics serves the metrics (nil: METRICS is off) on addr until ctx
// ends.
func serveMetrics(ctx context.Context, metrics *Metrics, drv *driver.Driver, addr string, entry *logrus.Entry) {
	if metrics == nil {
		return
	}
	metrics.Networks(drv)
	go func() {
		if err := metrics.Serve(ctx, addr); err != nil {
			entry.Errorf("METRICS=%s: %v (metrics are off; the plugin serves on)", addr, err)
		}
	}()
}

// hostLockWanted says whether the plugin runs with the host's /run mounted
// (XTABLES_LOCKFILE points there), where the host-wide lock lives.
func hostLockWanted(env func(string) string) bool { return env("XTABLES_LOCKFILE") != "" }

// hostLock takes the host-wide lock (tartan.lock beside the xtables lock in
// the host's /run), or returns nil when another plugin holds it or the
// host's /run is not mounted.
func hostLock(env func(string) string) (*os.File, error) {
	if !hostLockWanted(env) {
		return nil, nil
	}
	path := filepath.Join(filepath.Dir(env("XTABLES_LOCKFILE")), "tartan.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("host lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("host lock %s: %w", path, err)
	}
	return f, nil
}

// serve serves h on the unix socket until ctx ends.
func serve(ctx context.Context, socket string, h http.Handler) error {
	_ = os.Remove(socket)
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return err
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", socket, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// engineView is the Docker API tartan doctor reads the engine's view
// through, or one that says why there is none.
func engineView(socket string) DockerView {
	if fi, err := os.Stat(socket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		return noEngine{fmt.Errorf("%s is not a socket", socket)}
	}
	api, err := clusternet.NewAPI(socket)
	if err != nil {
		return noEngine{err}
	}
	return api
}

// noEngine is the Docker view of a plugin that cannot reach its engine.
type noEngine struct{ err error }

func (e noEngine) TartanNetworks(context.Context) ([]clusternet.NetworkView, error) {
	return nil, e.err
}

// dockerAPI connects to the Docker API for cluster-wide networks, or says
// why they cannot work on this host.
func dockerAPI(s Settings) (*clusternet.API, error) {
	if s.Consul == nil {
		return nil, errors.New("cluster-wide networks need a cluster store: set STORE=consul://… on every host")
	}
	if fi, err := os.Stat(s.DockerSocket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("cluster-wide networks need the Docker API inside the plugin and %s is not a socket: "+
			"point the plugin's docker mount at Docker's socket (docker plugin set tartan:latest docker.source=/var/run/docker.sock)", s.DockerSocket)
	}
	return clusternet.NewAPI(s.DockerSocket)
}

// keyRotator gives the host a new WireGuard key pair while it runs
// (tartan rotate-key), one rotation at a time.
type keyRotator struct {
	mu  sync.Mutex
	wg  *wireguard.Device
	reg *Registrar
	s   Settings
	log logrus.FieldLogger
}

// rotate checks that the store answers (peers learn the new key only from
// it), saves the new private key (a crash keeps it), has the device take it
// and writes the host's record at once, so that peers handshake with the
// new key as soon as their watch delivers it. A step that fails puts the
// old key back where the earlier steps put the new one.
func (k *keyRotator) rotate(ctx context.Context) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	if _, err := k.reg.Store.Get(c, kv.HostPath(k.reg.Host)); err != nil {
		return "", fmt.Errorf("the store does not answer, so peers could not learn a new key; the key is unchanged: %w", err)
	}
	key, err := wireguard.NewPrivateKey()
	if err != nil {
		return "", err
	}
	if err := wireguard.SaveKey(k.s.StateDir, key, k.s.WireGuardRotate); err != nil {
		return "", err
	}
	old, err := k.wg.Rotate(key)
	if err == nil {
		err = k.reg.Register(c)
		if err != nil {
			_, _ = k.wg.Rotate(old)
		}
	}
	if err != nil {
		if serr := wireguard.SaveKey(k.s.StateDir, old, k.s.WireGuardRotate); serr != nil {
			err = errors.Join(err, serr)
		}
		return "", fmt.Errorf("the key is unchanged: %w", err)
	}
	pub := key.Public().String()
	k.log.WithField("publicKey", pub).Info("rotated this host's WireGuard key pair (tartan rotate-key)")
	return pub, nil
}

// hostID is generated once and kept in the local store.
func hostID(ctx context.Context, local kv.Store) (string, error) {
	const key = "local/host-id"
	if p, err := local.Get(ctx, key); err == nil {
		return string(p.Value), nil
	}
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b)
	if _, err := local.Put(ctx, key, []byte(id), 0); err != nil {
		return "", fmt.Errorf("save host id: %w", err)
	}
	return id, nil
}

// loadFastPath loads the eBPF fast path unless FASTPATH=off; where the
// kernel refuses it, routed networks take the kernel path, said in one log
// line.
func loadFastPath(mode string, log logrus.FieldLogger) *fastpath.FastPath {
	if mode == FastPathOff {
		log.Info("FASTPATH=off: routed networks take the kernel path (netfilter, conntrack, routing)")
		return nil
	}
	// Host IPsec (strongSwan, libreswan transport mode between hosts): the
	// fast path's packets leave by bpf_redirect, around xfrm, in clear.
	if ipsec, err := kernel.HasIPsecPolicies(); err == nil && ipsec {
		log.Warn("no eBPF fast path: this host has IPsec (xfrm) policies, which packets the fast path sends would go around: routed networks take the kernel path (FASTPATH=off says so without looking)")
		return nil
	}
	fp, err := fastpath.Load(log)
	if err != nil {
		log.Warnf("no eBPF fast path: %v: routed networks take the kernel path (set FASTPATH=off to say so and not try)", err)
		return nil
	}
	log.Info("eBPF fast path loaded: traffic within a routed network skips the host's IP stack (tcx programs on its veths, VXLAN devices and the underlay)")
	return fp
}

// loopbackOnly says whether every address (host:port) is this machine's
// loopback.
func loopbackOnly(addrs []string) bool {
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			host = a
		}
		ip, err := netip.ParseAddr(host)
		if (err != nil || !ip.IsLoopback()) && host != "localhost" {
			return false
		}
	}
	return true
}
