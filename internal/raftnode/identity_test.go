package raftnode

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"
)

func TestRaftIDIsMadeOnceAndKeptInTheDataDir(t *testing.T) {
	cases := []struct {
		name     string
		file     string // the ID file's content before the start; "-" for none
		inmem    bool
		existing bool
		want     string // "ulid" for a generated one
		wantErr  error
	}{
		{name: "a fresh dir gets a generated ID", file: "-", want: "ulid"},
		{name: "a dir from before raft IDs keeps the name", file: "-", existing: true, want: "n1"},
		{name: "the file wins over the name", file: "01J00000000000000000000000\n", existing: true, want: "01J00000000000000000000000"},
		{name: "an upgraded dir's file holds the name", file: "n1\n", existing: true, want: "n1"},
		{name: "an empty file is an error", file: "\n", existing: true, wantErr: ErrBadRaftID},
		{name: "two words are an error", file: "a b\n", existing: true, wantErr: ErrBadRaftID},
		{name: "an ID without raft state is made anew", file: "01J00000000000000000000000\n", want: "ulid"},
		{name: "in-memory raft is a new member each start", file: "-", inmem: true, want: "ulid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, IDFile)
			if c.file != "-" {
				if err := os.WriteFile(path, []byte(c.file), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			id, err := loadRaftID(dir, "n1", c.inmem, c.existing)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("loadRaftID: %q, %v; want %v", id, err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.want == "ulid" {
				if _, err := ulid.ParseStrict(string(id)); err != nil {
					t.Fatalf("ID %q is not a ULID: %v", id, err)
				}
				if c.file != "-" && string(id)+"\n" == c.file {
					t.Fatalf("kept ID %s without the raft state it belonged to", id)
				}
			} else if string(id) != c.want {
				t.Fatalf("ID %q, want %q", id, c.want)
			}
			again, err := loadRaftID(dir, "n1", c.inmem, true)
			if err != nil {
				t.Fatal(err)
			}
			if c.inmem {
				if again == id {
					t.Errorf("in-memory raft kept ID %s across starts", id)
				}
				if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("in-memory raft wrote %s: %v", path, err)
				}
				return
			}
			if again != id {
				t.Errorf("second start: ID %q, first %q", again, id)
			}
			if b, err := os.ReadFile(path); err != nil || strings.TrimSpace(string(b)) != string(id) {
				t.Errorf("%s holds %q (%v), want %q", path, b, err, id)
			}
		})
	}
}
