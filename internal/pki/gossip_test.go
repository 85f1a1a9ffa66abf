package pki

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDecodeGossipKey(t *testing.T) {
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }
	for _, tc := range []struct {
		name string
		in   string
		want int // key length, 0 for an error
	}{
		{"AES-128", b64(16), 16},
		{"AES-192", b64(24), 24},
		{"AES-256", b64(32), 32},
		{"with newline", b64(32) + "\n", 32},
		{"15 bytes", b64(15), 0},
		{"33 bytes", b64(33), 0},
		{"empty", "", 0},
		{"URL alphabet", strings.ReplaceAll(base64.StdEncoding.EncodeToString([]byte(strings.Repeat("\xff", 32))), "/", "_"), 0},
		{"not base64", "not a key at all!", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := DecodeGossipKey(tc.in)
			if tc.want == 0 {
				if !errors.Is(err, ErrBadGossipKey) {
					t.Fatalf("err = %v, want ErrBadGossipKey", err)
				}
				return
			}
			if err != nil || len(k) != tc.want {
				t.Fatalf("got %d bytes, %v", len(k), err)
			}
		})
	}
}

func TestGenerateGossipKeyRoundTrips(t *testing.T) {
	a, b := GenerateGossipKey(), GenerateGossipKey()
	if len(a) != 32 || string(a) == string(b) {
		t.Fatalf("keys %x %x", a, b)
	}
	got, err := DecodeGossipKey(EncodeGossipKey(a))
	if err != nil || string(got) != string(a) {
		t.Fatalf("round trip: %x %v", got, err)
	}
	p := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(p, []byte(EncodeGossipKey(a)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadGossipKeyFile(p); err != nil || string(got) != string(a) {
		t.Fatalf("file: %x %v", got, err)
	}
}

func TestKeyringFileKeepsTheKeysPrimaryFirstAndOnlyForItsOwner(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadKeyring(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no keyring yet: %v, want one wrapping os.ErrNotExist", err)
	}
	a, b := GenerateGossipKey(), GenerateGossipKey()
	if err := SaveKeyring(dir, [][]byte{b, a}); err != nil {
		t.Fatal(err)
	}
	got, err := LoadKeyring(dir)
	if err != nil || len(got) != 2 || string(got[0]) != string(b) || string(got[1]) != string(a) {
		t.Fatalf("loaded %x, %v; want b then a", got, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, KeyringFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file: %v %v, want mode 0600", fi, err)
	}
	for _, bad := range []string{`{"keys":[]}`, `{"keys":["not a key"]}`, `not json`} {
		if err := os.WriteFile(filepath.Join(dir, KeyringFile), []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadKeyring(dir); err == nil || strings.Contains(err.Error(), "not a key") {
			t.Errorf("%s: %v, want an error that does not echo the file", bad, err)
		}
	}
}
