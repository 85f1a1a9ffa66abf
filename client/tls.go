package client

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/taskworker/taskworker/internal/pki"
)

// Errors of the TLS options; Err and every call return them wrapped.
var (
	// ErrTLSConflict means both a CA file and a CA fingerprint were given: they are two
	// different ways to trust the node, and silently preferring one would hide a mistake.
	ErrTLSConflict = errors.New("give a CA file or a CA fingerprint, not both")
	// ErrTLSOverHTTP means TLS options with an http:// address: the caller asked for a
	// verified connection, and sending the token in the clear instead would defeat it.
	ErrTLSOverHTTP = errors.New("TLS options given but the address is http://; use https://")
	// ErrBadFingerprint means a CA fingerprint that is not 64 hex digits.
	ErrBadFingerprint = errors.New("CA fingerprint must be 64 hex digits (SHA-256, colons allowed)")
	// ErrFingerprintMismatch means the node's certificate chain holds no CA with the pinned
	// fingerprint: the address does not reach the cluster the fingerprint names.
	ErrFingerprintMismatch = pki.ErrFingerprintMismatch
)

// tlsOptions are what the TLS options asked for; applyTLS turns them into the transport's config.
type tlsOptions struct {
	caFile      string
	fingerprint string
	config      *tls.Config
}

func (o tlsOptions) any() bool { return o.caFile != "" || o.fingerprint != "" || o.config != nil }

// WithCAFile makes the client verify the node's certificate against the CA
// certificates in the PEM file at path (and only those), and check that the
// certificate names the host in the address, as any HTTPS client does.
// Certificates from `taskworker tls cert create --server` name localhost and
// 127.0.0.1 besides what --additional-dnsname and --additional-ipaddress add.
func WithCAFile(path string) Option { return func(c *Client) { c.tls.caFile = path } }

// WithCAFingerprint pins the cluster CA by its SHA-256 fingerprint (64 hex
// digits, colons and upper case allowed): the field between the "::" of a join
// token, or `openssl x509 -fingerprint -sha256` of the CA. The node must present
// a chain holding a CA with that fingerprint, and its certificate must verify
// against that CA and name the CA's cluster server (server.<cluster>.taskworker),
// so the address may be any name or IP. The CA file is not needed.
func WithCAFingerprint(fingerprint string) Option {
	return func(c *Client) { c.tls.fingerprint = fingerprint }
}

// WithTLSConfig uses cfg for HTTPS, for what the other options do not cover
// (client certificates for --tls-verify-incoming, say). WithCAFile and
// WithCAFingerprint, when also given, apply to a copy of it.
func WithTLSConfig(cfg *tls.Config) Option { return func(c *Client) { c.tls.config = cfg } }

// applyTLS checks the TLS options against the address and installs the config
// in the transport. It is a no-op without TLS options, so https:// addresses
// then verify against the system roots as usual.
func (c *Client) applyTLS() error {
	o := c.tls
	if !o.any() {
		return nil
	}
	if strings.HasPrefix(strings.ToLower(c.base), "http://") {
		return fmt.Errorf("%w (%s)", ErrTLSOverHTTP, c.base)
	}
	if o.caFile != "" && o.fingerprint != "" {
		return ErrTLSConflict
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.config != nil {
		cfg = o.config.Clone()
	}
	switch {
	case o.caFile != "":
		ca, err := pki.CAFileClientConfig(o.caFile)
		if err != nil {
			return err
		}
		cfg.RootCAs = ca.RootCAs
		cfg.MinVersion = max(cfg.MinVersion, ca.MinVersion)
	case o.fingerprint != "":
		fp, err := normalizeFingerprint(o.fingerprint)
		if err != nil {
			return err
		}
		pinned := pki.PinnedClientConfig(fp)
		// The pinned check replaces Go's verification (see pki.PinnedClientConfig); it must
		// never be dropped, so a VerifyConnection the caller set runs after it, not instead.
		cfg.InsecureSkipVerify = pinned.InsecureSkipVerify
		cfg.VerifyConnection = chainVerify(pinned.VerifyConnection, cfg.VerifyConnection)
		cfg.MinVersion = max(cfg.MinVersion, pinned.MinVersion)
	}
	tr, err := c.transport()
	if err != nil {
		return err
	}
	tr.TLSClientConfig = cfg
	hc := *c.hc
	hc.Transport = tr
	c.hc = &hc
	return nil
}

// transport is a copy of the transport the client would use, to carry the TLS config
// without changing a caller's shared client or http.DefaultTransport.
func (c *Client) transport() (*http.Transport, error) {
	switch tr := c.hc.Transport.(type) {
	case nil:
		return http.DefaultTransport.(*http.Transport).Clone(), nil
	case *http.Transport:
		return tr.Clone(), nil
	default:
		return nil, fmt.Errorf("TLS options need an *http.Transport in WithHTTPClient, not %T; set its TLS config there", tr)
	}
}

// normalizeFingerprint accepts the forms operators copy: lower- or upper-case hex, with or
// without openssl's colons.
func normalizeFingerprint(s string) (string, error) {
	fp := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	if len(fp) != 64 || strings.Trim(fp, "0123456789abcdef") != "" {
		return "", ErrBadFingerprint
	}
	return fp, nil
}

func chainVerify(first, then func(tls.ConnectionState) error) func(tls.ConnectionState) error {
	if then == nil {
		return first
	}
	return func(cs tls.ConnectionState) error {
		if err := first(cs); err != nil {
			return err
		}
		return then(cs)
	}
}
