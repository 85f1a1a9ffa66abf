package node

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/internal/forward"
)

// forwardAs sends a request to the leader's forward route from node from, as a follower that
// skipped every check of its own would: the leader must authorize and validate it itself.
func forwardAs(t *testing.T, from, leader *Node, method, path, secret, body string) (int, []byte) {
	t.Helper()
	return forwardTry(t, from, leader, method, path, secret, body, ulid.Make().String())
}

// forwardTry is forwardAs with the request ID id: a follower's forward and, sent again with the
// same ID, its retry after the first try's reply was lost.
func forwardTry(t *testing.T, from, leader *Node, method, path, secret, body, id string) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := http.Header{}
	h.Set("X-Taskworker-Forward-Method", method)
	h.Set("X-Taskworker-Forward-Uri", path)
	h.Set("X-Taskworker-Forward-Client", "127.0.0.1:1")
	h.Set("X-Taskworker-Forward-Request", id)
	if body != "" {
		h.Set("Content-Type", "application/json")
	}
	if secret != "" {
		h.Set("Authorization", "Bearer "+secret)
	}
	resp, err := from.internode.Forwarding().Call(ctx, from.internode.Addr(leader.Name()), forward.Path, h, []byte(body))
	if err != nil {
		t.Fatalf("forward %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.Header.Get(forward.HeaderServedBy) != leader.Name() && resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("forward %s %s: served by %q, want the leader %s", method, path, resp.Header.Get(forward.HeaderServedBy), leader.Name())
	}
	return resp.StatusCode, []byte(strings.TrimSpace(string(b)))
}
