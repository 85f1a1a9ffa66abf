package node

import (
	"bytes"
	"context"
	"net/http"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/forward"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/limits"
)

// forwardCluster is the node as internal/forward sees it.
type forwardCluster struct{ n *Node }

var _ forward.Cluster = forwardCluster{}

func (c forwardCluster) Name() string                                  { return c.n.cfg.Name }
func (c forwardCluster) IsLeader() bool                                { return c.n.IsLeader() }
func (c forwardCluster) Leader() string                                { return c.n.Leader() }
func (c forwardCluster) LeaderChanges() <-chan struct{}                { return c.n.leaderChanges() }
func (c forwardCluster) Index() uint64                                 { return c.n.fsm.Index() }
func (c forwardCluster) WaitIndex(ctx context.Context, i uint64) error { return c.n.waitIndex(ctx, i) }

func (c forwardCluster) Refuse() error {
	if reason := c.n.rn.StorageFault(); reason != "" {
		return api.Errorf(api.CodeStorageUnavailable, "node %s cannot take work: %s; send it to another node", c.n.cfg.Name, reason)
	}
	return nil
}

func (c forwardCluster) LeaderAddr() string {
	if addr := c.n.leaderInternodeAddr(); addr != "" {
		return addr
	}
	// Between leaders: any member answers with the leader's name (leaderHint).
	return c.n.anyInternodeAddr()
}

func (c forwardCluster) Call(ctx context.Context, addr, path string, header http.Header, body []byte) (*http.Response, error) {
	req, err := c.n.internodeRequest(ctx, http.MethodPost, addr, path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = header
	req.ContentLength = int64(len(body))
	resp, err := c.n.forwardClient.Do(req)
	if err != nil {
		c.n.leaderHint.Store("")
		return nil, err
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		c.n.leaderHint.Store(resp.Header.Get(leaderHeader))
	}
	return resp, nil
}

// newForwarder makes the forwarder of the API's writes; its retries last as long as a write may
// take (httpapi's write timeout), and it holds a body up to the largest the API accepts.
func (n *Node) newForwarder() *forward.Forwarder {
	return forward.New(forwardCluster{n}, forward.Options{
		Retry:     httpapi.DefaultWriteTimeout,
		MaxBody:   max(httpapi.DefaultMaxBatchBodyBytes, n.cfg.MaxBodyBytes) + limits.BodyOverheadBytes,
		Logger:    n.log.With("component", "forward"),
		Abandoned: n.metrics.ForwardAbandoned,
	})
}

// servedAPI is the public API's handler for the leader's side of a forward: the same one the API
// listener serves (Start makes it before the internode side serves).
func (n *Node) servedAPI(w http.ResponseWriter, r *http.Request) { n.api.ServeHTTP(w, r) }
