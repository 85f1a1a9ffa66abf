package fsm

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

func TestSecurityCommandsAreInTheTable(t *testing.T) {
	for _, tc := range []struct {
		body Payload
		typ  CommandType
		name string
	}{
		{&JoinSecret{}, CmdJoinSecret, "join_secret"},
		{&KeyringOp{}, CmdKeyring, "keyring"},
	} {
		c := &Command{Body: tc.body}
		if c.Type() != tc.typ || tc.typ.String() != tc.name || c.Batchable() || tc.typ.Since() != 1 {
			t.Errorf("%T: type %d %q batch %v since %d", tc.body, c.Type(), c.Type(), c.Batchable(), tc.typ.Since())
		}
		b, err := Encode(&Command{Now: t0, Body: tc.body})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := Decode(b); err != nil || !reflect.DeepEqual(got.Body, tc.body) {
			t.Errorf("%s: decode %+v, %v", tc.name, got, err)
		}
	}
}

func TestKeyringOperations(t *testing.T) {
	type step struct {
		op, key string
		err     error
		want    Keyring
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first install becomes primary", []step{
			{KeyInstall, "a", nil, Keyring{Primary: "a", Keys: []string{"a"}}},
		}},
		{"rotation: install, use, remove the old key", []step{
			{KeyInstall, "a", nil, Keyring{Primary: "a", Keys: []string{"a"}}},
			{KeyInstall, "b", nil, Keyring{Primary: "a", Keys: []string{"a", "b"}}},
			{KeyUse, "b", nil, Keyring{Primary: "b", Keys: []string{"a", "b"}}},
			{KeyRemove, "a", nil, Keyring{Primary: "b", Keys: []string{"b"}}},
		}},
		{"install twice is a no-op", []step{
			{KeyInstall, "a", nil, Keyring{Primary: "a", Keys: []string{"a"}}},
			{KeyInstall, "a", nil, Keyring{Primary: "a", Keys: []string{"a"}}},
		}},
		{"the primary cannot be removed", []step{
			{KeyInstall, "a", nil, Keyring{Primary: "a", Keys: []string{"a"}}},
			{KeyRemove, "a", ErrKeyring, Keyring{Primary: "a", Keys: []string{"a"}}},
		}},
		{"use and remove need an installed key", []step{
			{KeyInstall, "a", nil, Keyring{Primary: "a", Keys: []string{"a"}}},
			{KeyUse, "b", ErrKeyNotInstalled, Keyring{Primary: "a", Keys: []string{"a"}}},
			{KeyRemove, "b", ErrKeyNotInstalled, Keyring{Primary: "a", Keys: []string{"a"}}},
		}},
		{"unknown operation and empty key", []step{
			{"rotate", "a", ErrBadCommand, Keyring{}},
			{KeyInstall, "", ErrBadCommand, Keyring{}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := New()
			for i, s := range tc.steps {
				r := f.ApplyCommand(uint64(i+1), &Command{Now: t0, Body: &KeyringOp{Op: s.op, Key: s.key}})
				if !errors.Is(r.Err, s.err) || (s.err == nil) != (r.Err == nil) {
					t.Fatalf("step %d %s %s: err %v, want %v", i, s.op, s.key, r.Err, s.err)
				}
				got := f.Security().Keyring
				if got.Primary != s.want.Primary || !reflect.DeepEqual(append([]string{}, got.Keys...), append([]string{}, s.want.Keys...)) {
					t.Fatalf("step %d %s %s: keyring %+v, want %+v", i, s.op, s.key, got, s.want)
				}
			}
		})
	}
}

func TestSecurityStateSurvivesSnapshotAndCountsInTheDigest(t *testing.T) {
	f := scripted(t)
	_, before := f.Digest()
	idx := f.Index()
	for i, c := range []Payload{&JoinSecret{Secret: "s1"}, &KeyringOp{Op: KeyInstall, Key: "k1"}, &JoinSecret{Secret: "s2"}} {
		if r := f.ApplyCommand(idx+uint64(i)+1, &Command{Now: t0, Body: c}); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	// A secret replicated by an older release is kept as its hash only.
	if got := f.Security(); got.JoinSecretHash != HashSecret("s2") || got.Keyring.Primary != "k1" {
		t.Fatalf("security %+v", got)
	}
	_, after := f.Digest()
	if after == before {
		t.Error("digest does not cover the security state")
	}
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g.Security(), f.Security()) {
		t.Errorf("restored %+v, want %+v", g.Security(), f.Security())
	}
	if _, sum := g.Digest(); sum != after {
		t.Error("restored replica has another digest")
	}
	// A snapshot without security state clears what the FSM held.
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, scripted(t))))); err != nil {
		t.Fatal(err)
	}
	if s := g.Security(); !s.zero() {
		t.Errorf("security after restoring a snapshot without it: %+v", s)
	}
}
