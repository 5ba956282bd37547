// Package policy is tartan's network policy model: the policy objects of the
// cluster store (which endpoints they select, which peers and ports each
// rule lets in or out), their parsing and validation, and the evaluation of
// a flow against them that says the verdict and the rule that decided it
// (tartan policy explain). It knows neither the kernel nor the store's
// client: the enforcement compiles what Evaluate answers, and the store
// holds what Marshal writes.
//
// The semantics are Kubernetes' and Calico's: an endpoint that a policy
// selects for a direction (ingress, egress) is denied in that direction
// whatever no rule of those policies allows; an endpoint that no policy
// selects for a direction is allowed in it, unless its network's default
// (tartan.policy) says otherwise; replies of an allowed connection pass.
// A flow between two endpoints passes when the source's egress and the
// destination's ingress both allow it.
package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Policy is one named policy of the cluster.
type Policy struct {
	// Name identifies the policy cluster-wide (tartan policy get NAME).
	Name string `json:"name"`
	// Selector chooses the endpoints the policy applies to (empty: every
	// endpoint of its networks).
	Selector Selector `json:"selector"`
	// Networks limits the policy to endpoints of these tartan networks
	// (by name); empty: endpoints of every network.
	Networks []string `json:"networks,omitempty"`
	// Types says which directions the policy isolates; empty: ingress,
	// and egress too when it has egress rules (as Kubernetes does).
	Types []Direction `json:"types,omitempty"`
	// Ingress rules say what may reach the selected endpoints; Egress
	// rules what they may reach.
	Ingress []Rule `json:"ingress,omitempty"`
	Egress  []Rule `json:"egress,omitempty"`
}

// Direction is ingress or egress.
type Direction string

// The two directions.
const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// Selector chooses endpoints by their labels: every label given must have
// the value given, and every requirement must hold. An empty selector
// chooses every endpoint.
type Selector struct {
	Labels map[string]string `json:"labels,omitempty"`
	Match  []Requirement     `json:"match,omitempty"`
}

// Requirement is one condition on a label: in (the value is one of Values),
// notin (the label is missing or its value none of Values), exists,
// notexists.
type Requirement struct {
	Key    string   `json:"key"`
	Op     string   `json:"op"`
	Values []string `json:"values,omitempty"`
}

// The requirement operators.
const (
	OpIn        = "in"
	OpNotIn     = "notin"
	OpExists    = "exists"
	OpNotExists = "notexists"
)

// Rule lets peers in (ingress: From) or out (egress: To) on ports. No
// peer: every peer; no port: every protocol and port.
type Rule struct {
	From  []Peer `json:"from,omitempty"`
	To    []Peer `json:"to,omitempty"`
	Ports []Port `json:"ports,omitempty"`
}

// Peer is the other end of a flow: endpoints of the cluster chosen by
// labels (Selector) and or network (Network), or addresses (CIDR, less
// Except). A peer with a selector or a network is an endpoint of tartan's;
// a CIDR matches any address in it, inside the cluster or out.
type Peer struct {
	Selector *Selector `json:"selector,omitempty"`
	Network  string    `json:"network,omitempty"`
	CIDR     string    `json:"cidr,omitempty"`
	Except   []string  `json:"except,omitempty"`
}

// Port is a protocol and, for TCP and UDP, a port or range ("80",
// "8000-8080"; none: every port). Protocol is tcp, udp, icmp (ICMP and
// ICMPv6) or any; tcp when only a port is given.
type Port struct {
	Protocol string    `json:"protocol,omitempty"`
	Port     PortRange `json:"port,omitzero"`
}

// The protocols.
const (
	TCP  = "tcp"
	UDP  = "udp"
	ICMP = "icmp"
	Any  = "any"
)

// PortRange is a port or an inclusive range; the zero value is every port.
// In a file it is a number (80) or a string ("80", "8000-8080").
type PortRange struct {
	First, Last uint16
	// bad is what a file gave that is not a port or range; Validate
	// refuses it, naming the field (a decoding error could not).
	bad string
}

// IsZero says the range is every port.
func (r PortRange) IsZero() bool { return r.First == 0 && r.Last == 0 && r.bad == "" }

// Contains says whether port is in the range (every port is in the zero
// range).
func (r PortRange) Contains(port uint16) bool {
	return r.IsZero() || port >= r.First && port <= r.Last
}

func (r PortRange) String() string {
	switch {
	case r.IsZero():
		return "any"
	case r.First == r.Last:
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// MarshalJSON writes a port as a number, a range as "first-last" and
// every port as null.
func (r PortRange) MarshalJSON() ([]byte, error) {
	if r.IsZero() {
		return []byte("null"), nil
	}
	if r.First == r.Last {
		return json.Marshal(int(r.First))
	}
	return json.Marshal(r.String())
}

// UnmarshalJSON reads 80, "80" or "8000-8080", and null as every port;
// anything else is kept for Validate to refuse with the field's path.
func (r *PortRange) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*r = PortRange{}
		return nil
	}
	s := strings.Trim(string(b), `"`)
	p, err := ParsePortRange(s)
	if err != nil {
		*r = PortRange{bad: s}
		return nil
	}
	*r = p
	return nil
}

