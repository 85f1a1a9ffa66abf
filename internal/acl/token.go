package acl

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"
)

// Token is an ACL token as the cluster stores it: plain data for msgpack in the replicated FSM
// and JSON in the API. It never holds the secret, only its hash; the secret exists once, in the
// reply to whoever created the token.
type Token struct {
	AccessorID  string   `json:"accessor_id" msgpack:"accessor_id"`
	SecretHash  string   `json:"-" msgpack:"secret_hash"` // HashSecret of the secret, hex
	Description string   `json:"description,omitempty" msgpack:"description,omitempty"`
	Policies    []string `json:"policies,omitempty" msgpack:"policies,omitempty"`
	// Management tokens may do everything; the bootstrap token is one.
	Management bool      `json:"management,omitempty" msgpack:"management,omitempty"`
	CreateTime time.Time `json:"create_time" msgpack:"create_time"`
	// ExpirationTime is when the token stops working; zero means never.
	ExpirationTime time.Time `json:"expiration_time,omitzero" msgpack:"expiration_time,omitempty"`
}

// Expired reports whether the token no longer works at now.
func (t Token) Expired(now time.Time) bool {
	return !t.ExpirationTime.IsZero() && !now.Before(t.ExpirationTime)
}

// LogValue keeps the hash out of logs too: it is not the secret, but nothing is gained by
// printing it.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(slog.String("accessor_id", t.AccessorID), slog.Bool("management", t.Management))
}

// Secret is a token's secret. Its String, GoString, Format and LogValue all redact it, so a
// Secret that reaches a log line or an error message by mistake prints as "[redacted]"; Reveal
// is the one way to get the text, for the reply that shows it once.
type Secret string

const redacted = "[redacted]"

func (Secret) String() string             { return redacted }
func (Secret) GoString() string           { return redacted }
func (Secret) LogValue() slog.Value       { return slog.StringValue(redacted) }
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// MarshalText redacts too, so JSON or msgpack that carries a Secret by accident does not leak it.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Reveal returns the secret's text.
func (s Secret) Reveal() string { return string(s) }

// secretPrefix marks our secrets so they are easy to recognise in a leaked file or a secret
// scanner, and cannot be mistaken for a JWT (a secret never contains '.').
const secretPrefix = "tws_"

// HashSecret is how a secret is stored and looked up: the hex SHA-256 of its text.
//
// A fast hash is enough here, unlike for passwords: secrets are 256 random bits from
// crypto/rand, so there is nothing to guess and a slow KDF (bcrypt, argon2) would only add its
// cost to every request. Looking tokens up by hash also means the secret itself is never compared
// byte by byte, so the time a lookup takes says nothing about any stored secret.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// NewToken makes a token with a fresh accessor ID and secret. The caller (the leader, before it
// proposes the token to raft) shows the returned secret once and stores only the token. A zero
// expiry means the token never expires.
func NewToken(description string, policies []string, management bool, now, expires time.Time) (Token, Secret, error) {
	accessor, err := newAccessorID()
	if err != nil {
		return Token{}, "", err
	}
	secret, err := newSecret()
	if err != nil {
		return Token{}, "", err
	}
	tok := Token{
		AccessorID:     accessor,
		SecretHash:     HashSecret(secret.Reveal()),
		Description:    description,
		Policies:       append([]string(nil), policies...),
		Management:     management,
		CreateTime:     now.UTC(),
		ExpirationTime: expires.UTC(),
	}
	if expires.IsZero() {
		tok.ExpirationTime = time.Time{}
	}
	return tok, secret, nil
}

// Validate checks a token, whether made here or decoded from a replicated command.
func (t Token) Validate() error {
	if len(t.AccessorID) != 36 {
		return fmt.Errorf("token: accessor_id: want a 36-character ID")
	}
	if len(t.SecretHash) != sha256.Size*2 {
		return fmt.Errorf("token: secret_hash: want %d hex characters", sha256.Size*2)
	}
	if len(t.Description) > MaxDescriptionLength {
		return fmt.Errorf("token: description: longer than %d bytes", MaxDescriptionLength)
	}
	for i, p := range t.Policies {
		if err := validName(p); err != nil {
			return fmt.Errorf("token: policies[%d]: %w", i, err)
		}
	}
	return nil
}

// newAccessorID is a random (version 4) UUID: public, so it only has to be unique.
func newAccessorID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("accessor id: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

func newSecret() (Secret, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("token secret: %w", err)
	}
	return Secret(secretPrefix + base64.RawURLEncoding.EncodeToString(b[:])), nil
}
