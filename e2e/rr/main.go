// Command rr measures TCP request/response latency: the client sends one
// byte and waits for it to come back, n times, and prints the p50 and p99
// round trip in microseconds. Used by make bench from inside network
// namespaces (nsenter --net=...), so it needs nothing from the container.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sort"
	"time"
)

func main() {
	listen := flag.String("s", "", "serve on this address (host:port)")
	connect := flag.String("c", "", "measure against this server (host:port)")
	n := flag.Int("n", 2000, "round trips")
	flag.Parse()
	switch {
	case *listen != "":
		serve(*listen)
	case *connect != "":
		measure(*connect, *n)
	default:
		flag.Usage()
		os.Exit(2)
	}
}

func serve(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

func measure(addr string, n int) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	buf := []byte{1}
	rtts := make([]time.Duration, 0, n)
	for i := 0; i < n+100; i++ { // the first 100 warm up
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			log.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			log.Fatal(err)
		}
		if i >= 100 {
			rtts = append(rtts, time.Since(start))
		}
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	fmt.Printf("%.1f %.1f\n", us(rtts[len(rtts)/2]), us(rtts[len(rtts)*99/100]))
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
