package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

var (
	nameRE       = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?$`)
	labelValueRE = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$`)
)

// ValidateLabel checks one label of an endpoint or a selector: a key of
// letters, digits and . _ / - (up to 253, starting and ending with a
// letter or digit), a value of up to 63 letters, digits and . _ -.
func ValidateLabel(key, value string) error {
	if !labelKeyRE.MatchString(key) {
		return fmt.Errorf("label key %q: use letters, digits and . _ / - (up to 253), starting and ending with a letter or digit", key)
	}
	if !labelValueRE.MatchString(value) {
		return fmt.Errorf("label %s's value %q: use up to 63 letters, digits and . _ -, starting and ending with a letter or digit", key, value)
	}
	return nil
}

// Validate checks a policy whole: the error names the policy and the field
// (as in the file: ingress[0].from[1].cidr) and says what is expected.
func (p Policy) Validate() error {
	if !nameRE.MatchString(p.Name) {
		return fmt.Errorf("policy %q: name: use 1 to 63 lower-case letters, digits, . and -, starting and ending with a letter or digit", p.Name)
	}
	field := func(path string, err error) error {
		return fmt.Errorf("policy %q: %s: %w", p.Name, path, err)
	}
	if err := validateSelector(p.Selector); err != nil {
		return field("selector", err)
	}
	for i, n := range p.Networks {
		if err := validateNetwork(n); err != nil {
			return field(fmt.Sprintf("networks[%d]", i), err)
		}
	}
	for i, d := range p.Types {
		if d != Ingress && d != Egress {
			return field(fmt.Sprintf("types[%d]", i), fmt.Errorf("%q: use ingress or egress", d))
		}
		if slices.Contains(p.Types[:i], d) {
			return field(fmt.Sprintf("types[%d]", i), fmt.Errorf("%s is given twice", d))
		}
	}
	for _, d := range []Direction{Ingress, Egress} {
		rules := p.Rules(d)
		if len(rules) > 0 && !p.Isolates(d) {
			return field(string(d), fmt.Errorf("the policy has %s rules but its types leave %s out: add %s to types", d, d, d))
		}
		for i, r := range rules {
			if err := validateRule(d, r); err != nil {
				return field(fmt.Sprintf("%s[%d].%s", d, i, err.path), err.err)
			}
		}
	}
	return nil
}

// fieldError is an error with the path of the field below a rule.
type fieldError struct {
	path string
	err  error
}

func validateRule(d Direction, r Rule) *fieldError {
	own, other := "from", "to"
	if d == Egress {
		own, other = "to", "from"
	}
	if len(r.Peers(reverse(d))) > 0 {
		return &fieldError{other, fmt.Errorf("an %s rule names its peers in %s", d, own)}
	}
	for i, peer := range r.Peers(d) {
		if err := validatePeer(peer); err != nil {
			return &fieldError{fmt.Sprintf("%s[%d].%s", own, i, err.path), err.err}
		}
	}
	for i, pt := range r.Ports {
		if err := validatePort(pt); err != nil {
			return &fieldError{fmt.Sprintf("ports[%d]", i), err}
		}
	}
	return nil
}

func reverse(d Direction) Direction {
	if d == Egress {
		return Ingress
	}
	return Egress
}

func validatePeer(p Peer) *fieldError {
	hasEndpoint := p.Selector != nil || p.Network != ""
	switch {
	case !hasEndpoint && p.CIDR == "":
		return &fieldError{"selector", errors.New("a peer needs a selector, a network or a cidr")}
	case hasEndpoint && p.CIDR != "":
		return &fieldError{"cidr", errors.New("a peer is either endpoints (selector, network) or addresses (cidr): write two peers")}
	case p.CIDR == "" && len(p.Except) > 0:
		return &fieldError{"except", errors.New("except narrows a cidr: give the cidr")}
	}
	if p.Selector != nil {
		if err := validateSelector(*p.Selector); err != nil {
			return &fieldError{"selector", err}
		}
	}
	if p.Network != "" {
		if err := validateNetwork(p.Network); err != nil {
			return &fieldError{"network", err}
		}
	}
	if p.CIDR == "" {
		return nil
	}
	cidr, err := ParseCIDR(p.CIDR)
	if err != nil {
		return &fieldError{"cidr", err}
	}
	for i, e := range p.Except {
		ex, err := ParseCIDR(e)
		if err != nil {
			return &fieldError{fmt.Sprintf("except[%d]", i), err}
		}
		if ex.Addr().Is4() != cidr.Addr().Is4() || !cidr.Contains(ex.Addr()) || ex.Bits() < cidr.Bits() {
			return &fieldError{fmt.Sprintf("except[%d]", i), fmt.Errorf("%s is not inside the peer's cidr %s", e, p.CIDR)}
		}
	}
	return nil
}

