package internode

import (
	"bytes"
	"context"
	"net/http"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/forward"
)

// Forwarding is the channel as internal/forward sees it: the node it runs on, and the call that
// carries a write to the leader.
type Forwarding struct{ c *Channel }

var _ forward.Cluster = Forwarding{}

// Forwarding returns the channel as internal/forward sees it.
func (c *Channel) Forwarding() Forwarding { return Forwarding{c} }

func (f Forwarding) Name() string                                  { return f.c.cfg.Name }
func (f Forwarding) IsLeader() bool                                { return f.c.isLeader() }
func (f Forwarding) Leader() string                                { return f.c.cfg.Leader() }
func (f Forwarding) LeaderChanges() <-chan struct{}                { return f.c.leaderChanges() }
func (f Forwarding) Index() uint64                                 { return f.c.cfg.FSM.Index() }
func (f Forwarding) WaitIndex(ctx context.Context, i uint64) error { return f.c.WaitIndex(ctx, i) }

// LeaderAddr is the leader's internode address, or between leaders any member's: it answers
// with the leader's name (leaderHint).
func (f Forwarding) LeaderAddr() string { return f.c.leaderOrAnyAddr() }

func (f Forwarding) Refuse() error {
	if reason := f.c.cfg.StorageFault(); reason != "" {
		return api.Errorf(api.CodeStorageUnavailable, "node %s cannot take work: %s; send it to another node", f.c.cfg.Name, reason)
	}
	return nil
}

func (f Forwarding) Call(ctx context.Context, addr, path string, header http.Header, body []byte) (*http.Response, error) {
	req, err := f.c.Request(ctx, http.MethodPost, addr, path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = header
	req.ContentLength = int64(len(body))
	resp, err := f.c.streamClient.Do(req)
	if err != nil {
		f.c.leaderHint.Store("")
		return nil, err
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		f.c.leaderHint.Store(resp.Header.Get(headerLeader))
	}
	return resp, nil
}
