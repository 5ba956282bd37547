package kv

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDialerBoundsDeadConnections: a connection to a Consul server carries
// the bounds that find a silent server dead (dial.go), read back from the
// kernel's socket.
func TestDialerBoundsDeadConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			<-time.After(5 * time.Second)
		}
	}()
	c, err := dialer().DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	want := map[string]int{
		"TCP_USER_TIMEOUT (ms)": int(UnackedTimeout / time.Millisecond),
		"SO_KEEPALIVE":          1,
		"TCP_KEEPIDLE (s)":      int(keepAliveIdle / time.Second),
		"TCP_KEEPINTVL (s)":     int(keepAliveInterval / time.Second),
		"TCP_KEEPCNT":           keepAliveCount,
	}
	if err := raw.Control(func(fd uintptr) {
		for name, opt := range map[string][2]int{
			"TCP_USER_TIMEOUT (ms)": {unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT},
			"SO_KEEPALIVE":          {unix.SOL_SOCKET, unix.SO_KEEPALIVE},
			"TCP_KEEPIDLE (s)":      {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
			"TCP_KEEPINTVL (s)":     {unix.IPPROTO_TCP, unix.TCP_KEEPINTVL},
			"TCP_KEEPCNT":           {unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
		} {
			v, err := unix.GetsockoptInt(int(fd), opt[0], opt[1])
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			got[name] = v
		}
	}); err != nil {
		t.Fatal(err)
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s = %d, want %d", name, got[name], w)
		}
	}
}