// validateNetwork checks a network's name in a policy: its IPv4 subnet,
// the one identity a tartan network has on every host (Docker names
// networks per host and never tells a driver the name).
func validateNetwork(n string) error {
	p, err := ParseCIDR(n)
	if err != nil || !p.Addr().Is4() {
		return fmt.Errorf("%q: name a network by its IPv4 subnet, the same on every host (docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' NAME); Docker's names differ from host to host", n)
	}
	return nil
}

// ParseCIDR reads an IPv4 or IPv6 network in CIDR notation whose host bits
// are zero (10.0.0.0/8, not 10.1.2.3/8: that one is likely a typo).
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR (write it like 10.0.0.0/8 or fd00::/64)", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set: did you mean %s?", s, p.Masked())
	}
	return p, nil
}

func validatePort(pt Port) error {
	if pt.Port.bad != "" {
		_, err := ParsePortRange(pt.Port.bad)
		return err
	}
	switch pt.Protocol {
	case TCP, UDP:
	case ICMP, Any:
		if !pt.Port.IsZero() {
			return fmt.Errorf("protocol %s has no ports: leave port out", pt.Protocol)
		}
	default:
		return fmt.Errorf("protocol %q: use tcp, udp, icmp or any", pt.Protocol)
	}
	return nil
}

func validateSelector(s Selector) error {
	for k, v := range s.Labels {
		if err := ValidateLabel(k, v); err != nil {
			return fmt.Errorf("labels: %w", err)
		}
	}
	for i, r := range s.Match {
		if err := ValidateLabel(r.Key, ""); err != nil {
			return fmt.Errorf("match[%d].key: %w", i, err)
		}
		switch r.Op {
		case OpIn, OpNotIn:
			if len(r.Values) == 0 {
				return fmt.Errorf("match[%d]: %s needs values", i, r.Op)
			}
			for _, v := range r.Values {
				if err := ValidateLabel(r.Key, v); err != nil {
					return fmt.Errorf("match[%d].values: %w", i, err)
				}
			}
		case OpExists, OpNotExists:
			if len(r.Values) > 0 {
				return fmt.Errorf("match[%d]: %s takes no values", i, r.Op)
			}
		default:
			return fmt.Errorf("match[%d].op: %q: use in, notin, exists or notexists", i, r.Op)
		}
	}
	return nil
}

// LabelOption prefixes an endpoint's labels among its driver options
// (docker run --network name=web,driver-opt=tartan.label.app=api).
const LabelOption = "tartan.label."

// EndpointLabels reads an endpoint's labels from its driver options (what
// Docker passes to CreateEndpoint and Join). Options of other owners pass;
// a tartan option that is not a label, or a label that is not valid, is
// refused by name.
func EndpointLabels(opts map[string]any) (map[string]string, error) {
	var labels map[string]string
	for k, v := range opts {
		if !strings.HasPrefix(k, "tartan.") {
			continue
		}
		key, ok := strings.CutPrefix(k, LabelOption)
		if !ok {
			return nil, fmt.Errorf("unknown endpoint option %s: tartan takes %s<key>=<value> on an endpoint (--driver-opt)", k, LabelOption)
		}
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("endpoint option %s: the value must be a string, not %T", k, v)
		}
		if err := ValidateLabel(key, s); err != nil {
			return nil, fmt.Errorf("endpoint option %s=%s: %w", k, s, err)
		}
		if labels == nil {
			labels = map[string]string{}
		}
		labels[key] = s
	}
	return labels, nil
}
