package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The file-writing half of `taskworker tls ca create` and `taskworker tls cert create
// --server|--client`, named as `consul tls` names its files. They never overwrite a file.

// Names of the files CreateCAFiles writes.
const (
	ToolCACertFile = "taskworker-agent-ca.pem"
	ToolCAKeyFile  = "taskworker-agent-ca-key.pem"
)

// maxToolCerts bounds the search for a free <cluster>-server-taskworker-<n>.pem name.
const maxToolCerts = 10000

// Files names a certificate file and its key file.
type Files struct {
	Cert, Key string
}

// CreateCAFiles creates a cluster CA for cluster and writes it to dir as
// taskworker-agent-ca.pem and taskworker-agent-ca-key.pem (0600). It fails, writing nothing,
// if either exists.
func CreateCAFiles(dir, cluster string, now time.Time) (Files, error) {
	return CreateCAFilesValidFor(dir, cluster, now, CAValidity)
}

// CreateCAFilesValidFor is CreateCAFiles for a CA valid for validity (zero or less: CAValidity).
func CreateCAFilesValidFor(dir, cluster string, now time.Time, validity time.Duration) (Files, error) {
	f := Files{Cert: filepath.Join(dir, ToolCACertFile), Key: filepath.Join(dir, ToolCAKeyFile)}
	for _, p := range []string{f.Cert, f.Key} {
		if _, err := os.Stat(p); err == nil {
			return Files{}, fmt.Errorf("create CA: %s: %w", p, fs.ErrExist)
		}
	}
	ca, err := CreateCAValidFor(cluster, now, validity)
	if err != nil {
		return Files{}, err
	}
	keyPEM, err := encodeKey(ca.Key)
	if err != nil {
		return Files{}, err
	}
	if err := writeFileExclusive(f.Key, keyPEM, 0o600); err != nil {
		return Files{}, fmt.Errorf("create CA: %w", err)
	}
	if err := writeFileExclusive(f.Cert, ca.CertPEM(), 0o644); err != nil {
		_ = os.Remove(f.Key)
		return Files{}, fmt.Errorf("create CA: %w", err)
	}
	return f, nil
}

// CreateCertFiles signs a certificate with ca as spec says and writes it to dir as
// <cluster>-<role>-taskworker-<n>.pem (the certificate, then the CA) and ...-<n>-key.pem (0600),
// n being the first free number. Server certificates also name localhost and 127.0.0.1, as
// Consul's do, so a local CLI can verify the HTTPS API.
func CreateCertFiles(dir string, ca *CA, spec NodeSpec, now time.Time) (Files, error) {
	cluster, err := ClusterOf(ca.Cert)
	if err != nil {
		return Files{}, fmt.Errorf("create certificate: %w", err)
	}
	if spec.Role == RoleServer {
		if !slices.Contains(spec.DNSNames, "localhost") {
			spec.DNSNames = append(slices.Clone(spec.DNSNames), "localhost")
		}
		if !slices.ContainsFunc(spec.IPs, func(ip net.IP) bool { return ip.Equal(net.IPv4(127, 0, 0, 1)) }) {
			spec.IPs = append(slices.Clone(spec.IPs), net.IPv4(127, 0, 0, 1))
		}
	}
	id, err := ca.IssueIdentity(spec, now)
	if err != nil {
		return Files{}, err
	}
	keyPEM, err := encodeKey(id.Cert.PrivateKey)
	if err != nil {
		return Files{}, err
	}
	certPEM := append(encodeCert(id.Leaf()), ca.CertPEM()...)
	for n := range maxToolCerts {
		base := filepath.Join(dir, fmt.Sprintf("%s-%s-taskworker-%d", cluster, spec.Role, n))
		f := Files{Cert: base + ".pem", Key: base + "-key.pem"}
		if _, err := os.Stat(f.Cert); err == nil {
			continue
		}
		// The key file claims the number: O_EXCL makes two concurrent runs pick different ones.
		if err := writeFileExclusive(f.Key, keyPEM, 0o600); err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			return Files{}, fmt.Errorf("create certificate: %w", err)
		}
		if err := writeFileExclusive(f.Cert, certPEM, 0o644); err != nil {
			_ = os.Remove(f.Key)
			return Files{}, fmt.Errorf("create certificate: %w", err)
		}
		return f, nil
	}
	return Files{}, fmt.Errorf("create certificate: no free file name in %s", dir)
}
