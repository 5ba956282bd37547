//go:build chaos

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// TestRotationSoak: the key rotation soak of issue 29 (make chaos). A
// wireguard network on three hosts with Consul; a ping 10 times a second
// between the containers of every pair of hosts and one TCP stream from
// host 3's container to host 2's; every host's WireGuard key rotated in
// turn (tartan rotate-key), 5 s apart, for ROTATION_ROUNDS rounds (10),
// the order reversed every other round.
// It prints, per rotation, the pings each pair lost and, at the end, the
// bytes the stream delivered, and how many rotations of a pair met issue
// 29's goal of at most 1 s of pings (10) lost. It fails when a rotation
// costs a pair more than 3 s of pings (30: what WireGuard's own retries
// after a lost or crossed handshake cost, 5 s and 15 s, and not a slower
// machine's propagation of the new key, which the goal measures), when a
// ping is lost with no rotation under way, or when the stream lost,
// repeated or broke a byte.
func TestRotationSoak(t *testing.T) {
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "busybox", "go")
	rounds := 10
	if v, err := strconv.Atoi(os.Getenv("ROTATION_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	const gap = 5 * time.Second
	stream := buildStatic(t, "stream")

	c := testbed.NewCluster(t, "rk", 1500)
	for i := 0; i < 3; i++ {
		c.AddHost(t)
	}
	ips := make([]string, len(c.Hosts))
	for i, h := range c.Hosts {
		h.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend=wireguard", "--subnet", "10.186.0.0/16", "rot")
		name := fmt.Sprintf("rot-%d", i+1)
		h.MustDocker(t, "run", "-d", "--name", name, "--network", "rot", "tbox", "sh", "-c",
			"mkdir -p /www && echo rotation > /www/m && httpd -f -p 8080 -h /www")
		ips[i] = strings.TrimSpace(h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name))
		h.MustDocker(t, "cp", stream, name+":/stream")
	}
	allPairs(t, c, "rot", ips)
	keys := make([]string, len(c.Hosts))
	for i, h := range c.Hosts {
		keys[i] = hostStatus(t, h).WireGuard.PublicKey
	}

	// The traffic: pings for the whole soak and 10 s more, the stream for
	// as long as the rotations go.
	span := time.Duration(rounds*len(c.Hosts)) * gap
	pairs := [][2]int{{0, 1}, {0, 2}, {1, 2}}
	pings := make([]*pinger, len(pairs))
	for i, p := range pairs {
		pings[i] = startPing(t, c.Hosts[p[0]], fmt.Sprintf("%d→%d", p[0]+1, p[1]+1), fmt.Sprintf("rot-%d", p[0]+1), ips[p[1]], int((span+15*time.Second)/(100*time.Millisecond)))
	}
	h2, h3 := c.Hosts[1], c.Hosts[2]
	h2.MustDocker(t, "exec", "-d", "rot-2", "sh", "-c", "/stream -s :9000 > /stream.out 2>&1")
	type result struct {
		out string
		err error
	}
	sent := make(chan result, 1)
	go func() {
		out, err := h3.Docker("exec", "rot-3", "/stream", "-c", ips[1]+":9000", "-rate", "1000000", "-for", (span + 5*time.Second).String())
		sent <- result{out, err}
	}()

	// The rotations, after 5 s of traffic with none.
	type rotation struct {
		round, host int
		at          time.Time
	}
	var rotations []rotation
	time.Sleep(gap)
	next := time.Now()
	for r := 0; r < rounds; r++ {
		// Odd rounds go 1, 2, 3 and even ones 3, 2, 1: every host is
		// rotated 5 s after every other one, for each pair both ways (the
		// issue's cut-off came with the pinged host rotated first).
		order := []int{0, 1, 2}
		if r%2 == 1 {
			order = []int{2, 1, 0}
		}
		for _, i := range order {
			h := c.Hosts[i]
			time.Sleep(time.Until(next))
			at := time.Now()
			h.Tartan(t, "rotate-key")
			rotations = append(rotations, rotation{r + 1, i + 1, at})
			next = at.Add(gap)
		}
	}
	var failures []string
	for _, p := range pings {
		if err := p.wait(); err != nil && len(p.replies()) == 0 {
			failures = append(failures, fmt.Sprintf("ping %s: %v", p.name, err))
		}
	}
	// Pings lost, by the rotation under way when they were sent.
	lost := make([][]int, len(pings)) // [pair][rotation+1]; index 0: before the first
	for i, p := range pings {
		lost[i] = make([]int, len(rotations)+1)
		for _, at := range p.lostAt() {
			k := 0
			for j, r := range rotations {
				if !at.Before(r.at) {
					k = j + 1
				}
			}
			lost[i][k]++
		}
	}
	var table strings.Builder
	fmt.Fprintf(&table, "round host  lost pings (100 ms each): ")
	for _, p := range pings {
		fmt.Fprintf(&table, "%6s", p.name)
	}
	table.WriteString("\n")
	worst, total, missed := 0, 0, 0
	for i, p := range pings {
		if lost[i][0] > 0 {
			failures = append(failures, fmt.Sprintf("ping %s lost %d before the first rotation", p.name, lost[i][0]))
		}
	}
	for j, r := range rotations {
		fmt.Fprintf(&table, "%5d %4d %27s", r.round, r.host, "")
		for i, p := range pings {
			n := lost[i][j+1]
			fmt.Fprintf(&table, "%6d", n)
			worst, total = max(worst, n), total+n
			if n > 10 {
				missed++
			}
			if n > 30 {
				failures = append(failures, fmt.Sprintf("rotation %d (round %d, host %d): ping %s lost %d (%v), more than 3 s", j+1, r.round, r.host, p.name, n, time.Duration(n)*100*time.Millisecond))
			}
		}
		table.WriteString("\n")
	}
	t.Logf("rotation soak: %d rounds, %d rotations %v apart, pings lost per rotation and pair:\n%s", rounds, len(rotations), gap, table.String())
	t.Logf("rotation soak: pings lost in all %d (of %d sent), at most %d (%v) in one rotation of one pair; the goal of at most 1 s met in %d of %d rotations of a pair",
		total, func() (n int) {
			for _, p := range pings {
				n += p.count
			}
			return
		}(), worst, time.Duration(worst)*100*time.Millisecond, len(rotations)*len(pings)-missed, len(rotations)*len(pings))

	// The stream: every byte delivered, in order.
	res := <-sent
	var rep struct {
		Sent     int64  `json:"sent"`
		Received int64  `json:"received"`
		Stall    string `json:"longestStall"`
		Error    string `json:"error"`
	}
	if err := json.Unmarshal([]byte(lastLine(res.out)), &rep); err != nil {
		failures = append(failures, fmt.Sprintf("the stream's client: %v: %s", res.err, res.out))
	} else {
		server, _ := h2.Docker("exec", "rot-2", "cat", "/stream.out")
		t.Logf("rotation soak: TCP stream host 3 → host 2: %d bytes sent, %d delivered intact; longest stall: %s sending; server %s", rep.Sent, rep.Received, rep.Stall, strings.TrimSpace(server))
		if res.err != nil || rep.Error != "" || rep.Sent == 0 || rep.Received != rep.Sent {
			failures = append(failures, fmt.Sprintf("the stream: %v %s (server: %s)", res.err, res.out, server))
		}
	}
	// Every host has a new key, and every pair still talks.
	for i, h := range c.Hosts {
		if k := hostStatus(t, h).WireGuard.PublicKey; k == keys[i] {
			failures = append(failures, fmt.Sprintf("host %d kept its key %s", i+1, k))
		}
	}
	if len(failures) > 0 {
		for _, h := range c.Hosts {
			t.Logf("%s: WireGuard %+v\n%s", h.Name, hostStatus(t, h).WireGuard, h.LogTail(60))
		}
		t.Fatalf("rotation soak:\n%s", strings.Join(failures, "\n"))
	}
	allPairs(t, c, "rot", ips)
}

