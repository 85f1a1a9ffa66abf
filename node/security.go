package node

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/internal/store"
	"github.com/taskworker/taskworker/internal/telemetry"
	"github.com/taskworker/taskworker/membership"
)

// Trust between nodes, secure by default (as Docker Swarm and k3s are):
//
//   - The first node of a cluster (no raft state, no --join) makes the cluster CA, its own node
//     certificate, a gossip key and a join token, in <data-dir>/tls (0700), and writes the token
//     to <data-dir>/join-token (0600). It logs the file's name, never the token.
//   - A joiner (--join ADDR --join-token T) reaches ADDR, a member's gossip port, over TLS pinned
//     to the CA fingerprint in the token, proves itself with the token's secret, and gets back a
//     node certificate for a key it made, the CA (with its key) and the gossip keys (internode.go).
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

// security is the node's trust material. In insecure mode only insecure is set.
type security struct {
	insecure bool
	holder   *pki.Holder
	source   pki.Source // what a SIGHUP reloads
	// ca is the cluster CA with its key; nil with operator certificates.
	ca *pki.CA
	// cluster and serverName: the name every internode certificate must carry.
	cluster, serverName string
	keyring             *memberlist.Keyring
	dir                 string // <data-dir>/tls
	// localToken is the newest join token this node knows (it made the cluster, rotated the
	// token, or read it from its join-token file). Only the secret's hash is replicated, so a
	// node answers GET join-token only while its token matches that hash (joinToken).
	localToken atomic.Pointer[pki.Token]
	// management is the cluster's management credential as this node holds it (secrets.go);
	// nil until this node made it or fetched it from a peer.
	management atomic.Pointer[string]
	// secretsDir holds the join-token file: the data dir (a temporary one for in-memory nodes).
	secretsDir string
	// announce: this node made the cluster and logs the join command once gossip runs.
	announce bool
	// joinRefusals limits the warnings about refused joins to one per remote address per minute.
	joinRefusals *telemetry.PerAddrLimiter
	// callRefusals does the same for refused internode calls and TLS handshakes (warnRefusedCall).
	callRefusals *telemetry.PerAddrLimiter
	// seeding: a leader is writing the management credential's hash (seedManagement);
	// waitedUpgrade: it said once that an older node holds that back.
	seeding, waitedUpgrade atomic.Bool
}

// keyringFile holds a node's gossip keyring in <data-dir>/tls, base64 keys, primary first.
const keyringFile = "keyring.json"

var (
	// errNeedJoinToken: a secure node asked to join without a token.
	errNeedJoinToken = errors.New("joining a secure cluster needs its join token: pass --join-token-file " +
		"with a copy of <data-dir>/join-token of the first node (or the token in TASKWORKER_JOIN_TOKEN), " +
		"or --insecure if that cluster runs --insecure")
	// errNoJoinToken: this node cannot say the cluster's join token.
	errNoJoinToken = errors.New("this cluster has no join token")
)

