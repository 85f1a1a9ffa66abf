package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/taskworker/taskworker/api"
)

type (
	// Schedule is a periodic schedule's record, with its next run times.
	Schedule = api.Schedule
	// ScheduleRequest creates or replaces a schedule.
	ScheduleRequest = api.ScheduleRequest
)

func schedulePath(name string) string { return api.PathSchedules + "/" + url.PathEscape(name) }

// PutSchedule creates or replaces the named schedule; created is false when it replaced one.
func (c *Client) PutSchedule(ctx context.Context, name string, req ScheduleRequest) (s *Schedule, created bool, err error) {
	s = new(Schedule)
	status, err := c.do(ctx, http.MethodPut, schedulePath(name), nil, req, s)
	if err != nil {
		return nil, false, err
	}
	return s, status == http.StatusCreated, nil
}

// Schedules lists every schedule the caller may read.
func (c *Client) Schedules(ctx context.Context) ([]Schedule, error) {
	var out []Schedule
	if _, err := c.do(ctx, http.MethodGet, api.PathSchedules, nil, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Schedule returns one schedule.
func (c *Client) Schedule(ctx context.Context, name string) (*Schedule, error) {
	s := new(Schedule)
	if _, err := c.do(ctx, http.MethodGet, schedulePath(name), nil, nil, s); err != nil {
		return nil, err
	}
	return s, nil
}

// DeleteSchedule removes a schedule; the tasks it submitted stay.
func (c *Client) DeleteSchedule(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodDelete, schedulePath(name), nil, nil, nil)
	return err
}

// PauseSchedule stops a schedule's ticks until ResumeSchedule.
func (c *Client) PauseSchedule(ctx context.Context, name string) (*Schedule, error) {
	return c.scheduleOp(ctx, name, "pause")
}

// ResumeSchedule restarts a paused schedule; the ticks that fell while it was paused do not fire.
func (c *Client) ResumeSchedule(ctx context.Context, name string) (*Schedule, error) {
	return c.scheduleOp(ctx, name, "resume")
}

func (c *Client) scheduleOp(ctx context.Context, name, op string) (*Schedule, error) {
	s := new(Schedule)
	if _, err := c.do(ctx, http.MethodPost, schedulePath(name)+"/"+op, nil, nil, s); err != nil {
		return nil, err
	}
	return s, nil
}

// TriggerSchedule submits the schedule's task now, once, besides its ticks, and returns it.
func (c *Client) TriggerSchedule(ctx context.Context, name string) (*Task, error) {
	t := new(Task)
	if _, err := c.do(ctx, http.MethodPost, schedulePath(name)+"/trigger", nil, nil, t); err != nil {
		return nil, err
	}
	return t, nil
}
