// Package cli is the operator's side of tartan: subcommands of the tartan
// binary that ask the running plugin, over its socket, what it knows.
package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tartan-net/tartan/internal/dockerid"
	"github.com/tartan-net/tartan/plugin/api"
)

// SocketGlob is where Docker puts managed plugins' sockets, whatever its
// --exec-root: one folder per plugin ID.
const SocketGlob = "/run/docker/plugins/*/tartan.sock"

// ServeCommand runs the plugin itself (config.json's entrypoint).
const ServeCommand = "serve"

// Commands are the subcommands, with what each shows.
var Commands = map[string]string{
	"status":     "this host: its ID, store, firewall flavour, networks with their peers and problems",
	"hosts":      "every host the store knows, alive or lapsed, with the blocks it leases",
	"networks":   "every pool in the store with its network: backend, VNI, block size, blocks and addresses held",
	"addresses":  "a pool's addresses (tartan addresses 10.244.0.0/16): host, kind, MAC, and this host's endpoint that has it",
	"doctor":     "what is wrong on this host (kernel entries that differ from the plans, addresses no endpoint has, lapsed hosts), with the fix; exit status 1 if anything",
	"ports":      "the ports this host's endpoints publish (docker run -p, -P), with the host port tartan chose for -P",
	"gc":         "what the automatic collection would remove (this host's orphaned addresses, gone hosts' records); --yes removes it now",
	"rotate-key": "give this host a new WireGuard key pair now (its record is written at once; peers re-key as their watch of the store delivers it)",
	"repair":     "run the resync now: the plugin makes the kernel (devices, routes, neighbours, firewall, fast path, WireGuard peers) what its records and plans say, as it does every RESYNC",
	"version":    "this binary's version, the Go and kernel it sees, and the fast path's state (the running plugin's, if one answers)",
	"bgp":        "this host's BGP speaker (BGP_AS): each session with its state, uptime and prefixes sent and received, and what the host announces",
	"policy":     "network policy: apply -f FILE (YAML or JSON, all or nothing), ls, get NAME, rm NAME, explain FROM TO PORT/PROTO (the verdict and the rules that decide it; exit status 1 when denied), log (what this host denied)",
	ServeCommand: "run the plugin (the network and IPAM driver on its socket): what Docker starts, from config.json; not for a shell",
}

// order is the order usage lists the commands in.
var order = []string{"status", "hosts", "networks", "addresses", "ports", "doctor", "repair", "gc", "rotate-key", "policy", "bgp", "version", ServeCommand}