// setupSecurity loads or makes this node's identity and keyring, before raft and gossip start.
// resumed says the data dir holds raft state.
func (n *Node) setupSecurity(resumed bool) error {
	cfg := &n.cfg
	s := &security{insecure: cfg.Insecure, joinRefusals: telemetry.NewPerAddrLimiter(joinWarnEvery), callRefusals: telemetry.NewPerAddrLimiter(joinWarnEvery)}
	n.sec = s
	if cfg.Insecure {
		n.log.Warn("running INSECURE (--insecure): gossip, raft and internode calls are neither encrypted nor authenticated; " +
			"anyone who can reach this node's ports can join the cluster and change its state")
		return nil
	}
	dataDir := cfg.DataDir
	if dataDir == "" { // in-memory test nodes keep their identity in a temporary directory
		dir, err := os.MkdirTemp("", "taskworker-tls-")
		if err != nil {
			return fmt.Errorf("temporary TLS dir: %w", err)
		}
		n.closers = append(n.closers, func() error { return os.RemoveAll(dir) })
		dataDir = dir
	}
	s.dir = filepath.Join(dataDir, "tls")
	s.secretsDir = dataDir
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("create TLS dir: %w", err)
	}
	if err := os.Chmod(s.dir, 0o700); err != nil {
		return fmt.Errorf("TLS dir: %w", err)
	}
	ips, err := n.advertiseIPs()
	if err != nil {
		return err
	}
	now := time.Now()
	var keys [][]byte // the keyring, primary first
	_, identityErr := os.Stat(filepath.Join(s.dir, pki.NodeCertFile))
	switch {
	case cfg.TLSCertFile != "":
		src := pki.FileSource{CertFile: cfg.TLSCertFile, KeyFile: cfg.TLSKeyFile, CAFile: cfg.TLSCAFile}
		id, err := src.Load()
		if err != nil {
			return err
		}
		s.holder, s.source = pki.NewHolder(id), src
		if s.serverName, s.cluster, err = serverNameOf(id.Leaf()); err != nil {
			return err
		}
		// Peers take a node's identity from its certificate: one that names no node, or another
		// node, could not register or report as this one; a reload is held to the same.
		named := pki.NamedSource{Source: src, Cluster: s.cluster, Node: cfg.Name}
		if id, err = named.Load(); err != nil {
			return fmt.Errorf("--tls-cert: %w", err)
		}
		s.holder, s.source = pki.NewHolder(id), named
		if keys, err = loadKeyring(s.dir); errors.Is(err, os.ErrNotExist) {
			if cfg.GossipKey == nil {
				return errors.New("with --tls-cert, also pass --encrypt or --encrypt-file: the gossip key every node shares")
			}
			keys, err = [][]byte{cfg.GossipKey}, nil
		}
		if err != nil {
			return err
		}
		n.log.Info("using the operator's certificates", "cert", cfg.TLSCertFile, "ca", cfg.TLSCAFile, "server_name", s.serverName)
	case identityErr == nil: // a restart: everything is in the data dir
		src := pki.DirSource(s.dir)
		id, err := src.Load()
		if err != nil {
			return fmt.Errorf("load this node's TLS identity: %w", err)
		}
		s.holder, s.source = pki.NewHolder(id), src
		ca, err := pki.LoadCA(s.dir)
		if err != nil && !errors.Is(err, pki.ErrNoCA) {
			return err
		}
		s.ca = ca
		if len(id.CAs) == 0 {
			return errors.New("this node's TLS identity has no CA")
		}
		if s.cluster, err = pki.ClusterOf(id.CAs[0]); err != nil {
			return fmt.Errorf("this node's CA: %w", err)
		}
		s.serverName = pki.ServerName(s.cluster)
		if keys, err = loadKeyring(s.dir); err != nil {
			return fmt.Errorf("this node's gossip keyring: %w", err)
		}
		if t, err := pki.ReadTokenFile(dataDir); err == nil && ca != nil && t.Fingerprint == ca.Fingerprint() {
			s.localToken.Store(&t)
		}
	case resumed:
		return fmt.Errorf("the data dir %s holds raft state but no TLS identity (it ran --insecure): "+
			"start it with --insecure, or give it a fresh data dir and join with --join-token", cfg.DataDir)
	case len(cfg.Join) == 0: // the first node of a new cluster
		ca, _, err := pki.LoadOrCreateCA(s.dir, cfg.Cluster, now)
		if err != nil {
			return err
		}
		id, err := ca.IssueIdentity(pki.NodeSpec{Name: cfg.Name, Role: pki.RoleServer, IPs: ips, Validity: cfg.CertValidity}, now)
		if err != nil {
			return err
		}
		key := cfg.GossipKey
		if key == nil {
			key = pki.GenerateGossipKey()
		}
		keys = [][]byte{key}
		tok, _, err := pki.LoadOrCreateToken(dataDir, ca.Fingerprint())
		if err != nil {
			return err
		}
		if err := saveKeyring(s.dir, keys); err != nil {
			return err
		}
		// The identity last: its presence is what marks the setup complete.
		if err := pki.SaveIdentity(s.dir, id); err != nil {
			return err
		}
		s.ca, s.cluster, s.serverName = ca, cfg.Cluster, pki.ServerName(cfg.Cluster)
		s.holder, s.source = pki.NewHolder(id), pki.DirSource(s.dir)
		s.localToken.Store(&tok)
		s.announce = true
		n.log.Info("created the cluster CA, this node's certificate and a gossip key", "dir", s.dir,
			"ca_fingerprint", ca.Fingerprint())
	default: // a new node joining with the token
		if cfg.JoinToken == "" {
			return errNeedJoinToken
		}
		tok, err := pki.ParseToken(cfg.JoinToken)
		if err != nil {
			return fmt.Errorf("--join-token: %w", err)
		}
		res, ca, err := n.joinCluster(n.ctx, tok, ips)
		if err != nil {
			return err
		}
		keys = res.GossipKeys
		if len(keys) == 0 {
			return errors.New("join: the cluster sent no gossip key")
		}
		if err := pki.SaveCA(s.dir, ca); err != nil {
			return err
		}
		if err := saveKeyring(s.dir, keys); err != nil {
			return err
		}
		if err := pki.SaveIdentity(s.dir, res.Identity); err != nil {
			return err
		}
		s.ca = ca
		s.cluster, _ = pki.ClusterOf(ca.Cert)
		s.serverName = pki.ServerName(s.cluster)
		s.holder, s.source = pki.NewHolder(res.Identity), pki.DirSource(s.dir)
		// The cluster took it, so it is the current token; kept like the first node's, so that the
		// operator on this node finds it too.
		s.localToken.Store(&tok)
		if err := pki.WriteTokenFile(dataDir, tok); err != nil {
			return err
		}
		n.log.Info("joined the cluster's trust: got this node's certificate, the CA and the gossip keys",
			"ca_fingerprint", ca.Fingerprint(), "not_after", res.Identity.Leaf().NotAfter)
	}
	if err := n.loadManagement(!resumed && len(cfg.Join) == 0); err != nil {
		return err
	}
	ring, err := memberlist.NewKeyring(keys, keys[0])
	if err != nil {
		return fmt.Errorf("gossip keyring: %w", err)
	}
	s.keyring = ring
	return nil
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

