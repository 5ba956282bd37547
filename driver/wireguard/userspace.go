package wireguard

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// userspace is WireGuard in the plugin: wireguard-go over a TUN device
// (with the TUN offloads, GSO and GRO, where the kernel has them),
// configured through its configuration protocol. Its queues are bounded
// (wireguard-go's: 1024 packets each way and for handshakes); its buffer
// pools are not, so the plugin runs with a soft memory limit (GOMEMLIMIT in
// config.json) that has the collector return them.
type userspace struct{ dev *device.Device }

func openUserspace(name string, mtu int, log logrus.FieldLogger) (*userspace, error) {
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("WireGuard in user space needs a TUN device (/dev/net/tun, linux.devices of the plugin's config.json): %w", err)
	}
	dev := device.NewDevice(t, conn.NewDefaultBind(), &device.Logger{
		Verbosef: func(format string, args ...any) { log.Debugf("wireguard: "+format, args...) },
		Errorf:   func(format string, args ...any) { log.Warnf("wireguard: "+format, args...) },
	})
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("WireGuard device %s: %w", name, err)
	}
	return &userspace{dev: dev}, nil
}

func (*userspace) mode() string { return ModeUserspace }

func (u *userspace) configure(key *Key, port int, remove []Key, set []Peer) error {
	var b strings.Builder
	if key != nil {
		fmt.Fprintf(&b, "private_key=%s\n", key.hex())
	}
	if port != 0 {
		fmt.Fprintf(&b, "listen_port=%d\n", port)
	}
	for _, k := range remove {
		fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.hex())
	}
	for _, p := range set {
		fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\npersistent_keepalive_interval=%d\nreplace_allowed_ips=true\n", p.Key.hex(), p.Endpoint, Keepalive)
		for _, a := range p.Allowed {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
	}
	return u.dev.IpcSet(b.String())
}

func (u *userspace) peers() ([]PeerStatus, error) {
	get, err := u.dev.IpcGet()
	if err != nil {
		return nil, err
	}
	return parsePeers(get)
}

func (u *userspace) close() { u.dev.Close() } // closes the TUN device: its interface goes

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
