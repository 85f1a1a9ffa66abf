package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

const (
	// CAValidity is how long a cluster CA is valid. Rotating a CA means re-issuing every node
	// certificate and every join token, so it is made to outlive any cluster.
	CAValidity = 10 * 365 * 24 * time.Hour

	// DefaultCluster is the cluster name when none is configured, as Nomad's "global" region.
	DefaultCluster = "global"

	// Files of a CA (and node identity) kept in a directory, such as <data-dir>/tls.
	CACertFile   = "ca.pem"
	CAKeyFile    = "ca-key.pem"
	NodeCertFile = "node.pem"
	NodeKeyFile  = "node-key.pem"

	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"
	pemCSR         = "CERTIFICATE REQUEST"

	// caOrganization marks certificates this package made; the cluster name sits beside it.
	caOrganization = "taskworker"
)

var (
	// ErrNoCA means the directory holds no CA files (a node that has never created one).
	ErrNoCA = errors.New("no cluster CA")
	// ErrInvalidCluster means a cluster name that cannot be a DNS label.
	ErrInvalidCluster = errors.New("invalid cluster name")
	// ErrNotClusterCA means a certificate that is not a cluster CA made by this package.
	ErrNotClusterCA = errors.New("not a taskworker cluster CA")
)

// clusterRE: the cluster name becomes a DNS label in server.<cluster>.taskworker.
var clusterRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateCluster reports whether name can be a cluster name (a lower-case DNS label).
func ValidateCluster(name string) error {
	if !clusterRE.MatchString(name) {
		return fmt.Errorf("%w: %q must be 1-63 lower-case letters, digits or '-', not starting or ending with '-'", ErrInvalidCluster, truncate(name))
	}
	return nil
}

// CA is a cluster certificate authority: its certificate and private key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// CreateCA makes a new cluster CA for cluster: an ECDSA P-256 key and a self-signed certificate
// valid for CAValidity from now. The CA may sign only end-entity certificates (path length 0).
func CreateCA(cluster string, now time.Time) (*CA, error) {
	return CreateCAValidFor(cluster, now, CAValidity)
}

// CreateCAValidFor is CreateCA with the CA's lifetime chosen by the caller (`tls ca create
// --days`); a validity of zero or less means CAValidity.
func CreateCAValidFor(cluster string, now time.Time, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		validity = CAValidity
	}
	if err := ValidateCluster(cluster); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization:       []string{caOrganization},
			OrganizationalUnit: []string{cluster},
			CommonName:         "taskworker " + cluster + " CA",
		},
		// Backdated so a node whose clock is a little behind still accepts the CA.
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Cluster is the cluster name this CA was made for.
func (ca *CA) Cluster() string {
	c, _ := ClusterOf(ca.Cert)
	return c
}

// Fingerprint is the SHA-256 fingerprint of the CA certificate (see Fingerprint).
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert) }

// CertPEM is the CA certificate in PEM.
func (ca *CA) CertPEM() []byte { return encodeCert(ca.Cert) }

// ClusterOf returns the cluster name recorded in a cluster CA certificate made by CreateCA.
func ClusterOf(caCert *x509.Certificate) (string, error) {
	if !caCert.IsCA || len(caCert.Subject.Organization) != 1 || caCert.Subject.Organization[0] != caOrganization ||
		len(caCert.Subject.OrganizationalUnit) != 1 {
		return "", ErrNotClusterCA
	}
	c := caCert.Subject.OrganizationalUnit[0]
	if err := ValidateCluster(c); err != nil {
		return "", fmt.Errorf("%w: %w", ErrNotClusterCA, err)
	}
	return c, nil
}