// advertiseIPs are the IPs peers dial this node at, for its certificate.
func (n *Node) advertiseIPs() ([]net.IP, error) {
	var ips []net.IP
	for _, bind := range []string{n.cfg.GossipAddr, n.cfg.RaftAddr, n.cfg.HTTPAddr} {
		if bind == "" {
			continue
		}
		host, err := advertiseHost(n.cfg.Advertise, bind)
		if err != nil {
			continue
		}
		if ip := net.ParseIP(host); ip != nil && !slices.ContainsFunc(ips, ip.Equal) {
			ips = append(ips, ip)
		}
	}
	if !slices.ContainsFunc(ips, net.IPv4(127, 0, 0, 1).Equal) {
		ips = append(ips, net.IPv4(127, 0, 0, 1)) // local tools reach the HTTPS API on loopback
	}
	return ips, nil
}

// keyringJSON is keyringFile's content.
type keyringJSON struct {
	Keys []string `json:"keys"` // base64, primary first
}

func loadKeyring(dir string) ([][]byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, keyringFile))
	if err != nil {
		return nil, fmt.Errorf("read gossip keyring: %w", err)
	}
	var kj keyringJSON
	if err := json.Unmarshal(b, &kj); err != nil {
		return nil, fmt.Errorf("read gossip keyring: %w", err)
	}
	var keys [][]byte
	for _, s := range kj.Keys {
		k, err := pki.DecodeGossipKey(s)
		if err != nil {
			return nil, fmt.Errorf("read gossip keyring: %w", err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("read gossip keyring: no keys")
	}
	return keys, nil
}

func saveKeyring(dir string, keys [][]byte) error {
	var kj keyringJSON
	for _, k := range keys {
		kj.Keys = append(kj.Keys, pki.EncodeGossipKey(k))
	}
	b, err := json.Marshal(kj)
	if err != nil {
		return err
	}
	if err := store.WriteFileAtomic(filepath.Join(dir, keyringFile), b, 0o600); err != nil {
		return fmt.Errorf("save gossip keyring: %w", err)
	}
	return nil
}

// localKeys is the local keyring, primary first.
func localKeys(ring *memberlist.Keyring) [][]byte {
	primary := ring.GetPrimaryKey()
	out := [][]byte{primary}
	for _, k := range ring.GetKeys() {
		if string(k) != string(primary) {
			out = append(out, k)
		}
	}
	return out
}

// keyID is a short, non-secret name of a gossip key, as gossip metadata carries it.
func keyID(k []byte) string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:4])
}

