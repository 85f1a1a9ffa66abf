package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/taskworker/taskworker/api"
)

// ErrNoOtherNode is returned, wrapped with why the node was left, when a Roaming client's node
// went away and no other member it knows of answers.
var ErrNoOtherNode = errors.New("no other node to carry on at")

// NodeGone reports whether err says the node itself went away, rather than that the request
// failed: the connection was refused or broken, or the node answered 503 because it is shutting
// down or draining. Any other node can then take the same request.
func NodeGone(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return apiErr.StatusCode == 503 && (apiErr.Code == api.CodeShuttingDown || apiErr.Code == api.HealthDraining)
	}
	var urlErr *url.Error
	return errors.As(err, &urlErr) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// at returns a copy of c that calls the node at addr (host:port, or a URL) with the same token,
// HTTP client and TLS trust.
func (c *Client) at(addr string) *Client {
	nc := *c
	if !strings.Contains(addr, "://") {
		scheme, _, _ := strings.Cut(c.base, "://")
		addr = scheme + "://" + addr
	}
	nc.base = strings.TrimRight(addr, "/")
	return &nc
}

// Addr is the base URL of the node the client calls.
func (c *Client) Addr() string { return c.base }

// Roaming carries reads about one task (waits and log follows, which are idempotent: they name
// the task by ID) over from a node that goes away, a graceful leave included, to another member
// of the cluster as the last GET /v1/cluster showed it: alive and not draining. It never
// resubmits anything. Not safe for concurrent use.
type Roaming struct {
	cur     *Client
	members []NodeInfo
	gone    map[string]bool // base URLs of nodes that went away
	moved   func(from, to string, why error)
}

// Roaming returns a roaming client that starts at c's node and learns the cluster's members
// from it now (best effort: without them it cannot move). moved, when not nil, is told of each
// move: the old and new node (base URL, and the new node's name) and why it moved.
func (c *Client) Roaming(ctx context.Context, moved func(from, to string, why error)) *Roaming {
	r := &Roaming{cur: c, gone: map[string]bool{}, moved: moved}
	if cl, err := c.Cluster(ctx); err == nil {
		r.members = cl.Nodes
	}
	return r
}

// Client is the client of the node the roaming client talks to now.
func (r *Roaming) Client() *Client { return r.cur }

// do runs op on the current node and, while the node is gone, again on the next one.
func (r *Roaming) do(ctx context.Context, op func(c *Client) error) error {
	for {
		err := op(r.cur)
		if !NodeGone(err) || ctx.Err() != nil {
			return err
		}
		if merr := r.move(ctx, err); merr != nil {
			return merr
		}
	}
}

// How long a candidate node has to answer before the next one is tried.
const probeTimeout = 5 * time.Second

// move leaves the current node for the first member that answers: the leader the leaving node
// named first, then the members in the order /v1/cluster listed them.
func (r *Roaming) move(ctx context.Context, why error) error {
	from := r.cur.base
	r.gone[from] = true
	var cands []string
	var names []string
	var apiErr *APIError
	if errors.As(why, &apiErr) && apiErr.LeaderAddr != "" {
		name := "the leader"
		for _, m := range r.members {
			if m.HTTPAddr == apiErr.LeaderAddr {
				name = "the leader " + m.Name
			}
		}
		cands, names = append(cands, apiErr.LeaderAddr), append(names, name)
	}
	for _, m := range r.members {
		if m.State == api.NodeAlive && !m.Draining && m.HTTPAddr != "" {
			cands, names = append(cands, m.HTTPAddr), append(names, m.Name)
		}
	}
	for i, addr := range cands {
		nc := r.cur.at(addr)
		if r.gone[nc.base] {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		cl, err := nc.Cluster(pctx)
		cancel()
		if err != nil {
			r.gone[nc.base] = true
			continue
		}
		r.cur, r.members = nc, cl.Nodes
		if r.moved != nil {
			r.moved(from, names[i]+" ("+nc.base+")", why)
		}
		return nil
	}
	return fmt.Errorf("%w: %w", why, ErrNoOtherNode)
}

// WaitDone is Client.WaitDone, carried over to another node when the node goes away.
func (r *Roaming) WaitDone(ctx context.Context, id string) (*Task, error) {
	return r.waitDone(ctx, id, nil)
}

// waitDone is WaitDone that shows seen every record it reads on the way (nil: none).
func (r *Roaming) waitDone(ctx context.Context, id string, seen func(*Task)) (*Task, error) {
	var t *Task
	err := r.do(ctx, func(c *Client) (err error) {
		t, err = c.waitDone(ctx, id, seen)
		return err
	})
	return t, err
}

// FollowLogs streams a task's output to fn until the task ends, carried over to another node
// when the node goes away; lines that a new node sends again are not passed on twice. An error
// from fn stops the stream and is returned.
func (r *Roaming) FollowLogs(ctx context.Context, id string, fn func(LogLine) error) error {
	return r.followLogs(ctx, id, newLogDedup(fn).emit)
}

func (r *Roaming) followLogs(ctx context.Context, id string, emit func(LogLine) error) error {
	return r.do(ctx, func(c *Client) error {
		for {
			if err := c.Logs(ctx, id, true, emit); err != nil {
				return err
			}
			// The stream ended: the task did, or its node let go of the follow as it left.
			t, err := c.Get(ctx, id)
			if err != nil {
				return err
			}
			if IsTerminal(t.State) {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(retryPause):
			}
		}
	})
}

// logDedup passes each distinct log line on once: a follow started again on another node
// replays the task's output from the start.
type logDedup struct {
	seen map[logKey]bool
	fn   func(LogLine) error
}

type logKey struct {
	ts                 int64
	attempt            int
	node, stream, text string
}

func newLogDedup(fn func(LogLine) error) *logDedup {
	return &logDedup{seen: map[logKey]bool{}, fn: fn}
}

func (d *logDedup) emit(l LogLine) error {
	k := logKey{ts: l.TS.UnixNano(), attempt: l.Attempt, node: l.Node, stream: l.Stream, text: l.Line}
	if d.seen[k] {
		return nil
	}
	d.seen[k] = true
	return d.fn(l)
}
