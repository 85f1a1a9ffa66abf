package pki

import (
	"net"
	"strings"
	"testing"
	"time"
)

// A node's operator certificate files must name that node, at start and on every reload.
func TestNamedSourceLoadsOnlyTheNamedNodesCertificate(t *testing.T) {
	ca, err := CreateCA("prod", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := func(name string) Source {
		id, err := ca.IssueIdentity(NodeSpec{Name: name, Role: RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		d := t.TempDir()
		if err := SaveIdentity(d, id); err != nil {
			t.Fatal(err)
		}
		return DirSource(d)
	}
	n1, nameless := dir("n1"), dir("")
	if id, err := (NamedSource{Source: n1, Cluster: "prod", Node: "n1"}).Load(); err != nil || id == nil {
		t.Fatalf("n1's certificate for n1: %v", err)
	}
	for _, tc := range []struct {
		name string
		src  NamedSource
	}{
		{"another node's", NamedSource{Source: n1, Cluster: "prod", Node: "n2"}},
		{"one that names no node", NamedSource{Source: nameless, Cluster: "prod", Node: "n1"}},
		{"another cluster's name", NamedSource{Source: n1, Cluster: "dev", Node: "n1"}},
	} {
		if _, err := tc.src.Load(); err == nil || !strings.Contains(err.Error(), "--node") {
			t.Errorf("%s certificate: %v, want a refusal that says how to make the right one", tc.name, err)
		}
	}
	// A holder keeps its identity when a reload is refused.
	h := NewHolder(nil)
	if err := h.Reload(NamedSource{Source: n1, Cluster: "prod", Node: "n1"}); err != nil {
		t.Fatal(err)
	}
	before := h.Identity()
	if err := h.Reload(NamedSource{Source: nameless, Cluster: "prod", Node: "n1"}); err == nil || h.Identity() != before {
		t.Fatalf("reload with a nameless certificate: %v; identity kept: %v", err, h.Identity() == before)
	}
}
