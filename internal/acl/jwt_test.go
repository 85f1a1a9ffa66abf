package acl

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

const (
	testIssuer   = "https://idp.example.test/"
	testAudience = "taskworker"
)

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// testRSAKey is made once: RSA key generation is slow on a shared machine.
func testRSAKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	return rsaKey
}

func testECKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func publicPEM(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func jwtConfig(pemBytes []byte) JWTConfig {
	return JWTConfig{
		PublicKeyPEM:  pemBytes,
		Issuer:        testIssuer,
		Audiences:     []string{"other-service", testAudience},
		ClaimName:     "groups",
		ClaimMappings: map[string][]string{"reports-team": {"reports"}, "sre": {"ops", "reports"}},
	}
}

// claims are valid at t0 unless a test changes them.
func goodClaims() jwt.MapClaims {
	return jwt.MapClaims{
		"iss":    testIssuer,
		"aud":    []string{testAudience},
		"sub":    "alice@example.test",
		"exp":    t0.Add(time.Hour).Unix(),
		"nbf":    t0.Add(-time.Minute).Unix(),
		"iat":    t0.Add(-time.Minute).Unix(),
		"groups": []string{"reports-team", "unmapped"},
	}
}

func sign(t *testing.T, method jwt.SigningMethod, claims jwt.MapClaims, key any, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func jwtAuthorizer(t *testing.T, cfg JWTConfig) *Authorizer {
	t.Helper()
	m, err := NewJWTMethod(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := NewMemStore()
	for _, doc := range []string{
		`{"name": "reports", "rules": [{"task_type": "report-*", "capabilities": ["submit", "read"]}]}`,
		`{"name": "ops", "cluster": ["operator"]}`,
	} {
		p, err := ParsePolicy([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetPolicy(p); err != nil {
			t.Fatal(err)
		}
	}
	return NewAuthorizer(s, m)
}

func TestJWT(t *testing.T) {
	ec := testECKey(t)
	rs := testRSAKey(t)
	other := testECKey(t)
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPEM, rsaPEM := publicPEM(t, &ec.PublicKey), publicPEM(t, &rs.PublicKey)
	edPEM := publicPEM(t, edPriv.Public())
	with := func(change func(jwt.MapClaims)) jwt.MapClaims {
		c := goodClaims()
		change(c)
		return c
	}
	tests := []struct {
		name     string
		keyPEM   []byte
		token    string
		now      time.Time
		want     string // "ok" or a piece of the 401 error
		policies []string
	}{
		{"good ES256", ecPEM, sign(t, jwt.SigningMethodES256, goodClaims(), ec, ""), t0, "ok", []string{"reports"}},
		{"good RS256", rsaPEM, sign(t, jwt.SigningMethodRS256, goodClaims(), rs, ""), t0, "ok", []string{"reports"}},
		{"good PS384", rsaPEM, sign(t, jwt.SigningMethodPS384, goodClaims(), rs, ""), t0, "ok", []string{"reports"}},
		{"good EdDSA", edPEM, sign(t, jwt.SigningMethodEdDSA, goodClaims(), edPriv, ""), t0, "ok", []string{"reports"}},
		{"claim mapping unions and sorts", ecPEM, sign(t, jwt.SigningMethodES256, with(func(c jwt.MapClaims) { c["groups"] = []string{"sre", "reports-team"} }), ec, ""), t0, "ok", []string{"ops", "reports"}},
		{"claim as a string", ecPEM, sign(t, jwt.SigningMethodES256, with(func(c jwt.MapClaims) { c["groups"] = "sre" }), ec, ""), t0, "ok", []string{"ops", "reports"}},
		{"unmapped claim gives no policies", ecPEM, sign(t, jwt.SigningMethodES256, with(func(c jwt.MapClaims) { c["groups"] = []any{"nobody", 7} }), ec, ""), t0, "ok", nil},
		{"missing claim gives no policies", ecPEM, sign(t, jwt.SigningMethodES256, with(func(c jwt.MapClaims) { delete(c, "groups") }), ec, ""), t0, "ok", nil},
		{"within clock skew after exp", ecPEM, sign(t, jwt.SigningMethodES256, goodClaims(), ec, ""), t0.Add(time.Hour + 10*time.Second), "ok", []string{"reports"}},
		{"bad signature", ecPEM, sign(t, jwt.SigningMethodES256, goodClaims(), other, ""), t0, "signature is invalid", nil},
		{"tampered payload", ecPEM, tamper(t, sign(t, jwt.SigningMethodES256, goodClaims(), ec, "")), t0, "signature is invalid", nil},
		{"expired", ecPEM, sign(t, jwt.SigningMethodES256, goodClaims(), ec, ""), t0.Add(time.Hour + time.Minute), "expired", nil},
		{"no exp", ecPEM, sign(t, jwt.SigningMethodES256, with(func(c jwt.MapClaims) { delete(c, "exp") }), ec, ""), t0, "exp claim is required", nil},
		{"not yet valid", ecPEM, sign(t, jwt.SigningMethodES256, with(func(c jwt.MapClaims) { c["nbf"] = t0.Add(time.Minute).Unix() }), ec, ""), t0, "not valid yet", nil},
		{"wrong audience", ecPEM, sign(t, jwt.SigningMethodES256, with(func(c jwt.MapClaims) { c["aud"] = "someone-else" }), ec, ""), t0, "invalid audience", nil},
		{"no audience", ecPEM, sign(t, jwt.SigningMethodES256, with(func(c jwt.MapClaims) { delete(c, "aud") }), ec, ""), t0, "aud claim is required", nil},
		{"wrong issuer", ecPEM, sign(t, jwt.SigningMethodES256, with(func(c jwt.MapClaims) { c["iss"] = "https://evil.test/" }), ec, ""), t0, "invalid issuer", nil},
		{"no subject", ecPEM, sign(t, jwt.SigningMethodES256, with(func(c jwt.MapClaims) { delete(c, "sub") }), ec, ""), t0, "no subject", nil},
		{"alg none", ecPEM, sign(t, jwt.SigningMethodNone, goodClaims(), jwt.UnsafeAllowNoneSignatureType, ""), t0, "signing method none is invalid", nil},
		{"HS256 with the RSA public key as secret", rsaPEM, sign(t, jwt.SigningMethodHS256, goodClaims(), rsaPEM, ""), t0, "signing method HS256 is invalid", nil},
		{"HS256 with the EC public key as secret", ecPEM, sign(t, jwt.SigningMethodHS256, goodClaims(), ecPEM, ""), t0, "signing method HS256 is invalid", nil},
		{"ES256 token against an RSA key", rsaPEM, sign(t, jwt.SigningMethodES256, goodClaims(), ec, ""), t0, "signing method ES256 is invalid", nil},
		{"malformed", ecPEM, "a.b.c", t0, "malformed", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := jwtAuthorizer(t, jwtConfig(tt.keyPEM))
			id, err := a.Resolve(tt.token, tt.now)
			if tt.want != "ok" {
				if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("err = %v, want a 401 saying %q", err, tt.want)
				}
				if strings.Contains(err.Error(), tt.token) {
					t.Errorf("error shows the token: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.Principal != "alice@example.test" || id.Kind != KindJWT || id.Management || !slices.Equal(id.Policies, tt.policies) {
				t.Fatalf("identity %+v, want policies %v", id, tt.policies)
			}
			wantSubmit := slices.Contains(tt.policies, "reports")
			if err := id.Allow(CapSubmit, "report-daily"); (err == nil) != wantSubmit {
				t.Errorf("submit report-daily: %v, want allowed %v", err, wantSubmit)
			}
			if err := id.Allow(CapSubmit, "echo"); !errors.Is(err, ErrPermissionDenied) {
				t.Errorf("submit echo: %v, want denied", err)
			}
		})
	}
}

// tamper swaps the subject in a signed JWT's payload, keeping the signature.
func tamper(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	c := goodClaims()
	c["sub"] = "mallory"
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

func TestJWTWithJWKS(t *testing.T) {
	k1, k2 := testECKey(t), testECKey(t)
	rs := testRSAKey(t)
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &k1.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"},
		{Key: &k2.PublicKey, KeyID: "k2"},
		{Key: &rs.PublicKey, KeyID: "rsa", Algorithm: "RS256"},
	}}
	jwks, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	cfg := jwtConfig(nil)
	cfg.JWKS = jwks
	a := jwtAuthorizer(t, cfg)
	tests := []struct {
		name, token string
		ok          bool
	}{
		{"kid k1", sign(t, jwt.SigningMethodES256, goodClaims(), k1, "k1"), true},
		{"kid k2", sign(t, jwt.SigningMethodES256, goodClaims(), k2, "k2"), true},
		{"no kid tries every fitting key", sign(t, jwt.SigningMethodES256, goodClaims(), k2, ""), true},
		{"RSA key with its algorithm", sign(t, jwt.SigningMethodRS256, goodClaims(), rs, "rsa"), true},
		{"RSA key with another algorithm than its JWK names", sign(t, jwt.SigningMethodPS256, goodClaims(), rs, "rsa"), false},
		{"kid names another key", sign(t, jwt.SigningMethodES256, goodClaims(), k2, "k1"), false},
		{"unknown kid", sign(t, jwt.SigningMethodES256, goodClaims(), k1, "k9"), false},
		{"HS256 with the JWKS as secret", sign(t, jwt.SigningMethodHS256, goodClaims(), jwks, "k1"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := a.Resolve(tt.token, t0)
			if tt.ok {
				if err != nil || id.Principal != "alice@example.test" {
					t.Fatalf("got %+v, %v", id, err)
				}
			} else if !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("err = %v, want ErrUnauthenticated", err)
			}
		})
	}
}

func TestNewJWTMethodRefusesBadConfig(t *testing.T) {
	ec := testECKey(t)
	ecPEM := publicPEM(t, &ec.PublicKey)
	der, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	privPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	privJWKS, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: ec, KeyID: "p"}}})
	symJWKS, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: "s"}}})
	badAlgJWKS, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &ec.PublicKey, KeyID: "a", Algorithm: "HS256"}}})
	tests := []struct {
		name   string
		change func(*JWTConfig)
		want   string
	}{
		{"no key", func(c *JWTConfig) { c.PublicKeyPEM = nil }, "exactly one"},
		{"both keys", func(c *JWTConfig) { c.JWKS = []byte(`{"keys": []}`) }, "exactly one"},
		{"no issuer", func(c *JWTConfig) { c.Issuer = "" }, "issuer is required"},
		{"no audience", func(c *JWTConfig) { c.Audiences = nil }, "audience is required"},
		{"no claim", func(c *JWTConfig) { c.ClaimName = "" }, "claim is required"},
		{"bad policy name in mapping", func(c *JWTConfig) { c.ClaimMappings = map[string][]string{"g": {"bad name"}} }, "claim_mappings"},
		{"skew too large", func(c *JWTConfig) { c.ClockSkew = time.Hour }, "clock skew"},
		{"private key PEM", func(c *JWTConfig) { c.PublicKeyPEM = privPEM }, "never a private key"},
		{"not PEM", func(c *JWTConfig) { c.PublicKeyPEM = []byte("hello") }, "no PEM public key"},
		{"small RSA key", func(c *JWTConfig) { c.PublicKeyPEM = publicPEM(t, &small.PublicKey) }, "1024 bits"},
		{"private key in JWKS", func(c *JWTConfig) { c.PublicKeyPEM, c.JWKS = nil, privJWKS }, "want a valid public key"},
		{"symmetric key in JWKS", func(c *JWTConfig) { c.PublicKeyPEM, c.JWKS = nil, symJWKS }, "want a valid public key"},
		{"JWK algorithm that does not fit", func(c *JWTConfig) { c.PublicKeyPEM, c.JWKS = nil, badAlgJWKS }, "does not fit"},
		{"empty JWKS", func(c *JWTConfig) { c.PublicKeyPEM, c.JWKS = nil, []byte(`{"keys": []}`) }, "no signing key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := jwtConfig(ecPEM)
			tt.change(&cfg)
			if _, err := NewJWTMethod(cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one saying %q", err, tt.want)
			}
		})
	}
}