// Run runs one subcommand (args[0]) and returns the exit status: 0 done, 1
// failed (or, for doctor, found something), 2 misused. Without a command it
// prints the commands and changes nothing.
func Run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		usage(stdout)
		return 0
	}
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	if Commands[args[0]] == "" || args[0] == ServeCommand {
		fmt.Fprintf(stderr, "tartan: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	inv, code, stop := parseArgs(args, stdout, stderr)
	if stop {
		return code
	}
	if inv.cmd == "version" {
		return version(inv.socket, inv.json, stdout, stderr)
	}
	sock, err := findSocket(inv.socket)
	if err != nil {
		fmt.Fprintf(stderr, "tartan %s: %v\n", inv.cmd, err)
		return 1
	}
	found, err := ask(output{c: client{socket: sock}, w: stdout, json: inv.json}, inv)
	if err != nil {
		fmt.Fprintf(stderr, "tartan %s: %v\n", inv.cmd, err)
		return 1
	}
	if found {
		return 1
	}
	return 0
}

// invocation is a subcommand with its flags and arguments.
type invocation struct {
	cmd        string
	socket     string
	json, yes  bool
	file       string // tartan policy apply -f
	positional []string
}

// parseArgs reads a known subcommand's flags and arguments; stop says to
// exit with code (0 after --help, 2 for a usage error, which it printed).
func parseArgs(args []string, stdout, stderr io.Writer) (inv invocation, code int, stop bool) {
	inv.cmd = args[0]
	fs := flag.NewFlagSet("tartan "+inv.cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "tartan %s: %s\n", inv.cmd, Commands[inv.cmd])
		fs.PrintDefaults()
	}
	socket := fs.String("socket", "", "the plugin's socket (default: the one tartan.sock under /run/docker/plugins)")
	asJSON := fs.Bool("json", false, "print JSON, for scripts")
	var yes *bool
	if inv.cmd == "gc" {
		yes = fs.Bool("yes", false, "remove what the collection would remove, now")
	}
	var file *string
	if inv.cmd == "policy" {
		file = fs.String("f", "", "with apply: the policy file (YAML or JSON; - reads standard input)")
	}
	// Flags may come before or after the pool (tartan addresses POOL --json).
	for rest := args[1:]; ; {
		if err := fs.Parse(rest); errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return inv, 0, true
		} else if err != nil {
			return inv, 2, true
		}
		if fs.NArg() == 0 {
			break
		}
		inv.positional = append(inv.positional, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if inv.cmd == "policy" {
		inv.socket, inv.json, inv.file = *socket, *asJSON, *file
		if err := checkPolicyArgs(inv); err != nil {
			fmt.Fprintf(stderr, "tartan policy: %v\n", err)
			return inv, 2, true
		}
		return inv, 0, false
	}
	want := 0
	if inv.cmd == "addresses" {
		want = 1
	}
	if len(inv.positional) != want {
		if want == 0 {
			fmt.Fprintf(stderr, "tartan %s takes no arguments (got %q)\n", inv.cmd, inv.positional)
		} else {
			fmt.Fprintf(stderr, "tartan %s takes one pool, as a CIDR (tartan networks lists them): tartan %s 10.244.0.0/16\n", inv.cmd, inv.cmd)
		}
		return inv, 2, true
	}
	inv.socket, inv.json, inv.yes = *socket, *asJSON, yes != nil && *yes
	return inv, 0, false
}

// ask asks the plugin what the subcommand shows and prints it; found says
// that tartan doctor found something wrong.
func ask(out output, inv invocation) (found bool, err error) {
	get := http.MethodGet
	switch inv.cmd {
	case "status":
		_, err = query(out, get, api.StatusPath, printStatus)
	case "hosts":
		_, err = query(out, get, api.HostsPath, printHosts)
	case "networks":
		_, err = query(out, get, api.NetworksPath, printPools)
	case "addresses":
		_, err = query(out, get, api.AddressesPath+"?pool="+url.QueryEscape(inv.positional[0]), printAddresses)
	case "ports":
		_, err = query(out, get, api.PortsPath, printPorts)
	case "gc":
		if inv.yes {
			_, err = query(out, http.MethodPost, api.GCPath, printCollected)
		} else {
			_, err = query(out, get, api.GCPath, printGCPlan)
		}
	case "rotate-key":
		_, err = query(out, http.MethodPost, api.RotateKeyPath, func(w io.Writer, k api.RotatedKey) {
			fmt.Fprintf(w, "new public key\t%s\n", k.PublicKey)
		})
	case "repair":
		_, err = query(out, http.MethodPost, api.RepairPath, func(w io.Writer, r api.Repaired) {
			fmt.Fprintf(w, "repaired in %s (tartan doctor shows what is still wrong)\n", r.Took)
		})
	case "doctor":
		var fs []api.Finding
		fs, err = query(out, get, api.DoctorPath, printFindings)
		found = err == nil && len(fs) > 0
	case "policy":
		found, err = askPolicy(out, inv)
	case "bgp":
		_, err = query(out, get, api.BGPPath, printBGP)
	}
	return found, err
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "tartan: multi-host container networking for Docker (a managed network and IPAM plugin)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "usage: tartan <command> [--json] [--socket PATH]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands (they ask the plugin running on this host, over its socket):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range order {
		fmt.Fprintf(tw, "  %s\t%s\n", c, Commands[c])
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "tartan <command> -h shows a command's flags. The plugin is installed with docker plugin install (see the README);")
	fmt.Fprintln(w, "its settings are docker plugin set KEY=VALUE.")
}

// findSocket is the socket given, or the only tartan socket Docker made.
func findSocket(given string) (string, error) {
	if given != "" {
		return given, nil
	}
	found, _ := filepath.Glob(SocketGlob)
	switch len(found) {
	case 0:
		return "", fmt.Errorf("no tartan plugin socket under %s: is the plugin installed and enabled here (docker plugin ls)? Or give --socket", filepath.Dir(filepath.Dir(SocketGlob)))
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("several tartan plugin sockets (%s): pick one with --socket", strings.Join(found, ", "))
}

type client struct {
	socket string
	body   io.Reader // sent with the request (tartan policy apply)
}

func (c client) do(method, path string, v any) error {
	hc := http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", c.socket)
		},
	}}
	req, err := http.NewRequest(method, "http://tartan"+path, c.body)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("ask the plugin at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read the plugin's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Err string }
		if json.Unmarshal(body, &e) == nil && e.Err != "" {
			return errors.New(e.Err)
		}
		if resp.StatusCode == http.StatusNotFound {
			return errors.New("the plugin does not know this command: it is older than this tartan binary (docker plugin upgrade)")
		}
		return fmt.Errorf("the plugin answered %s", resp.Status)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("the plugin's answer is not what this binary reads (%w): use the tartan binary of the plugin's version", err)
	}
	return nil
}

