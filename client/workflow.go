package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/taskworker/taskworker/api"
)

type (
	// Workflow is a workflow's record: its state, its steps and, once succeeded, its result.
	Workflow = api.Workflow
	// WorkflowRequest submits a workflow.
	WorkflowRequest = api.WorkflowRequest
	// WorkflowStepRequest is one step of a WorkflowRequest.
	WorkflowStepRequest = api.WorkflowStepRequest
	// WorkflowPage is a page of workflows, newest first.
	WorkflowPage = api.WorkflowPage
)

func workflowPath(id string) string { return api.PathWorkflows + "/" + url.PathEscape(id) }

// SubmitWorkflow submits a workflow; the whole graph is validated and stored at once, or not at all.
func (c *Client) SubmitWorkflow(ctx context.Context, req WorkflowRequest) (*Workflow, error) {
	w := new(Workflow)
	if _, err := c.do(ctx, http.MethodPost, api.PathWorkflows, nil, req, w); err != nil {
		return nil, err
	}
	return w, nil
}

// Workflow returns a workflow with every step.
func (c *Client) Workflow(ctx context.Context, id string) (*Workflow, error) {
	w := new(Workflow)
	if _, err := c.do(ctx, http.MethodGet, workflowPath(id), nil, nil, w); err != nil {
		return nil, err
	}
	return w, nil
}

// Workflows lists up to limit workflows (0: the server's default), newest first, after the
// workflow named after ("" from the newest), without their steps.
func (c *Client) Workflows(ctx context.Context, after string, limit int) (*WorkflowPage, error) {
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	p := new(WorkflowPage)
	if _, err := c.do(ctx, http.MethodGet, api.PathWorkflows, q, nil, p); err != nil {
		return nil, err
	}
	return p, nil
}

// CancelWorkflow cancels every step of a workflow that has not finished.
func (c *Client) CancelWorkflow(ctx context.Context, id string) (*Workflow, error) {
	w := new(Workflow)
	if _, err := c.do(ctx, http.MethodPost, workflowPath(id)+"/cancel", nil, nil, w); err != nil {
		return nil, err
	}
	return w, nil
}
