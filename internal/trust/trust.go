// Package trust owns a node's trust material and the cluster secrets the node holds: its TLS
// identity and the cluster CA (made, loaded, received in the join exchange, renewed, reloaded),
// the gossip keyring and its following of the FSM's, the join token and the management
// credential, the join exchange on both sides and the internode secret route, and the pointer
// the CLI follows to the management credential (internal/agentcred).
//
// It may not touch raft, gossip's runtime, the public API or forwarding. It writes the cluster's
// security state through Config.Apply, reads it from the FSM, reaches other nodes through
// Config.Get and learns who they are from Config.Members. It serves two internode routes
// (HandleJoin, HandleSecret), which the node mounts on its internode listener, but does not
// authenticate their callers: the listener does, and HandleSecret learns the caller's node from
// Config.Caller.
//
// Trust between nodes is secure by default (as Docker Swarm and k3s are):
//
//   - The first node of a cluster (no raft state, no --join) makes the cluster CA, its own node
//     certificate, a gossip key and a join token, in <data-dir>/tls (0700), and writes the token
//     to <data-dir>/join-token (0600). It logs the file's name, never the token.
//   - A joiner (--join ADDR --join-token T) reaches ADDR, a member's gossip port, over TLS pinned
//     to the CA fingerprint in the token, proves itself with the token's secret, and gets back a
//     node certificate for a key it made, the CA (with its key) and the gossip keys (join.go).
//   - From then on gossip is encrypted with the keyring, and raft and internode calls use mutual
//     TLS with certificates that name server.<cluster>.taskworker.
//
// Every node holds the CA key. All nodes are equal: any may lead and any may admit a joiner or
// renew its own certificate, and there is no separate CA service to keep alive. The cost is that
// a stolen data dir of any node can mint certificates for the cluster, as k3s servers and Swarm
// managers hold theirs; protect data dirs as you protect the CA, or bring your own PKI
// (--tls-cert, --tls-key, --tls-ca, --encrypt), in which case no node holds a CA key.
//
// The keyring and the hashes of the join secret and of the management credential live in the
// replicated FSM (fsm/security.go), so any node admits joiners with the current secret and a
// keyring change reaches every node; each node also keeps its keyring and identity in
// <data-dir>/tls so it restarts without the token. The secrets themselves are held by nodes only,
// which pass them to each other over the internode channel (secretroute.go).
package trust

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/membership"
)

// Config is what a node's trust is made from: the node's settings, and functions for what lives
// in the node. The functions are called only after New has returned, so they may read what the
// node sets up after it (gossip, the internode client).
type Config struct {
	Name     string // this node's name, which its certificate carries
	Cluster  string // the cluster's name, for the CA a new cluster makes
	DataDir  string // "" for an in-memory node: its identity is kept in a temporary dir
	Insecure bool   // --insecure: no trust material at all
	Resumed  bool   // the data dir holds raft state
	// Join and JoinToken: the members a new node runs the join exchange with, and its token.
	Join      []string
	JoinToken string
	GossipKey []byte // --encrypt: a new cluster's first gossip key, or the key with --tls-cert
	// TLSCertFile, TLSKeyFile and TLSCAFile are the operator's certificates (--tls-cert etc.);
	// with them this node holds no CA key.
	TLSCertFile, TLSKeyFile, TLSCAFile string
	CertValidity                       time.Duration // of the node certificates this node issues itself
	IPs                                []net.IP      // where peers dial this node, for its certificate
	Logger                             *slog.Logger

	FSM *fsm.FSM
	// Apply writes a command of the cluster's security state on this node, as leader.
	Apply func(ctx context.Context, c *fsm.Command) (*fsm.Result, error)
	// IsLeader reports whether this node leads.
	IsLeader func() bool
	// Members is gossip's view of the members; nil before gossip runs.
	Members func() []membership.Member
	// GossipKeyIDs gossips the IDs of the keys this node's keyring holds (membership.Meta.Keys).
	GossipKeyIDs func(ids string) error
	// Get sends a GET to path on the node at addr (its internode address) over the internode
	// channel, authenticated by this node's certificate.
	Get func(ctx context.Context, addr, path string) (*http.Response, error)
	// Caller names the node an internode request came from, as its certificate does; "" if none.
	Caller func(ctx context.Context) string
	// JoinRefused is told of every refused join (a metric counts them); optional.
	JoinRefused func()
	// AllowJoinWarning reports whether a refused join from ip is logged now, and how many from
	// it were not since the last one logged; nil logs every one. Anyone who can reach the gossip
	// port can send wrong tokens as fast as it likes.
	AllowJoinWarning func(ip string) (ok bool, suppressed int)
}

