package clicmd

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/client"
)

// task retry and task purge, and the unique flags of submit and exec.

func uniqueFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "unique-key", Usage: "refuse the submit while a task of this type with this key was submitted less than --unique-for ago"},
		&cli.DurationFlag{Name: "unique-for", Usage: "how long --unique-key holds, from the first task's submit (at most 720h)"},
	}
}

// applyUnique copies the unique flags into req.
func applyUnique(c *cli.Context, req *client.SubmitRequest) {
	req.UniqueKey = c.String("unique-key")
	if d := c.Duration("unique-for"); d > 0 {
		req.UniqueFor = d.String()
	}
}

func taskRetryCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:  "retry",
		Usage: "run a failed or cancelled task again now: same ID, a new attempt, history kept, failures reset",
		Description: "Unlike submitting the same input again, the task keeps its ID and history; its max_attempts\n" +
			"apply afresh. Exit status: 0 retried, 1 not found, 2 error (a task that is not failed or cancelled).",
		ArgsUsage: "ID",
	}, 1, 1, func(c *cli.Context, api *client.Client, args []string) error {
		t, err := api.Retry(c.Context, args[0])
		if err != nil {
			return taskError(err)
		}
		fmt.Fprintf(c.App.Writer, "Task %s is %s again (attempt %d next)\n", t.ID, t.State, t.Attempt+1)
		return nil
	})
}

func taskPurgeCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:  "purge",
		Usage: "delete finished tasks (and their output) that match the filters",
		Description: "--finished-before takes an RFC 3339 time or a duration (24h: finished more than 24h ago).\n" +
			"Without any filter it needs --all, which deletes every finished task.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "state", Usage: "succeeded, failed or cancelled (default: all three)"},
			&cli.StringFlag{Name: "type", Usage: "only tasks of this type"},
			&cli.StringFlag{Name: "finished-before", Usage: "only tasks that finished before this time, or this long ago"},
			&cli.IntFlag{Name: "limit", Usage: "delete at most this many (0: no limit)"},
			&cli.BoolFlag{Name: "all", Usage: "allow a purge without filters"},
		},
	}, 0, 0, func(c *cli.Context, api *client.Client, _ []string) error {
		req := client.PurgeRequest{State: c.String("state"), Type: c.String("type"), Limit: c.Int("limit")}
		if s := c.String("finished-before"); s != "" {
			at, err := parseBefore(s, time.Now())
			if err != nil {
				return usageError(c, "%v", err)
			}
			req.FinishedBefore = &at
		}
		if req.State == "" && req.Type == "" && req.FinishedBefore == nil && req.Limit == 0 && !c.Bool("all") {
			return usageError(c, "no filter: give --state, --type, --finished-before or --limit, or --all to delete every finished task")
		}
		n, err := api.Purge(c.Context, req)
		if err != nil {
			return cli.Exit(err.Error(), ExitRequest)
		}
		fmt.Fprintln(c.App.Writer, purgedLine(n))
		return nil
	})
}

// purgedLine is what task purge prints: "Purged 1 task", "Purged 3 tasks".
func purgedLine(n int) string {
	if n == 1 {
		return "Purged 1 task"
	}
	return fmt.Sprintf("Purged %d tasks", n)
}

// parseBefore reads --finished-before: an RFC 3339 time, or a duration back from now.
func parseBefore(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("--finished-before must be an RFC 3339 time such as 2026-12-01T15:04:05Z or a duration such as 24h, got %q", s)
	}
	return now.Add(-d).UTC(), nil
}
