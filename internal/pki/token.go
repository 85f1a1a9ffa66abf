package pki

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// Join token format (one line, ASCII):
//
//	TW1::<fingerprint>::<secret>
//
// The parts:
//   - "TW1" names the format and its version.
//   - <fingerprint> is the SHA-256 fingerprint of the cluster CA certificate, 64 lower-case hex
//     digits (Fingerprint). The joiner trusts the node it contacts only if that node's chain
//     holds a CA with this fingerprint: the token pins the cluster, so no system roots and no
//     CA file are needed (as k3s's K10<ca-hash>::... tokens and Docker Swarm's SWMTKN-1-<ca
//     digest>-<secret> tokens do).
//   - <secret> is 32 random bytes as 64 lower-case hex digits. The joiner proves itself with it;
//     the cluster compares it in constant time. Rotating the token replaces only the secret.
//
// "::" separates the parts because neither part can contain ':'. Surrounding white space (a
// trailing newline from a file or an environment variable) is ignored when parsing.
const (
	tokenPrefix = "TW1"
	tokenSep    = "::"
	secretBytes = 32

	// TokenFile is the join token's file in the data dir: the token only, one line, mode 0600.
	TokenFile = "join-token"
)

var (
	// ErrMalformedToken means text that is not a join token.
	ErrMalformedToken = errors.New("malformed join token")
	// ErrTokenOtherCluster means a well-formed token whose CA fingerprint is not this cluster's.
	ErrTokenOtherCluster = errors.New("join token is for another cluster (its CA fingerprint differs)")
	// ErrTokenSecret means a token for this cluster whose secret is wrong (or has been rotated).
	ErrTokenSecret = errors.New("join token secret is wrong or has been rotated")
	// ErrNoToken means the data dir holds no join token file.
	ErrNoToken = errors.New("no join token")
)

// Token is a parsed join token. Its String method hides the secret, so a token that ends up in
// a log line or an error by accident leaks nothing; Encode gives the full text.
type Token struct {
	Fingerprint string
	Secret      string
}

// NewToken makes a token for the CA with fingerprint, with a fresh random secret.
func NewToken(fingerprint string) (Token, error) {
	if !isLowerHex(fingerprint, 64) {
		return Token{}, fmt.Errorf("%w: CA fingerprint must be 64 lower-case hex digits", ErrMalformedToken)
	}
	return Token{Fingerprint: fingerprint, Secret: newSecret()}, nil
}

// Rotate returns a token for the same cluster with a new secret; the old one stops working as
// soon as the cluster uses the new one.
func (t Token) Rotate() Token {
	return Token{Fingerprint: t.Fingerprint, Secret: newSecret()}
}

func newSecret() string {
	b := make([]byte, secretBytes)
	// crypto/rand.Read never fails (it crashes the program instead), per its documentation.
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Encode is the token's full text, secret included.
func (t Token) Encode() string {
	return tokenPrefix + tokenSep + t.Fingerprint + tokenSep + t.Secret
}

// String is the token with its secret hidden, for logs.
func (t Token) String() string {
	return tokenPrefix + tokenSep + t.Fingerprint + tokenSep + "<redacted>"
}

// LogValue keeps the secret out of slog output.
func (t Token) LogValue() slog.Value { return slog.StringValue(t.String()) }

// ParseToken parses a join token. Errors never echo the input, which may hold a secret.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	parts := strings.Split(s, tokenSep)
	if len(parts) != 3 {
		return Token{}, fmt.Errorf("%w: want %s::<CA fingerprint>::<secret>", ErrMalformedToken, tokenPrefix)
	}
	if parts[0] != tokenPrefix {
		return Token{}, fmt.Errorf("%w: it does not start with %q", ErrMalformedToken, tokenPrefix+"::")
	}
	fp := strings.ToLower(parts[1])
	if !isLowerHex(fp, 64) {
		return Token{}, fmt.Errorf("%w: the CA fingerprint must be 64 hex digits", ErrMalformedToken)
	}
	if !isLowerHex(parts[2], 2*secretBytes) {
		return Token{}, fmt.Errorf("%w: the secret must be %d lower-case hex digits", ErrMalformedToken, 2*secretBytes)
	}
	return Token{Fingerprint: fp, Secret: parts[2]}, nil
}

