package limits

import (
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/simplelru"
	"golang.org/x/time/rate"
)

// Defaults of RateLimitConfig.
const (
	// DefaultRate is the sustained requests per second allowed to one client: well above what a
	// CLI or a worker pool needs, well below what saturates a node.
	DefaultRate rate.Limit = 100
	// DefaultBurst lets a client send a short batch at once (a page of gets after a list).
	DefaultBurst = 200
	// DefaultMaxClients bounds the limiter's own memory: about 200 bytes per client.
	DefaultMaxClients = 10_000
	// minIdleTTL is the least time a client's bucket is kept after its last request.
	minIdleTTL = time.Minute
)

// RateLimitConfig configures a RateLimiter. The zero value is the recommended configuration.
type RateLimitConfig struct {
	Rate  rate.Limit // sustained requests per second per client; 0 means DefaultRate
	Burst int        // requests a client may send at once; 0 means DefaultBurst
	// MaxClients bounds the number of clients tracked; 0 means DefaultMaxClients. When it is
	// reached the client seen least recently is forgotten (and starts again with a full bucket).
	MaxClients int
	// IdleTTL is how long a client's bucket is kept after its last request. 0 means the time the
	// bucket takes to refill (Burst/Rate) or a minute, whichever is longer: a bucket idle that long
	// is full again, so forgetting it loses nothing.
	IdleTTL time.Duration
	// ExemptPaths are exact URL paths never limited, such as health and metrics scrapes.
	ExemptPaths []string
	// Key names the client of a request. nil means the IP of RemoteAddr; behind a trusted proxy
	// the node can supply one that reads the proxy's header instead.
	Key func(*http.Request) string
	// Now is the clock; nil means time.Now. Tests inject their own.
	Now func() time.Time
}

// RateLimiter is a per-client token bucket (golang.org/x/time/rate) in front of an http.Handler.
// Its table of clients is bounded in size and sheds clients that went idle, so a flood of
// distinct addresses cannot turn the limiter into the memory leak it is meant to prevent.
type RateLimiter struct {
	rate   rate.Limit
	burst  int
	ttl    time.Duration
	exempt map[string]bool
	key    func(*http.Request) string
	now    func() time.Time

	mu      sync.Mutex
	clients *simplelru.LRU // key string → *client; front is the most recently seen
}

type client struct {
	lim  *rate.Limiter
	seen time.Time
}

// NewRateLimiter builds a RateLimiter from cfg.
func NewRateLimiter(cfg RateLimitConfig) *RateLimiter {
	rl := &RateLimiter{
		rate:   cfg.Rate,
		burst:  cfg.Burst,
		ttl:    cfg.IdleTTL,
		exempt: make(map[string]bool, len(cfg.ExemptPaths)),
		key:    cfg.Key,
		now:    cfg.Now,
	}
	if rl.rate == 0 {
		rl.rate = DefaultRate
	}
	if rl.burst <= 0 {
		rl.burst = DefaultBurst
	}
	if rl.ttl <= 0 {
		rl.ttl = minIdleTTL
		if rl.rate != rate.Inf && rl.rate > 0 {
			rl.ttl = max(minIdleTTL, time.Duration(float64(rl.burst)/float64(rl.rate)*float64(time.Second)))
		}
	}
	if rl.key == nil {
		rl.key = clientIP
	}
	if rl.now == nil {
		rl.now = time.Now
	}
	for _, p := range cfg.ExemptPaths {
		rl.exempt[p] = true
	}
	size := cfg.MaxClients
	if size <= 0 {
		size = DefaultMaxClients
	}
	// NewLRU fails only for a size below 1, excluded above.
	rl.clients, _ = simplelru.NewLRU(size, nil)
	return rl
}

// Allow takes one token from key's bucket. When there is none it takes nothing and says how long
// until there will be one.
func (rl *RateLimiter) Allow(key string) (ok bool, retryAfter time.Duration) {
	now := rl.now()
	rl.mu.Lock()
	defer rl.mu.Unlock()
	rl.evictIdle(now)
	var c *client
	if v, found := rl.clients.Get(key); found {
		c = v.(*client)
	} else {
		c = &client{lim: rate.NewLimiter(rl.rate, rl.burst)}
		rl.clients.Add(key, c) // evicts the least recently seen client when full
	}
	c.seen = now
	r := c.lim.ReserveN(now, 1)
	if !r.OK() { // only when the rate is 0: nothing is ever allowed
		return false, time.Hour
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now) // the request is refused, so it must not consume the future token
		return false, d
	}
	return true, 0
}

// evictIdle forgets clients idle for longer than the TTL. The LRU's oldest entry is the one seen
// least recently, so it stops at the first client still active: the cost is one check per
// request plus one step per client forgotten.
func (rl *RateLimiter) evictIdle(now time.Time) {
	for {
		_, v, ok := rl.clients.GetOldest()
		if !ok || now.Sub(v.(*client).seen) < rl.ttl {
			return
		}
		rl.clients.RemoveOldest()
	}
}

// Len is the number of clients currently tracked.
func (rl *RateLimiter) Len() int {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return rl.clients.Len()
}

// Middleware refuses a request over its client's rate with 429, a Retry-After in whole seconds
// and the API's error body with code rate_limited, and passes every other request to next.
func (rl *RateLimiter) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rl.exempt[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		ok, wait := rl.Allow(rl.key(r))
		if !ok {
			secs := retryAfterSeconds(wait)
			w.Header().Set("Retry-After", secs)
			writeError(w, http.StatusTooManyRequests, CodeRateLimited,
				fmt.Sprintf("too many requests from this client; retry after %s s", secs))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// clientIP is the host part of RemoteAddr (the whole of it when it has no port).
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