// Fingerprint is the lower-case hex SHA-256 of a certificate's DER bytes, the same value as
// `openssl x509 -fingerprint -sha256` without the colons.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// SaveCA writes the CA to dir as ca.pem (0644) and ca-key.pem (0600), each atomically,
// creating dir (0700) if needed.
func SaveCA(dir string, ca *CA) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	keyPEM, err := encodeKey(ca.Key)
	if err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	// The key first: a cert without its key is useless, a key without its cert is just rewritten.
	if err := writeFileAtomic(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, CACertFile), ca.CertPEM(), 0o644); err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	return nil
}

// LoadCA reads the CA that SaveCA wrote to dir. It returns an error wrapping ErrNoCA when
// neither file exists.
func LoadCA(dir string) (*CA, error) {
	ca, err := LoadCAFiles(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, err
	}
	if _, err := ClusterOf(ca.Cert); err != nil {
		return nil, fmt.Errorf("load CA from %s: %w", dir, err)
	}
	return ca, nil
}

// LoadOrCreateCA loads the CA in dir, or creates and saves one for cluster when there is none.
// created tells which, so the first node can log that it made a new cluster.
func LoadOrCreateCA(dir, cluster string, now time.Time) (ca *CA, created bool, err error) {
	ca, err = LoadCA(dir)
	if err == nil {
		if ca.Cluster() != cluster {
			return nil, false, fmt.Errorf("load CA from %s: it is for cluster %q, not %q", dir, ca.Cluster(), cluster)
		}
		return ca, false, nil
	}
	if !errors.Is(err, ErrNoCA) {
		return nil, false, err
	}
	ca, err = CreateCA(cluster, now)
	if err != nil {
		return nil, false, err
	}
	if err := SaveCA(dir, ca); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// LoadCAFiles reads a CA certificate and its key from two PEM files, as written by SaveCA or
// CreateCAFiles (or any ECDSA CA). The key must match the certificate.
func LoadCAFiles(certFile, keyFile string) (*CA, error) {
	certPEM, cerr := os.ReadFile(certFile)
	keyPEM, kerr := os.ReadFile(keyFile)
	if errors.Is(cerr, fs.ErrNotExist) && errors.Is(kerr, fs.ErrNotExist) {
		return nil, fmt.Errorf("load CA %s: %w", certFile, ErrNoCA)
	}
	if cerr != nil {
		return nil, fmt.Errorf("load CA: %w", cerr)
	}
	if kerr != nil {
		return nil, fmt.Errorf("load CA: %w", kerr)
	}
	ca, err := ParseCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA %s, %s: %w", certFile, keyFile, err)
	}
	return ca, nil
}

// ParseCA builds a CA from its PEM certificate and key (any ECDSA CA); the key must match.
// Joining nodes get the cluster CA this way, over the authenticated join exchange.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 || !certs[0].IsCA {
		return nil, errors.New("want exactly one CA certificate")
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	ecKey, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("CA key: want an ECDSA key, got %T", key)
	}
	if !ecKey.PublicKey.Equal(certs[0].PublicKey) {
		return nil, errors.New("the key does not belong to the CA certificate")
	}
	return &CA{Cert: certs[0], Key: ecKey}, nil
}

// KeyPEM is the CA's private key in PEM (PKCS#8), for SaveCA and for handing the CA to a node
// that joined through the authenticated join exchange.
func (ca *CA) KeyPEM() ([]byte, error) { return encodeKey(ca.Key) }

func newSerial() (*big.Int, error) {
	// 128 random bits, as the CA/Browser Forum asks (at least 64); unique without bookkeeping.
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return serial, nil
}

func encodeCert(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: cert.Raw})
}

func encodeKey(key crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// parseCerts reads every CERTIFICATE block in data; anything else is an error, so a key pasted
// into a certificate file is noticed.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != pemCertificate {
			return nil, fmt.Errorf("unexpected PEM block %q in a certificate file", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// parseKey reads a PKCS#8, SEC 1 (EC) or PKCS#1 (RSA) private key, the forms operators' tools write.
func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM private key found")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q in a key file", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
	return signer, nil
}

// truncate keeps error messages from echoing long caller input.
func truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