// Verify checks a token a joiner presented against this cluster's token t: same CA
// fingerprint (ErrTokenOtherCluster) and same secret (ErrTokenSecret), the secret compared in
// constant time so response timing says nothing about how much of a guess was right.
func (t Token) Verify(presented Token) error {
	if presented.Fingerprint != t.Fingerprint {
		return ErrTokenOtherCluster
	}
	if subtle.ConstantTimeCompare([]byte(presented.Secret), []byte(t.Secret)) != 1 || t.Secret == "" {
		return ErrTokenSecret
	}
	return nil
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// WriteTokenFile writes t to <dataDir>/join-token, the token only on one line, mode 0600,
// atomically (a rotation never leaves a half-written token).
func WriteTokenFile(dataDir string, t Token) error {
	if err := writeFileAtomic(filepath.Join(dataDir, TokenFile), []byte(t.Encode()+"\n"), 0o600); err != nil {
		return fmt.Errorf("write join token: %w", err)
	}
	return nil
}

// ReadTokenFile reads <dataDir>/join-token; an error wraps ErrNoToken when there is none.
func ReadTokenFile(dataDir string) (Token, error) {
	p := filepath.Join(dataDir, TokenFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Token{}, fmt.Errorf("read %s: %w", p, ErrNoToken)
	}
	if err != nil {
		return Token{}, fmt.Errorf("read join token: %w", err)
	}
	t, err := ParseToken(string(b))
	if err != nil {
		return Token{}, fmt.Errorf("read %s: %w", p, err)
	}
	return t, nil
}

// LoadOrCreateToken reads the data dir's join token, or makes and writes one for the CA with
// fingerprint. A token file for another CA is an error: the data dir and CA do not belong
// together.
func LoadOrCreateToken(dataDir, fingerprint string) (t Token, created bool, err error) {
	t, err = ReadTokenFile(dataDir)
	switch {
	case err == nil:
		if t.Fingerprint != fingerprint {
			return Token{}, false, fmt.Errorf("join token in %s: %w", dataDir, ErrTokenOtherCluster)
		}
		return t, false, nil
	case !errors.Is(err, ErrNoToken):
		return Token{}, false, err
	}
	t, err = NewToken(fingerprint)
	if err != nil {
		return Token{}, false, err
	}
	if err := WriteTokenFile(dataDir, t); err != nil {
		return Token{}, false, err
	}
	return t, true, nil
}

// The management credential opens a secure cluster's operator routes (join token, keyring,
// membership changes). It is "twm_" and 32 random bytes as 64 lower-case hex digits, kept in
// <data-dir>/management-token (one line, mode 0600), where the CLI on the node finds it.
const (
	managementPrefix = "twm_"
	// ManagementFile is the management credential's file in the data dir.
	ManagementFile = "management-token"
)

// ErrNoManagement means the data dir holds no management credential file.
var ErrNoManagement = errors.New("no management credential")

// NewManagementCredential makes a fresh random management credential.
func NewManagementCredential() string { return managementPrefix + newSecret() }

// ValidManagementCredential reports whether s has the form NewManagementCredential makes.
func ValidManagementCredential(s string) bool {
	rest, ok := strings.CutPrefix(s, managementPrefix)
	return ok && isLowerHex(rest, 2*secretBytes)
}

// WriteManagementFile writes cred to <dataDir>/management-token, one line, mode 0600, atomically.
func WriteManagementFile(dataDir, cred string) error {
	if !ValidManagementCredential(cred) {
		return errors.New("write management credential: not a management credential")
	}
	if err := writeFileAtomic(filepath.Join(dataDir, ManagementFile), []byte(cred+"\n"), 0o600); err != nil {
		return fmt.Errorf("write management credential: %w", err)
	}
	return nil
}

// ReadManagementFile reads <dataDir>/management-token; an error wraps ErrNoManagement when there
// is none. Errors never echo the file's content.
func ReadManagementFile(dataDir string) (string, error) {
	p := filepath.Join(dataDir, ManagementFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", p, ErrNoManagement)
	}
	if err != nil {
		return "", fmt.Errorf("read management credential: %w", err)
	}
	cred := strings.TrimSpace(string(b))
	if !ValidManagementCredential(cred) {
		return "", fmt.Errorf("read %s: not a management credential (want %s and %d hex digits)", p, managementPrefix, 2*secretBytes)
	}
	return cred, nil
}
