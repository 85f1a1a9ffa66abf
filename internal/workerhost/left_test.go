package workerhost

import (
	"testing"
	"time"

	"github.com/taskworker/taskworker/internal/acl"
)

type principal string

func (p principal) Allow(acl.Capability, string) error { return nil }
func (p principal) Principal() string                  { return string(p) }

// A session a DELETE ended is remembered for leftKeep, for its own principal only, and at most
// MaxSessions are kept: a DELETE tried again after its reply was lost answers as the first.
func TestLeftSessionsAreRememberedBrieflyForTheirPrincipal(t *testing.T) {
	h := New(Config{MaxSessions: 2})
	now := time.Unix(1_700_000_000, 0)
	h.noteLeft(&session{id: "secret-a", principal: "alice"}, now)
	switch {
	case !h.leftLately("secret-a", principal("alice"), now.Add(leftKeep)):
		t.Fatal("the session's own principal is not told it left")
	case h.leftLately("secret-a", principal("mallory"), now):
		t.Fatal("another principal is told the session left")
	case h.leftLately("secret-b", principal("alice"), now):
		t.Fatal("an unknown session is told it left")
	case h.leftLately("secret-a", principal("alice"), now.Add(leftKeep+time.Second)):
		t.Fatal("remembered past leftKeep")
	}
	h.noteLeft(&session{id: "secret-b", principal: "alice"}, now.Add(leftKeep+time.Second))
	if len(h.left) != 1 {
		t.Fatalf("%d sessions remembered, want the old one forgotten", len(h.left))
	}
	for i, id := range []string{"c", "d", "e"} {
		h.noteLeft(&session{id: id}, now.Add(leftKeep+time.Duration(i+2)*time.Second))
	}
	if len(h.left) > 2 {
		t.Fatalf("%d sessions remembered, more than MaxSessions", len(h.left))
	}
}
