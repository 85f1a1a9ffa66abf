// Package ui is taskworker's web console: the built single-page app (dist/, made from src/ by
// scripts/ui-build.sh and committed, so `go build` needs no Node.js) and the handler that serves
// it at /ui/ with strict security headers. It holds no data and calls nothing: the pages use the
// public HTTP API with the user's own token.
package ui

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed dist
var dist embed.FS

// Prefix is where the console is served.
const Prefix = "/ui/"

// contentSecurityPolicy allows only this origin's own files and API: no inline script, no
// third-party request, no framing. Styles set through the DOM (uPlot sizes its canvases) are
// not style attributes in markup and need no 'unsafe-inline'.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Handler serves the console's files under Prefix.
func Handler() http.Handler {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic("ui: embedded dist missing: " + err.Error()) // a build without dist/ is broken, not a runtime condition
	}
	files := http.StripPrefix(Prefix, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
		// The files change with the binary only; revalidating is cheap and never shows a mix of two builds.
		h.Set("Cache-Control", "no-cache")
		if !strings.HasPrefix(r.URL.Path, Prefix) {
			http.NotFound(w, r)
			return
		}
		files.ServeHTTP(w, r)
	})
}
