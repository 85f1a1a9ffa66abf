package pki

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// joinServer is the CA side of the exchange as the node will wire it: HTTPS with the node's
// own identity (chain leaf+CA), a bounded JSON body, SignJoin, 403 for a refused token.
type joinServer struct {
	ca      *CA
	token   Token
	gossip  [][]byte
	calls   atomic.Int64
	refused atomic.Int64
	srv     *httptest.Server
}

func newJoinServer(t *testing.T, ca *CA) *joinServer {
	t.Helper()
	tok, err := NewToken(ca.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	js := &joinServer{ca: ca, token: tok, gossip: [][]byte{GenerateGossipKey(), GenerateGossipKey()}}
	js.srv = httptest.NewUnstartedServer(http.HandlerFunc(js.serve))
	// The joiner has no certificate yet, so the join listener asks for none. Certificates is set
	// directly: httptest fills an empty Certificates with its own, which Go then prefers to
	// GetCertificate for a client that sends no SNI (an IP address).
	id := issue(t, ca, NodeSpec{Name: "first", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	js.srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{id.Cert}}
	js.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected here
	js.srv.StartTLS()
	t.Cleanup(js.srv.Close)
	return js
}

func (js *joinServer) serve(w http.ResponseWriter, r *http.Request) {
	js.calls.Add(1)
	var req JoinRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxJoinRequestBytes)).Decode(&req); err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	resp, err := js.ca.SignJoin(req, SignJoinOptions{Token: js.token, GossipKeys: js.gossip, Now: time.Now()})
	switch {
	case errors.Is(err, ErrJoinDenied):
		js.refused.Add(1)
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	_ = json.NewEncoder(w).Encode(resp)
}

// join is the joiner's side over HTTPS: pinned TLS, POST, CompleteJoin.
func join(ctx context.Context, url string, tok Token, name string) (*JoinResult, error) {
	key, req, err := NewJoinRequest(tok, name, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: PinnedClientConfig(tok.Fingerprint)}}
	defer client.CloseIdleConnections()
	res, err := client.Do(hreq)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("join: HTTP %d", res.StatusCode)
	}
	var resp JoinResponse
	if err := json.NewDecoder(res.Body).Decode(&resp); err != nil {
		return nil, err
	}
	return CompleteJoin(tok, key, name, resp, time.Now())
}

func TestJoinExchangeOverHTTPS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ca := newTestCA(t, "global")
	js := newJoinServer(t, ca)
	if !strings.HasPrefix(js.srv.URL, "https://127.0.0.1:") {
		t.Fatalf("server at %s", js.srv.URL)
	}

	t.Run("the right token joins", func(t *testing.T) {
		res, err := join(ctx, js.srv.URL, js.token, "joiner")
		if err != nil {
			t.Fatal(err)
		}
		leaf := res.Identity.Leaf()
		if name, ok := NodeName(leaf, "global"); !ok || name != "joiner" {
			t.Errorf("certificate names %q", name)
		}
		if len(res.GossipKeys) != 2 || !bytes.Equal(res.GossipKeys[0], js.gossip[0]) {
			t.Error("gossip keys not received, or out of order")
		}
		// The new identity works for internode TLS with the cluster, both ways.
		server := NewHolder(issue(t, ca, NodeSpec{Name: "first"}))
		joined := NewHolder(res.Identity)
		for _, pair := range [][2]*Holder{{server, joined}, {joined, server}} {
			serr, cerr := handshake(t, InternodeServerConfig(pair[0], ServerName("global")), InternodeClientConfig(pair[1], ServerName("global")))
			if serr != nil || cerr != nil {
				t.Fatalf("internode TLS with the joined identity: server %v, client %v", serr, cerr)
			}
		}
	})

	t.Run("a wrong secret is refused by the CA side", func(t *testing.T) {
		before := js.refused.Load()
		wrong := Token{Fingerprint: js.token.Fingerprint, Secret: js.token.Rotate().Secret}
		if _, err := join(ctx, js.srv.URL, wrong, "intruder"); err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("err = %v, want HTTP 403", err)
		}
		if js.refused.Load() != before+1 {
			t.Fatal("the CA side did not record the refusal")
		}
	})

	t.Run("a wrong fingerprint is refused by the joiner before sending", func(t *testing.T) {
		before := js.calls.Load()
		other := newTestCA(t, "global")
		wrong := Token{Fingerprint: other.Fingerprint(), Secret: js.token.Secret}
		_, err := join(ctx, js.srv.URL, wrong, "lost")
		if !errors.Is(err, ErrFingerprintMismatch) {
			t.Fatalf("err = %v, want ErrFingerprintMismatch", err)
		}
		if js.calls.Load() != before {
			t.Fatal("the request (and its secret) reached the server")
		}
	})

	t.Run("after rotation the old token is refused and the new one joins", func(t *testing.T) {
		old := js.token
		js.token = old.Rotate() // nothing else runs against js now
		if _, err := join(ctx, js.srv.URL, old, "late"); err == nil {
			t.Fatal("the old token still joins")
		}
		if _, err := join(ctx, js.srv.URL, js.token, "late"); err != nil {
			t.Fatalf("the new token: %v", err)
		}
	})
}

