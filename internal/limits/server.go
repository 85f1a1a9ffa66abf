package limits

import (
	"net/http"
	"time"
)

// ServerTimeouts are the http.Server settings that bound what a slow, idle or silent client can
// hold (a goroutine, a buffer, a file descriptor) without cutting off the API's long polls
// (?wait=) and log follows (?follow=true).
type ServerTimeouts struct {
	// ReadHeaderTimeout bounds the wait for a request's headers, measured from the first byte
	// (or from accept, for a new connection). It is what closes a connection that was opened and
	// never used, and a slowloris client that trickles headers.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading the whole request, headers and body. Bodies are capped (a few
	// hundred KiB), so a generous value still stops a client that trickles a body forever. It
	// does not cut long polls: net/http clears the read deadline once the body has been read
	// (connReader.startBackgroundRead), so a handler may take as long as it likes afterwards;
	// TestReadTimeoutSparesLongPolls holds Go to that.
	ReadTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that has had no new request for this long, so idle
	// pooled connections do not pile up. Go's client pools keep connections 90 s by default and
	// retry a request that meets a connection closed while idle.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the request line and headers (net/http's default is 1 MiB).
	MaxHeaderBytes int
}

// DefaultServerTimeouts is the recommended configuration for the API server.
//
// There is deliberately no WriteTimeout: net/http sets it as one deadline for the whole response,
// so any value would end a long poll or a log follow that runs past it. A stuck reader of a
// stream is bounded instead by the handler, which should set a deadline per write
// (http.ResponseController.SetWriteDeadline) and stop when its context ends; a short reply to a
// client that never reads fits in the kernel's socket buffer and does not block.
func DefaultServerTimeouts() ServerTimeouts {
	return ServerTimeouts{
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
}

// Apply sets the timeouts on s and clears its WriteTimeout (see DefaultServerTimeouts).
func (t ServerTimeouts) Apply(s *http.Server) {
	s.ReadHeaderTimeout = t.ReadHeaderTimeout
	s.ReadTimeout = t.ReadTimeout
	s.IdleTimeout = t.IdleTimeout
	s.MaxHeaderBytes = t.MaxHeaderBytes
	s.WriteTimeout = 0
}
