package kernel

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Socket is a socket of this network namespace that holds a port: a
// listening TCP socket, or a UDP socket bound and not connected.
type Socket struct {
	Proto string // tcp or udp
	Addr  netip.Addr
	Port  int
}

func (s Socket) String() string { return netip.AddrPortFrom(s.Addr, uint16(s.Port)).String() }

// Socket states in /proc/net/{tcp,udp}: TCP_LISTEN, and TCP_CLOSE, which is
// what an unconnected UDP socket shows.
const (
	stateListen = "0A"
	stateClose  = "07"
)

// ListeningSockets reads the namespace's sockets that hold a port from
// /proc/net. The plugin runs in the host's network namespace, so these are
// the host's. A missing tcp6/udp6 file (IPv6 disabled) is no error.
func ListeningSockets() ([]Socket, error) {
	var out []Socket
	for _, f := range []struct{ path, proto string }{
		{"/proc/net/tcp", "tcp"}, {"/proc/net/tcp6", "tcp"}, {"/proc/net/udp", "udp"}, {"/proc/net/udp6", "udp"},
	} {
		file, err := os.Open(f.path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list sockets: %w", err)
		}
		ss, err := parseSockets(file, f.proto, binary.NativeEndian)
		file.Close()
		if err != nil {
			return nil, fmt.Errorf("list sockets: %s: %w", f.path, err)
		}
		out = append(out, ss...)
	}
	return out, nil
}

// parseSockets reads one /proc/net/{tcp,tcp6,udp,udp6} table. The kernel
// prints addresses as 32-bit words in its own byte order, hence order.
// Lines it cannot read are skipped: one odd line must not hide the rest.
func parseSockets(r io.Reader, proto string, order binary.ByteOrder) ([]Socket, error) {
	want := stateListen
	if proto == "udp" {
		want = stateClose
	}
	var out []Socket
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// sl local_address rem_address st ...
		if len(f) < 4 || !strings.HasSuffix(f[0], ":") || f[3] != want {
			continue
		}
		addr, port, ok := parseHexAddrPort(f[1], order)
		if !ok {
			continue
		}
		if proto == "udp" {
			if _, rport, ok := parseHexAddrPort(f[2], order); !ok || rport != 0 {
				continue // connected: it holds no port for others
			}
		}
		out = append(out, Socket{Proto: proto, Addr: addr, Port: port})
	}
	return out, sc.Err()
}

// parseHexAddrPort reads "0100007F:1F90" (IPv4) or 32 hex digits and a port
// (IPv6).
func parseHexAddrPort(s string, order binary.ByteOrder) (netip.Addr, int, bool) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, false
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, false
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		order.PutUint32(b[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(b)
	return addr, int(port), true
}

// EphemeralPorts is the host's ephemeral port range
// (net.ipv4.ip_local_port_range), where Docker's bridge takes the host
// ports of -P and -p 80 too.
func EphemeralPorts() (lo, hi int, err error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, fmt.Errorf("read the ephemeral port range: %w", err)
	}
	return parsePortRange(string(b))
}

func parsePortRange(s string) (lo, hi int, err error) {
	f := strings.Fields(s)
	if len(f) == 2 {
		lo, err1 := strconv.Atoi(f[0])
		hi, err2 := strconv.Atoi(f[1])
		if err1 == nil && err2 == nil && lo >= 1 && lo <= hi && hi <= 65535 {
			return lo, hi, nil
		}
	}
	return 0, 0, fmt.Errorf("ephemeral port range %q is not two ports LOW HIGH", strings.TrimSpace(s))
}
