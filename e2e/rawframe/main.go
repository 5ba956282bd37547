// Command rawframe sends one Ethernet frame carrying an IPv4 UDP datagram,
// built by hand, out of an interface: with any source address, to any MAC,
// optionally with an 802.1Q tag. The e2e tests run it inside a namespace on
// the test underlay (nsenter --net=...) to play a machine on the LAN that
// injects traffic into a host's networks.
package main

import (
	"encoding/binary"
	"flag"
	"log"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

func main() {
	ifname := flag.String("i", "", "interface to send on")
	dstMAC := flag.String("dmac", "", "destination MAC")
	vlan := flag.Int("vlan", 0, "802.1Q VLAN ID (0: untagged)")
	src := flag.String("src", "", "IPv4 source")
	dst := flag.String("dst", "", "IPv4 destination")
	port := flag.Int("port", 9000, "UDP destination port")
	payload := flag.String("payload", "injected", "UDP payload")
	count := flag.Int("n", 3, "frames to send")
	flag.Parse()
	ifi, err := net.InterfaceByName(*ifname)
	if err != nil {
		log.Fatal(err)
	}
	dmac, err := net.ParseMAC(*dstMAC)
	if err != nil {
		log.Fatal(err)
	}
	s, d := netip.MustParseAddr(*src), netip.MustParseAddr(*dst)
	frame := build(dmac, ifi.HardwareAddr, *vlan, s, d, uint16(*port), []byte(*payload))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		log.Fatal(err)
	}
	defer unix.Close(fd)
	addr := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
	copy(addr.Addr[:], dmac)
	for i := 0; i < *count; i++ {
		if err := unix.Sendto(fd, frame, 0, addr); err != nil {
			log.Fatal(err)
		}
	}
}

// build is the frame: Ethernet (with the tag, if any), IPv4, UDP.
func build(dmac, smac net.HardwareAddr, vlan int, src, dst netip.Addr, port uint16, payload []byte) []byte {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload) // checksum 0: none, as IPv4 UDP allows
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	eth := append(append([]byte{}, dmac...), smac...)
	if vlan != 0 {
		eth = binary.BigEndian.AppendUint16(eth, unix.ETH_P_8021Q)
		eth = binary.BigEndian.AppendUint16(eth, uint16(vlan))
	}
	eth = binary.BigEndian.AppendUint16(eth, unix.ETH_P_IP)
	return append(append(eth, ip...), udp...)
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
