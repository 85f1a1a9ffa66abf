package store_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/taskworker/taskworker/internal/store"
)

func openBolt(t *testing.T, path string) *raftboltdb.BoltStore {
	t.Helper()
	b, err := store.OpenBolt(path, &bbolt.Options{})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return b
}

func entries(from, to uint64) []*raft.Log {
	var ls []*raft.Log
	for i := from; i <= to; i++ {
		ls = append(ls, &raft.Log{Index: i, Term: 3, Type: raft.LogCommand, Data: []byte("payload-" + string(rune('a'+i))), Extensions: []byte("ext")})
	}
	return ls
}

func TestEntriesRoundTripWithChecksumAndCallersLogIsUntouched(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	b := openBolt(t, path)
	defer b.Close()
	s := store.NewLogStore(b, path, store.NewHealth(), nil)
	in := entries(1, 5)
	in = append(in, &raft.Log{Index: 6, Term: 3, Type: raft.LogNoop})
	if err := s.StoreLogs(in); err != nil {
		t.Fatal(err)
	}
	if string(in[0].Data) != "payload-b" {
		t.Fatalf("StoreLogs changed the caller's entry: %q", in[0].Data)
	}
	for _, want := range in {
		var got raft.Log
		if err := s.GetLog(want.Index, &got); err != nil {
			t.Fatalf("GetLog(%d): %v", want.Index, err)
		}
		if got.Index != want.Index || got.Term != want.Term || got.Type != want.Type || !bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Extensions, want.Extensions) {
			t.Errorf("GetLog(%d) = %+v, want %+v", want.Index, got, *want)
		}
	}
	// What is on disk is framed: the plain store sees the frame.
	var raw raft.Log
	if err := b.GetLog(1, &raw); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(raw.Data, in[0].Data) || !bytes.HasSuffix(raw.Data, in[0].Data) {
		t.Errorf("stored Data %q is not the framed entry", raw.Data)
	}
	if err := s.Verify(); err != nil {
		t.Errorf("Verify of a sound store: %v", err)
	}
}

func TestStoreWrittenWithoutChecksumsStillReads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	b := openBolt(t, path)
	old := entries(1, 3) // written by the plain BoltStore, as releases before checksums did
	if err := b.StoreLogs(old); err != nil {
		t.Fatal(err)
	}
	s := store.NewLogStore(b, path, store.NewHealth(), nil)
	if err := s.StoreLogs(entries(4, 5)); err != nil { // and new entries after them
		t.Fatal(err)
	}
	if err := s.Verify(); err != nil {
		t.Fatalf("Verify of a mixed store: %v", err)
	}
	for i, want := range append(old, entries(4, 5)...) {
		var got raft.Log
		if err := s.GetLog(uint64(i+1), &got); err != nil || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("GetLog(%d) = %q, %v; want %q", i+1, got.Data, err, want.Data)
		}
	}
	b.Close()
}

// flipInDB changes one byte of the stored value of entry index, inside the payload it names.
func flipInDB(t *testing.T, path string, index uint64, marker string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		bk := tx.Bucket([]byte("logs"))
		key := make([]byte, 8)
		for i := 0; i < 8; i++ {
			key[7-i] = byte(index >> (8 * i))
		}
		v := bytes.Clone(bk.Get(key))
		at := bytes.Index(v, []byte(marker))
		if at < 0 {
			t.Fatalf("entry %d: %q not found in %q", index, marker, v)
		}
		v[at] ^= 0x01
		return bk.Put(key, v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestAFlippedByteIsACorruptErrorNamingIndexAndFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft", "raft.db")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	b := openBolt(t, path)
	var reported []*store.CorruptError
	s := store.NewLogStore(b, path, store.NewHealth(), func(e *store.CorruptError) { reported = append(reported, e) })
	if err := s.StoreLogs(entries(1, 5)); err != nil {
		t.Fatal(err)
	}
	b.Close()
	flipInDB(t, path, 3, "payload-d")

	b = openBolt(t, path)
	defer b.Close()
	s = store.NewLogStore(b, path, store.NewHealth(), func(e *store.CorruptError) { reported = append(reported, e) })
	var l raft.Log
	if err := s.GetLog(2, &l); err != nil {
		t.Fatalf("an intact entry: %v", err)
	}
	err := s.GetLog(3, &l)
	var ce *store.CorruptError
	if !errors.As(err, &ce) || !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("GetLog(3) = %v, want a CorruptError", err)
	}
	if ce.Index != 3 || ce.File != path {
		t.Errorf("CorruptError names index %d in %s, want 3 in %s", ce.Index, ce.File, path)
	}
	for _, want := range []string{path, "index 3", "checksum mismatch", "wipe its data dir (" + filepath.Dir(filepath.Dir(path)) + ")", "--join"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if len(reported) != 1 {
		t.Errorf("OnCorrupt called %d times, want 1", len(reported))
	}
	if err := s.Verify(); !errors.As(err, &ce) || ce.Index != 3 {
		t.Errorf("Verify = %v, want the CorruptError at index 3", err)
	}
}

func TestDamagedOrGarbageRaftDBIsACorruptErrorNotAPanic(t *testing.T) {
	sound := func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "raft.db")
		b := openBolt(t, path)
		s := store.NewLogStore(b, path, store.NewHealth(), nil)
		for i := uint64(1); i <= 400; i += 40 {
			if err := s.StoreLogs(entries(i, i+39)); err != nil {
				t.Fatal(err)
			}
		}
		b.Close()
		return path
	}
	cases := []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"truncated", func(t *testing.T, path string) {
			if err := os.Truncate(path, 100); err != nil {
				t.Fatal(err)
			}
		}},
		{"garbage", func(t *testing.T, path string) {
			if err := os.WriteFile(path, bytes.Repeat([]byte("garbage!"), 4096), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"pages overwritten behind sound meta pages", func(t *testing.T, path string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			ps := os.Getpagesize()
			for i := 2 * ps; i < len(b); i++ {
				b[i] = 0xAB
			}
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := sound(t)
			tc.damage(t, path)
			b, err := store.OpenBolt(path, &bbolt.Options{})
			if err == nil {
				err = store.NewLogStore(b, path, store.NewHealth(), nil).Verify()
			}
			var ce *store.CorruptError
			if !errors.As(err, &ce) || ce.File != path {
				t.Fatalf("open and verify = %v, want a CorruptError naming %s", err, path)
			}
		})
	}
}

