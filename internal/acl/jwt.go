package acl

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// DefaultClockSkew is how far exp and nbf may be off when JWTConfig does not say: enough for
// clocks kept by NTP, short enough that an expired JWT dies soon.
const DefaultClockSkew = 30 * time.Second

// MaxClockSkew bounds JWTConfig.ClockSkew: a larger value would keep expired JWTs alive.
const MaxClockSkew = 5 * time.Minute

// minRSABits refuses RSA keys too small to trust.
const minRSABits = 2048

// JWTConfig configures the JWT auth method. Exactly one of PublicKeyPEM and JWKS holds the keys;
// Issuer and Audiences are required, so a JWT the same identity provider issued for another
// service is not accepted here.
type JWTConfig struct {
	// PublicKeyPEM holds PEM blocks: "PUBLIC KEY" (PKIX), "RSA PUBLIC KEY" or "CERTIFICATE".
	PublicKeyPEM []byte
	// JWKS is a JSON Web Key Set document. A JWT whose header names a "kid" is checked against
	// that key only.
	JWKS []byte
	// Issuer is the required "iss".
	Issuer string
	// Audiences: the JWT's "aud" must contain one of them.
	Audiences []string
	// ClaimName is the top-level claim whose value (a string or an array of strings) selects
	// policies through ClaimMappings, e.g. "groups" or "role".
	ClaimName string
	// ClaimMappings maps a claim value to policy names. Values with no entry grant nothing.
	ClaimMappings map[string][]string
	// ClockSkew is the leeway for exp and nbf; zero means DefaultClockSkew.
	ClockSkew time.Duration
}

// JWTMethod verifies JWTs for the Authorizer. Only asymmetric algorithms that fit the configured
// keys are accepted: "none" and every HMAC algorithm are refused before any signature check, so a
// JWT "signed" with HS256 using the public key as the HMAC secret fails.
type JWTMethod struct {
	keys     []verificationKey
	methods  []string
	issuer   string
	aud      []string
	claim    string
	mappings map[string][]string
	skew     time.Duration
}

type verificationKey struct {
	kid  string
	alg  string // from the JWK, if it names one
	key  crypto.PublicKey
	algs []string
}

// NewJWTMethod checks cfg and loads its keys.
func NewJWTMethod(cfg JWTConfig) (*JWTMethod, error) {
	if (len(cfg.PublicKeyPEM) == 0) == (len(cfg.JWKS) == 0) {
		return nil, errors.New("jwt auth: give exactly one of a public key (PEM) and a JWKS")
	}
	if cfg.Issuer == "" {
		return nil, errors.New("jwt auth: issuer is required")
	}
	if len(cfg.Audiences) == 0 {
		return nil, errors.New("jwt auth: at least one audience is required")
	}
	if cfg.ClaimName == "" {
		return nil, errors.New("jwt auth: claim is required (the claim that maps to policies)")
	}
	for value, names := range cfg.ClaimMappings {
		for _, n := range names {
			if err := validName(n); err != nil {
				return nil, fmt.Errorf("jwt auth: claim_mappings[%q]: policy name: %w", short(value), err)
			}
		}
	}
	skew := cfg.ClockSkew
	if skew == 0 {
		skew = DefaultClockSkew
	}
	if skew < 0 || skew > MaxClockSkew {
		return nil, fmt.Errorf("jwt auth: clock skew must be between 0 and %s", MaxClockSkew)
	}
	var keys []verificationKey
	var err error
	if len(cfg.PublicKeyPEM) > 0 {
		keys, err = pemKeys(cfg.PublicKeyPEM)
	} else {
		keys, err = jwksKeys(cfg.JWKS)
	}
	if err != nil {
		return nil, fmt.Errorf("jwt auth: %w", err)
	}
	m := &JWTMethod{keys: keys, issuer: cfg.Issuer, aud: slices.Clone(cfg.Audiences), claim: cfg.ClaimName,
		mappings: map[string][]string{}, skew: skew}
	for v, names := range cfg.ClaimMappings {
		m.mappings[v] = slices.Clone(names)
	}
	for _, k := range keys {
		for _, a := range k.algs {
			if !slices.Contains(m.methods, a) {
				m.methods = append(m.methods, a)
			}
		}
	}
	return m, nil
}

// jwtConfigFile is the JSON form of JWTConfig, with keys in files.
type jwtConfigFile struct {
	PublicKeyFile string              `json:"public_key_file"`
	JWKSFile      string              `json:"jwks_file"`
	Issuer        string              `json:"issuer"`
	Audiences     []string            `json:"audiences"`
	Claim         string              `json:"claim"`
	ClaimMappings map[string][]string `json:"claim_mappings"`
	ClockSkew     string              `json:"clock_skew"`
}

