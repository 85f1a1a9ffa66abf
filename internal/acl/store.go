package acl

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Store is what the Authorizer reads: the replicated ACL state. The FSM implements it over its
// own maps; MemStore is an in-memory twin for tests and for single-process use. Both answers come
// from memory, so neither method can fail.
type Store interface {
	// Policy returns the named policy.
	Policy(name string) (Policy, bool)
	// TokenBySecretHash returns the token whose secret has this HashSecret.
	TokenBySecretHash(hash string) (Token, bool)
}

// Sentinel errors for callers to branch on.
var (
	// ErrAlreadyBootstrapped: the cluster's first management token was made already.
	ErrAlreadyBootstrapped = errors.New("acl: already bootstrapped")
	// ErrNotFound: no policy or token by that name or ID.
	ErrNotFound = errors.New("acl: not found")
	// ErrExists: a token with that accessor ID or secret hash is stored already.
	ErrExists = errors.New("acl: already exists")
)

// Bootstrapper records the first management token, once. The FSM implements it by proposing the
// token to raft and refusing it in Apply when the cluster was bootstrapped before; MemStore
// implements it directly. Either returns ErrAlreadyBootstrapped on the second call.
type Bootstrapper interface {
	ApplyBootstrap(tok Token) error
}

// Bootstrap makes the cluster's first management token and returns it with its secret, which is
// shown this once. A second call fails with ErrAlreadyBootstrapped, even after the bootstrap token
// was deleted: the flag lives in the replicated state, never in the token. Resetting it (Consul's
// reset index) is out of scope; an operator who loses every management token rebuilds the ACL
// state.
func Bootstrap(b Bootstrapper, now time.Time) (Token, Secret, error) {
	tok, secret, err := NewToken("bootstrap token", nil, true, now, time.Time{})
	if err != nil {
		return Token{}, "", fmt.Errorf("bootstrap: %w", err)
	}
	if err := b.ApplyBootstrap(tok); err != nil {
		return Token{}, "", fmt.Errorf("bootstrap: %w", err)
	}
	return tok, secret, nil
}

// MemStore is an in-memory Store and Bootstrapper, safe for concurrent use. Its writes are
// deterministic (no clock, no randomness), the way the FSM's must be.
type MemStore struct {
	mu           sync.RWMutex
	policies     map[string]Policy
	tokens       map[string]Token  // by accessor ID
	bySecret     map[string]string // secret hash -> accessor ID
	bootstrapped bool
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore {
	return &MemStore{policies: map[string]Policy{}, tokens: map[string]Token{}, bySecret: map[string]string{}}
}

// Policy implements Store.
func (m *MemStore) Policy(name string) (Policy, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	p, ok := m.policies[name]
	return p, ok
}

// TokenBySecretHash implements Store.
func (m *MemStore) TokenBySecretHash(hash string) (Token, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	id, ok := m.bySecret[hash]
	if !ok {
		return Token{}, false
	}
	return m.tokens[id], true
}

// TokenByAccessor returns the token with this accessor ID.
func (m *MemStore) TokenByAccessor(id string) (Token, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	t, ok := m.tokens[id]
	return t, ok
}

// SetPolicy creates or replaces a policy by name.
func (m *MemStore) SetPolicy(p Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.policies[p.Name] = p
	return nil
}

// DeletePolicy removes a policy. Tokens that name it keep the name and get nothing from it; a
// policy applied again under that name applies to them again.
func (m *MemStore) DeletePolicy(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.policies[name]; !ok {
		return fmt.Errorf("policy %q: %w", short(name), ErrNotFound)
	}
	delete(m.policies, name)
	return nil
}

// Policies returns every policy, by name.
func (m *MemStore) Policies() []Policy {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]Policy, 0, len(m.policies))
	for _, p := range m.policies {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Policy) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// CreateToken stores a token made by NewToken.
func (m *MemStore) CreateToken(t Token) error {
	if err := t.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.insertLocked(t)
}

func (m *MemStore) insertLocked(t Token) error {
	if _, ok := m.tokens[t.AccessorID]; ok {
		return fmt.Errorf("token %s: %w", t.AccessorID, ErrExists)
	}
	if _, ok := m.bySecret[t.SecretHash]; ok {
		return fmt.Errorf("token %s: secret: %w", t.AccessorID, ErrExists)
	}
	m.tokens[t.AccessorID] = t
	m.bySecret[t.SecretHash] = t.AccessorID
	return nil
}

// DeleteToken removes a token by accessor ID.
func (m *MemStore) DeleteToken(accessorID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tokens[accessorID]
	if !ok {
		return fmt.Errorf("token %q: %w", short(accessorID), ErrNotFound)
	}
	delete(m.tokens, accessorID)
	delete(m.bySecret, t.SecretHash)
	return nil
}

// Tokens returns every token, by accessor ID.
func (m *MemStore) Tokens() []Token {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]Token, 0, len(m.tokens))
	for _, t := range m.tokens {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b Token) int { return strings.Compare(a.AccessorID, b.AccessorID) })
	return out
}

// ApplyBootstrap implements Bootstrapper: it stores a management token unless the store was
// bootstrapped before.
func (m *MemStore) ApplyBootstrap(t Token) error {
	if !t.Management {
		return errors.New("bootstrap token must be a management token")
	}
	if err := t.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.bootstrapped {
		return ErrAlreadyBootstrapped
	}
	if err := m.insertLocked(t); err != nil {
		return err
	}
	m.bootstrapped = true
	return nil
}

// Bootstrapped reports whether the first management token was made.
func (m *MemStore) Bootstrapped() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.bootstrapped
}

// State is the whole ACL state as plain data, for the FSM's snapshots: policies by name, tokens
// by accessor ID, and the bootstrap flag that must survive a restore.
type State struct {
	Policies     []Policy `msgpack:"policies"`
	Tokens       []Token  `msgpack:"tokens"`
	Bootstrapped bool     `msgpack:"bootstrapped"`
}

// State returns a copy of the store's contents in a stable order.
func (m *MemStore) State() State {
	policies, tokens := m.Policies(), m.Tokens()
	m.mu.RLock()
	defer m.mu.RUnlock()
	return State{Policies: policies, Tokens: tokens, Bootstrapped: m.bootstrapped}
}

// Restore replaces the store's contents with st, after checking all of it: a state that does not
// validate leaves the store as it was.
func (m *MemStore) Restore(st State) error {
	fresh := NewMemStore()
	for _, p := range st.Policies {
		if err := fresh.SetPolicy(p); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	for _, t := range st.Tokens {
		if err := fresh.CreateToken(t); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.policies, m.tokens, m.bySecret, m.bootstrapped = fresh.policies, fresh.tokens, fresh.bySecret, st.Bootstrapped
	return nil
}