// Trust is a node's trust material. In insecure mode it holds none, and its loops and routes do
// nothing but refuse.
type Trust struct {
	cfg      Config
	log      *slog.Logger
	insecure bool
	holder   *pki.Holder
	source   pki.Source // what Reload reads
	// ca is the cluster CA with its key; nil with operator certificates.
	ca *pki.CA
	// cluster and serverName: the name every internode certificate must carry.
	cluster, serverName string
	keyring             *memberlist.Keyring
	ips                 []net.IP
	dir                 string // <data-dir>/tls
	tmpDir              string // the data dir of an in-memory node, removed by Close
	// localToken is the newest join token this node knows (it made the cluster, rotated the
	// token, or read it from its join-token file). Only the secret's hash is replicated, so a
	// node answers GET join-token only while its token matches that hash (JoinToken).
	localToken atomic.Pointer[pki.Token]
	// management is the cluster's management credential as this node holds it (secrets.go);
	// nil until this node made it or fetched it from a peer.
	management atomic.Pointer[string]
	// secretsDir holds the join-token file: the data dir (a temporary one for in-memory nodes).
	secretsDir string
	// announce: this node made the cluster and logs the join command once gossip runs.
	announce bool
	// seeding: a leader is writing the management credential's hash (seedManagement);
	// waitedUpgrade: it said once that an older node holds that back.
	seeding, waitedUpgrade atomic.Bool
}

// writeTimeout bounds one write of the cluster's security state, as long as any proposal of
// the node may take.
const writeTimeout = 10 * time.Second

var (
	// ErrNeedJoinToken: a secure node asked to join without a token.
	ErrNeedJoinToken = errors.New("joining a secure cluster needs its join token: pass --join-token-file " +
		"with a copy of <data-dir>/join-token of the first node (or the token in TASKWORKER_JOIN_TOKEN), " +
		"or --insecure if that cluster runs --insecure")
	// errNoJoinToken: this node cannot say the cluster's join token.
	errNoJoinToken = errors.New("this cluster has no join token")
)

// New loads or makes this node's identity and keyring, before raft and gossip start: from the
// operator's files, from the data dir on a restart, as a new cluster's first node, or through
// the join exchange (which waits, under ctx, until a member answers).
func New(ctx context.Context, cfg Config) (_ *Trust, err error) {
	t := &Trust{cfg: cfg, log: cfg.Logger, insecure: cfg.Insecure}
	if cfg.Insecure {
		t.log.Warn("running INSECURE (--insecure): gossip, raft and internode calls are neither encrypted nor authenticated; " +
			"anyone who can reach this node's ports can join the cluster and change its state")
		return t, nil
	}
	dataDir := cfg.DataDir
	if dataDir == "" { // in-memory test nodes keep their identity in a temporary directory
		dir, err := os.MkdirTemp("", "taskworker-tls-")
		if err != nil {
			return nil, fmt.Errorf("temporary TLS dir: %w", err)
		}
		t.tmpDir, dataDir = dir, dir
		defer func() {
			if err != nil {
				_ = t.Close()
			}
		}()
	}
	t.dir = filepath.Join(dataDir, "tls")
	t.secretsDir = dataDir
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create TLS dir: %w", err)
	}
	if err := os.Chmod(t.dir, 0o700); err != nil {
		return nil, fmt.Errorf("TLS dir: %w", err)
	}
	t.ips = cfg.IPs
	keys, err := t.loadIdentity(ctx, dataDir)
	if err != nil {
		return nil, err
	}
	if err := t.loadManagement(!cfg.Resumed && len(cfg.Join) == 0); err != nil {
		return nil, err
	}
	ring, err := memberlist.NewKeyring(keys, keys[0])
	if err != nil {
		return nil, fmt.Errorf("gossip keyring: %w", err)
	}
	t.keyring = ring
	return t, nil
}

