package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

var (
	// ErrFingerprintMismatch means the peer's chain holds no CA with the pinned fingerprint:
	// the joiner reached something that is not the cluster its token names.
	ErrFingerprintMismatch = errors.New("the node's CA does not match the join token's CA fingerprint")
	// ErrPeerName means a peer certificate that verifies against the CA but does not name a
	// cluster server (for example a client-only certificate on an internode port).
	ErrPeerName = errors.New("peer certificate does not name a cluster server")
)

// Internode TLS is 1.3 only: every node runs this binary, so there is no old peer to serve,
// and 1.3 has no weak suites to configure away.

// InternodeServerConfig is the tls.Config for a listener that only cluster servers may use
// (raft, internode calls): it presents the holder's certificate, requires a client certificate
// that verifies against the holder's CAs and names serverName (ServerName(cluster), or the
// name an operator's certificates carry). It reads the holder on every handshake, so renewals
// and SIGHUP reloads, CA bundle included, apply to the next connection.
func InternodeServerConfig(h *Holder, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: h.GetCertificate,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			id := h.Identity()
			if id == nil {
				return nil, ErrNoIdentity
			}
			return &tls.Config{
				MinVersion:       tls.VersionTLS13,
				GetCertificate:   h.GetCertificate,
				ClientAuth:       tls.RequireAndVerifyClientCert,
				ClientCAs:        id.Roots,
				VerifyConnection: requirePeerName(serverName),
				// A resumed session would not be checked against a CA bundle reloaded since it
				// began; internode connections are pooled and long-lived, so full handshakes
				// cost little.
				SessionTicketsDisabled: true,
			}, nil
		},
	}
}

// InternodeClientConfig is the tls.Config for dialing a cluster server: it verifies the
// server's certificate against the holder's CAs with serverName as the expected name (not the
// dialed address, so peers can be dialed by IP), and presents the holder's certificate.
// The CA pool is taken when the config is made: call it per dial (it is cheap) so a reloaded
// CA bundle is used; the client certificate is read from the holder on every handshake.
func InternodeClientConfig(h *Holder, serverName string) *tls.Config {
	cfg := &tls.Config{
		MinVersion:           tls.VersionTLS13,
		ServerName:           serverName,
		GetClientCertificate: h.GetClientCertificate,
	}
	if id := h.Identity(); id != nil {
		cfg.RootCAs = id.Roots
	} else {
		// No identity means no trusted CA: an empty pool refuses every server, never the system roots.
		cfg.RootCAs = x509.NewCertPool()
	}
	return cfg
}

// APIServerConfig is the tls.Config for the HTTPS API (--http-tls). Users' tools may be older
// than this binary, so TLS 1.2 is allowed (with Go's default, modern suites). With
// verifyIncoming (--tls-verify-incoming), a client certificate from the holder's CAs is required;
// any role will do, a client certificate from `tls cert create --client` included.
func APIServerConfig(h *Holder, verifyIncoming bool) *tls.Config {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: h.GetCertificate,
	}
	if verifyIncoming {
		cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			id := h.Identity()
			if id == nil {
				return nil, ErrNoIdentity
			}
			return &tls.Config{
				MinVersion:     tls.VersionTLS12,
				GetCertificate: h.GetCertificate,
				ClientAuth:     tls.RequireAndVerifyClientCert,
				ClientCAs:      id.Roots,
			}, nil
		}
	}
	return cfg
}

// CAFileClientConfig is the tls.Config for the CLI and Go client with --ca-file: the server must
// chain to a CA in the file, and its name is checked against the address dialed, as any HTTPS
// client does.
func CAFileClientConfig(caFile string) (*tls.Config, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	cas, err := parseCerts(b)
	if err != nil {
		return nil, fmt.Errorf("read CA file %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}, nil
}

// PinnedClientConfig is the tls.Config for reaching a cluster node that is trusted only through
// a CA fingerprint (from a join token): the joiner during the join exchange, and the CLI given a
// fingerprint. Trust on first use, pinned: the server's chain must hold a cluster CA whose
// SHA-256 fingerprint is fingerprint, and the server's certificate must verify against that CA
// alone and name that cluster's server (ServerName of the CA's cluster). System roots play no part.
//
// Go's built-in verification is switched off because it can only use a CA pool known before the
// handshake; VerifyConnection, which crypto/tls runs whatever InsecureSkipVerify says, does the
// whole check instead. Do not copy this config without its VerifyConnection.
func PinnedClientConfig(fingerprint string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, //nolint:gosec // verification is done by verifyPinned, see above.
		VerifyConnection:   verifyPinned(fingerprint),
	}
}

func verifyPinned(fingerprint string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("server sent no certificate")
		}
		var ca *x509.Certificate
		for _, c := range cs.PeerCertificates[1:] {
			if Fingerprint(c) == fingerprint {
				ca = c
				break
			}
		}
		if ca == nil {
			return ErrFingerprintMismatch
		}
		cluster, err := ClusterOf(ca)
		if err != nil {
			return fmt.Errorf("pinned CA: %w", err)
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca)
		if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			Roots:     roots,
			DNSName:   ServerName(cluster),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}); err != nil {
			return fmt.Errorf("server certificate against the pinned CA: %w", err)
		}
		return nil
	}
}

// requirePeerName is the server side's check that a verified client certificate names a cluster
// server. crypto/tls has already verified the chain (ClientAuth) when this runs.
func requirePeerName(serverName string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%w: no certificate", ErrPeerName)
		}
		if err := cs.PeerCertificates[0].VerifyHostname(serverName); err != nil {
			return fmt.Errorf("%w %s: %w", ErrPeerName, serverName, err)
		}
		return nil
	}
}
