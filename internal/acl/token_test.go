package acl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func TestNewTokenStoresOnlyTheHash(t *testing.T) {
	tok, secret, err := NewToken("ci", []string{"reports"}, false, t0, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(tok.AccessorID) {
		t.Errorf("accessor ID %q is not a v4 UUID", tok.AccessorID)
	}
	if !regexp.MustCompile(`^tws_[A-Za-z0-9_-]{43}$`).MatchString(secret.Reveal()) {
		t.Errorf("secret has an unexpected form")
	}
	if tok.SecretHash != HashSecret(secret.Reveal()) {
		t.Error("stored hash is not the secret's hash")
	}
	enc, _ := msgpack.Marshal(tok)
	js, _ := json.Marshal(tok)
	for name, b := range map[string][]byte{"msgpack": enc, "json": js} {
		if bytes.Contains(b, []byte(secret.Reveal())) {
			t.Errorf("%s form of the token contains the secret", name)
		}
	}
	if bytes.Contains(js, []byte(tok.SecretHash)) {
		t.Error("JSON form of the token carries the secret hash")
	}
	if err := tok.Validate(); err != nil {
		t.Error(err)
	}

	tok2, secret2, err := NewToken("ci", nil, false, t0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if tok2.AccessorID == tok.AccessorID || secret2.Reveal() == secret.Reveal() {
		t.Error("two tokens share an accessor ID or a secret")
	}
}

func TestSecretIsRedactedEverywhere(t *testing.T) {
	_, secret, err := NewToken("", nil, false, t0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	type holder struct{ S Secret }
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	log.Info("made", "secret", secret, "holder", holder{secret})
	js, _ := json.Marshal(holder{secret})
	mp, _ := msgpack.Marshal(holder{secret})
	outs := map[string]string{
		"%v": fmt.Sprintf("%v", secret), "%s": fmt.Sprintf("%s", secret), "%q": fmt.Sprintf("%q", secret),
		"%x": fmt.Sprintf("%x", secret), "%#v": fmt.Sprintf("%#v", secret), "%+v struct": fmt.Sprintf("%+v", holder{secret}),
		"error": fmt.Errorf("with %v", secret).Error(), "slog": logs.String(), "json": string(js), "msgpack": string(mp),
	}
	for how, out := range outs {
		if strings.Contains(out, secret.Reveal()) || strings.Contains(out, secret.Reveal()[4:20]) {
			t.Errorf("%s shows the secret: %s", how, out)
		}
		if !strings.Contains(out, "[redacted]") {
			t.Errorf("%s does not say [redacted]: %s", how, out)
		}
	}
}

func TestTokenAndPolicySurviveMsgpack(t *testing.T) {
	tok, _, err := NewToken("ci", []string{"a", "b"}, true, t0, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	never, _, err := NewToken("", nil, false, t0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []Token{tok, never} {
		b, err := msgpack.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		var got Token
		if err := msgpack.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if !got.CreateTime.Equal(want.CreateTime) || !got.ExpirationTime.Equal(want.ExpirationTime) || got.ExpirationTime.IsZero() != want.ExpirationTime.IsZero() {
			t.Errorf("times changed: %v %v -> %v %v", want.CreateTime, want.ExpirationTime, got.CreateTime, got.ExpirationTime)
		}
		got.CreateTime, got.ExpirationTime, want.CreateTime, want.ExpirationTime = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	}
	p, err := ParsePolicy([]byte(`{"name": "a", "description": "d", "rules": [{"task_type": "x-*", "capabilities": ["read", "logs"]}], "cluster": ["acl"]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := msgpack.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var got Policy
	if err := msgpack.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, p) {
		t.Errorf("got %+v, want %+v", got, p)
	}
}

func TestTokenExpiry(t *testing.T) {
	tok := Token{ExpirationTime: t0}
	for _, tt := range []struct {
		now  time.Time
		want bool
	}{{t0.Add(-time.Nanosecond), false}, {t0, true}, {t0.Add(time.Hour), true}} {
		if got := tok.Expired(tt.now); got != tt.want {
			t.Errorf("Expired(%v) = %v, want %v", tt.now, got, tt.want)
		}
	}
	if (Token{}).Expired(t0.AddDate(100, 0, 0)) {
		t.Error("a token without expiry expired")
	}
}

func TestBootstrapOnlyOnce(t *testing.T) {
	s := NewMemStore()
	tok, secret, err := Bootstrap(s, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !tok.Management || !s.Bootstrapped() {
		t.Fatalf("bootstrap token %+v, bootstrapped %v", tok, s.Bootstrapped())
	}
	id, err := NewAuthorizer(s, nil).Resolve(secret.Reveal(), t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Cluster(RightACL); err != nil {
		t.Errorf("bootstrap token lacks the acl right: %v", err)
	}
	if _, _, err := Bootstrap(s, t0); !errors.Is(err, ErrAlreadyBootstrapped) {
		t.Fatalf("second bootstrap: %v, want ErrAlreadyBootstrapped", err)
	}
	// Deleting the bootstrap token does not open the door again.
	if err := s.DeleteToken(tok.AccessorID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Bootstrap(s, t0); !errors.Is(err, ErrAlreadyBootstrapped) {
		t.Fatalf("bootstrap after deleting the token: %v, want ErrAlreadyBootstrapped", err)
	}
	if len(s.Tokens()) != 0 {
		t.Errorf("a refused bootstrap stored a token: %+v", s.Tokens())
	}
}

func TestMemStore(t *testing.T) {
	s := NewMemStore()
	if err := s.SetPolicy(Policy{Name: "b"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPolicy(Policy{Name: "a", Cluster: []ClusterRight{RightACL}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPolicy(Policy{Name: "bad name"}); err == nil {
		t.Error("stored an invalid policy")
	}
	if got := s.Policies(); len(got) != 2 || got[0].Name != "a" || got[1].Name != "b" {
		t.Errorf("Policies() = %+v", got)
	}
	if err := s.DeletePolicy("b"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePolicy("b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}

	tok, secret, _ := NewToken("", []string{"a"}, false, t0, time.Time{})
	if err := s.CreateToken(tok); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateToken(tok); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate token: %v", err)
	}
	if got, ok := s.TokenBySecretHash(HashSecret(secret.Reveal())); !ok || got.AccessorID != tok.AccessorID {
		t.Errorf("lookup by secret hash: %+v %v", got, ok)
	}
	if _, ok := s.TokenByAccessor(tok.AccessorID); !ok {
		t.Error("lookup by accessor failed")
	}
	if err := s.CreateToken(Token{AccessorID: "x"}); err == nil {
		t.Error("stored an invalid token")
	}
	if err := s.DeleteToken(tok.AccessorID); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.TokenBySecretHash(HashSecret(secret.Reveal())); ok {
		t.Error("deleted token still found by its secret")
	}
}

func TestMemStoreStateRoundTrip(t *testing.T) {
	s := NewMemStore()
	if err := s.SetPolicy(Policy{Name: "p", Rules: []Rule{{TaskType: "*", Capabilities: []Capability{CapRead}}}}); err != nil {
		t.Fatal(err)
	}
	tok, secret, _ := NewToken("", []string{"p"}, false, t0, time.Time{})
	if err := s.CreateToken(tok); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Bootstrap(s, t0); err != nil {
		t.Fatal(err)
	}
	b, err := msgpack.Marshal(s.State())
	if err != nil {
		t.Fatal(err)
	}
	var st State
	if err := msgpack.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	restored := NewMemStore()
	if err := restored.Restore(st); err != nil {
		t.Fatal(err)
	}
	if !restored.Bootstrapped() || len(restored.Tokens()) != 2 || len(restored.Policies()) != 1 {
		t.Fatalf("restored %+v", restored.State())
	}
	id, err := NewAuthorizer(restored, nil).Resolve(secret.Reveal(), t0)
	if err != nil || id.Allow(CapRead, "echo") != nil {
		t.Fatalf("restored token does not work: %+v %v", id, err)
	}
	if _, _, err := Bootstrap(restored, t0); !errors.Is(err, ErrAlreadyBootstrapped) {
		t.Errorf("bootstrap after restore: %v", err)
	}
	bad := st
	bad.Tokens = append(slices.Clone(st.Tokens), st.Tokens[0]) // a duplicate
	if err := restored.Restore(bad); !errors.Is(err, ErrExists) {
		t.Errorf("restore with a duplicate token: %v", err)
	}
	if len(restored.Tokens()) != 2 {
		t.Error("a refused restore changed the store")
	}
}