// loadIdentity sets this node's identity, CA and join token, and returns its keyring, primary first.
func (t *Trust) loadIdentity(ctx context.Context, dataDir string) ([][]byte, error) {
	cfg := &t.cfg
	now := time.Now()
	var keys [][]byte
	_, identityErr := os.Stat(filepath.Join(t.dir, pki.NodeCertFile))
	switch {
	case cfg.TLSCertFile != "":
		src := pki.FileSource{CertFile: cfg.TLSCertFile, KeyFile: cfg.TLSKeyFile, CAFile: cfg.TLSCAFile}
		id, err := src.Load()
		if err != nil {
			return nil, err
		}
		t.holder, t.source = pki.NewHolder(id), src
		if t.serverName, t.cluster, err = serverNameOf(id.Leaf()); err != nil {
			return nil, err
		}
		// Peers take a node's identity from its certificate: one that names no node, or another
		// node, could not register or report as this one; a reload is held to the same.
		named := pki.NamedSource{Source: src, Cluster: t.cluster, Node: cfg.Name}
		if id, err = named.Load(); err != nil {
			return nil, fmt.Errorf("--tls-cert: %w", err)
		}
		t.holder, t.source = pki.NewHolder(id), named
		if keys, err = pki.LoadKeyring(t.dir); errors.Is(err, os.ErrNotExist) {
			if cfg.GossipKey == nil {
				return nil, errors.New("with --tls-cert, also pass --encrypt or --encrypt-file: the gossip key every node shares")
			}
			keys, err = [][]byte{cfg.GossipKey}, nil
		}
		if err != nil {
			return nil, err
		}
		t.log.Info("using the operator's certificates", "cert", cfg.TLSCertFile, "ca", cfg.TLSCAFile, "server_name", t.serverName)
	case identityErr == nil: // a restart: everything is in the data dir
		src := pki.DirSource(t.dir)
		id, err := src.Load()
		if err != nil {
			return nil, fmt.Errorf("load this node's TLS identity: %w", err)
		}
		t.holder, t.source = pki.NewHolder(id), src
		ca, err := pki.LoadCA(t.dir)
		if err != nil && !errors.Is(err, pki.ErrNoCA) {
			return nil, err
		}
		t.ca = ca
		if len(id.CAs) == 0 {
			return nil, errors.New("this node's TLS identity has no CA")
		}
		if t.cluster, err = pki.ClusterOf(id.CAs[0]); err != nil {
			return nil, fmt.Errorf("this node's CA: %w", err)
		}
		t.serverName = pki.ServerName(t.cluster)
		if keys, err = pki.LoadKeyring(t.dir); err != nil {
			return nil, fmt.Errorf("this node's gossip keyring: %w", err)
		}
		if tok, err := pki.ReadTokenFile(dataDir); err == nil && ca != nil && tok.Fingerprint == ca.Fingerprint() {
			t.localToken.Store(&tok)
		}
	case cfg.Resumed:
		return nil, fmt.Errorf("the data dir %s holds raft state but no TLS identity (it ran --insecure): "+
			"start it with --insecure, or give it a fresh data dir and join with --join-token", cfg.DataDir)
	case len(cfg.Join) == 0: // the first node of a new cluster
		ca, _, err := pki.LoadOrCreateCA(t.dir, cfg.Cluster, now)
		if err != nil {
			return nil, err
		}
		id, err := ca.IssueIdentity(pki.NodeSpec{Name: cfg.Name, Role: pki.RoleServer, IPs: t.ips, Validity: cfg.CertValidity}, now)
		if err != nil {
			return nil, err
		}
		key := cfg.GossipKey
		if key == nil {
			key = pki.GenerateGossipKey()
		}
		keys = [][]byte{key}
		tok, _, err := pki.LoadOrCreateToken(dataDir, ca.Fingerprint())
		if err != nil {
			return nil, err
		}
		if err := pki.SaveKeyring(t.dir, keys); err != nil {
			return nil, err
		}
		// The identity last: its presence is what marks the setup complete.
		if err := pki.SaveIdentity(t.dir, id); err != nil {
			return nil, err
		}
		t.ca, t.cluster, t.serverName = ca, cfg.Cluster, pki.ServerName(cfg.Cluster)
		t.holder, t.source = pki.NewHolder(id), pki.DirSource(t.dir)
		t.localToken.Store(&tok)
		t.announce = true
		t.log.Info("created the cluster CA, this node's certificate and a gossip key", "dir", t.dir,
			"ca_fingerprint", ca.Fingerprint())
	default: // a new node joining with the token
		if cfg.JoinToken == "" {
			return nil, ErrNeedJoinToken
		}
		tok, err := pki.ParseToken(cfg.JoinToken)
		if err != nil {
			return nil, fmt.Errorf("--join-token: %w", err)
		}
		res, ca, err := t.joinCluster(ctx, tok)
		if err != nil {
			return nil, err
		}
		keys = res.GossipKeys
		if len(keys) == 0 {
			return nil, errors.New("join: the cluster sent no gossip key")
		}
		if err := pki.SaveCA(t.dir, ca); err != nil {
			return nil, err
		}
		if err := pki.SaveKeyring(t.dir, keys); err != nil {
			return nil, err
		}
		if err := pki.SaveIdentity(t.dir, res.Identity); err != nil {
			return nil, err
		}
		t.ca = ca
		t.cluster, _ = pki.ClusterOf(ca.Cert)
		t.serverName = pki.ServerName(t.cluster)
		t.holder, t.source = pki.NewHolder(res.Identity), pki.DirSource(t.dir)
		// The cluster took it, so it is the current token; kept like the first node's, so that the
		// operator on this node finds it too.
		t.localToken.Store(&tok)
		if err := pki.WriteTokenFile(dataDir, tok); err != nil {
			return nil, err
		}
		t.log.Info("joined the cluster's trust: got this node's certificate, the CA and the gossip keys",
			"ca_fingerprint", ca.Fingerprint(), "not_after", res.Identity.Leaf().NotAfter)
	}
	return keys, nil
}

