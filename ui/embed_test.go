package ui

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// sourceHash is build.mjs's: sha256 over src/**, package-lock.json and build.mjs, in order of
// slash path, each as path, NUL, content, NUL.
func sourceHash(t *testing.T) string {
	t.Helper()
	inputs := []string{"package-lock.json", "build.mjs"}
	err := filepath.WalkDir("src", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			inputs = append(inputs, filepath.ToSlash(p))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(inputs)
	h := sha256.New()
	for _, p := range inputs {
		b, err := os.ReadFile(filepath.FromSlash(p))
		if err != nil {
			t.Fatal(err)
		}
		h.Write([]byte(p + "\x00"))
		h.Write(b)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestCommittedBuildIsFresh(t *testing.T) {
	got, err := dist.ReadFile("dist/source-hash.txt")
	if err != nil {
		t.Fatalf("dist/source-hash.txt missing: run scripts/ui-build.sh: %v", err)
	}
	if want := sourceHash(t); strings.TrimSpace(string(got)) != want {
		t.Fatalf("ui/dist was built from other sources than ui/src, ui/package-lock.json and ui/build.mjs hold now: run scripts/ui-build.sh and commit ui/dist")
	}
}

func TestHandlerServesFilesWithSecurityHeaders(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	for _, tc := range []struct {
		path, contentType string
		status            int
	}{
		{"/ui/", "text/html", 200},
		{"/ui/app.js", "text/javascript", 200},
		{"/ui/app.css", "text/css", 200},
		{"/ui/nope.js", "", 404},
	} {
		resp, err := http.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.path, resp.StatusCode, tc.status)
		}
		if tc.contentType != "" && !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.contentType) {
			t.Errorf("%s: content type %q, want %s", tc.path, resp.Header.Get("Content-Type"), tc.contentType)
		}
		for h, want := range map[string]string{
			"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
		} {
			if got := resp.Header.Get(h); got != want {
				t.Errorf("%s: %s = %q, want %q", tc.path, h, got, want)
			}
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", tc.path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("%s: CSP %q allows inline code", tc.path, csp)
		}
	}
}

// TestNoThirdPartyReferences: the built files name no other origin, so the console works offline
// and asks nothing of anyone else.
func TestNoThirdPartyReferences(t *testing.T) {
	for _, name := range []string{"dist/index.html", "dist/app.css"} {
		b, err := dist.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"http://", "https://", "//cdn", "<script>", "style=\""} {
			if strings.Contains(string(b), bad) {
				t.Errorf("%s contains %q", name, bad)
			}
		}
	}
}
