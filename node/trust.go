package node

import (
	"context"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/internode"
	"github.com/taskworker/taskworker/internal/telemetry"
	"github.com/taskworker/taskworker/internal/trust"
	"github.com/taskworker/taskworker/membership"
)

// refusalWarnEvery is how often a refused join, or a refused internode call, from one remote
// address is logged; the others are counted (a refused join in taskworker_join_refused_total)
// and summed up in the next line logged.
const refusalWarnEvery = time.Minute

// setupTrust loads or makes this node's identity and keyring (internal/trust), before raft and
// gossip start. resumed says the data dir holds raft state.
func (n *Node) setupTrust(resumed bool) error {
	cfg := &n.cfg
	joinRefusals := telemetry.NewPerAddrLimiter(refusalWarnEvery)
	t, err := trust.New(n.ctx, trust.Config{
		Name: cfg.Name, Cluster: cfg.Cluster, DataDir: cfg.DataDir, Insecure: cfg.Insecure, Resumed: resumed,
		Join: cfg.Join, JoinToken: cfg.JoinToken, GossipKey: cfg.GossipKey,
		TLSCertFile: cfg.TLSCertFile, TLSKeyFile: cfg.TLSKeyFile, TLSCAFile: cfg.TLSCAFile,
		CertValidity: cfg.CertValidity, IPs: advertiseIPs(cfg), Logger: n.log,
		FSM: n.fsm, IsLeader: n.IsLeader,
		// The channel is made once raft runs, after this: trust calls these only later.
		Apply: func(ctx context.Context, c *fsm.Command) (*fsm.Result, error) { return n.internode.Apply(ctx, c) },
		Members: func() []membership.Member {
			if n.members == nil {
				return nil
			}
			return n.members.Members()
		},
		GossipKeyIDs: func(ids string) error {
			if n.members == nil {
				return nil
			}
			return n.members.UpdateMeta(func(m *membership.Meta) { m.Keys = ids })
		},
		Get: func(ctx context.Context, addr, path string) (*http.Response, error) {
			return n.internode.Get(ctx, addr, path)
		},
		Caller:           func(ctx context.Context) string { return internode.CallerOf(ctx).Name },
		JoinRefused:      n.metrics.JoinRefused,
		AllowJoinWarning: func(ip string) (bool, int) { return joinRefusals.Allow(ip, time.Now()) },
	})
	if err != nil {
		return err
	}
	n.trust = t
	n.closers = append(n.closers, t.Close)
	return nil
}

// advertiseIPs are the IPs peers dial this node at, for its certificate.
func advertiseIPs(cfg *Config) []net.IP {
	var ips []net.IP
	for _, bind := range []string{cfg.GossipAddr, cfg.RaftAddr, cfg.HTTPAddr} {
		if bind == "" {
			continue
		}
		host, err := advertiseHost(cfg.Advertise, bind)
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
	return ips
}