func TestLoadJWTMethod(t *testing.T) {
	ec := testECKey(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "idp.pem"), publicPEM(t, &ec.PublicKey), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "jwt.json")
	write := func(s string) {
		if err := os.WriteFile(conf, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"public_key_file": "idp.pem", "issuer": "` + testIssuer + `", "audiences": ["taskworker"],
		"claim": "role", "claim_mappings": {"reporter": ["reports"]}, "clock_skew": "5s"}`)
	m, err := LoadJWTMethod(conf)
	if err != nil {
		t.Fatal(err)
	}
	if m.skew != 5*time.Second {
		t.Errorf("skew %v", m.skew)
	}
	c := goodClaims()
	c["role"] = "reporter"
	a := NewAuthorizer(NewMemStore(), m)
	id, err := a.Resolve(sign(t, jwt.SigningMethodES256, c, ec, ""), t0)
	if err != nil || !slices.Equal(id.Policies, []string{"reports"}) {
		t.Fatalf("got %+v, %v", id, err)
	}
	// 5s of skew, not the default 30s.
	if _, err := a.Resolve(sign(t, jwt.SigningMethodES256, c, ec, ""), t0.Add(time.Hour+10*time.Second)); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("expired by 10s with 5s skew: %v", err)
	}

	write(`{"public_key_file": "idp.pem", "isuser": "x"}`)
	if _, err := LoadJWTMethod(conf); err == nil || !strings.Contains(err.Error(), "isuser: unknown field") {
		t.Errorf("typo in config: %v", err)
	}
	write(`{"public_key_file": "missing.pem", "issuer": "i", "audiences": ["a"], "claim": "c"}`)
	if _, err := LoadJWTMethod(conf); err == nil || !strings.Contains(err.Error(), "public_key_file") {
		t.Errorf("missing key file: %v", err)
	}
}
