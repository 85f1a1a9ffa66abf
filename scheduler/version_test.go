package scheduler

import (
	"testing"

	"github.com/taskworker/taskworker/fsm"
)

func TestCompareVersions(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"v10", "v9", 1},           // numeric, not text: the old compareVersions said -1
		{"10", "9", 1},             // the same without the prefix
		{"1.0.0-rc1", "1.0.0", -1}, // a pre-release is below its release: the old code said +1
		{"1.0.0-rc2", "1.0.0-rc1", 1},
		{"1.10.0", "1.9.3", 1},
		{"2", "1.99", 1},
		{"1", "1.0.0", -1}, // semver-equal spellings order bytewise: "1" is a prefix
		{"1.0.0", "1.0.0", 0},
		{"v2", "2", 1},  // semver-equal spellings order bytewise ("v" > "2")
		{"1", "dev", 1}, // a valid version beats a free-form label
		{"dev", "0.0.1-alpha", -1},
		{"dev", "latest", -1}, // labels among themselves: bytewise
		{"x", "x", 0},
	}
	for _, c := range cases {
		want := c.want
		if got := CompareVersions(c.a, c.b); got != want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.a, c.b, got, want)
		}
		if got := CompareVersions(c.b, c.a); got != -want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d (antisymmetry)", c.b, c.a, got, -want)
		}
	}
}

func TestCheckVersion(t *testing.T) {
	for _, ok := range []string{"1", "v2", "1.0.0-rc1", "1.0.0+build.5", "dev_2"} {
		if err := CheckVersion(ok); err != nil {
			t.Errorf("CheckVersion(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "1 0", "v1/..", "ü", string(make([]byte, 65))} {
		if err := CheckVersion(bad); err == nil {
			t.Errorf("CheckVersion(%q) = nil, want an error", bad)
		}
	}
}

func TestChooseVersion(t *testing.T) {
	node := func(name string, status fsm.NodeStatus, draining bool, versions ...string) fsm.Node {
		n := fsm.Node{Name: name, Status: status, Draining: draining}
		for _, v := range versions {
			n.Types = append(n.Types, fsm.TypeInfo{Type: "echo", Version: v})
		}
		return n
	}
	alive := map[string]bool{"n1": true, "n2": true, "n3": true}
	cases := []struct {
		name, pinned, local string
		nodes               []fsm.Node
		want                string
		known               bool
	}{
		{name: "newest alive by semver, not text", nodes: []fsm.Node{node("n1", fsm.NodeUp, false, "v9"), node("n2", fsm.NodeUp, false, "v10")}, want: "v10", known: true},
		{name: "release beats its pre-release", nodes: []fsm.Node{node("n1", fsm.NodeUp, false, "1.0.0-rc1"), node("n2", fsm.NodeUp, false, "1.0.0")}, want: "1.0.0", known: true},
		{name: "pinned wins", pinned: "v1", nodes: []fsm.Node{node("n1", fsm.NodeUp, false, "v2")}, want: "v1", known: true},
		{name: "draining node's newer version skipped", nodes: []fsm.Node{node("n1", fsm.NodeUp, false, "1"), node("n2", fsm.NodeUp, true, "2")}, want: "1", known: true},
		{name: "dead node's newer version skipped", nodes: []fsm.Node{node("n1", fsm.NodeUp, false, "1"), node("n2", fsm.NodeDown, false, "2")}, want: "1", known: true},
		{name: "gossip-dead node skipped", nodes: []fsm.Node{node("n1", fsm.NodeUp, false, "1"), node("n9", fsm.NodeUp, false, "2")}, want: "1", known: true},
		{name: "nobody alive: newest ever offered", nodes: []fsm.Node{node("n2", fsm.NodeDown, false, "3"), node("n1", fsm.NodeLeft, false, "4")}, want: "4", known: true},
		{name: "no node yet: local registry", local: "1", want: "1", known: true},
		{name: "unknown type", nodes: []fsm.Node{{Name: "n1", Status: fsm.NodeUp}}, known: false},
		{name: "unknown type even when pinned", pinned: "1", known: false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, known := ChooseVersion("echo", c.pinned, c.nodes, alive, c.local)
			if got != c.want || known != c.known {
				t.Fatalf("ChooseVersion = %q %v, want %q %v", got, known, c.want, c.known)
			}
		})
	}
}
