package wireguard

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/kernel"
	"golang.org/x/sys/unix"
)

// DeviceName is the host's WireGuard device, which every wireguard network
// of the host shares (as flannel's flannel-wg): WireGuard picks a packet's
// peer by its destination among the peers' allowed addresses.
const DeviceName = "tartan-wg"

// Keepalive is the persistent keepalive of every peer, in seconds: it keeps
// a stateful firewall or NAT on the path open, and setting it on a new peer
// (a new host, or a host's new key) starts the handshake at once.
const Keepalive = 25

// Modes: which WireGuard carries the device (WG_MODE).
const (
	ModeAuto      = "auto"      // the kernel's where it has one, else user space
	ModeKernel    = "kernel"    // the kernel's WireGuard (a "wireguard" link)
	ModeUserspace = "userspace" // wireguard-go over a TUN device, in the plugin
)

// Peer is another host as the device knows it.
type Peer struct {
	Key      Key
	Endpoint netip.AddrPort
	Allowed  []netip.Prefix // sorted
}

// engine is one WireGuard implementation behind the device.
type engine interface {
	mode() string
	// configure sets the private key when key is not nil, the port when
	// port is not 0, removes the peers of remove and sets those of set.
	configure(key *Key, port int, remove []Key, set []Peer) error
	peers() ([]PeerStatus, error)
	// close removes the interface.
	close()
}

// Device is the host's WireGuard device: the kernel's WireGuard where it
// has one (the interface then outlives a plugin restart), otherwise
// WireGuard in user space (golang.zx2c4.com/wireguard over a TUN device,
// its goroutines inside the plugin: the kernel removes the TUN device when
// the plugin stops, and Ensure makes it again with the peers last set). It
// exists while the host has a wireguard network.
//
// Its methods are safe for concurrent use; none blocks on the network.
type Device struct {
	name string
	port int
	mode string // ModeAuto, ModeKernel or ModeUserspace
	log  logrus.FieldLogger

	mu      sync.Mutex
	key     Key
	eng     engine
	mtu     int
	told    bool         // the fall back to user space was logged
	want    map[Key]Peer // the peers last set
	wantSet bool         // SetPeers was called: peers not wanted may go
	applied map[Key]Peer // what eng holds
	// fresh are new peers watched for a crossed handshake (fresh.go);
	// watching: a look is scheduled.
	fresh    map[Key]*freshPeer
	watching bool
}

// NewDevice returns the host's device, not made yet: Ensure makes it. mode
// is ModeAuto, ModeKernel or ModeUserspace.
func NewDevice(name string, port int, mode string, key Key, log logrus.FieldLogger) *Device {
	if log == nil {
		log = logrus.StandardLogger()
	}
	return &Device{name: name, port: port, mode: mode, key: key, log: log.WithField("if", name), want: map[Key]Peer{}}
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

// Mode is the WireGuard that carries the device now ("" while there is
// none).
func (d *Device) Mode() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.eng == nil {
		return ""
	}
	return d.eng.mode()
}

// Ensure makes the device exist, up, with MTU mtu, the host's key, its port
// and the peers last set. A device whose interface went (deleted by hand)
// is made again; the routes through it are the router's to restore. A
// kernel WireGuard interface left by the plugin before a restart is
// adopted with its peers.
func (d *Device) Ensure(mtu int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.eng != nil && kernel.LinkExists(d.name) {
		if mtu != d.mtu {
			if err := kernel.SetMTU(d.name, mtu); err != nil {
				return err
			}
			d.mtu = mtu
		}
		return kernel.SetLinkUp(d.name) // set down by hand: up again
	}
	d.closeLocked()
	eng, held, err := d.open(mtu)
	if err != nil {
		return err
	}
	if err := eng.configure(&d.key, d.port, nil, nil); err != nil {
		eng.close()
		return fmt.Errorf("WireGuard device %s: set its key and UDP port %d: %w (if another program holds the port, set WG_PORT: docker plugin set <plugin> WG_PORT=51821)", d.name, d.port, err)
	}
	if err := kernel.SetMTU(d.name, mtu); err != nil {
		eng.close()
		return err
	}
	if err := kernel.SetLinkUp(d.name); err != nil {
		eng.close()
		return err
	}
	d.eng, d.mtu, d.applied = eng, mtu, map[Key]Peer{}
	for _, k := range held {
		d.applied[k] = Peer{} // set again, or removed, by the next apply
	}
	d.log.WithFields(logrus.Fields{"mode": eng.mode(), "port": d.port, "mtu": mtu, "publicKey": d.key.Public().String()}).Info("WireGuard device ready")
	return d.applyLocked()
}