// serverNameOf finds the server.<cluster>.taskworker name in an operator's certificate.
func serverNameOf(leaf *x509.Certificate) (serverName, cluster string, err error) {
	for _, d := range leaf.DNSNames {
		if c, ok := strings.CutPrefix(d, "server."); ok {
			if c, ok = strings.CutSuffix(c, ".taskworker"); ok && pki.ValidateCluster(c) == nil {
				return d, c, nil
			}
		}
	}
	return "", "", errors.New("the --tls-cert certificate names no server.<cluster>.taskworker DNS name, " +
		"which every node's certificate needs (make one with `taskworker tls cert create --server`)")
}

// Close removes the temporary directory an in-memory node keeps its identity in.
func (t *Trust) Close() error {
	if t.tmpDir == "" {
		return nil
	}
	return os.RemoveAll(t.tmpDir)
}

// Insecure reports whether this node runs --insecure: no certificates, keyring or secrets.
func (t *Trust) Insecure() bool { return t.insecure }

// Holder holds this node's certificate, reloaded and renewed in place; nil when insecure.
func (t *Trust) Holder() *pki.Holder { return t.holder }

// CA is the cluster CA with its key; nil when insecure or with operator certificates.
func (t *Trust) CA() *pki.CA { return t.ca }

// Cluster is the cluster's name, as its certificates carry it.
func (t *Trust) Cluster() string { return t.cluster }

// ServerName is the name every internode certificate must carry: server.<cluster>.taskworker.
func (t *Trust) ServerName() string { return t.serverName }

// Dir is where this node keeps its TLS identity and keyring: <data-dir>/tls.
func (t *Trust) Dir() string { return t.dir }

// Reload reads the node's certificate files again (SIGHUP). On error the current ones stay.
func (t *Trust) Reload() error {
	if t == nil || t.insecure || t.source == nil {
		return errors.New("this node has no TLS files to reload")
	}
	if err := t.holder.Reload(t.source); err != nil {
		return err
	}
	t.log.Info("reloaded TLS certificate files", "not_after", t.holder.Identity().Leaf().NotAfter)
	return nil
}

// renewer keeps a node certificate issued by the cluster CA fresh; nil when the CA is not here.
func (t *Trust) renewer() *pki.Renewer {
	if t.insecure || t.ca == nil || t.cfg.TLSCertFile != "" {
		return nil
	}
	return &pki.Renewer{
		Holder: t.holder, Issuer: pki.LocalIssuer{CA: t.ca},
		Spec:    pki.NodeSpec{Name: t.cfg.Name, Role: pki.RoleServer, IPs: t.ips, Validity: t.cfg.CertValidity},
		OnRenew: func(id *pki.Identity) error { return pki.SaveIdentity(t.dir, id) },
		Logger:  t.log.With("component", "tls"),
	}
}

// Run keeps this node's trust current until ctx ends: it renews a certificate of the cluster CA
// before it expires, follows the FSM's keyring (keyring.go), and keeps this node's copies of the
// cluster's secrets matching the FSM's hashes (secretsLoop). It does nothing on an insecure node.
func (t *Trust) Run(ctx context.Context) {
	if t.insecure {
		return
	}
	var wg sync.WaitGroup
	if r := t.renewer(); r != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.Run(ctx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t.keyringLoop(ctx)
	}()
	t.secretsLoop(ctx)
	wg.Wait()
}
