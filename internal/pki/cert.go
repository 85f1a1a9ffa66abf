package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
	"unicode"
)

// DefaultNodeValidity is how long a node certificate is valid unless configured otherwise. Short
// enough that a stolen certificate soon dies, long enough that a node offline for a weekend
// still renews with its own certificate.
const DefaultNodeValidity = 30 * 24 * time.Hour

// Role says what a certificate may do.
type Role int

const (
	// RoleServer is a cluster node: TLS server and client, named server.<cluster>.taskworker.
	RoleServer Role = iota
	// RoleClient is an operator's tool: TLS client only, named client.<cluster>.taskworker; it can
	// reach the API with verify-incoming on, never internode endpoints.
	RoleClient
)

func (r Role) String() string {
	if r == RoleClient {
		return "client"
	}
	return "server"
}

// ErrInvalidNodeName means a node name that cannot be put in a certificate.
var ErrInvalidNodeName = errors.New("invalid node name")

// ServerName is the DNS name every cluster server's certificate carries and internode TLS
// requires: server.<cluster>.taskworker.
func ServerName(cluster string) string { return "server." + cluster + ".taskworker" }

// ClientName is the DNS name of client-only certificates: client.<cluster>.taskworker.
func ClientName(cluster string) string { return "client." + cluster + ".taskworker" }

// NodeURI is the URI SAN that names a node in its certificate: taskworker://<cluster>/node/<name>.
func NodeURI(cluster, name string) *url.URL {
	return &url.URL{Scheme: "taskworker", Host: cluster, Path: "/node/" + name}
}

// NodeName returns the node named in a certificate issued for cluster (its NodeURI SAN), or
// false when it names none, as with operators' own certificates. Call it on a peer certificate
// only after TLS has verified the chain.
func NodeName(cert *x509.Certificate, cluster string) (string, bool) {
	for _, u := range cert.URIs {
		if u.Scheme == "taskworker" && u.Host == cluster && strings.HasPrefix(u.Path, "/node/") {
			if name := strings.TrimPrefix(u.Path, "/node/"); name != "" {
				return name, true
			}
		}
	}
	return "", false
}

// ValidateNodeName reports whether name can be put in a certificate's subject and URI SAN.
func ValidateNodeName(name string) error {
	if name == "" || len(name) > 253 {
		return fmt.Errorf("%w: must be 1 to 253 bytes", ErrInvalidNodeName)
	}
	for _, r := range name {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return fmt.Errorf("%w: %q holds a control or invalid character", ErrInvalidNodeName, truncate(name))
		}
	}
	return nil
}

// NodeSpec describes a certificate to issue.
type NodeSpec struct {
	// Name is the node name (subject CN and NodeURI SAN); required for RoleServer certificates
	// issued to nodes, optional for the `tls cert create` tools.
	Name string
	Role Role
	// IPs are the addresses peers dial (the node's advertise IPs).
	IPs []net.IP
	// DNSNames are added beside the role's fixed name.
	DNSNames []string
	// Validity defaults to DefaultNodeValidity; it never reaches past the CA's own expiry.
	Validity time.Duration
}

// Issue signs a certificate for pub as described by spec, valid from now.
func (ca *CA) Issue(spec NodeSpec, pub crypto.PublicKey, now time.Time) (*x509.Certificate, error) {
	cluster, err := ClusterOf(ca.Cert)
	if err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	if spec.Name != "" {
		if err := ValidateNodeName(spec.Name); err != nil {
			return nil, fmt.Errorf("issue certificate: %w", err)
		}
	}
	validity := spec.Validity
	if validity <= 0 {
		validity = DefaultNodeValidity
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	// Backdate a little for clock skew between nodes, but proportionally, so that the renewal
	// point (two thirds of the lifetime) stays where the caller expects for short lifetimes too.
	skew := min(validity/100, time.Minute)
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    now.Add(-skew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		IPAddresses:  spec.IPs,
	}
	switch spec.Role {
	case RoleServer:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = append([]string{ServerName(cluster)}, spec.DNSNames...)
	case RoleClient:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = append([]string{ClientName(cluster)}, spec.DNSNames...)
	default:
		return nil, fmt.Errorf("issue certificate: unknown role %d", spec.Role)
	}
	tmpl.Subject = pkix.Name{Organization: []string{caOrganization}, OrganizationalUnit: []string{cluster}, CommonName: tmpl.DNSNames[0]}
	if spec.Name != "" {
		tmpl.Subject.CommonName = spec.Name
		tmpl.URIs = []*url.URL{NodeURI(cluster, spec.Name)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	return cert, nil
}

// IssueIdentity makes a new P-256 key, signs a certificate for it and returns the whole
// identity: chain [leaf, CA], key, and the CA as the only root.
func (ca *CA) IssueIdentity(spec NodeSpec, now time.Time) (*Identity, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issue identity: %w", err)
	}
	leaf, err := ca.Issue(spec, key.Public(), now)
	if err != nil {
		return nil, err
	}
	return newIdentity(leaf, key, []*x509.Certificate{ca.Cert}), nil
}

// LocalIssuer issues identities from a CA held in this process, for the nodes that hold the
// cluster CA; it is the Issuer a Renewer uses there.
type LocalIssuer struct {
	CA  *CA
	Now func() time.Time // time.Now when nil
}

// IssueIdentity implements Issuer.
func (l LocalIssuer) IssueIdentity(_ context.Context, spec NodeSpec) (*Identity, error) {
	now := time.Now
	if l.Now != nil {
		now = l.Now
	}
	return l.CA.IssueIdentity(spec, now())
}

// RenewAt is when a certificate should be renewed: two thirds into its lifetime, as Consul's
// agents and cert-manager do. The remaining third leaves room for a CA that is briefly
// unreachable.
func RenewAt(cert *x509.Certificate) time.Time {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotBefore.Add(life / 3 * 2)
}

// NeedsRenewal reports whether cert has reached RenewAt (or has expired) at now.
func NeedsRenewal(cert *x509.Certificate, now time.Time) bool {
	return !now.Before(RenewAt(cert))
}
