package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/taskworker/taskworker/api"
)

type (
	// RateLimit is a named token bucket that tasks start under (SubmitRequest.RateLimit).
	RateLimit = api.RateLimit
	// RateLimitUpdate creates or changes a rate limit: Rate ("100/s", "5/m", "1/h") and Burst
	// (1 when nil).
	RateLimitUpdate = api.RateLimitUpdate
)

// RateLimits lists every rate limit by name.
func (c *Client) RateLimits(ctx context.Context) ([]RateLimit, error) {
	var l api.RateLimitList
	if _, err := c.do(ctx, http.MethodGet, api.PathRateLimits, nil, nil, &l); err != nil {
		return nil, err
	}
	return l.RateLimits, nil
}

// RateLimit returns one rate limit, with the tokens of key's bucket ("" the limit's own).
func (c *Client) RateLimit(ctx context.Context, name, key string) (*RateLimit, error) {
	var q url.Values
	if key != "" {
		q = url.Values{"key": {key}}
	}
	l := new(RateLimit)
	if _, err := c.do(ctx, http.MethodGet, api.PathRateLimits+"/"+url.PathEscape(name), q, nil, l); err != nil {
		return nil, err
	}
	return l, nil
}

// SetRateLimit creates or changes a rate limit; it needs operator rights.
func (c *Client) SetRateLimit(ctx context.Context, name string, u RateLimitUpdate) (*RateLimit, error) {
	l := new(RateLimit)
	if _, err := c.do(ctx, http.MethodPost, api.PathRateLimits+"/"+url.PathEscape(name), nil, u, l); err != nil {
		return nil, err
	}
	return l, nil
}

// DeleteRateLimit removes a rate limit; tasks that name it are held by it no more. It needs
// operator rights.
func (c *Client) DeleteRateLimit(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodDelete, api.PathRateLimits+"/"+url.PathEscape(name), nil, nil, nil)
	return err
}
