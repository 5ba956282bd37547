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
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin/clusternet"
)

// Version is set at build time.
var Version = "dev"

// renewEvery is how often the host renews its registration and leases: a
// tenth of the lease lifetime, at most a minute, so a live host never lapses.
func renewEvery(ttl time.Duration) time.Duration { return min(time.Minute, ttl/10) }

// Run serves the plugin on socket until ctx ends.
func Run(ctx context.Context, socket string, env func(string) string, log *logrus.Logger) error {
	s, serr := ParseSettings(env)
	if serr == nil {
		log.SetLevel(s.LogLevel)
	}
	if err := os.MkdirAll(s.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir %s: %w", s.StateDir, err)
	}
	local, err := kv.OpenBolt(filepath.Join(s.StateDir, "tartan.db"))
	if err != nil {
		return err
	}
	defer local.Close()
	host, err := hostID(ctx, local)
	if err != nil {
		return err
	}
	entry := log.WithField("host", host)
	var cluster kv.Store = local
	if serr == nil && s.Consul != nil {
		if cluster, err = kv.NewConsul(*s.Consul); err != nil {
			serr = err
			cluster = local
		}
	}
	fw, err := firewall.New()
	if err != nil {
		return err
	}
	im := ipam.New(cluster, ipam.Config{Host: host, AutoRange: s.AutoPool, AutoBits: s.AutoBits, LeaseTTL: s.LeaseTTL,
		Taken: kernel.OverlapsHostRoute}, entry.WithField("part", "ipam"))
	docker, noCluster := dockerAPI(s)
	drv := driver.New(cluster, local, im, fw, driver.Config{Host: host, Scope: s.Scope, VXLANPort: s.VXLANPort,
		Advertise: s.Advertise, SysctlRoot: s.SysctlRoot, LeaseTTL: s.LeaseTTL, Resync: s.Resync, NoClusterNetworks: noCluster},
		entry.WithField("part", "driver"))
	if err := drv.Restore(ctx); err != nil {
		return err
	}
	if serr == nil {
		drv.Start(ctx) // the networks' watchers: background, never in a request
		if noCluster == nil {
			go clusternet.New(cluster, docker, host, s.Resync, entry.WithField("part", "clusternet")).Run(ctx)
		}
	}
	if serr != nil {
		entry.Errorf("settings: %v (every request will fail with this until it is fixed)", serr)
	}
	_ = os.Remove(socket)
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return err
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", socket, err)
	}
	srv := &http.Server{Handler: NewHandler(drv, im, entry.WithField("part", "api"), serr), ReadHeaderTimeout: 10 * time.Second}
	entry.WithFields(logrus.Fields{"socket": socket, "store": cluster.String(), "version": Version, "firewall": fw.Flavour()}).Info("tartan serving")
	go background(ctx, drv, im, cluster, host, s, entry)
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

// background does the work that must never hold up a request: the first
// full reconcile, then periodic ones, host registration and lease renewal.
func background(ctx context.Context, drv *driver.Driver, im *ipam.IPAM, cluster kv.Store, host string, s Settings, log logrus.FieldLogger) {
	reconcile := time.NewTicker(s.Resync)
	renew := time.NewTicker(renewEvery(s.LeaseTTL))
	defer reconcile.Stop()
	defer renew.Stop()
	doReconcile := func() {
		if err := drv.Reconcile(ctx); err != nil {
			log.Warnf("reconcile: %v", err)
		}
	}
	doRenew := func() {
		c, cancel := context.WithTimeout(ctx, RequestTimeout)
		defer cancel()
		if err := registerHost(c, cluster, host, s.Advertise); err != nil {
			log.Warnf("host registration: %v", err)
		}
		if err := im.RenewLeases(c); err != nil {
			log.Warnf("lease renewal: %v", err)
		}
	}
	doReconcile()
	doRenew()
	for {
		select {
		case <-ctx.Done():
			return
		case <-reconcile.C:
			doReconcile()
		case <-renew.C:
			doRenew()
		}
	}
}

func registerHost(ctx context.Context, cluster kv.Store, host, advertise string) error {
	addr := ""
	if u, err := kernel.FindUnderlay(advertise); err == nil {
		addr = u.Address.String()
	}
	_, err := kv.Update(ctx, cluster, kv.HostPath(host), func(h *kv.Host, _ bool) error {
		*h = kv.Host{ID: host, Address: addr, Version: Version, Renewed: time.Now().UTC()}
		return nil
	})
	return err
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
