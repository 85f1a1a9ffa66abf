package clicmd

import (
	"fmt"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

const rateLimitHelp = `A rate limit is a token bucket, cluster-wide: tasks submitted with --rate-limit NAME start no
faster than its rate ("100/s", "5/m", "1/h"), with at most its burst at once after a quiet spell.
With --rate-limit-key, each key (a tenant, say) has a bucket of its own under the limit's rate.
Changing limits needs operator rights.
` + operatorExit

func rateLimitCommand() *cli.Command {
	return groupCommand(&cli.Command{
		Name:        "rate-limit",
		Usage:       "set, show, list and delete rate limits",
		Description: rateLimitHelp,
		Subcommands: []*cli.Command{
			clientCommand(&cli.Command{
				Name:        "set",
				Usage:       "create or change a rate limit",
				ArgsUsage:   "NAME RATE",
				Description: "RATE is N/s, N/m or N/h.\n" + operatorExit,
				Flags:       []cli.Flag{&cli.Int64Flag{Name: "burst", Value: 1, Usage: "the most tokens the bucket holds: tasks that start at once after a quiet spell"}},
			}, 2, 2, func(c *cli.Context, cl *client.Client, args []string) error {
				if err := api.CheckRateLimitName(args[0]); err != nil {
					return usageError(c, "%v", err)
				}
				if _, _, err := api.ParseRate(args[1]); err != nil {
					return usageError(c, "%v", err)
				}
				burst := c.Int64("burst")
				if err := api.CheckRateBurst(burst); err != nil {
					return usageError(c, "%v", err)
				}
				l, err := cl.SetRateLimit(c.Context, args[0], client.RateLimitUpdate{Rate: args[1], Burst: &burst})
				if err != nil {
					return operatorError(err)
				}
				printRateLimit(c, l)
				return nil
			}),
			clientCommand(&cli.Command{
				Name:        "get",
				Usage:       "show a rate limit and its bucket's tokens",
				ArgsUsage:   "NAME",
				Description: "Exit status: 0 shown, 1 not found, 2 error.",
				Flags: []cli.Flag{jsonFlag(),
					&cli.StringFlag{Name: "key", Usage: "show this key's bucket instead of the limit's own"}},
			}, 1, 1, func(c *cli.Context, cl *client.Client, args []string) error {
				l, err := cl.RateLimit(c.Context, args[0], c.String("key"))
				if err != nil {
					return operatorError(err)
				}
				if c.Bool("json") {
					return printJSON(c, l)
				}
				printRateLimit(c, l)
				return nil
			}),
			clientCommand(&cli.Command{
				Name:        "list",
				Usage:       "list the rate limits",
				Description: "Exit status: 0, or 2 on error.",
				Flags:       []cli.Flag{jsonFlag()},
			}, 0, 0, func(c *cli.Context, cl *client.Client, _ []string) error {
				if c.Bool("json") {
					raw, err := cl.Raw(c.Context, api.PathRateLimits, nil)
					if err != nil {
						return operatorError(err)
					}
					return printJSON(c, raw)
				}
				ls, err := cl.RateLimits(c.Context)
				if err != nil {
					return operatorError(err)
				}
				tw := table(c.App.Writer, "NAME", "RATE", "BURST", "TOKENS", "KEYS")
				for _, l := range ls {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\n", l.Name, l.Rate, l.Burst, l.Tokens, l.Keys)
				}
				return tw.Flush()
			}),
			clientCommand(&cli.Command{
				Name:        "delete",
				Usage:       "remove a rate limit: the tasks that name it start unhindered by it",
				ArgsUsage:   "NAME",
				Description: operatorExit,
			}, 1, 1, func(c *cli.Context, cl *client.Client, args []string) error {
				if err := cl.DeleteRateLimit(c.Context, args[0]); err != nil {
					return operatorError(err)
				}
				fmt.Fprintf(c.App.Writer, "rate limit %s deleted\n", args[0])
				return nil
			}),
		},
	})
}

func printRateLimit(c *cli.Context, l *client.RateLimit) {
	fmt.Fprintf(c.App.Writer, "rate limit %s: %s, burst %d, %s tokens as of %s, %d keyed buckets in use\n",
		l.Name, l.Rate, l.Burst, strconv.FormatInt(l.Tokens, 10), l.AsOf.UTC().Format(time.RFC3339), l.Keys)
}

// flowFlags are submit's and exec's flags for rate limits and debouncing.
func flowFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "rate-limit", Usage: "start the task under this rate limit (taskworker rate-limit set)"},
		&cli.StringFlag{Name: "rate-limit-key", Usage: "the rate limit's bucket for this key (a tenant, say) instead of its own"},
		&cli.StringFlag{Name: "debounce-key", Usage: "while a task of this type with this key waits to start, replace its input instead of adding a task"},
		&cli.StringFlag{Name: "debounce", Usage: "with --debounce-key: run once the key was quiet this long (5s; at most 24h)"},
	}
}

// applyFlow copies flowFlags into req.
func applyFlow(c *cli.Context, req *client.SubmitRequest) {
	req.RateLimit, req.RateLimitKey = c.String("rate-limit"), c.String("rate-limit-key")
	req.DebounceKey, req.Debounce = c.String("debounce-key"), c.String("debounce")
}