func TestSignJoinRefusesBadRequests(t *testing.T) {
	ca := newTestCA(t, "global")
	tok, _ := NewToken(ca.Fingerprint())
	opts := SignJoinOptions{Token: tok, Now: time.Now()}
	_, good, err := NewJoinRequest(tok, "n1", nil)
	if err != nil {
		t.Fatal(err)
	}
	csrFor := func(key any, cn string) string {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	tampered := good
	block, _ := pem.Decode([]byte(good.CSR))
	block.Bytes[len(block.Bytes)-5] ^= 0xff // inside the signature
	tampered.CSR = string(pem.EncodeToMemory(block))

	for _, tc := range []struct {
		name string
		req  JoinRequest
		want error
	}{
		{"good", good, nil},
		{"no token", JoinRequest{NodeName: "n1", CSR: good.CSR}, ErrJoinDenied},
		{"garbage token", JoinRequest{NodeName: "n1", Token: "hello", CSR: good.CSR}, ErrJoinDenied},
		{"wrong secret with a bad CSR is refused for the token", JoinRequest{NodeName: "n1", Token: tok.Rotate().Encode(), CSR: "junk"}, ErrJoinDenied},
		{"CSR for another node", JoinRequest{NodeName: "n2", Token: good.Token, CSR: good.CSR}, ErrBadJoinRequest},
		{"tampered CSR", tampered, ErrBadJoinRequest},
		{"no CSR", JoinRequest{NodeName: "n1", Token: good.Token}, ErrBadJoinRequest},
		{"P-384 key", JoinRequest{NodeName: "n1", Token: good.Token, CSR: csrFor(p384, "n1")}, ErrBadJoinRequest},
		{"RSA key", JoinRequest{NodeName: "n1", Token: good.Token, CSR: csrFor(rsaKey, "n1")}, ErrBadJoinRequest},
		{"bad node name", JoinRequest{NodeName: "a\nb", Token: good.Token, CSR: good.CSR}, ErrBadJoinRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ca.SignJoin(tc.req, opts)
			if tc.want == nil {
				if err != nil || resp.Certificate == "" {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if strings.Contains(err.Error(), tok.Secret) {
				t.Fatal("error shows the secret")
			}
		})
	}
	t.Run("the CA side never signs with another CA's token", func(t *testing.T) {
		foreign, _ := NewToken(newTestCA(t, "global").Fingerprint())
		_, req, _ := NewJoinRequest(foreign, "n1", nil)
		if _, err := ca.SignJoin(req, SignJoinOptions{Token: foreign, Now: time.Now()}); !errors.Is(err, ErrJoinDenied) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestCompleteJoinTrustsOnlyThePinnedCA(t *testing.T) {
	ca, other := newTestCA(t, "global"), newTestCA(t, "global")
	tok, _ := NewToken(ca.Fingerprint())
	key, req, err := NewJoinRequest(tok, "n1", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ca.SignJoin(req, SignJoinOptions{Token: tok, Now: time.Now(), GossipKeys: [][]byte{GenerateGossipKey()}})
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherTok, _ := NewToken(other.Fingerprint())
	_, otherReq, _ := NewJoinRequest(otherTok, "n1", nil)
	otherResp, err := other.SignJoin(otherReq, SignJoinOptions{Token: otherTok, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	mixed := resp
	mixed.Certificate = otherResp.Certificate // signed by another CA, presented with ours
	badGossip := resp
	badGossip.GossipKeys = []string{"c2hvcnQ="}

	for _, tc := range []struct {
		name string
		key  *ecdsa.PrivateKey
		node string
		resp JoinResponse
		now  time.Time
		ok   bool
	}{
		{"good", key, "n1", resp, time.Now(), true},
		{"certificate for another key", otherKey, "n1", resp, time.Now(), false},
		{"certificate for another node", key, "n2", resp, time.Now(), false},
		{"a CA that is not the pinned one", key, "n1", otherResp, time.Now(), false},
		{"certificate from another CA beside the pinned CA", key, "n1", mixed, time.Now(), false},
		{"expired on arrival", key, "n1", resp, time.Now().Add(DefaultNodeValidity + time.Hour), false},
		{"bad gossip key", key, "n1", badGossip, time.Now(), false},
		{"empty", key, "n1", JoinResponse{}, time.Now(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := CompleteJoin(tok, tc.key, tc.node, tc.resp, tc.now)
			if tc.ok {
				if err != nil || res.Identity == nil || len(res.GossipKeys) != 1 {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrBadJoinResponse) {
				t.Fatalf("err = %v, want ErrBadJoinResponse", err)
			}
		})
	}
}
