package clicmd

import (
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

const scheduleExit = "Exit status: 0 done, 1 not found or refused (no submit capability on the type), 2 usage or request error."

const scheduleHelp = `A schedule submits a task of TYPE at each tick of its cron spec, on the cluster's leader.
SPEC is five fields (minute first), six (seconds first), or a descriptor: @hourly, @daily, @every 30s.
It is read in UTC unless --tz (an IANA zone) or a CRON_TZ=Zone prefix names another.
--overlap says what a tick does while the previous run is unfinished:
  skip (default)  do not fire
  buffer_one      start one run when the unfinished one ends; skip the rest
  buffer_all      start every missed tick's run, one after another
  cancel_other    cancel the unfinished run, then fire
  allow_all       fire regardless
--catch-up N fires at most the newest N ticks missed during an outage or a leader change (default 1).
Each tick's task has the idempotency key schedule:NAME:UNIX and records the schedule.
` + inputHelp + "\n" + scheduleExit

func scheduleCommand() *cli.Command {
	nameOnly := func(name, usage string, run func(c *cli.Context, cl *client.Client, name string) error) *cli.Command {
		return clientCommand(&cli.Command{Name: name, Usage: usage, ArgsUsage: "NAME", Description: scheduleExit}, 1, 1,
			func(c *cli.Context, cl *client.Client, args []string) error { return run(c, cl, args[0]) })
	}
	return groupCommand(&cli.Command{
		Name:        "schedule",
		Usage:       "periodic tasks: create, list, pause, resume, trigger and delete schedules",
		Description: scheduleHelp,
		Flags:       connectionFlags(), // `schedule --addr X list` works as `schedule list --addr X`
		Subcommands: []*cli.Command{
			scheduleCreateCommand(),
			clientCommand(&cli.Command{
				Name: "list", Usage: "list schedules with their next run times", Description: scheduleExit,
				Flags: []cli.Flag{jsonFlag()},
			}, 0, 0, scheduleList),
			clientCommand(&cli.Command{
				Name: "get", Usage: "show a schedule", ArgsUsage: "NAME", Description: scheduleExit,
				Flags: []cli.Flag{jsonFlag()},
			}, 1, 1, scheduleGet),
			nameOnly("pause", "stop a schedule's ticks", func(c *cli.Context, cl *client.Client, name string) error {
				return scheduleDone(c, name, "paused")(cl.PauseSchedule(c.Context, name))
			}),
			nameOnly("resume", "restart a paused schedule (ticks that fell while paused do not fire)", func(c *cli.Context, cl *client.Client, name string) error {
				return scheduleDone(c, name, "resumed")(cl.ResumeSchedule(c.Context, name))
			}),
			nameOnly("trigger", "submit the schedule's task now, once, and print its ID", func(c *cli.Context, cl *client.Client, name string) error {
				t, err := cl.TriggerSchedule(c.Context, name)
				if err != nil {
					return operatorError(err)
				}
				fmt.Fprintln(c.App.Writer, t.ID)
				return nil
			}),
			nameOnly("delete", "delete a schedule (its tasks stay)", func(c *cli.Context, cl *client.Client, name string) error {
				if err := cl.DeleteSchedule(c.Context, name); err != nil {
					return operatorError(err)
				}
				fmt.Fprintf(c.App.Writer, "Schedule %s deleted\n", name)
				return nil
			}),
		},
	})
}

func scheduleDone(c *cli.Context, name, what string) func(*client.Schedule, error) error {
	return func(s *client.Schedule, err error) error {
		if err != nil {
			return operatorError(err)
		}
		fmt.Fprintf(c.App.Writer, "Schedule %s %s; next runs: %s\n", name, what, nextRuns(s.NextRuns))
		return nil
	}
}

func scheduleCreateCommand() *cli.Command {
	flags := append([]cli.Flag{
		&cli.StringFlag{Name: "name", Usage: "the schedule's name (letters, digits, '.', '_', '-'); required"},
		&cli.StringFlag{Name: "cron", Usage: "the cron spec, e.g. '*/5 * * * *' or '@every 30s'; required"},
		&cli.StringFlag{Name: "tz", Usage: "IANA time zone the spec is read in (default UTC)"},
		&cli.StringFlag{Name: "overlap", Usage: "skip, buffer_one, buffer_all, cancel_other or allow_all", Value: api.OverlapSkip},
		&cli.StringFlag{Name: "start", Usage: "fire no tick before this RFC 3339 time"},
		&cli.StringFlag{Name: "end", Usage: "fire no tick after this RFC 3339 time"},
		&cli.IntFlag{Name: "catch-up", Usage: "fire at most this many ticks missed in an outage", Value: api.DefaultCatchUp},
		&cli.BoolFlag{Name: "paused", Usage: "create it paused"},
	}, submitFlags()...)
	return clientCommand(&cli.Command{
		Name:        "create",
		Usage:       "create or replace a schedule",
		ArgsUsage:   "TYPE [INPUT]",
		Description: scheduleHelp,
		Flags:       flags,
	}, 1, 2, func(c *cli.Context, cl *client.Client, args []string) error {
		if c.String("name") == "" || c.String("cron") == "" {
			return usageError(c, "schedule create needs --name and --cron")
		}
		if c.String("idempotency-key") != "" {
			return usageError(c, "a schedule's tasks have their own idempotency keys: drop --idempotency-key")
		}
		if c.IsSet("concurrency-key") || c.IsSet("concurrency-limit") {
			return usageError(c, "a schedule's tasks take no concurrency key of their own: drop --concurrency-key and --concurrency-limit")
		}
		sub, err := submitRequest(c, args)
		if err != nil {
			return usageError(c, "%v", err)
		}
		req := client.ScheduleRequest{
			Cron: c.String("cron"), TimeZone: c.String("tz"), Type: sub.Type, Version: sub.Version, Input: sub.Input,
			MaxAttempts: sub.MaxAttempts, Timeout: sub.Timeout, Overlap: c.String("overlap"),
			CatchUp: c.Int("catch-up"), Paused: c.Bool("paused"),
		}
		for flag, dst := range map[string]**time.Time{"start": &req.Start, "end": &req.End} {
			if v := c.String(flag); v != "" {
				t, err := time.Parse(time.RFC3339, v)
				if err != nil {
					return usageError(c, "--%s must be an RFC 3339 time like 2026-01-02T15:04:05Z, got %q", flag, v)
				}
				*dst = &t
			}
		}
		s, created, err := cl.PutSchedule(c.Context, c.String("name"), req)
		if err != nil {
			return operatorError(err)
		}
		verb := "replaced"
		if created {
			verb = "created"
		}
		fmt.Fprintf(c.App.Writer, "Schedule %s %s; next runs: %s\n", s.Name, verb, nextRuns(s.NextRuns))
		return nil
	})
}

func scheduleList(c *cli.Context, cl *client.Client, _ []string) error {
	if c.Bool("json") {
		raw, err := cl.Raw(c.Context, api.PathSchedules, nil)
		if err != nil {
			return operatorError(err)
		}
		return printJSON(c, raw)
	}
	all, err := cl.Schedules(c.Context)
	if err != nil {
		return operatorError(err)
	}
	tw := table(c.App.Writer, "NAME", "TYPE", "CRON", "TZ", "OVERLAP", "STATE", "NEXT RUNS", "LAST FIRED", "FIRED", "SKIPPED", "MANUAL")
	for _, s := range all {
		state := "active"
		if s.Paused {
			state = "paused"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", s.Name, s.Type, s.Cron, orDash(s.TimeZone), s.Overlap, state,
			nextRuns(s.NextRuns), timeOrDash(lastFired(&s)), s.Fired, s.Skipped, s.Manual)
	}
	return tw.Flush()
}

func scheduleGet(c *cli.Context, cl *client.Client, args []string) error {
	s, err := cl.Schedule(c.Context, args[0])
	if err != nil {
		return operatorError(err)
	}
	if c.Bool("json") {
		return printJSON(c, s)
	}
	w := c.App.Writer
	fmt.Fprintf(w, "Name:        %s\nCron:        %s\nTime zone:   %s\nType:        %s %s\nInput:       %s\n",
		s.Name, s.Cron, orDash(s.TimeZone), s.Type, s.Version, s.Input)
	fmt.Fprintf(w, "Overlap:     %s\nCatch-up:    %d\nPaused:      %v\n", s.Overlap, s.CatchUp, s.Paused)
	fmt.Fprintf(w, "Next runs:   %s\nLast fired:  %s\nLast task:   %s\n", nextRuns(s.NextRuns), timeOrDash(lastFired(s)), orDash(s.LastTaskID))
	fmt.Fprintf(w, "Runs:        %d fired, %d skipped, %d manual, %d buffered\n", s.Fired, s.Skipped, s.Manual, len(s.Buffered))
	if s.LastError != "" {
		fmt.Fprintf(w, "Last error:  %s\n", s.LastError)
	}
	return nil
}

func nextRuns(ts []time.Time) string {
	if len(ts) == 0 {
		return "-"
	}
	out := make([]string, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.UTC().Format(time.RFC3339))
	}
	return strings.Join(out, ", ")
}

// lastFired is the last tick that fired, skipped, waited or failed: the API's last_fired also
// moves when ticks are passed over (at creation, on resume), which beside "FIRED 0" reads as a
// contradiction. A manual trigger is no tick; it counts under MANUAL.
func lastFired(s *client.Schedule) *time.Time {
	if s.Fired+s.Skipped == 0 && len(s.Buffered) == 0 && s.LastError == "" {
		return nil
	}
	return s.LastFired
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