// open makes the interface in the device's mode: the kernel's WireGuard
// first unless user space is asked for. held are the peers an adopted
// kernel interface has.
func (d *Device) open(mtu int) (eng engine, held []Key, err error) {
	if d.mode != ModeUserspace {
		k, held, err := openKernel(d.name, mtu)
		if err == nil {
			return k, held, nil
		}
		if d.mode == ModeKernel {
			return nil, nil, fmt.Errorf("WG_MODE=kernel: %w (use WG_MODE=auto or userspace where the kernel has no WireGuard)", err)
		}
		if !d.told {
			d.told = true
			why := "kernel WireGuard cannot be used"
			if errors.Is(err, unix.EOPNOTSUPP) {
				why = "the kernel has no WireGuard"
			}
			d.log.Infof("%s (%v): WireGuard runs in user space, over a TUN device", why, err)
		}
	}
	if kernel.LinkExists(d.name) {
		// Left by another process (a device made persistent by hand, or
		// a kernel one when user space is asked for): this one is the
		// host's.
		if err := kernel.DeleteLink(d.name); err != nil {
			return nil, nil, fmt.Errorf("WireGuard device %s exists and cannot be removed: %w", d.name, err)
		}
	}
	u, err := openUserspace(d.name, mtu, d.log)
	return u, nil, err
}

// Close removes the device (the host's last wireguard network went).
func (d *Device) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closeLocked()
}

func (d *Device) closeLocked() {
	if d.eng != nil {
		d.eng.close() // its interface and the routes through it go
		d.eng, d.applied = nil, nil
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
	d.wantSet = true
	return d.applyLocked()
}

// applyLocked changes the device's peers to the wanted ones in one call:
// the removals, then the additions and changes.
func (d *Device) applyLocked() error {
	if d.eng == nil {
		return nil
	}
	var remove []Key
	for k := range d.applied {
		// An adopted kernel device keeps its peers until the plans have
		// said which ones go.
		if _, ok := d.want[k]; !ok && d.wantSet {
			remove = append(remove, k)
		}
	}
	self := d.key.Public()
	var set []Peer
	for k, p := range d.want {
		if k == self {
			continue // a device refuses its own key as a peer
		}
		if old, ok := d.applied[k]; ok && old.Endpoint == p.Endpoint && slices.Equal(old.Allowed, p.Allowed) {
			continue
		}
		set = append(set, p)
	}
	if len(remove) == 0 && len(set) == 0 {
		return nil
	}
	if err := d.eng.configure(nil, 0, remove, set); err != nil {
		d.applied = map[Key]Peer{} // not known: all of it again next time
		return fmt.Errorf("WireGuard peers of %s: %w", d.name, err)
	}
	var removed []Peer
	for _, k := range remove {
		removed = append(removed, d.applied[k])
	}
	d.watchNew(set, removed)
	kept := d.applied
	d.applied = make(map[Key]Peer, len(d.want))
	for k, p := range d.want {
		if k != self {
			d.applied[k] = p
		}
	}
	if !d.wantSet {
		for k, p := range kept {
			if _, ok := d.applied[k]; !ok {
				d.applied[k] = p
			}
		}
	}
	return nil
}

// Rotate makes key the device's private key and returns the one it
// replaces: sessions with the old one end, and peers handshake again once
// they have the new public key.
func (d *Device) Rotate(key Key) (old Key, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.eng != nil {
		if err := d.eng.configure(&key, 0, nil, nil); err != nil {
			return d.key, fmt.Errorf("WireGuard key of %s: %w", d.name, err)
		}
	}
	old, d.key = d.key, key
	return old, nil
}

// Ready says whether the device is up and has been given its peers.
func (d *Device) Ready() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.eng != nil && d.wantSet
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
	if d.eng == nil {
		return s, nil
	}
	s.Mode, s.MTU = d.eng.mode(), d.mtu
	var err error
	if s.Peers, err = d.eng.peers(); err != nil {
		return s, fmt.Errorf("WireGuard state of %s: %w", d.name, err)
	}
	return s, nil
}
