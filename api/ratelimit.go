package api

import (
	"strconv"
	"strings"
	"time"
)

// Rate limits: POST /v1/rate-limits/{name} creates or changes one, GET /v1/rate-limits lists
// them, GET /v1/rate-limits/{name} shows one (?key= a keyed bucket's tokens), DELETE removes one.
const PathRateLimits = "/v1/rate-limits"

// Rate limit and debounce codes.
const (
	// CodeInvalidRateLimit: a rate limit's name, rate or burst that breaks the rules, or a
	// submit's rate_limit_key without a rate_limit.
	CodeInvalidRateLimit Code = "invalid_rate_limit"
	// CodeUnknownRateLimit: a submit names a rate limit the cluster does not have.
	CodeUnknownRateLimit Code = "unknown_rate_limit"
	// CodeInvalidDebounce: a submit's debounce window or key that breaks the rules.
	CodeInvalidDebounce Code = "invalid_debounce"
)

func init() {
	statusOf[CodeInvalidRateLimit] = 400
	statusOf[CodeUnknownRateLimit] = 400
	statusOf[CodeInvalidDebounce] = 400
}

// Rate limit and debounce bounds.
const (
	MaxRateCount        = 1_000_000 // tokens per period
	MaxRateBurst        = 100_000
	MaxRateLimitNameLen = 64
	MaxDebounce         = 24 * time.Hour
)

// RateLimit is a named token bucket: tasks that name it start no faster than Rate, with at most
// Burst at once after a quiet spell, cluster-wide.
type RateLimit struct {
	Name string `json:"name"`
	// Rate is "N/s", "N/m" or "N/h": N tokens come back per second, minute or hour.
	Rate  string `json:"rate"`
	Burst int64  `json:"burst"`
	// Tokens is what the limit's own bucket (or, asked with ?key=, that key's bucket) held at
	// AsOf, the time of the last entry the answering node applied. Keys is how many keyed
	// buckets are not full.
	Tokens      int64     `json:"tokens"`
	Keys        int       `json:"keys"`
	AsOf        time.Time `json:"as_of"`
	CreateIndex uint64    `json:"create_index"`
	ModifyIndex uint64    `json:"modify_index"`
}

// RateLimitList is GET /v1/rate-limits.
type RateLimitList struct {
	RateLimits []RateLimit `json:"rate_limits"`
}

// RateLimitUpdate is the body of POST /v1/rate-limits/{name}. Burst defaults to 1 when absent.
type RateLimitUpdate struct {
	Rate  string `json:"rate"`
	Burst *int64 `json:"burst,omitempty"`
}

// ParseRate reads "N/s", "N/m" or "N/h" (N from 1 to MaxRateCount).
func ParseRate(s string) (count int64, period time.Duration, err error) {
	n, unit, ok := strings.Cut(s, "/")
	switch unit {
	case "s":
		period = time.Second
	case "m":
		period = time.Minute
	case "h":
		period = time.Hour
	default:
		ok = false
	}
	count, perr := strconv.ParseInt(n, 10, 64)
	if !ok || perr != nil || count < 1 || count > MaxRateCount {
		return 0, 0, Errorf(CodeInvalidRateLimit, "rate %q: want N/s, N/m or N/h with N from 1 to %d", Truncate(s), MaxRateCount)
	}
	return count, period, nil
}

// FormatRate writes a rate as ParseRate reads it.
func FormatRate(count int64, period time.Duration) string {
	unit := "s"
	switch period {
	case time.Minute:
		unit = "m"
	case time.Hour:
		unit = "h"
	}
	return strconv.FormatInt(count, 10) + "/" + unit
}

// CheckRateBurst validates a rate limit's burst.
func CheckRateBurst(burst int64) error {
	if burst < 1 || burst > MaxRateBurst {
		return Errorf(CodeInvalidRateLimit, "burst is between 1 and %d, got %d", MaxRateBurst, burst)
	}
	return nil
}

// CheckRateLimitName validates a rate limit's name: the rules of a queue name (CheckQueueName).
func CheckRateLimitName(name string) error {
	if err := CheckQueueName(name); err != nil {
		return Errorf(CodeInvalidRateLimit, "rate limit name %q: 1 to %d letters, digits, '_', '-' or '.', starting with a letter or digit",
			Truncate(name), MaxRateLimitNameLen)
	}
	return nil
}