func TestInjectedFaultFailsWritesAndHealthRecoversWhenCleared(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "raft.db")
	b := openBolt(t, path)
	defer b.Close()
	h := store.NewHealth()
	s := store.NewLogStore(b, path, h, nil)
	if ok, _ := h.Healthy(); !ok {
		t.Fatal("a new Health is not healthy")
	}
	changed := h.Changed()
	h.Inject(syscall.ENOSPC)
	if err := s.StoreLogs(entries(1, 1)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("StoreLogs under an injected ENOSPC = %v", err)
	}
	if err := h.Probe(dir); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Probe under an injected ENOSPC = %v", err)
	}
	ok, reason := h.Healthy()
	if ok || !strings.Contains(reason, "raft log append") || !strings.Contains(reason, "no space left on device") {
		t.Errorf("Healthy = %v %q, want unhealthy naming the log append and ENOSPC", ok, reason)
	}
	select {
	case <-changed:
	default:
		t.Error("Changed was not closed when the verdict changed")
	}
	h.Inject(nil)
	if err := h.Probe(dir); err != nil {
		t.Fatal(err)
	}
	if ok, _ := h.Healthy(); ok {
		t.Error("healthy again before the log store wrote again")
	}
	if err := s.StoreLogs(entries(1, 1)); err != nil {
		t.Fatal(err)
	}
	if ok, reason := h.Healthy(); !ok {
		t.Errorf("still unhealthy after writes succeeded: %s", reason)
	}
}

func TestProbeFailsWhenTheDataDirIsGone(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h := store.NewHealth()
	if err := h.Probe(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := h.Probe(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Probe of a removed dir = %v, want not-exist", err)
	}
	if ok, reason := h.Healthy(); ok || !strings.Contains(reason, "data dir probe") {
		t.Errorf("Healthy = %v %q", ok, reason)
	}
}

func TestCorruptSnapshotIsACorruptError(t *testing.T) {
	dir := t.TempDir()
	fss, err := raft.NewFileSnapshotStore(dir, 2, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var reported int
	s := store.NewSnapshotStore(fss, dir, store.NewHealth(), func(*store.CorruptError) { reported++ })
	_, trans := raft.NewInmemTransport("")
	sink, err := s.Create(1, 42, 3, raft.Configuration{}, 1, trans)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Write([]byte("the state of the FSM at index 42")); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if _, rc, err := s.Open(sink.ID()); err != nil {
		t.Fatalf("open a sound snapshot: %v", err)
	} else {
		rc.Close()
	}
	state := filepath.Join(dir, "snapshots", sink.ID(), "state.bin")
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	b[5] ^= 0x20
	if err := os.WriteFile(state, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.Open(sink.ID())
	var ce *store.CorruptError
	if !errors.As(err, &ce) || ce.File != state || ce.Index != 42 {
		t.Fatalf("open a damaged snapshot = %v, want a CorruptError naming %s at 42", err, state)
	}
	if reported != 1 {
		t.Errorf("OnCorrupt called %d times, want 1", reported)
	}
}
