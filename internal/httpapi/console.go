package httpapi

import (
	"context"
	"encoding/json"
	"hash/fnv"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/acl"
)

// clusterRecheck is how often a held GET /v1/cluster looks again at what is not in the
// replicated log (gossip states, running counts, raft roles): a killed node shows up in a
// console within about this plus the gossip's own detection time. Replicated changes wake it at
// once.
const clusterRecheck = 250 * time.Millisecond

// isConsole reports whether path is the web console's: its files are public (they hold no
// data), so no credential guards them.
func isConsole(path string) bool {
	return path == "/" || path == "/ui" || strings.HasPrefix(path, "/ui/")
}

// blockingParams parses a blocking query's ?index=N&wait=DURATION (both optional).
func blockingParams(r *http.Request) (index uint64, wait time.Duration, err error) {
	if wait, err = waitParam(r); err != nil {
		return 0, 0, err
	}
	if v := r.URL.Query().Get("index"); v != "" {
		if index, err = strconv.ParseUint(v, 10, 64); err != nil {
			return 0, 0, api.Errorf(api.CodeInvalidIndex, "index must be a non-negative integer")
		}
	}
	return index, wait, nil
}

// waitCluster returns the cluster view and its hash, once the hash differs from index or wait
// has elapsed. The hash stands for the index of a view that is partly not replicated.
func (s *server) waitCluster(ctx context.Context, index uint64, wait time.Duration) (api.Cluster, uint64, error) {
	deadline := time.Now().Add(wait)
	caller, _ := ctx.Value(callerKey{}).(Caller)
	for {
		c, err := s.b.Cluster(ctx)
		if err != nil {
			return c, 0, err
		}
		c = s.visibleCluster(ctx, caller, c)
		h := clusterHash(c)
		left := time.Until(deadline)
		if wait <= 0 || h != index || left <= 0 || ctx.Err() != nil {
			return c, h, nil
		}
		wctx, cancel := context.WithTimeout(ctx, min(left, clusterRecheck))
		s.b.WaitIndex(wctx, s.b.Index())
		cancel()
	}
}

// clusterHash is a hash of what a console shows of the cluster. Raft indexes and lag are left
// out: they move with every write and would wake every held query.
func clusterHash(c api.Cluster) uint64 {
	nodes := make([]api.NodeInfo, len(c.Nodes))
	for i, n := range c.Nodes {
		n.CommitIndex, n.AppliedIndex, n.Lag = 0, 0, nil
		nodes[i] = n
	}
	c.Nodes = nodes
	b, _ := json.Marshal(c)
	f := fnv.New64a()
	_, _ = f.Write(b)
	return f.Sum64() >> 1 // fits a JavaScript number's exact range as well as an int64
}

func (s *server) throughput(w http.ResponseWriter, r *http.Request) {
	WriteJSON(w, http.StatusOK, visibleThroughput(callerOf(r), s.b.Throughput(r.Context())))
}

// capabilities lists what id may do with each task type the cluster knows, and its cluster rights.
func (s *server) capabilities(ctx context.Context, id *acl.Identity) (map[string][]string, []string) {
	caps := map[string][]string{}
	types, _ := s.b.Types(ctx)
	for _, t := range types {
		if _, done := caps[t.Type]; done {
			continue
		}
		allowed := []string{}
		for _, c := range []acl.Capability{acl.CapSubmit, acl.CapRead, acl.CapCancel, acl.CapLogs} {
			if id.Allow(c, t.Type) == nil {
				allowed = append(allowed, string(c))
			}
		}
		caps[t.Type] = allowed
	}
	rights := []string{}
	for _, r := range []acl.ClusterRight{acl.RightOperator, acl.RightACL} {
		if id.Cluster(r) == nil {
			rights = append(rights, string(r))
		}
	}
	return caps, rights
}
