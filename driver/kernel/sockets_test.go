package kernel

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// Captured on a little-endian (x86-64) host.
const procTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 3500007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 20293 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21990 1 0000000000000000 100 0 0 10 0
   2: 0A01A8C0:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31990 1 0000000000000000 100 0 0 10 0
   3: 0A01A8C0:0016 0B01A8C0:D2F4 01 00000000:00000000 02:0009E1D7 00000000     0        0 41101 4 0000000000000000 20 4 31 10 -1
   4: garbage
`

const procTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21992 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21993 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000A01A8C0:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21994 1 0000000000000000 100 0 0 10 0
`

const procUDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 20292 2 0000000000000000 0
  200: 00000000:2118 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 30000 2 0000000000000000 0
  300: 0A01A8C0:A1B2 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 30001 2 0000000000000000 0
`

func sock(proto, addrPort string) Socket {
	ap := netip.MustParseAddrPort(addrPort)
	return Socket{Proto: proto, Addr: ap.Addr(), Port: int(ap.Port())}
}

// TestParseSockets: listening TCP and unconnected UDP sockets are read from
// /proc/net with their addresses; established and connected ones, the
// header and broken lines are not.
func TestParseSockets(t *testing.T) {
	for _, c := range []struct {
		name, text, proto string
		want              []Socket
	}{
		{"tcp", procTCP, "tcp", []Socket{sock("tcp", "127.0.0.53:53"), sock("tcp", "0.0.0.0:22"), sock("tcp", "192.168.1.10:8080")}},
		{"tcp6", procTCP6, "tcp", []Socket{sock("tcp", "[::]:22"), sock("tcp", "[::1]:631"), sock("tcp", "[::ffff:192.168.1.10]:8081")}},
		{"udp", procUDP, "udp", []Socket{sock("udp", "127.0.0.53:53"), sock("udp", "0.0.0.0:8472")}},
	} {
		got, err := parseSockets(strings.NewReader(c.text), c.proto, binary.LittleEndian)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

// TestListeningSockets reads this namespace's real tables: it must not fail
// (tcp6/udp6 may be missing).
func TestListeningSockets(t *testing.T) {
	if _, err := ListeningSockets(); err != nil {
		t.Fatal(err)
	}
}

func TestParsePortRange(t *testing.T) {
	if lo, hi, err := parsePortRange("32768\t60999\n"); lo != 32768 || hi != 60999 || err != nil {
		t.Fatalf("%d %d %v", lo, hi, err)
	}
	for _, bad := range []string{"", "1", "9 8", "0 10", "1 70000", "a b"} {
		if _, _, err := parsePortRange(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if lo, hi, err := EphemeralPorts(); err != nil || lo < 1 || hi < lo {
		t.Fatalf("this host's range: %d %d %v", lo, hi, err)
	}
}