// keyIDs is the comma-separated IDs of keys, as gossip metadata carries them.
func keyIDs(keys [][]byte) string {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, keyID(k))
	}
	return strings.Join(out, ",")
}

// joinToken is the cluster's current join token as this node knows it: the token it holds, when
// its secret matches the hash in the FSM (or, before the first leader wrote the hash, the token
// this node made the cluster with).
func (n *Node) joinToken() (pki.Token, error) {
	s := n.sec
	if s.insecure || s.ca == nil {
		return pki.Token{}, errNoJoinToken
	}
	t := s.localToken.Load()
	if t == nil || t.Fingerprint != s.ca.Fingerprint() {
		return pki.Token{}, errNoJoinToken
	}
	if hash := n.fsm.Security().JoinSecretHash; hash != "" && !fsm.SecretMatches(t.Secret, hash) {
		return pki.Token{}, errNoJoinToken
	}
	return *t, nil
}

// joinSecretOK checks a joiner's secret against the FSM's hash of the join secret (or, before
// the first leader wrote it, against the token this node made the cluster with).
func (n *Node) joinSecretOK(secret string) bool {
	if hash := n.fsm.Security().JoinSecretHash; hash != "" {
		return fsm.SecretMatches(secret, hash)
	}
	t := n.sec.localToken.Load()
	return t != nil && fsm.SecretMatches(secret, fsm.HashSecret(t.Secret))
}

// seedSecurity runs on a new leader: it writes the join secret's hash, the keyring and the
// management credential's hash into the FSM when they are not there yet (a cluster's first
// leader, which made them locally). A leader of a cluster that has no management credential yet
// (one made by a release before it) makes one; the other nodes fetch it (secretsLoop).
func (n *Node) seedSecurity(ctx context.Context) {
	s := n.sec
	if s.insecure {
		return
	}
	cur := n.fsm.Security()
	var cmds []*fsm.Command
	if t := s.localToken.Load(); cur.JoinSecretHash == "" && t != nil && s.ca != nil && t.Fingerprint == s.ca.Fingerprint() {
		cmds = append(cmds, &fsm.Command{Body: &fsm.JoinSecret{Secret: fsm.HashSecret(t.Secret)}})
	}
	if len(cur.Keyring.Keys) == 0 {
		for _, k := range localKeys(s.keyring) { // the first installed becomes the primary
			cmds = append(cmds, &fsm.Command{Body: &fsm.KeyringOp{Op: fsm.KeyInstall, Key: pki.EncodeGossipKey(k)}})
		}
	}
	for _, c := range cmds {
		cctx, cancel := context.WithTimeout(ctx, proposeTimeout)
		_, err := n.applyLocal(cctx, c)
		cancel()
		if errors.Is(err, fsm.ErrProtocolTooOld) {
			n.log.Info("the cluster's security state waits for every node to be upgraded", "command", c.Type().String(), "err", err)
			return
		}
		if err != nil {
			n.log.Warn("write the cluster's security state", "command", c.Type().String(), "err", err)
			return
		}
	}
	n.seedManagement(ctx)
}

