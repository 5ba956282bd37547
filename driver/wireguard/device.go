package wireguard

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/kernel"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// DeviceName is the host's WireGuard device, which every wireguard network
// of the host shares (as flannel's flannel-wg): WireGuard picks a packet's
// peer by its destination among the peers' allowed addresses.
const DeviceName = "tartan-wg"

// Keepalive is the persistent keepalive of every peer, in seconds: it keeps
// a stateful firewall or NAT on the path open, and setting it on a new peer
// (a new host, or a host's new key) starts the handshake at once.
const Keepalive = 25

// Mode says which WireGuard carries the device.
const (
	ModeUserspace = "userspace" // wireguard-go over a TUN device, in the plugin
)

// Peer is another host as the device knows it.
type Peer struct {
	Key      Key
	Endpoint netip.AddrPort
	Allowed  []netip.Prefix // sorted
}

// Device is the host's WireGuard device: WireGuard in user space
// (golang.zx2c4.com/wireguard over a TUN device), its goroutines inside
// the plugin. It exists while the host has a wireguard network; the kernel
// removes the TUN device when the plugin stops, and Ensure makes it again
// with the peers last set.
//
// Its methods are safe for concurrent use; none blocks on the network.
type Device struct {
	name string
	port int
	log  logrus.FieldLogger

	mu      sync.Mutex
	key     Key
	dev     *device.Device
	mtu     int
	want    map[Key]Peer // the peers last set
	applied map[Key]Peer // what dev holds
}

// NewDevice returns the host's device, not made yet: Ensure makes it.
func NewDevice(name string, port int, key Key, log logrus.FieldLogger) *Device {
	if log == nil {
		log = logrus.StandardLogger()
	}
	return &Device{name: name, port: port, key: key, log: log.WithField("if", name), want: map[Key]Peer{}}
}

// Name is the device's interface name.
func (d *Device) Name() string { return d.name }

// Port is the UDP port the device listens on.
func (d *Device) Port() int { return d.port }

// PublicKey is the host's public key, which its record carries.
func (d *Device) PublicKey() Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.key.Public()
}

// Ensure makes the device exist, up, with MTU mtu, the host's key, its port
// and the peers last set. A device whose interface went (deleted by hand)
// is made again; the routes through it are the router's to restore.
func (d *Device) Ensure(mtu int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dev != nil && kernel.LinkExists(d.name) {
		if mtu != d.mtu {
			if err := kernel.SetMTU(d.name, mtu); err != nil {
				return err
			}
			d.mtu = mtu
		}
		return nil
	}
	d.closeLocked()
	if kernel.LinkExists(d.name) {
		// Left by another process (a device made persistent by hand):
		// this one is the host's.
		if err := kernel.DeleteLink(d.name); err != nil {
			return fmt.Errorf("WireGuard device %s exists and cannot be removed: %w", d.name, err)
		}
	}
	t, err := tun.CreateTUN(d.name, mtu)
	if err != nil {
		return fmt.Errorf("WireGuard in user space needs a TUN device (/dev/net/tun, linux.devices of the plugin's config.json): %w", err)
	}
	dev := device.NewDevice(t, conn.NewDefaultBind(), &device.Logger{
		Verbosef: func(format string, args ...any) { d.log.Debugf("wireguard: "+format, args...) },
		Errorf:   func(format string, args ...any) { d.log.Warnf("wireguard: "+format, args...) },
	})
	if err := dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", d.key.hex(), d.port)); err != nil {
		dev.Close()
		return fmt.Errorf("WireGuard port %d/udp: %w (another program holds it? set WG_PORT: docker plugin set tartan:latest WG_PORT=51821)", d.port, err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return fmt.Errorf("WireGuard device %s: %w", d.name, err)
	}
	if err := kernel.SetLinkUp(d.name); err != nil {
		dev.Close()
		return err
	}
	d.dev, d.mtu, d.applied = dev, mtu, map[Key]Peer{}
	d.log.WithFields(logrus.Fields{"mode": ModeUserspace, "port": d.port, "mtu": mtu, "publicKey": d.key.Public().String()}).Info("WireGuard device made")
	return d.applyLocked()
}

// Close removes the device (the host's last wireguard network went).
func (d *Device) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closeLocked()
}

func (d *Device) closeLocked() {
	if d.dev != nil {
		d.dev.Close() // closes the TUN device: its interface and routes go
		d.dev, d.applied = nil, nil
	}
}

