package pki

import (
	"strings"
	"testing"
)

// FuzzJoinToken: parsing any text never panics; whatever parses is canonical (Encode parses back
// to the same token), never shows its secret field through String, and only verifies against itself.
func FuzzJoinToken(f *testing.F) {
	f.Add("TW1::" + fpA + "::" + secretA)
	f.Add("TW1::" + fpA + "::" + secretA + "\n")
	f.Add("TW1::" + fpA)
	f.Add("TW1::::")
	// A secret equal to the fingerprint: String shows the fingerprint, never the secret's own field.
	f.Add("TW1::" + secretA + "::" + secretA)
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			if tok != (Token{}) {
				t.Fatalf("error %v with a non-zero token", err)
			}
			return
		}
		again, err := ParseToken(tok.Encode())
		if err != nil || again != tok {
			t.Fatalf("Encode %q does not round trip: %+v %v", tok.Encode(), again, err)
		}
		if !strings.EqualFold(tok.Encode(), strings.TrimSpace(s)) {
			t.Fatalf("Encode %q differs from the input %q beyond case and space", tok.Encode(), s)
		}
		if want := "TW1::" + tok.Fingerprint + "::<redacted>"; tok.String() != want {
			t.Fatalf("String = %q, want %q (the secret hidden)", tok.String(), want)
		}
		if err := tok.Verify(tok); err != nil {
			t.Fatalf("a token does not verify against itself: %v", err)
		}
		if err := tok.Verify(tok.Rotate()); err == nil {
			t.Fatal("a rotated token verified against the old one")
		}
	})
}
