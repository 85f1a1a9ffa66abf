package pki

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// ErrNoIdentity means a Holder has no certificate yet.
var ErrNoIdentity = errors.New("no TLS identity loaded")

// Identity is what a node presents and trusts: its certificate chain with the private key, and
// the CA certificates it accepts peers from.
type Identity struct {
	// Cert is the chain (leaf first) and key; Cert.Leaf is set.
	Cert tls.Certificate
	// CAs are the trusted CA certificates; Roots holds the same as a pool.
	CAs   []*x509.Certificate
	Roots *x509.CertPool
}

func newIdentity(leaf *x509.Certificate, key crypto.Signer, cas []*x509.Certificate) *Identity {
	chain := [][]byte{leaf.Raw}
	// The cluster CA travels in the chain so a joiner can pin it by fingerprint (see
	// PinnedClientConfig); peers that already trust it ignore the extra certificate.
	for _, ca := range cas {
		if bytes.Equal(leaf.RawIssuer, ca.RawSubject) {
			chain = append(chain, ca.Raw)
			break
		}
	}
	roots := x509.NewCertPool()
	for _, ca := range cas {
		roots.AddCert(ca)
	}
	return &Identity{
		Cert:  tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf},
		CAs:   cas,
		Roots: roots,
	}
}

// Leaf is the identity's own certificate.
func (id *Identity) Leaf() *x509.Certificate { return id.Cert.Leaf }

// NewIdentityPEM builds an identity from PEM data: a certificate chain (leaf first), its private
// key, and a bundle of trusted CA certificates. The chain must verify against the CAs at now,
// so a wrong or expired file is reported when it is loaded, not at the first handshake.
func NewIdentityPEM(chainPEM, keyPEM, caPEM []byte, now time.Time) (*Identity, error) {
	cert, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate and key: %w", err)
	}
	cas, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	id := newIdentity(cert.Leaf, cert.PrivateKey.(crypto.Signer), cas)
	// Keep the operator's chain as given (it may hold intermediates).
	id.Cert.Certificate = cert.Certificate
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("certificate chain: %w", err)
		}
		inter.AddCert(c)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{
		Roots: id.Roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("certificate does not verify against the CA bundle: %w", err)
	}
	return id, nil
}

// FileSource names operator-provided PEM files (--tls-cert, --tls-key, --tls-ca). Load reads
// them afresh each time, which is what a SIGHUP reload needs.
type FileSource struct {
	CertFile, KeyFile, CAFile string
}

// Load reads and checks the files.
func (s FileSource) Load() (*Identity, error) {
	chain, err := os.ReadFile(s.CertFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS files: %w", err)
	}
	key, err := os.ReadFile(s.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS files: %w", err)
	}
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS files: %w", err)
	}
	id, err := NewIdentityPEM(chain, key, ca, time.Now())
	if err != nil {
		return nil, fmt.Errorf("load TLS files %s, %s, %s: %w", s.CertFile, s.KeyFile, s.CAFile, err)
	}
	return id, nil
}

// DirSource is a node identity kept in a directory (node.pem, node-key.pem, ca.pem), as
// SaveIdentity writes it.
type DirSource string

// Load implements Source.
func (d DirSource) Load() (*Identity, error) {
	dir := string(d)
	return FileSource{
		CertFile: filepath.Join(dir, NodeCertFile),
		KeyFile:  filepath.Join(dir, NodeKeyFile),
		CAFile:   filepath.Join(dir, CACertFile),
	}.Load()
}

// SaveIdentity writes id to dir as node.pem (chain), node-key.pem (0600) and ca.pem, each
// atomically. On a node that holds the CA, ca.pem is the same file SaveCA writes.
func SaveIdentity(dir string, id *Identity) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	keyPEM, err := encodeKey(id.Cert.PrivateKey)
	if err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	var chain, cas bytes.Buffer
	for _, der := range id.Cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("save identity: %w", err)
		}
		chain.Write(encodeCert(c))
	}
	for _, c := range id.CAs {
		cas.Write(encodeCert(c))
	}
	if err := writeFileAtomic(filepath.Join(dir, CACertFile), cas.Bytes(), 0o644); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	// Two renames cannot be one atomic step: a crash between them leaves a key and certificate
	// that do not match, which Load rejects (tls.X509KeyPair checks), never a silently wrong pair.
	if err := writeFileAtomic(filepath.Join(dir, NodeKeyFile), keyPEM, 0o600); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, NodeCertFile), chain.Bytes(), 0o644); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	return nil
}

// Source produces an identity; FileSource and DirSource are sources.
type Source interface {
	Load() (*Identity, error)
}

// Holder holds the current identity and swaps it atomically, so a renewal or a SIGHUP reload
// reaches every later handshake without restarting listeners. Its GetCertificate and
// GetClientCertificate methods plug into tls.Config.
type Holder struct {
	cur atomic.Pointer[Identity]
}

// NewHolder returns a holder with id (which may be nil until one is stored).
func NewHolder(id *Identity) *Holder {
	h := &Holder{}
	if id != nil {
		h.cur.Store(id)
	}
	return h
}

// Store makes id the current identity.
func (h *Holder) Store(id *Identity) {
	if id == nil {
		panic("pki: Holder.Store(nil)")
	}
	h.cur.Store(id)
}

// Identity is the current identity, or nil.
func (h *Holder) Identity() *Identity { return h.cur.Load() }

// Reload loads a new identity from src and stores it. On error the current identity stays, so
// a half-edited file on SIGHUP does not take the node off the network.
func (h *Holder) Reload(src Source) error {
	id, err := src.Load()
	if err != nil {
		return fmt.Errorf("reload TLS identity (keeping the current one): %w", err)
	}
	h.Store(id)
	return nil
}

// GetCertificate is a tls.Config.GetCertificate.
func (h *Holder) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	id := h.cur.Load()
	if id == nil {
		return nil, ErrNoIdentity
	}
	return &id.Cert, nil
}

// GetClientCertificate is a tls.Config.GetClientCertificate.
func (h *Holder) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	id := h.cur.Load()
	if id == nil {
		return nil, ErrNoIdentity
	}
	return &id.Cert, nil
}

// ErrNoNodeName means a certificate names no node of the cluster: an operator's certificate made
// without --node. It may serve HTTPS, but never speaks as a node.
var ErrNoNodeName = errors.New("the certificate names no node of this cluster")

// RequireNodeName returns a check that a peer's certificate names a node of cluster (NodeName),
// for listeners only nodes may use, such as raft's.
func RequireNodeName(cluster string) func(*x509.Certificate) error {
	return func(leaf *x509.Certificate) error {
		if _, ok := NodeName(leaf, cluster); !ok {
			return ErrNoNodeName
		}
		return nil
	}
}

// NamedSource is a Source whose identity must name Node of Cluster: an operator's certificate
// files (--tls-cert) on a node, at start and on every reload, so that a SIGHUP cannot swap in a
// certificate that speaks as another node, or as none.
type NamedSource struct {
	Source
	Cluster, Node string
}

// Load implements Source.
func (s NamedSource) Load() (*Identity, error) {
	id, err := s.Source.Load()
	if err != nil {
		return nil, err
	}
	if name, ok := NodeName(id.Leaf(), s.Cluster); !ok || name != s.Node {
		return nil, fmt.Errorf("the certificate must name this node (%q), not %q: make it with `taskworker tls cert create --server --node %s`", s.Node, name, s.Node)
	}
	return id, nil
}
