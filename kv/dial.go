package kv

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// How a Consul store finds out that a connection is dead rather than
// waiting on it: a server that vanished without a word (its machine lost
// power, a partition) answers no probe, and data it does not acknowledge
// cannot be told from a slow answer by TCP's defaults for about 15 minutes.
// A watch is a 5-minute blocking query on one connection, so without
// these a watch of a host would see nothing for minutes after a server's
// silent death, and a host back from a partition would wait on the
// retransmissions TCP backed off meanwhile (tens of seconds) before its
// first answer.
const (
	// DialTimeout bounds one TCP connect to a server (then the next
	// attempt, or server, is tried).
	DialTimeout = 5 * time.Second
	// keepAliveIdle, keepAliveInterval and keepAliveCount: an idle
	// connection (a blocking query waiting) is probed after 10 s of
	// silence, every 5 s, and closed after 3 probes without an answer.
	keepAliveIdle     = 10 * time.Second
	keepAliveInterval = 5 * time.Second
	keepAliveCount    = 3
	// UnackedTimeout closes a connection whose sent data (a request, a
	// probe) the server has not acknowledged for this long
	// (TCP_USER_TIMEOUT).
	UnackedTimeout = 20 * time.Second
)

// dialer opens connections to Consul servers with the bounds above.
func dialer() *net.Dialer {
	return &net.Dialer{
		Timeout: DialTimeout,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable: true, Idle: keepAliveIdle, Interval: keepAliveInterval, Count: keepAliveCount,
		},
		Control: func(network, _ string, c syscall.RawConn) error {
			if network != "tcp" && network != "tcp4" && network != "tcp6" {
				return nil
			}
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(UnackedTimeout/time.Millisecond))
			}); err != nil {
				return err
			}
			return serr
		},
	}
}