// LoadJWTMethod reads a JWT auth method from a JSON file such as
//
//	{
//	  "jwks_file": "jwks.json",
//	  "issuer": "https://idp.example.com/",
//	  "audiences": ["taskworker"],
//	  "claim": "groups",
//	  "claim_mappings": {"reports-team": ["reports"], "sre": ["ops", "reports"]},
//	  "clock_skew": "30s"
//	}
//
// with "public_key_file" (PEM) instead of "jwks_file" as the other choice. Relative key paths are
// relative to the config file's directory.
func LoadJWTMethod(path string) (*JWTMethod, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("jwt auth config: %w", err)
	}
	var f jwtConfigFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("jwt auth config %s: %s", path, jsonError(err).detail())
	}
	cfg := JWTConfig{Issuer: f.Issuer, Audiences: f.Audiences, ClaimName: f.Claim, ClaimMappings: f.ClaimMappings}
	if f.ClockSkew != "" {
		if cfg.ClockSkew, err = time.ParseDuration(f.ClockSkew); err != nil {
			return nil, fmt.Errorf("jwt auth config %s: clock_skew: %w", path, err)
		}
	}
	read := func(p string) ([]byte, error) {
		if p == "" {
			return nil, nil
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(path), p)
		}
		return os.ReadFile(p)
	}
	if cfg.PublicKeyPEM, err = read(f.PublicKeyFile); err != nil {
		return nil, fmt.Errorf("jwt auth config %s: public_key_file: %w", path, err)
	}
	if cfg.JWKS, err = read(f.JWKSFile); err != nil {
		return nil, fmt.Errorf("jwt auth config %s: jwks_file: %w", path, err)
	}
	m, err := NewJWTMethod(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// verify checks a JWT at now and returns its subject and the policies its claim maps to.
func (m *JWTMethod) verify(raw string, now time.Time) (string, []string, error) {
	parser := jwt.NewParser(
		jwt.WithValidMethods(m.methods),
		jwt.WithLeeway(m.skew),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithIssuer(m.issuer),
		jwt.WithAudience(m.aud...),
		jwt.WithExpirationRequired(),
	)
	claims := jwt.MapClaims{}
	if _, err := parser.ParseWithClaims(raw, claims, m.keyFor); err != nil {
		return "", nil, fmt.Errorf("invalid JWT: %w", err)
	}
	sub, err := claims.GetSubject()
	if err != nil || sub == "" {
		return "", nil, errors.New("invalid JWT: no subject")
	}
	if len(sub) > 256 {
		return "", nil, errors.New("invalid JWT: subject longer than 256 bytes")
	}
	var values []string
	switch v := claims[m.claim].(type) {
	case string:
		values = []string{v}
	case []any:
		for _, e := range v {
			if s, ok := e.(string); ok {
				values = append(values, s)
			}
		}
	}
	var policies []string
	for _, v := range values {
		for _, p := range m.mappings[v] {
			if !slices.Contains(policies, p) {
				policies = append(policies, p)
			}
		}
	}
	slices.Sort(policies)
	return sub, policies, nil
}

// keyFor picks the keys that may have signed t: those with its "kid" when it names one, and
// always only those whose type fits its algorithm. WithValidMethods has already refused "none"
// and HMAC; the type check here is the second lock on the same door.
func (m *JWTMethod) keyFor(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	kid, _ := t.Header["kid"].(string)
	var set jwt.VerificationKeySet
	for _, k := range m.keys {
		if kid != "" && k.kid != "" && k.kid != kid {
			continue
		}
		if !slices.Contains(k.algs, alg) || k.alg != "" && k.alg != alg {
			continue
		}
		set.Keys = append(set.Keys, k.key)
	}
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("no key for algorithm %q and key ID %q", short(alg), short(kid))
	}
	return set, nil
}

// algsFor lists the JWS algorithms a public key can verify, or an error for keys we refuse.
func algsFor(key crypto.PublicKey) ([]string, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key of %d bits (want %d or more)", k.N.BitLen(), minRSABits)
		}
		return []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []string{"ES256"}, nil
		case elliptic.P384():
			return []string{"ES384"}, nil
		case elliptic.P521():
			return []string{"ES512"}, nil
		}
		return nil, errors.New("ECDSA key on an unsupported curve")
	case ed25519.PublicKey:
		return []string{"EdDSA"}, nil
	}
	return nil, fmt.Errorf("unsupported key type %T", key)
}

func pemKeys(data []byte) ([]verificationKey, error) {
	var keys []verificationKey
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var key crypto.PublicKey
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		default:
			return nil, fmt.Errorf("PEM block %q: want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE (never a private key)", short(block.Type))
		}
		if err != nil {
			return nil, fmt.Errorf("PEM block %q: %w", block.Type, err)
		}
		algs, err := algsFor(key)
		if err != nil {
			return nil, fmt.Errorf("PEM block %q: %w", block.Type, err)
		}
		keys = append(keys, verificationKey{key: key, algs: algs})
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM public key found")
	}
	return keys, nil
}

func jwksKeys(data []byte) ([]verificationKey, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	var keys []verificationKey
	for i, k := range set.Keys {
		if !k.Valid() || !k.IsPublic() {
			// A private or symmetric key in the set means the file is not what it should be.
			return nil, fmt.Errorf("JWKS key %d (kid %q): want a valid public key", i, short(k.KeyID))
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		algs, err := algsFor(k.Key)
		if err != nil {
			return nil, fmt.Errorf("JWKS key %d (kid %q): %w", i, short(k.KeyID), err)
		}
		if k.Algorithm != "" && !slices.Contains(algs, k.Algorithm) {
			return nil, fmt.Errorf("JWKS key %d (kid %q): algorithm %q does not fit the key", i, short(k.KeyID), short(k.Algorithm))
		}
		keys = append(keys, verificationKey{kid: k.KeyID, alg: k.Algorithm, key: k.Key, algs: algs})
	}
	if len(keys) == 0 {
		return nil, errors.New("JWKS holds no signing key")
	}
	return keys, nil
}
