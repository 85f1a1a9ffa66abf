package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"time"
)

// The join exchange, in four steps (the transport, HTTPS to any member, is the caller's):
//
//  1. The joiner calls NewJoinRequest: a fresh P-256 key that never leaves it, and a request
//     holding its node name, its join token and a CSR for that key.
//  2. It sends the request over TLS configured by PinnedClientConfig(token.Fingerprint), so it
//     talks only to a node whose chain holds the CA the token names, before any secret is sent.
//  3. The member calls SignJoin: the token is checked first (constant time), then the CSR,
//     and a node certificate is signed; the gossip keys go back in the same response.
//  4. The joiner calls CompleteJoin: the CA in the response must be the pinned one and the
//     certificate must be for its own key; the result is its Identity and the gossip keys.

// MaxJoinRequestBytes bounds a join request body; a real one is about 1 KiB.
const MaxJoinRequestBytes = 64 << 10

// maxJoinIPs bounds the IP SANs a joiner may ask for.
const maxJoinIPs = 16

var (
	// ErrJoinDenied means the CA side refused the joiner's token (wraps ErrTokenSecret or
	// ErrTokenOtherCluster, or ErrMalformedToken).
	ErrJoinDenied = errors.New("join refused")
	// ErrBadJoinRequest means a join request with a valid token but an unusable CSR or name.
	ErrBadJoinRequest = errors.New("bad join request")
	// ErrBadJoinResponse means a response the joiner cannot trust or use.
	ErrBadJoinResponse = errors.New("bad join response")
)

// JoinRequest is what a joiner sends (JSON).
type JoinRequest struct {
	NodeName string `json:"node_name"`
	// Token is the joiner's full join token. It is sent only over a connection pinned to the
	// token's CA (PinnedClientConfig), so only the cluster ever sees the secret.
	Token string `json:"token"`
	// CSR is a PEM CERTIFICATE REQUEST for the joiner's key, with its node name as subject CN
	// and its advertise IPs as IP SANs.
	CSR string `json:"csr"`
}

// JoinResponse is what the CA side answers (JSON).
type JoinResponse struct {
	// Certificate is the PEM chain: the node certificate, then the cluster CA.
	Certificate string `json:"certificate"`
	// CA is the PEM cluster CA certificate.
	CA string `json:"ca"`
	// GossipKeys are the memberlist keyring's keys in base64, the primary (encrypting) key first.
	GossipKeys []string `json:"gossip_keys,omitempty"`
}

// NewJoinRequest makes the joiner's key and request. ips are its advertise IPs, which peers
// will dial and so must be in its certificate.
func NewJoinRequest(token Token, nodeName string, ips []net.IP) (*ecdsa.PrivateKey, JoinRequest, error) {
	if err := ValidateNodeName(nodeName); err != nil {
		return nil, JoinRequest{}, err
	}
	if len(ips) > maxJoinIPs {
		return nil, JoinRequest{}, fmt.Errorf("join request: at most %d IPs", maxJoinIPs)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, JoinRequest{}, fmt.Errorf("join request key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: nodeName},
		IPAddresses: ips,
	}, key)
	if err != nil {
		return nil, JoinRequest{}, fmt.Errorf("join request CSR: %w", err)
	}
	return key, JoinRequest{
		NodeName: nodeName,
		Token:    token.Encode(),
		CSR:      string(pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: der})),
	}, nil
}

// SignJoinOptions is the CA side's state for one join.
type SignJoinOptions struct {
	// Token is the cluster's current join token. With SecretOK set only its fingerprint is used.
	Token Token
	// SecretOK, when set, checks the presented secret instead of Token.Secret: a node that keeps
	// only the secret's hash (fsm.SecretMatches) checks it without knowing the secret.
	SecretOK func(secret string) bool
	// GossipKeys go to the joiner, primary first.
	GossipKeys [][]byte
	// Validity of the node certificate (DefaultNodeValidity when zero).
	Validity time.Duration
	Now      time.Time
}

