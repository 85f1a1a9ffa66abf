package ui

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
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

// TestCommittedBuildIsTheBuildOfItsSources rebuilds the console from ui/src with the locked
// packages, in a temporary copy of ui/, and compares every file with the committed dist/ byte for
// byte (esbuild's output is deterministic): a hand edit of dist/, or a build from other sources
// under a stale hash, fails here. It needs node and ui/node_modules (npm ci in ui/); without them
// it skips, unless TASKWORKER_REQUIRE_UI_BUILD=1 makes that a failure.
func TestCommittedBuildIsTheBuildOfItsSources(t *testing.T) {
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join("node_modules", "esbuild", "package.json"))
	}
	if err != nil {
		if os.Getenv("TASKWORKER_REQUIRE_UI_BUILD") == "1" {
			t.Fatalf("cannot rebuild the console: %v (TASKWORKER_REQUIRE_UI_BUILD=1; install node and run npm ci in ui/)", err)
		}
		t.Skipf("cannot rebuild the console (%v): install node and run npm ci in ui/, or set TASKWORKER_REQUIRE_UI_BUILD=1 to make this a failure", err)
	}
	tmp := t.TempDir()
	for _, p := range []string{"build.mjs", "package.json", "package-lock.json"} {
		b, err := os.ReadFile(p)
		if err == nil {
			err = os.WriteFile(filepath.Join(tmp, p), b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := os.CopyFS(filepath.Join(tmp, "src"), os.DirFS("src")); err != nil {
		t.Fatal(err)
	}
	modules, err := filepath.Abs("node_modules")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(modules, filepath.Join(tmp, "node_modules")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, node, filepath.Join(tmp, "build.mjs")).CombinedOutput(); err != nil {
		t.Fatalf("node build.mjs: %v\n%s", err, out)
	}
	built := map[string][]byte{}
	if err := fs.WalkDir(os.DirFS(filepath.Join(tmp, "dist")), ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			built[p], err = os.ReadFile(filepath.Join(tmp, "dist", filepath.FromSlash(p)))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	committed := map[string][]byte{}
	if err := fs.WalkDir(dist, "dist", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			committed[strings.TrimPrefix(p, "dist/")], err = dist.ReadFile(p)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for name, b := range built {
		if c, ok := committed[name]; !ok {
			t.Errorf("the build makes dist/%s, which is not committed: run scripts/ui-build.sh and commit ui/dist", name)
		} else if !bytes.Equal(b, c) {
			t.Errorf("committed dist/%s differs from the build of the sources (%d bytes, built %d): run scripts/ui-build.sh and commit ui/dist", name, len(c), len(b))
		}
	}
	for name := range committed {
		if _, ok := built[name]; !ok {
			t.Errorf("dist/%s is committed but not made by the build", name)
		}
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
// and asks nothing of anyone else. In the script bundle, every "://" must be one of the XML
// namespace names the DOM library compares against (identifiers, never fetched) or the link to a
// cluster node's own console, made from the address the node list reports.
func TestNoThirdPartyReferences(t *testing.T) {
	for _, name := range []string{"dist/index.html", "dist/app.css", "dist/app.js"} {
		b, err := dist.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		bad := []string{"//cdn", "<script>"}
		if name != "dist/app.js" {
			// A script builds markup with these on purpose; the page and the style sheet must not.
			bad = append(bad, "http://", "https://", "style=\"")
		}
		for _, bad := range bad {
			if strings.Contains(string(b), bad) {
				t.Errorf("%s contains %q", name, bad)
			}
		}
		if name != "dist/app.js" {
			continue
		}
		allowed := []string{
			`http://www.w3.org/1998/Math/MathML"`, `http://www.w3.org/1999/xhtml"`, `http://www.w3.org/2000/svg"`,
			`http://www.w3.org/1999/xlink"`, `http://"+`,
		}
		js := string(b)
		seen := 0
		for i := strings.Index(js, "://"); i >= 0; i = strings.Index(js, "://") {
			seen++
			start := max(0, i-10)
			ref := js[start:min(len(js), i+40)]
			scheme := js[start:i]
			if k := strings.LastIndexAny(scheme, "\"'`"); k >= 0 {
				scheme = scheme[k+1:]
			}
			ok := false
			for _, a := range allowed {
				if strings.HasPrefix(js[i-len(scheme):], a) {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s refers to another origin: ...%s...", name, ref)
			}
			js = js[i+3:]
		}
		if seen == 0 {
			t.Errorf("%s: no \"://\" at all, not even the namespace names: is this the bundle?", name)
		}
	}
}
