package client

import (
	"context"
	"fmt"
	"net/http"

	"github.com/taskworker/taskworker/api"
)

// Keyring is the cluster's gossip keyring: the primary key, every installed key, and per
// key how many nodes hold it.
type Keyring = api.Keyring

// The operator calls need the `operator` right (with ACLs on) or the cluster's shared token.

// JoinToken returns the cluster's join token (TW1::<CA fingerprint>::<secret>), which a new
// node needs to join. It is a secret: print it only where the operator asked for it.
func (c *Client) JoinToken(ctx context.Context) (string, error) {
	var t api.JoinToken
	if _, err := c.do(ctx, http.MethodGet, api.PathJoinToken, nil, nil, &t); err != nil {
		return "", err
	}
	return t.Token, nil
}

// RotateJoinToken replaces the cluster's join token with one holding a new secret and
// returns it; the old token stops working. Nodes already in the cluster are not affected.
func (c *Client) RotateJoinToken(ctx context.Context) (string, error) {
	var t api.JoinToken
	if _, err := c.do(ctx, http.MethodPost, api.PathJoinTokenRotate, nil, nil, &t); err != nil {
		return "", err
	}
	return t.Token, nil
}

// Keyring returns the cluster's gossip keyring.
func (c *Client) Keyring(ctx context.Context) (*Keyring, error) {
	k := new(Keyring)
	if _, err := c.do(ctx, http.MethodGet, api.PathKeyring, nil, nil, k); err != nil {
		return nil, err
	}
	return k, nil
}

// Rotating the gossip key without downtime, as with `consul keyring`: InstallKey on every
// node, then UseKey once all hold it, then RemoveKey the old one.

// InstallKey makes every node accept key (base64 of 16, 24 or 32 bytes) besides its others.
func (c *Client) InstallKey(ctx context.Context, key string) error {
	return c.keyringOp(ctx, api.KeyringInstall, key)
}

// UseKey makes every node encrypt gossip with key, which must be installed already.
func (c *Client) UseKey(ctx context.Context, key string) error {
	return c.keyringOp(ctx, api.KeyringUse, key)
}

// RemoveKey makes every node forget key; the primary key cannot be removed.
func (c *Client) RemoveKey(ctx context.Context, key string) error {
	return c.keyringOp(ctx, api.KeyringRemove, key)
}

func (c *Client) keyringOp(ctx context.Context, op, key string) error {
	if _, err := c.do(ctx, http.MethodPost, api.PathKeyring, nil, api.KeyringRequest{Op: op, Key: key}, nil); err != nil {
		return fmt.Errorf("keyring %s: %w", op, err)
	}
	return nil
}

// Digest is a node's FSM digest at the index it has applied (GET /v1/operator/digest): two
// replicas at the same index must answer the same digest.
type Digest = api.Digest

// Digest returns the FSM digest of the node the client talks to.
func (c *Client) Digest(ctx context.Context) (*Digest, error) {
	d := new(Digest)
	if _, err := c.do(ctx, http.MethodGet, api.PathDigest, nil, nil, d); err != nil {
		return nil, err
	}
	return d, nil
}
