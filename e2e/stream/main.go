// Command stream carries one long TCP stream at a steady rate and checks
// that every byte arrives, in order: the rotation soak of make chaos runs
// it between two containers (copied into them) while the hosts' WireGuard
// keys change under it.
//
//	stream -s :9000                          serve one stream, then exit
//	stream -c 10.1.2.3:9000 -rate 1000000 -for 3m
//	stream -u :9000                          print every UDP datagram's payload
//
// The client sends a known pattern, rate bytes a second for the given
// time (catching up after a stall), closes its side and waits for the
// server's count. Both print one line of JSON; the client exits 1 when the
// server did not get every byte it sent, intact.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// Report is what each side prints.
type Report struct {
	Sent     int64  `json:"sent,omitempty"`
	Received int64  `json:"received"`
	Stall    string `json:"longestStall"` // the longest wait between two reads (server) or writes (client)
	Error    string `json:"error,omitempty"`
}

func main() {
	listen := flag.String("s", "", "serve one stream on this address (host:port)")
	connect := flag.String("c", "", "send a stream to this server (host:port)")
	rate := flag.Int64("rate", 1<<20, "bytes a second the client sends")
	length := flag.Duration("for", time.Minute, "how long the client sends")
	wait := flag.Duration("wait", 5*time.Minute, "how long the client waits for the server's count once it has sent everything")
	udp := flag.String("u", "", "print the payload of every UDP datagram to this address (host:port), one a line, until killed")
	flag.Parse()
	if *udp != "" {
		if err := printDatagrams(*udp); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	var r Report
	var err error
	switch {
	case *listen != "":
		r, err = serve(*listen)
	case *connect != "" && *rate > 0 && *length > 0:
		r, err = send(*connect, *rate, *length, *wait)
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		r.Error = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
	if err != nil {
		os.Exit(1)
	}
}

// pattern is the stream's byte at offset i: a loss, a repeat or a reorder
// shows as a wrong byte.
func pattern(i int64) byte { return byte(i % 251) }

func fill(b []byte, off int64) {
	for i := range b {
		b[i] = pattern(off + int64(i))
	}
}

// serve takes one connection, reads it to its end checking every byte,
// and answers with the count.
func serve(addr string) (Report, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return Report{}, err
	}
	defer l.Close()
	conn, err := l.Accept()
	if err != nil {
		return Report{}, err
	}
	defer conn.Close()
	var r Report
	var stall time.Duration
	buf := make([]byte, 64<<10)
	last := time.Now()
	for {
		n, err := conn.Read(buf)
		now := time.Now()
		stall = max(stall, now.Sub(last))
		last = now
		for i := 0; i < n; i++ {
			if buf[i] != pattern(r.Received+int64(i)) {
				r.Stall = stall.String()
				return r, fmt.Errorf("byte %d of the stream is %d, want %d", r.Received+int64(i), buf[i], pattern(r.Received+int64(i)))
			}
		}
		r.Received += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			r.Stall = stall.String()
			return r, fmt.Errorf("after %d bytes: %w", r.Received, err)
		}
	}
	r.Stall = stall.String()
	var count [8]byte
	binary.BigEndian.PutUint64(count[:], uint64(r.Received))
	_, err = conn.Write(count[:])
	return r, err
}

// send writes rate bytes a second for length, then half-closes and reads
// the server's count.
func send(addr string, rate int64, length, wait time.Duration) (Report, error) {
	// The server may be starting still: refused connections are tried
	// again for a minute.
	var conn net.Conn
	var err error
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		if conn, err = net.DialTimeout("tcp", addr, time.Minute); err == nil || time.Since(start) > time.Minute {
			break
		}
	}
	if err != nil {
		return Report{}, err
	}
	defer conn.Close()
	var r Report
	var stall time.Duration
	total := rate * int64(length/time.Millisecond) / 1000
	chunk := max(rate/20, 1024) // 20 writes a second
	buf := make([]byte, chunk)
	start := time.Now()
	last := start
	for r.Sent < total {
		// What is due by now; a write that blocked (a stall) is caught up.
		due := min(total, rate*int64(time.Since(start)/time.Millisecond)/1000)
		if r.Sent >= due {
			time.Sleep(time.Duration((r.Sent-due+1)*int64(time.Second)/rate) + time.Millisecond)
			continue
		}
		n := min(int64(len(buf)), due-r.Sent)
		fill(buf[:n], r.Sent)
		w, err := conn.Write(buf[:n])
		r.Sent += int64(w)
		now := time.Now()
		stall = max(stall, now.Sub(last))
		last = now
		if err != nil {
			r.Stall = stall.String()
			return r, fmt.Errorf("after %d bytes: %w", r.Sent, err)
		}
	}
	r.Stall = stall.String()
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return r, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	var count [8]byte
	if _, err := io.ReadFull(conn, count[:]); err != nil {
		return r, fmt.Errorf("the server's count: %w", err)
	}
	r.Received = int64(binary.BigEndian.Uint64(count[:]))
	if r.Received != r.Sent {
		return r, fmt.Errorf("the server got %d of %d bytes", r.Received, r.Sent)
	}
	return r, nil
}

// printDatagrams prints the payload of every datagram that arrives at addr
// (a test's injected frames), one a line.
func printDatagrams(addr string) error {
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		fmt.Printf("%s\n", buf[:n])
	}
}
