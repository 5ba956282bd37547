package cli

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/tartan-net/tartan/plugin/api"
)

// checkPolicyArgs checks tartan policy's subcommand and its arguments.
func checkPolicyArgs(inv invocation) error {
	if len(inv.positional) == 0 {
		return fmt.Errorf("give a subcommand: apply -f FILE, ls, get NAME, rm NAME, explain FROM TO PORT/PROTO, log")
	}
	args := inv.positional[1:]
	switch sub := inv.positional[0]; sub {
	case "apply":
		if inv.file == "" || len(args) != 0 {
			return fmt.Errorf("apply takes the file with -f: tartan policy apply -f policy.yaml")
		}
	case "ls", "log":
		if len(args) != 0 {
			return fmt.Errorf("%s takes no arguments", inv.positional[0])
		}
	case "get", "rm":
		if len(args) != 1 {
			return fmt.Errorf("%s takes one policy name (tartan policy ls lists them)", sub)
		}
	case "explain":
		if len(args) != 3 {
			return fmt.Errorf("explain takes FROM TO PORT/PROTO: tartan policy explain 10.1.0.2 10.1.0.3 80/tcp (or icmp)")
		}
		if _, _, err := splitFlow(args[2]); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown subcommand %q: use apply, ls, get, rm, explain or log", sub)
	}
	if inv.file != "" && inv.positional[0] != "apply" {
		return fmt.Errorf("-f is for apply")
	}
	return nil
}

// splitFlow reads 80/tcp, 53/udp, 80 (tcp) or icmp.
func splitFlow(s string) (port, proto string, err error) {
	if strings.EqualFold(s, "icmp") {
		return "", "icmp", nil
	}
	port, proto, _ = strings.Cut(s, "/")
	if proto == "" {
		proto = "tcp"
	}
	proto = strings.ToLower(proto)
	if proto != "tcp" && proto != "udp" {
		return "", "", fmt.Errorf("%q: give PORT/tcp, PORT/udp or icmp", s)
	}
	return port, proto, nil
}

// askPolicy runs tartan policy's subcommand; found says that explain
// found the flow denied.
func askPolicy(out output, inv invocation) (found bool, err error) {
	args := inv.positional[1:]
	switch inv.positional[0] {
	case "apply":
		var body []byte
		if inv.file == "-" {
			body, err = io.ReadAll(os.Stdin)
		} else {
			body, err = os.ReadFile(inv.file)
		}
		if err != nil {
			return false, fmt.Errorf("read the policy file: %w", err)
		}
		out.c.body = bytes.NewReader(body)
		_, err = query(out, http.MethodPost, api.PoliciesPath, func(w io.Writer, a api.PoliciesApplied) {
			fmt.Fprintf(w, "applied\t%s\n", strings.Join(a.Applied, ", "))
		})
	case "ls":
		_, err = query(out, http.MethodGet, api.PoliciesPath, printPolicies)
	case "log":
		_, err = query(out, http.MethodGet, api.DenyLogPath, printDenyLog)
	case "get":
		var raw map[string]any
		raw, err = query(out, http.MethodGet, api.PoliciesPath+"?name="+url.QueryEscape(args[0]), func(w io.Writer, v map[string]any) {})
		if err == nil && !out.json {
			err = show(out.w, true, raw, nil) // a policy reads best as the JSON it is
		}
	case "rm":
		_, err = query(out, http.MethodDelete, api.PoliciesPath+"?name="+url.QueryEscape(args[0]), func(w io.Writer, r api.PolicyRemoved) {
			fmt.Fprintf(w, "removed\t%s\n", r.Removed)
		})
	case "explain":
		port, proto, _ := splitFlow(args[2])
		q := url.Values{"from": {args[0]}, "to": {args[1]}, "proto": {proto}, "port": {port}}
		var e api.Explained
		e, err = query(out, http.MethodGet, api.ExplainPath+"?"+q.Encode(), printExplained)
		found = err == nil && !e.Allowed
	}
	return found, err
}

func printPolicies(w io.Writer, ps []api.PolicySummary) {
	fmt.Fprintln(w, "NAME\tSELECTS\tNETWORKS\tISOLATES\tINGRESS RULES\tEGRESS RULES")
	for _, p := range ps {
		nets := strings.Join(p.Networks, ",")
		if nets == "" {
			nets = "(all)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\n", p.Name, p.Selector, nets, strings.Join(p.Types, ","), p.Ingress, p.Egress)
	}
}

func printDenyLog(w io.Writer, l api.DenyLog) {
	fmt.Fprintf(w, "denied since the plugin started: %d ingress, %d egress connections\n", l.Total["ingress"], l.Total["egress"])
	fmt.Fprintln(w, "LAST\tDIRECTION\tENDPOINT\tSOURCE\tDESTINATION\tFLOW\tCOUNT")
	for _, f := range l.Flows {
		flow := f.Proto
		if f.Port != 0 {
			flow = fmt.Sprintf("%d/%s", f.Port, f.Proto)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", f.Last.Format("15:04:05"), f.Direction, f.Interface, f.Src, f.Dst, flow, f.Count)
	}
}

func printExplained(w io.Writer, e api.Explained) {
	verdict := "DENIED"
	if e.Allowed {
		verdict = "allowed"
	}
	fmt.Fprintf(w, "%s -> %s %s: %s\n", e.From, e.To, e.Flow, verdict)
	fmt.Fprintf(w, "  egress of %s:\t%s\n", e.From, e.Egress.Reason)
	fmt.Fprintf(w, "  ingress of %s:\t%s\n", e.To, e.Ingress.Reason)
}
