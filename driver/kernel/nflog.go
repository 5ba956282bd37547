package kernel

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Logged is one packet an NFLOG rule sent to its group: the rule's prefix
// and what the packet's headers say.
type Logged struct {
	Prefix   string
	Src, Dst netip.Addr
	Proto    uint8  // IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6…
	Port     uint16 // TCP and UDP: the destination port
}

// nfnetlink's NFLOG (nfnetlink_log) constants.
const (
	nfnlSubsysULOG   = 4
	nfulnlMsgPacket  = 0
	nfulnlMsgConfig  = 1
	nfulaCfgCmd      = 1
	nfulaCfgMode     = 2
	nfulnlCfgCmdBind = 1
	nfulnlCopyPacket = 2
	nfulaPayload     = 9
	nfulaPrefix      = 10
	nflogCopyRange   = 128 // the headers are enough
)

// ReadNFLOG binds to an NFLOG group in this network namespace and hands
// every logged packet to fn until ctx ends. Binding needs CAP_NET_ADMIN;
// packets the socket cannot keep up with are dropped by the kernel (the
// log is a sample when the rate is high, never a brake).
func ReadNFLOG(ctx context.Context, group uint16, fn func(Logged)) error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return fmt.Errorf("nflog: netlink socket: %w", err)
	}
	defer c.Close()
	go func() {
		<-ctx.Done()
		_ = c.Close()
	}()
	config := func(attrs []byte) error {
		msg := netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysULOG<<8 | nfulnlMsgConfig), Flags: netlink.Request | netlink.Acknowledge},
			Data:   append(nfgenmsg(unix.AF_UNSPEC, group), attrs...),
		}
		_, err := c.Execute(msg)
		return err
	}
	bind, err := attr(nfulaCfgCmd, []byte{nfulnlCfgCmdBind})
	if err != nil {
		return err
	}
	if err := config(bind); err != nil {
		return fmt.Errorf("nflog: bind group %d: %w", group, err)
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, nflogCopyRange)
	mode[4] = nfulnlCopyPacket
	modeAttr, err := attr(nfulaCfgMode, mode)
	if err != nil {
		return err
	}
	if err := config(modeAttr); err != nil {
		return fmt.Errorf("nflog: copy mode of group %d: %w", group, err)
	}
	for {
		msgs, err := c.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("nflog: receive: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(nfnlSubsysULOG<<8|nfulnlMsgPacket) || len(m.Data) < 4 {
				continue
			}
			if l, ok := parseLogged(m.Data[4:]); ok {
				fn(l)
			}
		}
	}
}

// nfgenmsg is nfnetlink's header: family, version 0, the group (big
// endian).
func nfgenmsg(family uint8, group uint16) []byte {
	b := []byte{family, 0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], group)
	return b
}

func attr(typ uint16, data []byte) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(typ, data)
	return ae.Encode()
}

// parseLogged reads a packet message's attributes: the prefix and the IP
// headers of the payload.
func parseLogged(b []byte) (Logged, bool) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return Logged{}, false
	}
	ad.ByteOrder = binary.BigEndian
	var l Logged
	var payload []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPrefix:
			l.Prefix = trimNUL(ad.String())
		case nfulaPayload:
			payload = ad.Bytes()
		}
	}
	if ad.Err() != nil {
		return Logged{}, false
	}
	return l, parseIP(payload, &l)
}

func trimNUL(s string) string {
	for len(s) > 0 && s[len(s)-1] == 0 {
		s = s[:len(s)-1]
	}
	return s
}

// parseIP reads an IPv4 or IPv6 header (without extension headers) and the
// destination port of TCP or UDP.
func parseIP(p []byte, l *Logged) bool {
	if len(p) < 1 {
		return false
	}
	var transport []byte
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 {
			return false
		}
		ihl := int(p[0]&0x0f) * 4
		l.Proto = p[9]
		l.Src = netip.AddrFrom4([4]byte(p[12:16]))
		l.Dst = netip.AddrFrom4([4]byte(p[16:20]))
		if ihl >= 20 && len(p) >= ihl {
			transport = p[ihl:]
		}
	case 6:
		if len(p) < 40 {
			return false
		}
		l.Proto = p[6]
		l.Src = netip.AddrFrom16([16]byte(p[8:24]))
		l.Dst = netip.AddrFrom16([16]byte(p[24:40]))
		transport = p[40:]
	default:
		return false
	}
	if (l.Proto == unix.IPPROTO_TCP || l.Proto == unix.IPPROTO_UDP) && len(transport) >= 4 {
		l.Port = binary.BigEndian.Uint16(transport[2:4])
	}
	return true
}
