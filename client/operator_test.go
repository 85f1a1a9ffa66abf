package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"sync"
	"testing"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

// operatorFake answers the operator routes as api/operator.go describes them, and records
// the keyring requests it gets.
type operatorFake struct {
	mu    sync.Mutex
	token string
	ops   []api.KeyringRequest
}

func (f *operatorFake) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathJoinToken, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		writeJSON(w, 200, api.JoinToken{Token: f.token})
	})
	mux.HandleFunc("POST "+api.PathJoinTokenRotate, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.token = "TW1::ff::new"
		writeJSON(w, 200, api.JoinToken{Token: f.token})
	})
	mux.HandleFunc("GET "+api.PathKeyring, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.Keyring{Primary: "k1", Keys: []string{"k1", "k2"}, Nodes: map[string]int{"k1": 3, "k2": 2}})
	})
	mux.HandleFunc("POST "+api.PathKeyring, func(w http.ResponseWriter, r *http.Request) {
		var req api.KeyringRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || r.Header.Get("Content-Type") != "application/json" {
			writeJSON(w, 400, api.Errorf(api.CodeInvalidRequest, "bad body"))
			return
		}
		f.mu.Lock()
		f.ops = append(f.ops, req)
		f.mu.Unlock()
		if req.Op == api.KeyringRemove && req.Key == "k1" {
			writeJSON(w, 409, map[string]string{"error": "the primary key cannot be removed", "code": "conflict"})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func TestOperatorCalls(t *testing.T) {
	f := &operatorFake{token: "TW1::ff::old"}
	c := serve(t, f.mux())
	ctx := context.Background()

	if tok, err := c.JoinToken(ctx); err != nil || tok != "TW1::ff::old" {
		t.Fatalf("JoinToken = %q, %v", tok, err)
	}
	if tok, err := c.RotateJoinToken(ctx); err != nil || tok != "TW1::ff::new" {
		t.Fatalf("RotateJoinToken = %q, %v", tok, err)
	}
	if tok, _ := c.JoinToken(ctx); tok != "TW1::ff::new" {
		t.Fatalf("JoinToken after rotate = %q", tok)
	}
	k, err := c.Keyring(ctx)
	if err != nil || k.Primary != "k1" || len(k.Keys) != 2 || k.Nodes["k2"] != 2 {
		t.Fatalf("Keyring = %+v, %v", k, err)
	}
	if err := c.InstallKey(ctx, "k3"); err != nil {
		t.Fatal(err)
	}
	if err := c.UseKey(ctx, "k3"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveKey(ctx, "k2"); err != nil {
		t.Fatal(err)
	}
	err = c.RemoveKey(ctx, "k1")
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 409 {
		t.Fatalf("RemoveKey(primary) = %v, want a 409", err)
	}
	want := []api.KeyringRequest{{Op: "install", Key: "k3"}, {Op: "use", Key: "k3"}, {Op: "remove", Key: "k2"}, {Op: "remove", Key: "k1"}}
	if !reflect.DeepEqual(f.ops, want) {
		t.Fatalf("keyring requests %+v, want %+v", f.ops, want)
	}
}