// SetPeers makes the device's peers these (a peer that is no longer in
// them is removed); a peer that did not change keeps its session.
func (d *Device) SetPeers(peers []Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.want = make(map[Key]Peer, len(peers))
	for _, p := range peers {
		d.want[p.Key] = p
	}
	return d.applyLocked()
}

// applyLocked changes the device's peers to the wanted ones: one
// configuration call with the removals and the additions and changes.
func (d *Device) applyLocked() error {
	if d.dev == nil {
		return nil
	}
	var b strings.Builder
	for k := range d.applied {
		if _, ok := d.want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.hex())
		}
	}
	self := d.key.Public()
	for k, p := range d.want {
		if k == self {
			continue // the device refuses its own key as a peer
		}
		if old, ok := d.applied[k]; ok && old.Endpoint == p.Endpoint && slices.Equal(old.Allowed, p.Allowed) {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\npersistent_keepalive_interval=%d\nreplace_allowed_ips=true\n", k.hex(), p.Endpoint, Keepalive)
		for _, a := range p.Allowed {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
	}
	if b.Len() == 0 {
		return nil
	}
	if err := d.dev.IpcSet(b.String()); err != nil {
		d.applied = map[Key]Peer{} // not known: all of it again next time
		return fmt.Errorf("WireGuard peers of %s: %w", d.name, err)
	}
	d.applied = make(map[Key]Peer, len(d.want))
	for k, p := range d.want {
		if k != self {
			d.applied[k] = p
		}
	}
	return nil
}

// Rotate makes key the device's private key: sessions with the old one
// end, and peers handshake again once they have the new public key.
func (d *Device) Rotate(key Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dev != nil {
		if err := d.dev.IpcSet(fmt.Sprintf("private_key=%s\n", key.hex())); err != nil {
			return fmt.Errorf("WireGuard key of %s: %w", d.name, err)
		}
	}
	d.key = key
	return nil
}

// Status is the device as tartan status shows it.
type Status struct {
	Name      string       `json:"name"`
	Mode      string       `json:"mode"` // "" while the host has no wireguard network
	PublicKey string       `json:"publicKey"`
	Port      int          `json:"port"`
	MTU       int          `json:"mtu,omitempty"`
	Peers     []PeerStatus `json:"peers,omitempty"`
}

// PeerStatus is one peer's state.
type PeerStatus struct {
	PublicKey     string    `json:"publicKey"`
	Endpoint      string    `json:"endpoint"`
	Allowed       []string  `json:"allowedIPs"`
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	RxBytes       uint64    `json:"rxBytes"`
	TxBytes       uint64    `json:"txBytes"`
}

// Status reads the device's state.
func (d *Device) Status() (Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Status{Name: d.name, PublicKey: d.key.Public().String(), Port: d.port}
	if d.dev == nil {
		return s, nil
	}
	s.Mode, s.MTU = ModeUserspace, d.mtu
	get, err := d.dev.IpcGet()
	if err != nil {
		return s, fmt.Errorf("WireGuard state of %s: %w", d.name, err)
	}
	s.Peers, err = parsePeers(get)
	return s, err
}

// parsePeers reads the peers of WireGuard's configuration protocol's get
// answer (one key=value per line, a public_key line starting each peer).
func parsePeers(get string) ([]PeerStatus, error) {
	var out []PeerStatus
	var sec, nsec int64
	done := func() {
		if n := len(out); n > 0 && sec != 0 {
			out[n-1].LastHandshake = time.Unix(sec, nsec).UTC()
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(get))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if k == "public_key" {
			done()
			var key Key
			if n, err := hex.Decode(key[:], []byte(v)); err != nil || n != len(key) {
				return nil, fmt.Errorf("WireGuard state: peer key %q is not 32 bytes of hex", v)
			}
			out = append(out, PeerStatus{PublicKey: key.String(), Allowed: []string{}})
			continue
		}
		if len(out) == 0 {
			continue // the device's own lines (private_key is among them)
		}
		p := &out[len(out)-1]
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "endpoint":
			p.Endpoint = v
		case "allowed_ip":
			p.Allowed = append(p.Allowed, v)
		case "rx_bytes":
			p.RxBytes = uint64(n)
		case "tx_bytes":
			p.TxBytes = uint64(n)
		case "last_handshake_time_sec":
			sec = n
		case "last_handshake_time_nsec":
			nsec = n
		}
	}
	done()
	return out, sc.Err()
}
