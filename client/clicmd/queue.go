package clicmd

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

const queueHelp = `A task names a queue when submitted (--queue; "default" otherwise). A queue's limit is the most
of its tasks assigned or running at once across the cluster (0: none); a paused queue starts none
of its tasks until resumed (running ones go on). A type limit does the same for a task type, over
all queues. Changing them needs operator rights.
` + operatorExit

func queueCommand() *cli.Command {
	return groupCommand(&cli.Command{
		Name:        "queue",
		Usage:       "list queues, pause and resume them, set their limits and task types' limits",
		Description: queueHelp,
		Subcommands: []*cli.Command{
			clientCommand(&cli.Command{
				Name:        "list",
				Usage:       "list the queues: limit, paused, and scheduled, pending and running tasks; then the type limits",
				Description: operatorExit,
				Flags:       []cli.Flag{jsonFlag()},
			}, 0, 0, queueList),
			queueUpdateCommand("pause", "stop starting the queue's tasks", "NAME", func(args []string) (client.QueueUpdate, error) {
				return client.QueueUpdate{Paused: ptr(true)}, nil
			}),
			queueUpdateCommand("resume", "start the queue's tasks again", "NAME", func(args []string) (client.QueueUpdate, error) {
				return client.QueueUpdate{Paused: ptr(false)}, nil
			}),
			queueUpdateCommand("set-limit", "set the most tasks of the queue assigned or running at once (0: none)", "NAME N",
				func(args []string) (client.QueueUpdate, error) {
					n, err := parseLimit(args[1])
					return client.QueueUpdate{Limit: &n}, err
				}),
			queueUpdateCommand("set-concurrency", `give the queue's tasks a concurrency key made from their input by TEMPLATE ("tenant-{/tenant}"), at most N running per key ("" 0: none)`,
				"NAME TEMPLATE N",
				func(args []string) (client.QueueUpdate, error) {
					n, err := strconv.Atoi(args[2])
					if err != nil || n < 0 || n > api.MaxConcurrencyLimit {
						return client.QueueUpdate{}, fmt.Errorf("N must be a whole number from 1 to %d (0 with an empty TEMPLATE), got %q", api.MaxConcurrencyLimit, args[2])
					}
					return client.QueueUpdate{ConcurrencyKey: &args[1], ConcurrencyLimit: &n}, nil
				}),
			clientCommand(&cli.Command{
				Name:        "set-type-limit",
				Usage:       "set the most tasks of a type assigned or running at once, over all queues (0: none)",
				ArgsUsage:   "TYPE N",
				Description: operatorExit,
			}, 2, 2, func(c *cli.Context, cl *client.Client, args []string) error {
				n, err := parseLimit(args[1])
				if err != nil {
					return usageError(c, "%v", err)
				}
				l, err := cl.SetTypeLimit(c.Context, args[0], n)
				if err != nil {
					return operatorError(err)
				}
				fmt.Fprintf(c.App.Writer, "type %s: limit %s, %d running\n", l.Type, limitText(l.Limit), l.Running)
				return nil
			}),
		},
	})
}

func ptr[T any](v T) *T { return &v }

func parseLimit(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > api.MaxQueueLimit {
		return 0, fmt.Errorf("N must be a whole number from 0 (no limit) to %d, got %q", api.MaxQueueLimit, s)
	}
	return n, nil
}

func limitText(n int) string {
	if n == 0 {
		return "none"
	}
	return strconv.Itoa(n)
}

func queueUpdateCommand(name, usage, args string, update func([]string) (client.QueueUpdate, error)) *cli.Command {
	n := len(strings.Fields(args))
	return clientCommand(&cli.Command{
		Name:        name,
		Usage:       usage,
		ArgsUsage:   args,
		Description: operatorExit,
	}, n, n, func(c *cli.Context, cl *client.Client, args []string) error {
		u, err := update(args)
		if err == nil {
			err = api.CheckQueueName(args[0])
		}
		if err != nil {
			return usageError(c, "%v", err)
		}
		q, err := cl.UpdateQueue(c.Context, args[0], u)
		if err != nil {
			return operatorError(err)
		}
		printQueueLine(c, q)
		return nil
	})
}

func printQueueLine(c *cli.Context, q *client.Queue) {
	state := "running"
	if q.Paused {
		state = "paused"
	}
	key := ""
	if q.ConcurrencyKey != "" {
		key = fmt.Sprintf(", concurrency key %s at most %d", q.ConcurrencyKey, q.ConcurrencyLimit)
	}
	fmt.Fprintf(c.App.Writer, "queue %s: %s, limit %s%s, %d scheduled, %d pending, %d running\n",
		q.Name, state, limitText(q.Limit), key, q.Scheduled, q.Pending, q.Running)
}

func queueList(c *cli.Context, cl *client.Client, _ []string) error {
	if c.Bool("json") {
		raw, err := cl.Raw(c.Context, api.PathQueues, nil)
		if err != nil {
			return operatorError(err)
		}
		return printJSON(c, raw)
	}
	qs, err := cl.Queues(c.Context)
	if err != nil {
		return operatorError(err)
	}
	tw := table(c.App.Writer, "QUEUE", "LIMIT", "PAUSED", "SCHEDULED", "PENDING", "RUNNING")
	for _, q := range qs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\n", q.Name, limitText(q.Limit), map[bool]string{true: "yes"}[q.Paused], q.Scheduled, q.Pending, q.Running)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	ls, err := cl.TypeLimits(c.Context)
	if err != nil {
		return operatorError(err)
	}
	if len(ls) > 0 {
		fmt.Fprintln(c.App.Writer)
		tw = table(c.App.Writer, "TYPE", "LIMIT", "RUNNING")
		for _, l := range ls {
			fmt.Fprintf(tw, "%s\t%d\t%d\n", l.Type, l.Limit, l.Running)
		}
		return tw.Flush()
	}
	return nil
}

// scheduleFlags are submit's and exec's flags for delays, priorities and queues.
func scheduleFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "delay", Usage: "run the task this long from now (2s, 5m): it is scheduled until then"},
		&cli.TimestampFlag{Name: "run-at", Layout: time.RFC3339, Usage: "run the task at this RFC 3339 time (not with --delay)"},
		&cli.IntFlag{Name: "priority", Usage: fmt.Sprintf("higher runs first, %d to %d; a waiting task gains 1 per 10 s", -api.MaxPriority, api.MaxPriority)},
		&cli.StringFlag{Name: "queue", Usage: `the task's queue (default "default")`},
		&cli.StringFlag{Name: "concurrency-key", Usage: "at most --concurrency-limit tasks with this key run at once, cluster-wide"},
		&cli.IntFlag{Name: "concurrency-limit", Usage: fmt.Sprintf("the most tasks with --concurrency-key running at once, 1 to %d", api.MaxConcurrencyLimit)},
	}
}

// applySchedule copies scheduleFlags into req.
func applySchedule(c *cli.Context, req *client.SubmitRequest) error {
	if c.IsSet("delay") && c.IsSet("run-at") {
		return fmt.Errorf("give --delay or --run-at, not both")
	}
	if d := c.Duration("delay"); d > 0 {
		req.Delay = d.String()
	}
	if at := c.Timestamp("run-at"); at != nil {
		req.RunAt = at
	}
	req.Priority = c.Int("priority")
	req.Queue = c.String("queue")
	req.ConcurrencyKey, req.ConcurrencyLimit = c.String("concurrency-key"), c.Int("concurrency-limit")
	return api.CheckConcurrency(req.ConcurrencyKey, req.ConcurrencyLimit)
}