// ParsePortRange reads "80" or "8000-8080" (1 to 65535, first ≤ last).
func ParsePortRange(s string) (PortRange, error) {
	first, last, isRange := strings.Cut(strings.TrimSpace(s), "-")
	a, err := parsePort(first)
	if err != nil {
		return PortRange{}, err
	}
	if !isRange {
		return PortRange{First: a, Last: a}, nil
	}
	b, err := parsePort(last)
	if err != nil {
		return PortRange{}, err
	}
	if b < a {
		return PortRange{}, fmt.Errorf("port range %q ends before it starts: write it low-high", s)
	}
	return PortRange{First: a, Last: b}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// MaxPerApply is the most policies one apply may hold: they are written in
// one store transaction, all or none.
const MaxPerApply = 64

// Parse reads policies from a file's contents: YAML or JSON, one policy, a
// list of them, or several YAML documents (separated by "---"). Unknown
// fields are refused by name. Each policy is validated; the first error is
// returned, naming the policy and the field, and no policy is returned
// with it (nothing is half-applied).
func Parse(data []byte) ([]Policy, error) {
	var out []Policy
	for i, doc := range documents(data) {
		var ps []Policy
		if bytes.HasPrefix(bytes.TrimSpace(doc), []byte("[")) || bytes.HasPrefix(bytes.TrimSpace(doc), []byte("-")) {
			if err := yaml.UnmarshalStrict(doc, &ps); err != nil {
				return nil, fmt.Errorf("document %d: %s", i+1, decodeError(err))
			}
		} else {
			var p Policy
			if err := yaml.UnmarshalStrict(doc, &p); err != nil {
				return nil, fmt.Errorf("document %d: %s", i+1, decodeError(err))
			}
			ps = []Policy{p}
		}
		out = append(out, ps...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no policy in the file: write one policy (name, selector, ingress, egress) or a list of them")
	}
	if len(out) > MaxPerApply {
		return nil, fmt.Errorf("%d policies in one file: apply at most %d at a time (they are written all or none)", len(out), MaxPerApply)
	}
	seen := map[string]bool{}
	for i := range out {
		out[i].normalize()
		if err := out[i].Validate(); err != nil {
			return nil, err
		}
		if seen[out[i].Name] {
			return nil, fmt.Errorf("policy %q is in the file twice: give each policy its own name", out[i].Name)
		}
		seen[out[i].Name] = true
	}
	return out, nil
}

// documents splits YAML documents at their "---" lines, dropping empty
// ones (comments only, or nothing).
func documents(data []byte) [][]byte {
	var docs [][]byte
	var cur []byte
	flush := func() {
		for _, l := range bytes.Split(cur, []byte("\n")) {
			if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
				docs = append(docs, cur)
				break
			}
		}
		cur = nil
	}
	for _, l := range bytes.SplitAfter(data, []byte("\n")) {
		if t := bytes.TrimRight(l, " \t\r\n"); bytes.Equal(t, []byte("---")) {
			flush()
			continue
		}
		cur = append(cur, l...)
	}
	flush()
	return docs
}

// decodeError says a decoding error without the decoder's layers ("error
// unmarshaling JSON: while decoding JSON: json: unknown field …").
func decodeError(err error) string {
	s := err.Error()
	for _, p := range []string{"error unmarshaling JSON: ", "while decoding JSON: ", "json: "} {
		s = strings.ReplaceAll(s, p, "")
	}
	return s
}

// normalize fills the defaults a file may leave out: a port's protocol
// (tcp) and lower-case names of protocols, directions and operators.
func (p *Policy) normalize() {
	for i := range p.Types {
		p.Types[i] = Direction(strings.ToLower(string(p.Types[i])))
	}
	for _, rules := range [][]Rule{p.Ingress, p.Egress} {
		for i := range rules {
			for j := range rules[i].Ports {
				pt := &rules[i].Ports[j]
				pt.Protocol = strings.ToLower(pt.Protocol)
				if pt.Protocol == "" {
					pt.Protocol = TCP
				}
			}
		}
	}
	normalizeSelector(&p.Selector)
	for i := range p.Networks {
		p.Networks[i] = canonicalCIDR(p.Networks[i])
	}
	for _, rules := range [][]Rule{p.Ingress, p.Egress} {
		for i := range rules {
			for _, peers := range [][]Peer{rules[i].From, rules[i].To} {
				for j := range peers {
					if peers[j].Selector != nil {
						normalizeSelector(peers[j].Selector)
					}
					peers[j].Network = canonicalCIDR(peers[j].Network)
				}
			}
		}
	}
}

// canonicalCIDR writes a subnet as netip does (" 10.1.0.0/16" and
// "10.1.0.0/16" are one network); anything else is left for Validate.
func canonicalCIDR(s string) string {
	if p, err := ParseCIDR(s); err == nil {
		return p.String()
	}
	return s
}

func normalizeSelector(s *Selector) {
	for i := range s.Match {
		s.Match[i].Op = strings.ToLower(s.Match[i].Op)
	}
}

// Directions is what the policy isolates: Types, or by default ingress,
// and egress when it has egress rules.
func (p Policy) Directions() []Direction {
	if len(p.Types) > 0 {
		return p.Types
	}
	if len(p.Egress) > 0 {
		return []Direction{Ingress, Egress}
	}
	return []Direction{Ingress}
}

// Isolates says whether the policy isolates direction d.
func (p Policy) Isolates(d Direction) bool {
	for _, x := range p.Directions() {
		if x == d {
			return true
		}
	}
	return false
}

// Rules is the policy's rules of direction d.
func (p Policy) Rules(d Direction) []Rule {
	if d == Egress {
		return p.Egress
	}
	return p.Ingress
}

// Peers is the rule's peers of direction d (From for ingress, To for
// egress).
func (r Rule) Peers(d Direction) []Peer {
	if d == Egress {
		return r.To
	}
	return r.From
}