// securityLoop makes this node follow the FSM's security state: its memberlist keyring (install,
// use, remove, in that order, so it never drops a key it still needs), the keyring file, the key
// IDs it gossips.
func (n *Node) securityLoop(ctx context.Context) {
	s := n.sec
	if s.insecure {
		return
	}
	for {
		changed := n.fsm.Changed()
		n.followSecurity()
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func (n *Node) followSecurity() {
	cur := n.fsm.Security()
	if len(cur.Keyring.Keys) > 0 {
		n.followKeyring(cur.Keyring)
	}
}

func (n *Node) followKeyring(want fsm.Keyring) {
	s := n.sec
	ring := s.keyring
	var wantKeys [][]byte
	var primary []byte
	for _, text := range want.Keys {
		k, err := pki.DecodeGossipKey(text)
		if err != nil {
			n.log.Error("the cluster keyring holds a key that is not valid; ignoring it", "key_id", "?", "err", err)
			continue
		}
		wantKeys = append(wantKeys, k)
		if text == want.Primary {
			primary = k
		}
	}
	if primary == nil {
		return
	}
	before := localKeys(ring)
	for _, k := range wantKeys {
		if !slices.ContainsFunc(ring.GetKeys(), func(h []byte) bool { return string(h) == string(k) }) {
			if err := ring.AddKey(k); err != nil {
				n.log.Error("install gossip key", "key_id", keyID(k), "err", err)
			}
		}
	}
	if string(ring.GetPrimaryKey()) != string(primary) {
		if err := ring.UseKey(primary); err != nil {
			n.log.Error("use gossip key", "key_id", keyID(primary), "err", err)
		}
	}
	for _, k := range ring.GetKeys() {
		if !slices.ContainsFunc(wantKeys, func(h []byte) bool { return string(h) == string(k) }) {
			if err := ring.RemoveKey(k); err != nil {
				n.log.Error("remove gossip key", "key_id", keyID(k), "err", err)
			}
		}
	}
	after := localKeys(ring)
	if slices.EqualFunc(before, after, func(a, b []byte) bool { return string(a) == string(b) }) {
		return
	}
	if err := saveKeyring(s.dir, after); err != nil {
		n.log.Error("gossip keyring changed but not saved; a restart would use the old one", "err", err)
	}
	n.log.Info("gossip keyring changed", "primary", keyID(after[0]), "keys", keyIDs(after))
	if n.members != nil {
		if err := n.members.UpdateMeta(func(m *membership.Meta) { m.Keys = keyIDs(after) }); err != nil {
			n.log.Debug("gossip the new key IDs", "err", err)
		}
	}
}

// ReloadTLS reads the node's certificate files again (SIGHUP). On error the current ones stay.
func (n *Node) ReloadTLS() error {
	s := n.sec
	if s == nil || s.insecure || s.source == nil {
		return errors.New("this node has no TLS files to reload")
	}
	if err := s.holder.Reload(s.source); err != nil {
		return err
	}
	n.log.Info("reloaded TLS certificate files", "not_after", s.holder.Identity().Leaf().NotAfter)
	return nil
}

// renewer keeps a node certificate issued by the cluster CA fresh; nil when the CA is not here.
func (n *Node) renewer() *pki.Renewer {
	s := n.sec
	if s.insecure || s.ca == nil || n.cfg.TLSCertFile != "" {
		return nil
	}
	ips, _ := n.advertiseIPs()
	return &pki.Renewer{
		Holder: s.holder, Issuer: pki.LocalIssuer{CA: s.ca},
		Spec:    pki.NodeSpec{Name: n.cfg.Name, Role: pki.RoleServer, IPs: ips, Validity: n.cfg.CertValidity},
		OnRenew: func(id *pki.Identity) error { return pki.SaveIdentity(s.dir, id) },
		Logger:  n.log.With("component", "tls"),
	}
}
