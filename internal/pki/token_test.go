package pki

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	fpA     = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	fpB     = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	secretA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
)

func TestParseToken(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Token
		ok   bool
	}{
		{"canonical", "TW1::" + fpA + "::" + secretA, Token{fpA, secretA}, true},
		{"trailing newline from a file", "TW1::" + fpA + "::" + secretA + "\n", Token{fpA, secretA}, true},
		{"upper-case fingerprint is normalised", "TW1::" + strings.ToUpper(fpA) + "::" + secretA, Token{fpA, secretA}, true},
		{"empty", "", Token{}, false},
		{"wrong prefix", "TW2::" + fpA + "::" + secretA, Token{}, false},
		{"lower-case prefix", "tw1::" + fpA + "::" + secretA, Token{}, false},
		{"missing secret", "TW1::" + fpA, Token{}, false},
		{"empty secret", "TW1::" + fpA + "::", Token{}, false},
		{"extra part", "TW1::" + fpA + "::" + secretA + "::x", Token{}, false},
		{"short fingerprint", "TW1::" + fpA[:63] + "::" + secretA, Token{}, false},
		{"fingerprint with colons", "TW1::" + fpA[:62] + ":a::" + secretA, Token{}, false},
		{"short secret", "TW1::" + fpA + "::" + secretA[:63], Token{}, false},
		{"upper-case secret", "TW1::" + fpA + "::" + strings.ToUpper(secretA[:1]) + secretA[1:], Token{}, false},
		{"non-hex secret", "TW1::" + fpA + "::" + strings.Repeat("g", 64), Token{}, false},
		{"space inside", "TW1:: " + fpA + "::" + secretA, Token{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseToken(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok {
				if !errors.Is(err, ErrMalformedToken) {
					t.Errorf("err %v does not wrap ErrMalformedToken", err)
				}
				if strings.Contains(err.Error(), secretA[:16]) {
					t.Errorf("error echoes the secret: %v", err)
				}
				return
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestTokenEncodeRoundTripsAndStringHidesTheSecret(t *testing.T) {
	tok, err := NewToken(fpA)
	if err != nil {
		t.Fatal(err)
	}
	if len(tok.Secret) != 64 {
		t.Fatalf("secret length %d", len(tok.Secret))
	}
	got, err := ParseToken(tok.Encode())
	if err != nil || got != tok {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, s := range []string{tok.String(), fmt.Sprint(tok), fmt.Sprintf("%v %s", tok, tok)} {
		if strings.Contains(s, tok.Secret) {
			t.Errorf("%q shows the secret", s)
		}
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "token", tok)
	if strings.Contains(buf.String(), tok.Secret) || !strings.Contains(buf.String(), fpA) {
		t.Errorf("slog output %q", buf.String())
	}
	if _, err := NewToken("nothex"); err == nil {
		t.Error("NewToken accepted a bad fingerprint")
	}
}

func TestTokenVerify(t *testing.T) {
	cluster := Token{fpA, secretA}
	rotated := cluster.Rotate()
	for _, tc := range []struct {
		name      string
		presented Token
		want      error
	}{
		{"same token", cluster, nil},
		{"wrong secret", Token{fpA, strings.Repeat("b", 64)}, ErrTokenSecret},
		{"secret differing in the last digit", Token{fpA, secretA[:63] + "b"}, ErrTokenSecret},
		{"other cluster", Token{fpB, secretA}, ErrTokenOtherCluster},
		{"empty", Token{}, ErrTokenOtherCluster},
		{"rotated away", rotated, ErrTokenSecret},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := cluster.Verify(tc.presented); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
	if err := (Token{Fingerprint: fpA}).Verify(Token{Fingerprint: fpA}); err == nil {
		t.Error("an empty expected secret matched an empty presented one")
	}
}

func TestRotateKeepsTheClusterAndChangesTheSecret(t *testing.T) {
	a := Token{fpA, secretA}
	b := a.Rotate()
	if b.Fingerprint != a.Fingerprint || b.Secret == a.Secret {
		t.Fatalf("Rotate: %+v -> %+v", a, b)
	}
	if _, err := ParseToken(b.Encode()); err != nil {
		t.Fatalf("rotated token does not parse: %v", err)
	}
}

func TestTokenFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadTokenFile(dir); !errors.Is(err, ErrNoToken) {
		t.Fatalf("no file: %v", err)
	}
	tok, created, err := LoadOrCreateToken(dir, fpA)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	p := filepath.Join(dir, TokenFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != tok.Encode()+"\n" {
		t.Errorf("file holds %q, want the token and one newline", b)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	again, created, err := LoadOrCreateToken(dir, fpA)
	if err != nil || created || again != tok {
		t.Fatalf("reload: %+v %v %v", again, created, err)
	}
	if _, _, err := LoadOrCreateToken(dir, fpB); !errors.Is(err, ErrTokenOtherCluster) {
		t.Fatalf("token of another CA: %v", err)
	}
	rotated := tok.Rotate()
	if err := WriteTokenFile(dir, rotated); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadTokenFile(dir); err != nil || got != rotated {
		t.Fatalf("after rotation: %+v %v", got, err)
	}
	if err := os.WriteFile(p, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadTokenFile(dir); !errors.Is(err, ErrMalformedToken) {
		t.Fatalf("garbage file: %v", err)
	}
}

func TestManagementCredentialFileIsPrivateAndChecked(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadManagementFile(dir); !errors.Is(err, ErrNoManagement) {
		t.Fatalf("no file: %v, want ErrNoManagement", err)
	}
	a, b := NewManagementCredential(), NewManagementCredential()
	if a == b || !ValidManagementCredential(a) || !strings.HasPrefix(a, "twm_") || len(a) != 4+64 {
		t.Fatalf("credentials %q %q", a, b)
	}
	if err := WriteManagementFile(dir, a); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, ManagementFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file: %v %v, want mode 0600", fi, err)
	}
	if got, err := ReadManagementFile(dir); err != nil || got != a {
		t.Fatalf("read back: %q %v", got, err)
	}
	if err := WriteManagementFile(dir, "twm_short"); err == nil {
		t.Error("a malformed credential was written")
	}
	secret := "not-a-credential-but-a-secret-of-someone"
	if err := os.WriteFile(filepath.Join(dir, ManagementFile), []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadManagementFile(dir); err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("a malformed file: %v (it must be refused without echoing it)", err)
	}
}
