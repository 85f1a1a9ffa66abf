package httpapi

import (
	"net/http"
	"time"
)

// ObserveFunc receives one finished request: the ServeMux pattern that routes it (such as
// "GET /v1/tasks/{id}", or "/" for a path no route matches), the status code sent, and how long
// the handler took. Patterns, never raw paths, keep a metric's label values bounded.
type ObserveFunc func(route string, code int, elapsed time.Duration)

// observe wraps h, the API with its access control, to report every request to fn. The route is
// looked up on mux before h runs, so a request refused by the token check still counts under the
// route it asked for.
func observe(mux *http.ServeMux, h http.Handler, fn ObserveFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, route := mux.Handler(r)
		if route == "" {
			route = "unmatched"
		}
		sw := &statusWriter{ResponseWriter: w}
		start := time.Now()
		defer func() { fn(route, sw.code(), time.Since(start)) }()
		h.ServeHTTP(sw, r)
	})
}

// statusWriter remembers the status code written. It forwards Flush (streamed logs and waits
// need it) and Unwrap (for http.ResponseController).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// code is the status sent; a handler that wrote nothing sent 200.
func (w *statusWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}
