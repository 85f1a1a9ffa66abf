package internode

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/membership"
)

const testCluster = "test"

// certTrust is the trust of a secure node holding one identity of the test cluster.
type certTrust struct{ h *pki.Holder }

func (t certTrust) Insecure() bool      { return false }
func (t certTrust) Holder() *pki.Holder { return t.h }
func (t certTrust) ServerName() string  { return pki.ServerName(testCluster) }
func (t certTrust) Cluster() string     { return testCluster }

type noMetrics struct{}

func (noMetrics) ObserveApply(time.Duration) {}
func (noMetrics) PlacedAtSubmit(int)         {}
func (noMetrics) ForwardAbandoned()          {}

// identity issues a server certificate of ca naming the node name ("": naming none).
func identity(t *testing.T, ca *pki.CA, name string) *pki.Holder {
	t.Helper()
	id, err := ca.IssueIdentity(pki.NodeSpec{Name: name, Role: pki.RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Validity: time.Hour}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return pki.NewHolder(id)
}

// leaderRaft starts a one-server raft over f, in memory, and returns it once it leads.
func leaderRaft(t *testing.T, f *fsm.FSM) *raft.Raft {
	t.Helper()
	conf := raft.DefaultConfig()
	conf.LocalID = "n1"
	conf.Logger = nil
	conf.LogOutput = io.Discard
	_, trans := raft.NewInmemTransport("n1")
	logs, snaps := raft.NewInmemStore(), raft.NewInmemSnapshotStore()
	if err := raft.BootstrapCluster(conf, logs, logs, snaps, trans, raft.Configuration{Servers: []raft.Server{{ID: "n1", Address: trans.LocalAddr()}}}); err != nil {
		t.Fatal(err)
	}
	r, err := raft.NewRaft(conf, f, logs, logs, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Shutdown().Error() })
	select {
	case <-r.LeaderCh():
	case <-time.After(30 * time.Second):
		t.Fatal("the one-server raft did not lead within 30s")
	}
	return r
}

// testChannel is a Channel named name over r and f (nil r: a node that only calls others).
func testChannel(t *testing.T, name string, r *raft.Raft, f *fsm.FSM, h *pki.Holder) *Channel {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	return New(Config{
		Name: name, Raft: r, FSM: f, Trust: certTrust{h}, Done: done, ApplyTimeout: 10 * time.Second,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics:      noMetrics{},
		Leader:       func() string { return "n1" },
		Members:      func() []membership.Member { return nil },
		Alive:        func() map[string]bool { return map[string]bool{} },
		Announce:     func() {},
		ServerIDs:    func([]raft.Server, string) []raft.ServerID { return nil },
		MemberID:     func(m membership.Member) raft.ServerID { return raft.ServerID(m.Name) },
		StorageFault: func() string { return "" },
		Admission:    func() *fsm.AdmissionEnv { return nil },
		CheckChild:   func(*fsm.Submit) error { return nil },
		AllowWarning: func(string) (bool, int) { return true, 0 },
	})
}

// A secure channel takes a node's command only from that node, named by its certificate, and
// applies it through raft; it refuses a caller without a certificate, or with one that names no
// node, except on a route mounted as open.
func TestSecureChannelActsOnlyForTheCallersNode(t *testing.T) {
	ca, err := pki.CreateCA(testCluster, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f := fsm.New()
	leader := testChannel(t, "n1", leaderRaft(t, f), f, identity(t, ca, "n1"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open := Route{Pattern: "POST /v1/internode/open", Open: true,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })}
	served := make(chan struct{})
	go func() {
		defer close(served)
		leader.Serve(ln, open)
	}()
	t.Cleanup(func() {
		_ = leader.Server().Close()
		<-served
	})
	addr := ln.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	n2 := testChannel(t, "n2", nil, fsm.New(), identity(t, ca, "n2"))
	register := func(name string) *fsm.Command {
		return &fsm.Command{Body: &fsm.Register{Node: fsm.Node{Name: name, BootID: "b-" + name, GossipAddr: "127.0.0.1:1"}}}
	}
	if _, err := n2.Send(ctx, addr, register("n2")); err != nil {
		t.Fatalf("n2 registering itself: %v", err)
	}
	if _, ok := f.Node("n2"); !ok {
		t.Fatal("n2's registration was not applied")
	}
	var ae *api.Error
	if _, err := n2.Send(ctx, addr, register("n3")); !errors.As(err, &ae) || ae.Code != api.CodeForbidden {
		t.Fatalf("n2 registering n3: %v, want forbidden", err)
	}
	if _, ok := f.Node("n3"); ok {
		t.Fatal("a registration n2 sent for n3 was applied")
	}

	post := func(tr *tls.Config, path string) int {
		t.Helper()
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tr}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Post("https://"+addr+path, "application/msgpack", strings.NewReader("x"))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	nameless := pki.InternodeClientConfig(identity(t, ca, ""), pki.ServerName(testCluster))
	if code := post(nameless, CommandPath(fsm.CmdDrain)); code != http.StatusForbidden {
		t.Errorf("a certificate that names no node: %d, want 403", code)
	}
	anon := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // a caller without a certificate
	if code := post(anon, CommandPath(fsm.CmdDrain)); code != http.StatusUnauthorized {
		t.Errorf("no certificate: %d, want 401", code)
	}
	if code := post(anon, "/v1/internode/open"); code != http.StatusNoContent {
		t.Errorf("no certificate on the open route: %d, want 204", code)
	}
}