// SignJoin checks a join request and signs the joiner's certificate. The token is checked
// before anything else in the request is parsed, so an unauthenticated caller reaches no
// certificate parsing. Errors wrap ErrJoinDenied (say why in the log, answer 403) or
// ErrBadJoinRequest (answer 400); neither echoes the token.
func (ca *CA) SignJoin(req JoinRequest, opts SignJoinOptions) (JoinResponse, error) {
	presented, err := ParseToken(req.Token)
	if err != nil {
		return JoinResponse{}, fmt.Errorf("%w: %w", ErrJoinDenied, err)
	}
	if opts.Token.Fingerprint != ca.Fingerprint() {
		// The caller handed a token of another CA: a wiring bug, refuse rather than sign.
		return JoinResponse{}, fmt.Errorf("%w: this node's join token does not belong to its CA", ErrJoinDenied)
	}
	if opts.SecretOK != nil {
		switch {
		case presented.Fingerprint != opts.Token.Fingerprint:
			return JoinResponse{}, fmt.Errorf("%w: %w", ErrJoinDenied, ErrTokenOtherCluster)
		case !opts.SecretOK(presented.Secret):
			return JoinResponse{}, fmt.Errorf("%w: %w", ErrJoinDenied, ErrTokenSecret)
		}
	} else if err := opts.Token.Verify(presented); err != nil {
		return JoinResponse{}, fmt.Errorf("%w: %w", ErrJoinDenied, err)
	}
	if err := ValidateNodeName(req.NodeName); err != nil {
		return JoinResponse{}, fmt.Errorf("%w: %w", ErrBadJoinRequest, err)
	}
	block, _ := pem.Decode([]byte(req.CSR))
	if block == nil || block.Type != pemCSR {
		return JoinResponse{}, fmt.Errorf("%w: no PEM certificate request", ErrBadJoinRequest)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return JoinResponse{}, fmt.Errorf("%w: %w", ErrBadJoinRequest, err)
	}
	// The signature proves the joiner holds the key it asks a certificate for.
	if err := csr.CheckSignature(); err != nil {
		return JoinResponse{}, fmt.Errorf("%w: CSR signature: %w", ErrBadJoinRequest, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return JoinResponse{}, fmt.Errorf("%w: the CSR key must be ECDSA P-256", ErrBadJoinRequest)
	}
	if csr.Subject.CommonName != req.NodeName {
		return JoinResponse{}, fmt.Errorf("%w: the CSR names another node", ErrBadJoinRequest)
	}
	if len(csr.IPAddresses) > maxJoinIPs {
		return JoinResponse{}, fmt.Errorf("%w: at most %d IPs", ErrBadJoinRequest, maxJoinIPs)
	}
	// Only the node name and IPs are taken from the CSR; names, usages and lifetime are the CA's.
	leaf, err := ca.Issue(NodeSpec{Name: req.NodeName, Role: RoleServer, IPs: csr.IPAddresses, Validity: opts.Validity}, pub, opts.Now)
	if err != nil {
		return JoinResponse{}, err
	}
	resp := JoinResponse{
		Certificate: string(encodeCert(leaf)) + string(ca.CertPEM()),
		CA:          string(ca.CertPEM()),
	}
	for _, k := range opts.GossipKeys {
		resp.GossipKeys = append(resp.GossipKeys, EncodeGossipKey(k))
	}
	return resp, nil
}

// JoinResult is what a joiner gets from a successful join.
type JoinResult struct {
	Identity *Identity
	// GossipKeys, primary first.
	GossipKeys [][]byte
}

// CompleteJoin checks the CA side's response and builds the joiner's identity. It trusts the
// response only as far as the token allows: the CA must have the token's fingerprint, and the
// certificate must be for key, name nodeName, and verify against that CA as a cluster server
// at now. All errors wrap ErrBadJoinResponse.
func CompleteJoin(token Token, key *ecdsa.PrivateKey, nodeName string, resp JoinResponse, now time.Time) (*JoinResult, error) {
	cas, err := parseCerts([]byte(resp.CA))
	if err != nil || len(cas) != 1 {
		return nil, fmt.Errorf("%w: want one CA certificate", ErrBadJoinResponse)
	}
	ca := cas[0]
	if Fingerprint(ca) != token.Fingerprint {
		return nil, fmt.Errorf("%w: %w", ErrBadJoinResponse, ErrFingerprintMismatch)
	}
	cluster, err := ClusterOf(ca)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadJoinResponse, err)
	}
	chain, err := parseCerts([]byte(resp.Certificate))
	if err != nil {
		return nil, fmt.Errorf("%w: certificate: %w", ErrBadJoinResponse, err)
	}
	leaf := chain[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("%w: the certificate is not for this node's key", ErrBadJoinResponse)
	}
	if name, ok := NodeName(leaf, cluster); !ok || name != nodeName {
		return nil, fmt.Errorf("%w: the certificate does not name node %q", ErrBadJoinResponse, truncate(nodeName))
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: roots, DNSName: ServerName(cluster), CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{usage},
		}); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadJoinResponse, err)
		}
	}
	res := &JoinResult{Identity: newIdentity(leaf, key, []*x509.Certificate{ca})}
	for _, s := range resp.GossipKeys {
		k, err := DecodeGossipKey(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadJoinResponse, err)
		}
		res.GossipKeys = append(res.GossipKeys, k)
	}
	return res, nil
}
