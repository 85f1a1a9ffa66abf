package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/taskworker/taskworker/api"
)

// ACL wire types (api/acl.go).
type (
	// ACLPolicy is a policy document.
	ACLPolicy = api.ACLPolicy
	// ACLRule grants capabilities on matching task types.
	ACLRule = api.ACLRule
	// ACLToken is a token; SecretID is set only in the reply that created it.
	ACLToken = api.ACLToken
	// ACLTokenRequest asks for a new token.
	ACLTokenRequest = api.ACLTokenRequest
	// ACLSelf is who the caller is.
	ACLSelf = api.ACLSelf
)

// ACLBootstrap makes the cluster's first management token, once; its SecretID is shown only here.
func (c *Client) ACLBootstrap(ctx context.Context) (*ACLToken, error) {
	var tok ACLToken
	_, err := c.do(ctx, http.MethodPost, api.PathACLBootstrap, nil, nil, &tok)
	return &tok, err
}

// ACLPolicyApply creates or replaces the policy named name.
func (c *Client) ACLPolicyApply(ctx context.Context, name string, p ACLPolicy) (*ACLPolicy, error) {
	var out ACLPolicy
	_, err := c.do(ctx, http.MethodPut, api.PathACLPolicy+url.PathEscape(name), nil, p, &out)
	return &out, err
}

// ACLPolicies lists every policy.
func (c *Client) ACLPolicies(ctx context.Context) ([]ACLPolicy, error) {
	var out []ACLPolicy
	_, err := c.do(ctx, http.MethodGet, api.PathACLPolicies, nil, nil, &out)
	return out, err
}

// ACLPolicyDelete removes a policy.
func (c *Client) ACLPolicyDelete(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodDelete, api.PathACLPolicy+url.PathEscape(name), nil, nil, nil)
	return err
}

// ACLTokenCreate makes a token; its SecretID is shown only in this reply.
func (c *Client) ACLTokenCreate(ctx context.Context, req ACLTokenRequest) (*ACLToken, error) {
	var tok ACLToken
	_, err := c.do(ctx, http.MethodPost, api.PathACLTokens, nil, req, &tok)
	return &tok, err
}

// ACLTokens lists every token, without secrets.
func (c *Client) ACLTokens(ctx context.Context) ([]ACLToken, error) {
	var out []ACLToken
	_, err := c.do(ctx, http.MethodGet, api.PathACLTokens, nil, nil, &out)
	return out, err
}

// ACLTokenDelete removes a token by accessor ID.
func (c *Client) ACLTokenDelete(ctx context.Context, accessorID string) error {
	_, err := c.do(ctx, http.MethodDelete, api.PathACLToken+url.PathEscape(accessorID), nil, nil, nil)
	return err
}

// ACLTokenSelf says who the client's token (or JWT) is.
func (c *Client) ACLTokenSelf(ctx context.Context) (*ACLSelf, error) {
	var out ACLSelf
	_, err := c.do(ctx, http.MethodGet, api.PathACLTokenSelf, nil, nil, &out)
	return &out, err
}
