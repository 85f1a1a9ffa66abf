package clicmd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/client"
)

// aclCommand is `taskworker acl`: bootstrap, policies and tokens, on a cluster run with --acl.
func aclCommand() *cli.Command {
	return &cli.Command{
		Name:  "acl",
		Usage: "manage access control: bootstrap, policies and tokens (agents run with --acl)",
		Subcommands: []*cli.Command{
			clientCommand(&cli.Command{
				Name:  "bootstrap",
				Usage: "make the cluster's first management token (once per cluster); its secret is shown only now",
				Flags: []cli.Flag{jsonFlag()},
			}, 0, 0, func(c *cli.Context, api *client.Client, _ []string) error {
				tok, err := api.ACLBootstrap(c.Context)
				if err != nil {
					return cli.Exit(err.Error(), 2)
				}
				return printToken(c, tok)
			}),
			{
				Name:  "policy",
				Usage: "apply, list and delete policies",
				Subcommands: []*cli.Command{
					clientCommand(&cli.Command{
						Name: "apply", Usage: "create or replace a policy from a JSON file (- for stdin)", ArgsUsage: "NAME FILE|-",
					}, 2, 2, func(c *cli.Context, api *client.Client, args []string) error {
						p, err := readPolicy(c.App.Reader, args[1])
						if err != nil {
							return usageError(c, "%v", err)
						}
						out, err := api.ACLPolicyApply(c.Context, args[0], p)
						if err != nil {
							return cli.Exit(err.Error(), 2)
						}
						fmt.Fprintf(c.App.Writer, "Policy %s applied\n", out.Name)
						return nil
					}),
					clientCommand(&cli.Command{Name: "list", Usage: "list policies", Flags: []cli.Flag{jsonFlag()}}, 0, 0,
						func(c *cli.Context, api *client.Client, _ []string) error {
							ps, err := api.ACLPolicies(c.Context)
							if err != nil {
								return cli.Exit(err.Error(), 2)
							}
							if c.Bool("json") {
								return printJSON(c, ps)
							}
							tw := table(c.App.Writer, "NAME", "RULES", "CLUSTER", "DESCRIPTION")
							for _, p := range ps {
								var rules []string
								for _, r := range p.Rules {
									rules = append(rules, r.TaskType+":"+strings.Join(r.Capabilities, "+"))
								}
								fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, dash(strings.Join(rules, " ")), dash(strings.Join(p.Cluster, ",")), p.Description)
							}
							return tw.Flush()
						}),
					clientCommand(&cli.Command{Name: "delete", Usage: "delete a policy", ArgsUsage: "NAME"}, 1, 1,
						func(c *cli.Context, api *client.Client, args []string) error {
							if err := api.ACLPolicyDelete(c.Context, args[0]); err != nil {
								return taskError(err)
							}
							fmt.Fprintf(c.App.Writer, "Policy %s deleted\n", args[0])
							return nil
						}),
				},
			},
			{
				Name:  "token",
				Usage: "create, list and delete tokens",
				Subcommands: []*cli.Command{
					clientCommand(&cli.Command{
						Name: "create", Usage: "make a token; its secret is shown only now",
						Flags: []cli.Flag{
							&cli.StringSliceFlag{Name: "policy", Usage: "a policy the token gets; repeatable (at least one)"},
							&cli.StringFlag{Name: "description", Usage: "what the token is for"},
							&cli.DurationFlag{Name: "ttl", DefaultText: "until deleted", Usage: "how long the token works"},
							jsonFlag(),
						},
					}, 0, 0, func(c *cli.Context, api *client.Client, _ []string) error {
						req := client.ACLTokenRequest{Policies: c.StringSlice("policy"), Description: c.String("description")}
						if len(req.Policies) == 0 {
							return usageError(c, "--policy is required")
						}
						if d := c.Duration("ttl"); d != 0 {
							req.TTL = d.String()
						}
						tok, err := api.ACLTokenCreate(c.Context, req)
						if err != nil {
							return cli.Exit(err.Error(), 2)
						}
						return printToken(c, tok)
					}),
					clientCommand(&cli.Command{Name: "list", Usage: "list tokens (never their secrets)", Flags: []cli.Flag{jsonFlag()}}, 0, 0,
						func(c *cli.Context, api *client.Client, _ []string) error {
							ts, err := api.ACLTokens(c.Context)
							if err != nil {
								return cli.Exit(err.Error(), 2)
							}
							if c.Bool("json") {
								return printJSON(c, ts)
							}
							tw := table(c.App.Writer, "ACCESSOR", "POLICIES", "EXPIRES", "DESCRIPTION")
							for _, t := range ts {
								fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.AccessorID, policiesText(t.Management, t.Policies), expiresText(t.ExpirationTime), t.Description)
							}
							return tw.Flush()
						}),
					clientCommand(&cli.Command{Name: "delete", Usage: "delete a token; its secret stops working", ArgsUsage: "ACCESSOR"}, 1, 1,
						func(c *cli.Context, api *client.Client, args []string) error {
							if err := api.ACLTokenDelete(c.Context, args[0]); err != nil {
								return taskError(err)
							}
							fmt.Fprintf(c.App.Writer, "Token %s deleted\n", args[0])
							return nil
						}),
					clientCommand(&cli.Command{Name: "self", Usage: "show who --token (or a JWT) is", Flags: []cli.Flag{jsonFlag()}}, 0, 0,
						func(c *cli.Context, api *client.Client, _ []string) error {
							s, err := api.ACLTokenSelf(c.Context)
							if err != nil {
								return cli.Exit(err.Error(), 2)
							}
							if c.Bool("json") {
								return printJSON(c, s)
							}
							tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
							fmt.Fprintf(tw, "Principal\t%s\nKind\t%s\nPolicies\t%s\nExpires\t%s\n", s.Principal, s.Kind,
								policiesText(s.Management, s.Policies), expiresText(s.ExpirationTime))
							if s.Description != "" {
								fmt.Fprintf(tw, "Description\t%s\n", s.Description)
							}
							return tw.Flush()
						}),
				},
			},
		},
	}
}

// printToken shows a new token with its secret, the one time it is shown.
func printToken(c *cli.Context, tok *client.ACLToken) error {
	if c.Bool("json") {
		return printJSON(c, tok)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "AccessorID\t%s\nSecretID\t%s\nPolicies\t%s\nExpires\t%s\n", tok.AccessorID, tok.SecretID,
		policiesText(tok.Management, tok.Policies), expiresText(tok.ExpirationTime))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(c.App.ErrWriter, "The secret is shown only now: keep it in a file (--token-file) or TASKWORKER_TOKEN.")
	return nil
}

func policiesText(management bool, policies []string) string {
	if management {
		return "(management)"
	}
	return dash(strings.Join(policies, ","))
}

func expiresText(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return formatTime(*t)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// readPolicy reads a policy document from a file or stdin ("-"), refusing unknown fields so a
// typo does not silently grant nothing.
func readPolicy(stdin io.Reader, path string) (client.ACLPolicy, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(stdin)
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return client.ACLPolicy{}, fmt.Errorf("read policy: %w", err)
	}
	var p client.ACLPolicy
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return client.ACLPolicy{}, fmt.Errorf("policy %s: %w", path, err)
	}
	return p, nil
}