// pinger is a ping running in a container (busybox ping, 10 a second),
// each answer noted with the time it arrived.
type pinger struct {
	name  string
	count int
	cmd   *exec.Cmd
	done  chan error

	mu   sync.Mutex
	got  map[int]time.Time // seq: when its answer came
	tail []string          // the output's last lines, for a failure
}

var pingReply = regexp.MustCompile(`seq=(\d+) `)

func startPing(t *testing.T, h *testbed.Host, name, src, dst string, count int) *pinger {
	t.Helper()
	p := &pinger{name: name, count: count, done: make(chan error, 1), got: map[int]time.Time{}}
	p.cmd = exec.Command("docker", "exec", src, "ping", "-i", "0.1", "-W", "1", "-c", strconv.Itoa(count), dst)
	p.cmd.Env = h.Env()
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = p.cmd.Stdout
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.cmd.Process.Kill() })
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			now := time.Now()
			p.mu.Lock()
			if m := pingReply.FindStringSubmatch(line); m != nil {
				n, _ := strconv.Atoi(m[1])
				if _, dup := p.got[n]; !dup {
					p.got[n] = now
				}
			}
			p.tail = append(p.tail, line)
			if len(p.tail) > 20 {
				p.tail = p.tail[1:]
			}
			p.mu.Unlock()
		}
		p.done <- p.cmd.Wait()
	}()
	return p
}

func (p *pinger) wait() error { return <-p.done }

func (p *pinger) replies() map[int]time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.got
}

// lostAt is when each unanswered ping was sent: 100 ms after the last
// answered one before it per ping between (or before the first answered
// one after it).
func (p *pinger) lostAt() []time.Time {
	got := p.replies()
	var out []time.Time
	for n := 0; n < p.count; n++ {
		if _, ok := got[n]; ok {
			continue
		}
		var at time.Time
		for a := n - 1; a >= 0; a-- {
			if t, ok := got[a]; ok {
				at = t.Add(time.Duration(n-a) * 100 * time.Millisecond)
				break
			}
		}
		if at.IsZero() {
			for b := n + 1; b < p.count; b++ {
				if t, ok := got[b]; ok {
					at = t.Add(-time.Duration(b-n) * 100 * time.Millisecond)
					break
				}
			}
		}
		out = append(out, at) // none answered at all: the zero time, before every rotation
	}
	return out
}