// output is where a command's answer goes, and how.
type output struct {
	c    client
	w    io.Writer
	json bool
}

// query asks the plugin and prints its answer: as JSON, or with human.
func query[T any](o output, method, path string, human func(io.Writer, T)) (T, error) {
	var v T
	if err := o.c.do(method, path, &v); err != nil {
		return v, err
	}
	return v, show(o.w, o.json, v, human)
}

func show[T any](w io.Writer, asJSON bool, v T, human func(io.Writer, T)) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	human(tw, v)
	return tw.Flush()
}

// fastPathLine is the eBPF fast path in one line: where it is attached and
// the packets it carried or left to the kernel.
func fastPathLine(fp api.FastPathStatus) string {
	if !fp.On {
		return "off (the kernel path; the plugin's log says why)"
	}
	if fp.Error != "" {
		return "eBPF, counters unreadable: " + fp.Error
	}
	var parts []string
	for _, name := range api.FastPathCounters() {
		parts = append(parts, fmt.Sprintf("%s %d", name, fp.Packets[name]))
	}
	return fmt.Sprintf("eBPF on %d interfaces; packets: %s", len(fp.Attached), strings.Join(parts, ", "))
}

func printStatus(w io.Writer, s api.HostStatus) {
	fmt.Fprintf(w, "host\t%s\n", s.Host)
	fmt.Fprintf(w, "version\t%s\n", s.Version)
	fmt.Fprintf(w, "store\t%s\n", s.Store)
	fmt.Fprintf(w, "firewall\t%s\n", cmp.Or(s.Firewall, "none yet"))
	fmt.Fprintf(w, "scope\t%s\n", s.Scope)
	if s.Settings != "" {
		fmt.Fprintf(w, "SETTINGS ERROR\t%s\n", s.Settings)
	}
	if wg := s.WireGuard; wg != nil {
		fmt.Fprintf(w, "wireguard\t%s port %d, public key %s\n", cmp.Or(wg.Mode, "no device (no wireguard network here)"), wg.Port, wg.PublicKey)
	}
	if s.WireGuardError != "" {
		fmt.Fprintf(w, "WIREGUARD ERROR\t%s\n", s.WireGuardError)
	}
	if fp := s.FastPath; fp != nil {
		fmt.Fprintf(w, "fast path\t%s\n", fastPathLine(*fp))
	}
	fmt.Fprintln(w)
	if wg := s.WireGuard; wg != nil && len(wg.Peers) > 0 {
		fmt.Fprintln(w, "WIREGUARD PEER\tENDPOINT\tALLOWED\tHANDSHAKE\tRX\tTX")
		for _, p := range wg.Peers {
			hs := "never"
			if !p.LastHandshake.IsZero() {
				hs = time.Since(p.LastHandshake).Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\n", p.PublicKey, p.Endpoint, strings.Join(p.Allowed, ","), hs, p.RxBytes, p.TxBytes)
		}
		fmt.Fprintln(w)
	}
	if len(s.Networks) == 0 {
		fmt.Fprintln(w, "no tartan networks on this host")
		return
	}
	fmt.Fprintln(w, "NETWORK\tBACKEND\tPOOL\tVNI\tMTU\tENDPOINTS\tROUTES\tNEIGHBORS\tFDB\tPROBLEMS")
	for _, n := range s.Networks {
		vni, peers := "-", []string{"-", "-", "-"}
		if n.VNI != 0 {
			vni = fmt.Sprint(n.VNI)
		}
		if n.Planned {
			peers = []string{fmt.Sprint(n.Routes), fmt.Sprint(n.Neighbors), fmt.Sprint(n.FDB)}
		}
		backend := n.Backend
		if n.Internal {
			backend += " (internal)"
		}
		pool := n.Pool
		if n.Pool6 != "" {
			pool += " " + n.Pool6
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", dockerid.Short(n.ID), backend, pool, vni, n.MTU, n.Endpoints,
			peers[0], peers[1], peers[2], cmp.Or(strings.Join(n.Problems, "; "), "none"))
	}
}

func printHosts(w io.Writer, hs []api.HostReport) {
	if len(hs) == 0 {
		fmt.Fprintln(w, "no host in the store yet")
		return
	}
	// SEEN is when this host last saw it renew, by this host's clock (what
	// STATE is judged by); RENEWED is what it wrote, by its own.
	fmt.Fprintln(w, "HOST\tADDRESS\tVERSION\tSTATE\tSEEN\tRENEWED\tBLOCKS")
	for _, h := range hs {
		state := "alive"
		switch {
		case !h.Known:
			state = "unknown (blocks only)"
		case !h.Alive:
			state = "lapsed"
		}
		renewed := "never"
		if !h.Renewed.IsZero() {
			renewed = h.Renewed.UTC().Format(time.RFC3339)
		}
		var blocks []string
		for _, b := range h.Blocks {
			s := b.Block
			if !b.Alive {
				s += " (expired)"
			}
			blocks = append(blocks, s)
		}
		seen := "never"
		if !h.Seen.IsZero() {
			seen = h.Seen.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.ID, cmp.Or(h.Address, "-"), cmp.Or(h.Version, "-"), state, seen, renewed, cmp.Or(strings.Join(blocks, " "), "-"))
	}
}

func printFindings(w io.Writer, fs []api.Finding) {
	if len(fs) == 0 {
		fmt.Fprintln(w, "nothing wrong: the kernel holds what the plans say, every address of this host has its endpoint, every host is alive")
		return
	}
	for _, f := range fs {
		where := ""
		if f.Network != "" {
			where = "network " + dockerid.Short(f.Network) + ": "
		}
		fmt.Fprintf(w, "%s%s\n    fix: %s\n", where, f.What, f.Fix)
	}
}

func printPools(w io.Writer, ps []api.PoolReport) {
	if len(ps) == 0 {
		fmt.Fprintln(w, "no pool in the store")
		return
	}
	fmt.Fprintln(w, "POOL\tBACKEND\tVNI\tBLOCK\tGATEWAY\tBLOCKS\tADDRESSES\tNOTE")
	for _, p := range ps {
		backend, vni, notes := "-", "-", []string{}
		if n := p.Network; n != nil {
			backend = n.Backend
			if n.VNI != 0 {
				vni = fmt.Sprint(n.VNI)
			}
			if n.Internal {
				notes = append(notes, "internal")
			}
			if n.DirectRouting {
				notes = append(notes, "directrouting")
			}
		}
		if p.Range != "" {
			notes = append(notes, "range "+p.Range)
		}
		if p.Auto {
			notes = append(notes, "automatic")
		}
		if p.Releasing {
			notes = append(notes, "being released")
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t/%d\t%s\t%d\t%d\t%s\n", p.Pool, backend, vni, p.BlockBits, cmp.Or(p.Gateway, "-"), p.Blocks, p.Addresses, cmp.Or(strings.Join(notes, ", "), "-"))
	}
}

func printAddresses(w io.Writer, as []api.AddressReport) {
	if len(as) == 0 {
		fmt.Fprintln(w, "no address allocated in this pool")
		return
	}
	fmt.Fprintln(w, "ADDRESS\tHOST\tKIND\tMAC\tCREATED\tENDPOINT HERE")
	for _, a := range as {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", a.IP, a.Host, a.Kind, cmp.Or(a.MAC, "-"), a.Created.UTC().Format(time.RFC3339), cmp.Or(dockerid.Short(a.Endpoint), "-"))
	}
}

func printBGP(w io.Writer, b api.BGPStatus) {
	if !b.On {
		fmt.Fprintln(w, "BGP is off on this host (docker plugin set tartan:latest BGP_AS=... BGP_PEERS=... turns it on)")
		return
	}
	fmt.Fprintf(w, "AS %d, router ID %s\n\n", b.AS, b.RouterID)
	fmt.Fprintln(w, "PEER\tAS\tSTATE\tUP FOR\tSENT\tRECEIVED\tLAST DOWN")
	for _, s := range b.Sessions {
		up := "-"
		if !s.Since.IsZero() {
			up = time.Since(s.Since).Round(time.Second).String()
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%d\t%d\t%s\n", s.Peer, s.AS, s.State, up, s.Sent, s.Received, cmp.Or(s.Reason, "-"))
	}
	fmt.Fprintf(w, "\nannounced (%d)\n", len(b.Announced))
	for _, a := range b.Announced {
		fmt.Fprintf(w, "  %s\n", a)
	}
}

func printPorts(w io.Writer, ps []api.PublishedPorts) {
	if len(ps) == 0 {
		fmt.Fprintln(w, "no published port on this host")
		return
	}
	fmt.Fprintln(w, "ENDPOINT\tNETWORK\tADDRESS\tPORTS")
	for _, p := range ps {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", dockerid.Short(p.Endpoint), dockerid.Short(p.Network), p.IP, api.PortsText(p.Ports))
	}
}

func printGCPlan(w io.Writer, p api.GCPlan) {
	if len(p.Orphans) == 0 && len(p.Gone) == 0 && len(p.Networks) == 0 {
		fmt.Fprintln(w, "nothing to collect")
		return
	}
	for _, n := range p.Networks {
		fmt.Fprintf(w, "would remove network record %s (pool %s): Docker no longer has the network, no endpoint uses it\n", dockerid.Short(n.ID), n.Pool)
	}
	for _, o := range p.Orphans {
		fmt.Fprintf(w, "would release address %s of pool %s: this host's, no endpoint has it (since %s)\n", o.IP, o.Pool, o.Created.UTC().Format(time.RFC3339))
	}
	for _, h := range p.Gone {
		var blocks []string
		for _, b := range h.Blocks {
			blocks = append(blocks, b.Block)
		}
		fmt.Fprintf(w, "would remove gone host %s (%s, last renewal %s), its blocks %s and their addresses\n", h.ID, cmp.Or(h.Address, "no host record"),
			h.Renewed.UTC().Format(time.RFC3339), cmp.Or(strings.Join(blocks, " "), "(none)"))
	}
	fmt.Fprintln(w, "tartan gc --yes removes these now")
}

func printCollected(w io.Writer, c api.GCDone) {
	fmt.Fprintf(w, "released %d orphaned addresses of this host; removed %d gone hosts, %d of their blocks and %d of their addresses; %d network records Docker no longer had\n",
		c.Orphans, c.Hosts, c.Blocks, c.Addresses, c.Networks)
}
