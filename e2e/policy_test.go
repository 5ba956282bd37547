//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/e2e/testbed"
)

// TestPolicyKernelPath (issue 26, first enforcement): two hosts with
// Consul, a vxlan network, containers labelled through their endpoint
// driver options. A policy applied with tartan policy on host 2 isolates
// "api" (host 1): TCP 80 from "web" only. Every probe is a real connection;
// the expected verdicts are written out here, not computed by tartan's
// code; explain names the deciding rule. Then the policy is removed and
// everything passes again. A bad label is refused by name at connect, a
// bad policy file at apply.
func TestPolicyKernelPath(t *testing.T) {
	t.Parallel()
	c := testbed.NewCluster(t, "po", 1500)
	h1, h2 := c.AddHost(t), c.AddHost(t)
	const subnet = "10.89.0.0/16"
	for _, h := range []*testbed.Host{h1, h2} {
		h.MustDocker(t, "network", "create", tnet, tipam, "--subnet", subnet, "pn")
	}
	labelled := func(h *testbed.Host, name, cmd string, labels ...string) string {
		return startLabelled(t, h, "pn", name, cmd, labels...)
	}
	servers := "mkdir -p /www && echo ok > /www/i && (httpd -p 80 -h /www; httpd -p 8080 -h /www; sleep 3600)"
	apiIP := labelled(h1, "api", servers, "app=api")
	labelled(h2, "web", "sleep 3600", "app=web")
	labelled(h2, "other", "sleep 3600", "app=other")
	labelled(h1, "web1", "sleep 3600", "app=web") // on api's own host
	// A bad label is refused by name when the endpoint is made (a created
	// container's endpoints are made at its start).
	h1.MustDocker(t, "create", "--name", "bad", "tbox", "sleep", "3600")
	h1.MustDocker(t, "network", "disconnect", "bridge", "bad")
	h1.MustDocker(t, "network", "connect", "--driver-opt", "tartan.label.bad key=x", "pn", "bad")
	out, err := h1.Docker("start", "bad")
	mustFail(t, out, err, "tartan.label.bad key")

	reach := func(h *testbed.Host, from, port string) bool {
		_, err := h.Docker("exec", from, "nc", "-w", "2", apiIP, port)
		return err == nil
	}
	type probe struct {
		h          *testbed.Host
		from, port string
	}
	expect := func(what string, want map[probe]bool) {
		t.Helper()
		testbed.Eventually(t, 2*time.Minute, what, func() error {
			var wrong []string
			for p, w := range want {
				if got := reach(p.h, p.from, p.port); got != w {
					wrong = append(wrong, fmt.Sprintf("%s -> api:%s %v (want %v)", p.from, p.port, got, w))
				}
			}
			if len(wrong) > 0 {
				return fmt.Errorf("%s", strings.Join(wrong, "; "))
			}
			return nil
		})
	}
	open := map[probe]bool{{h2, "web", "80"}: true, {h2, "web", "8080"}: true, {h2, "other", "80"}: true, {h1, "web1", "80"}: true}
	expect("before any policy every probe passes", open)

	// A bad file is refused whole, with the field named.
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: api\nselector: {labels: {app: api}}\ningress: [{ports: [{port: 99999}]}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, rc, stderr := h1.TartanRC(t, "policy", "apply", "-f", bad); rc != 1 || !strings.Contains(stderr, "ingress[0].ports[0]") {
		t.Fatalf("a bad policy file: exit %d\n%s%s", rc, out, stderr)
	}
	file := filepath.Join(dir, "api.yaml")
	if err := os.WriteFile(file, []byte(`# api takes HTTP from web only
name: api
selector: {labels: {app: api}}
networks: [`+subnet+`]
ingress:
  - from: [{selector: {labels: {app: web}}}]
    ports: [{protocol: tcp, port: 80}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, rc, stderr := h2.TartanRC(t, "policy", "apply", "-f", file); rc != 0 || !strings.Contains(out, "api") {
		t.Fatalf("tartan policy apply on host 2: exit %d\n%s%s", rc, out, stderr)
	}
	expect("the policy holds on both hosts", map[probe]bool{
		{h2, "web", "80"}: true, {h2, "web", "8080"}: false, {h2, "other", "80"}: false, {h1, "web1", "80"}: true,
	})
	// explain says the same, with the deciding rule, on either host.
	ipOf := func(h *testbed.Host, name string) string {
		return h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
	}
	for _, c := range []struct {
		from, flow string
		rc         int
		want       string
	}{
		{ipOf(h2, "web"), "80/tcp", 0, "allowed by policy api, ingress rule 0"},
		{ipOf(h2, "web"), "8080/tcp", 1, "DENIED"},
		{ipOf(h2, "other"), "80/tcp", 1, "none of their rules allows this flow"},
	} {
		if out, rc, stderr := h1.TartanRC(t, "policy", "explain", c.from, apiIP, c.flow); rc != c.rc || !strings.Contains(out, c.want) {
			t.Errorf("tartan policy explain %s %s %s: exit %d, want %d with %q\n%s%s", c.from, apiIP, c.flow, rc, c.rc, c.want, out, stderr)
		}
	}
	if out, rc, _ := h1.TartanRC(t, "policy", "ls"); rc != 0 || !strings.Contains(out, "app=api") {
		t.Errorf("tartan policy ls: exit %d\n%s", rc, out)
	}
	// The deny log of host 1 (api's ingress) has the denied probes.
	testbed.Eventually(t, time.Minute, "tartan policy log shows the denied probes", func() error {
		out, rc, stderr := h1.TartanRC(t, "policy", "log")
		for _, want := range []string{ipOf(h2, "other"), apiIP, "80/tcp", "8080/tcp", "ingress"} {
			if rc != 0 || !strings.Contains(out, want) {
				return fmt.Errorf("exit %d, no %q in:\n%s%s", rc, want, out, stderr)
			}
		}
		return nil
	})
	// The rules are tartan's: its chain on host 1, and denied flows logged.
	if out, err := h1.Exec(testbed.Iptables(), "-t", "mangle", "-S", firewall.IngressChain); err != nil || !strings.Contains(out, "--match-set") || !strings.Contains(out, "NFLOG") {
		t.Fatalf("host 1's %s: %v\n%s", firewall.IngressChain, err, out)
	}
	if out, rc, _ := h1.TartanRC(t, "doctor"); rc != 0 {
		t.Fatalf("tartan doctor with a policy applied: exit %d\n%s", rc, out)
	}
	if out, rc, stderr := h1.TartanRC(t, "policy", "rm", "api"); rc != 0 {
		t.Fatalf("tartan policy rm api: exit %d\n%s%s", rc, out, stderr)
	}
	expect("without the policy every probe passes again", open)
	if out, err := h1.Exec(testbed.Iptables(), "-t", "mangle", "-S", firewall.IngressChain); err == nil {
		t.Fatalf("%s left without policy:\n%s", firewall.IngressChain, out)
	}

	// An isolated network: its endpoints reach each other only where a
	// policy allows it. Its default is the cluster's: another one is
	// refused on host 2.
	const iso = "10.88.0.0/16"
	h1.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.policy=isolated", "--subnet", iso, "iso")
	out, err = h2.Docker("network", "create", tnet, tipam, "-o", "tartan.policy=default-deny", "--subnet", iso, "iso")
	mustFail(t, out, err, "has -o tartan.policy=isolated in the cluster")
	h2.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.policy=isolated", "--subnet", iso, "iso")
	h1.MustDocker(t, "run", "-d", "--name", "i1", "--network", "iso", "tbox", "sh", "-c", "mkdir -p /www && echo ok > /www/i && httpd -f -p 80 -h /www")
	h2.MustDocker(t, "run", "-d", "--name", "i2", "--network", "iso", "tbox", "sleep", "3600")
	i1 := ipOf(h1, "i1")
	isoReach := func() bool {
		_, err := h2.Docker("exec", "i2", "nc", "-w", "2", i1, "80")
		return err == nil
	}
	testbed.Eventually(t, 2*time.Minute, "i2 does not reach i1 on an isolated network", func() error {
		if isoReach() {
			return fmt.Errorf("i2 reaches i1:80")
		}
		return nil
	})
	isoFile := filepath.Join(dir, "iso.yaml")
	if err := os.WriteFile(isoFile, []byte("name: iso-web\nselector: {}\nnetworks: ["+iso+"]\ningress: [{from: [{network: "+iso+"}], ports: [{port: 80}]}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, rc, stderr := h1.TartanRC(t, "policy", "apply", "-f", isoFile); rc != 0 {
		t.Fatalf("apply iso-web: exit %d\n%s%s", rc, out, stderr)
	}
	testbed.Eventually(t, 2*time.Minute, "a policy opens port 80 within the isolated network", func() error {
		if !isoReach() {
			return fmt.Errorf("i2 does not reach i1:80")
		}
		return nil
	})
	if out, rc, stderr := h1.TartanRC(t, "policy", "rm", "iso-web"); rc != 0 {
		t.Fatalf("tartan policy rm iso-web: exit %d\n%s%s", rc, out, stderr)
	}
	for _, h := range []*testbed.Host{h1, h2} {
		_, _ = h.Docker("rm", "-f", "api", "web", "other", "web1", "bad", "i1", "i2")
	}
}
