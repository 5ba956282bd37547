package driver

import (
	"context"
	"net/netip"
	"reflect"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/policy"
)

// TestPolicedEndpoints: the host's endpoints a policy isolates are compiled
// for the firewall, with peers from this host's records and from other
// hosts' label records; the others are not; without policies nothing is.
func TestPolicedEndpoints(t *testing.T) {
	d := testDriver("a", kv.NewMemory())
	d.st.networks["n1"] = localNetwork{ID: "n1", Pool: "10.64.0.0/24", Backend: vxlan.Name}
	d.st.endpoints["api"] = localEndpoint{ID: "api", Network: "n1", IP: "10.64.0.2", HostIf: "tnapi", Labels: map[string]string{"app": "api"}}
	d.st.endpoints["web"] = localEndpoint{ID: "web", Network: "n1", IP: "10.64.0.3", HostIf: "tnweb", Labels: map[string]string{"app": "web"}}
	if p, _ := d.policedLocked(); len(p) != 0 {
		t.Fatalf("policed without policies: %+v", p)
	}
	// -o tartan.policy=isolated alone isolates the network's endpoints'
	// ingress from each other (what comes from outside it passes).
	n := d.st.networks["n1"]
	n.Policy = string(policy.ModeIsolated)
	d.st.networks["n1"] = n
	if p, _ := d.policedLocked(); len(p) != 2 || !p[0].Rules.Ingress.Isolated || p[0].Rules.Egress.Isolated ||
		p[0].Rules.Ingress.Passes(netip.MustParseAddr("10.64.0.3"), policy.TCP, 80) || !p[0].Rules.Ingress.Passes(netip.MustParseAddr("192.0.2.1"), policy.TCP, 80) {
		t.Fatalf("an isolated network: %+v", p)
	}
	n.Policy = ""
	d.st.networks["n1"] = n
	pols, err := policy.Parse([]byte("name: api\nselector: {labels: {app: api}}\ningress: [{from: [{selector: {labels: {app: web}}}], ports: [{port: 80}]}]"))
	if err != nil {
		t.Fatal(err)
	}
	d.pol.policies = pols
	d.pol.labels = []kv.EndpointLabels{
		{IP: "10.64.0.70", Pool: "10.64.0.0/24", Endpoint: "remote-web", Host: "b", Labels: map[string]string{"app": "web"}},
		{IP: "10.64.0.2", Pool: "10.64.0.0/24", Endpoint: "api", Host: "a", Labels: map[string]string{"app": "old"}}, // this host's own: its record decides
	}
	p, _ := d.policedLocked()
	if len(p) != 1 || p[0].HostIf != "tnapi" || !p[0].Rules.Ingress.Isolated || p[0].Rules.Egress.Isolated {
		t.Fatalf("policed: %+v", p)
	}
	allows := p[0].Rules.Ingress.Allows
	if len(allows) != 1 || allows[0].Protocol != policy.TCP || allows[0].Ports != (policy.PortRange{First: 80, Last: 80}) {
		t.Fatalf("allows: %+v", allows)
	}
	var peers []string
	for _, pr := range allows[0].Peers {
		peers = append(peers, pr.String())
	}
	want := map[string]bool{"10.64.0.3/32": true, "10.64.0.70/32": true}
	if len(peers) != 2 || !want[peers[0]] || !want[peers[1]] {
		t.Fatalf("the web endpoints, local and remote: %v", peers)
	}
	// The isolated endpoint leaves the fast path; the other stays.
	var fast []string
	policed, _ := d.policedLocked()
	for _, e := range d.fastPathStateLocked(policed).Endpoints {
		fast = append(fast, e.HostIf)
	}
	if len(fast) != 1 || fast[0] != "tnweb" {
		t.Fatalf("fast path endpoints: %v, want tnweb only", fast)
	}
}

// Issue 26: a restarted plugin, until both policy watches have answered
// (kill -9 and the store up, or a start with the store away), gives its
// policed endpoints the rules they had, kept in the local store: nothing a
// policy closed opens meanwhile (the probe matrix saw a denied flow pass
// right after a kill). An endpoint gone since has none; once the view is
// live it decides.
func TestPolicedKeptAcrossRestart(t *testing.T) {
	ctx := context.Background()
	local := kv.NewMemory()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	setUp := func(d *Driver) {
		d.st.networks["n1"] = localNetwork{ID: "n1", Pool: "10.64.0.0/24", Backend: vxlan.Name}
		d.st.endpoints["api"] = localEndpoint{ID: "api", Network: "n1", IP: "10.64.0.2", HostIf: "tnapi", Labels: map[string]string{"app": "api"}}
		d.st.endpoints["web"] = localEndpoint{ID: "web", Network: "n1", IP: "10.64.0.3", HostIf: "tnweb", Labels: map[string]string{"app": "web"}}
	}
	d := New(kv.NewMemory(), local, nil, &firewall.Firewall{}, Config{Host: "a"}, log)
	setUp(d)
	pols, err := policy.Parse([]byte("name: api\nselector: {labels: {app: api}}\ningress: [{from: [{selector: {labels: {app: web}}}], ports: [{port: 80}, {protocol: udp}]}]"))
	if err != nil {
		t.Fatal(err)
	}
	d.pol.policies, d.pol.policiesIn, d.pol.labelsIn = pols, true, true
	applied, live := d.policedLocked()
	if len(applied) != 1 || !live {
		t.Fatalf("policed: %+v (live %v)", applied, live)
	}
	d.keepPoliced(applied, false) // compiled before the view was live: not kept
	if d.keptPoliced != nil {
		t.Fatalf("rules from a view not live were kept: %+v", d.keptPoliced)
	}
	d.keepPoliced(applied, live)

	restarted := New(kv.NewMemory(), local, nil, &firewall.Firewall{}, Config{Host: "a"}, log)
	restarted.loadPoliced(ctx)
	setUp(restarted)
	if got, live := restarted.policedLocked(); live || !reflect.DeepEqual(got, applied) {
		t.Fatalf("after a restart, before the policy view is live: %+v (live %v), want the kept %+v", got, live, applied)
	}
	delete(restarted.st.endpoints, "api")
	if got, _ := restarted.policedLocked(); len(got) != 0 {
		t.Fatalf("a gone endpoint kept its rules: %+v", got)
	}
	// An endpoint with nothing kept (started since) gets its network's
	// default meanwhile: isolated here.
	n := restarted.st.networks["n1"]
	n.Policy = string(policy.ModeIsolated)
	restarted.st.networks["n1"] = n
	if got, _ := restarted.policedLocked(); len(got) != 1 || got[0].HostIf != "tnweb" || !got[0].Rules.Ingress.Isolated {
		t.Fatalf("an endpoint with no kept rules on an isolated network, before the view is live: %+v", got)
	}
	n.Policy = ""
	restarted.st.networks["n1"] = n
	setUp(restarted)
	restarted.pol.policiesIn, restarted.pol.labelsIn = true, true // the store says: no policy now
	if got, _ := restarted.policedLocked(); len(got) != 0 {
		t.Fatalf("the live view (no policy) did not decide: %+v", got)
	}
}
