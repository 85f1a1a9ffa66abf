package fsm

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"sync"
	"testing"
)

// extraState is the state of a table that only this test registers, by FSM: a new table needs no
// edit outside its own registration for snapshots, restores and the digest to carry it.
var extraState sync.Map // *FSM -> []string

func extraOf(f *FSM) []string {
	v, _ := extraState.Load(f)
	s, _ := v.([]string)
	return s
}

func init() {
	registerTable(Table[[]string]{
		Name: "test_extra",
		Pos:  1_000_000,
		Capture: func(f *FSM) ([]string, bool) {
			s := slices.Clone(extraOf(f))
			return s, len(s) > 0
		},
		Check: func(s *[]string) error {
			if slices.Contains(*s, "bad") {
				return errors.New("test_extra: bad entry")
			}
			return nil
		},
		Install: func(f *FSM, s *[]string) {
			if s == nil {
				extraState.Delete(f) // never used, or a snapshot without it: empty
				return
			}
			extraState.Store(f, *s)
		},
		Digest: func(f *FSM, put func(any)) {
			if s := extraOf(f); len(s) > 0 {
				put("test_extra")
				put(s)
			}
		},
	})
}

func restoreBytes(f *FSM, b []byte) error {
	return f.Restore(io.NopCloser(bytes.NewReader(b)))
}

func TestARegisteredTableIsSnapshottedRestoredAndDigested(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 2))
	plain := snapshotBytes(t, h.f)
	_, plainSum := h.f.Digest()

	extraState.Store(h.f, []string{"x", "y"})
	defer extraState.Delete(h.f)
	withExtra := snapshotBytes(t, h.f)
	_, extraSum := h.f.Digest()
	if extraSum == plainSum {
		t.Fatal("the table's contents leave the digest unchanged")
	}
	if bytes.Equal(withExtra, plain) || !bytes.Contains(withExtra, []byte("test_extra")) {
		t.Fatal("the snapshot has no section for the table")
	}

	g := New()
	defer extraState.Delete(g)
	if err := restoreBytes(g, withExtra); err != nil {
		t.Fatal(err)
	}
	if got := extraOf(g); !slices.Equal(got, []string{"x", "y"}) {
		t.Fatalf("restored table = %q, want [x y]", got)
	}
	if _, sum := g.Digest(); sum != extraSum {
		t.Fatalf("restored digest %s, want %s", sum, extraSum)
	}

	// A snapshot without the section (an older release's, or of a state that never used the
	// table) empties it.
	if err := restoreBytes(g, plain); err != nil {
		t.Fatal(err)
	}
	if got := extraOf(g); got != nil {
		t.Fatalf("restore without the section left %q", got)
	}
	if _, sum := g.Digest(); sum != plainSum {
		t.Fatalf("digest after restoring the plain snapshot %s, want %s", sum, plainSum)
	}
}

// A section that fails its table's check refuses the whole restore before anything changes,
// the task store and the other tables included.
func TestASectionThatFailsItsCheckLeavesTheFSMAsItWas(t *testing.T) {
	src := newHarness(t)
	src.must(registerCmd("other", "b9", 1))
	src.must(submitCmd(sub("t-other", "echo")))
	extraState.Store(src.f, []string{"ok", "bad"})
	defer extraState.Delete(src.f)
	bad := snapshotBytes(t, src.f)

	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 2))
	h.must(submitCmd(sub("t1", "echo")))
	extraState.Store(h.f, []string{"mine"})
	defer extraState.Delete(h.f)
	wantIndex, want := h.f.Digest()
	if err := restoreBytes(h.f, bad); err == nil {
		t.Fatal("a snapshot whose section fails its check was restored")
	}
	if idx, sum := h.f.Digest(); idx != wantIndex || sum != want {
		t.Fatalf("refused restore changed the state: digest %d %s, want %d %s", idx, sum, wantIndex, want)
	}
	if _, ok := h.f.Task("t1"); !ok {
		t.Fatal("refused restore dropped a task")
	}
	if _, ok := h.f.Node("other"); ok {
		t.Fatal("refused restore installed the snapshot's nodes")
	}
}
