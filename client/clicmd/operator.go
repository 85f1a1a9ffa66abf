package clicmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/pki"
)

const operatorExit = "Without --token or --token-file, run on a node as the agent's user, it uses that agent's management credential\n" +
	"(<data-dir>/management-token, found through the user's config dir or $TASKWORKER_DATA_DIR).\n" +
	"Exit status: 0 done, 1 refused by the cluster (no operator rights, a conflict), 2 usage or request error."

func joinTokenCommand() *cli.Command {
	cmd := operatorCommand(&cli.Command{
		Name:  "join-token",
		Usage: "print the cluster's join token, which a new node needs (--join-token); needs operator rights",
		Description: "The token is a secret: it lets a node join the cluster. `join-token rotate` replaces it.\n" +
			operatorExit,
	}, 0, 0, func(c *cli.Context, api *client.Client, _ []string) error {
		token, err := api.JoinToken(c.Context)
		if err != nil {
			return operatorError(err)
		}
		fmt.Fprintln(c.App.Writer, token)
		return nil
	})
	cmd.Subcommands = []*cli.Command{operatorCommand(&cli.Command{
		Name:  "rotate",
		Usage: "replace the join token with a new one and print it; the old one stops working",
		Description: "Nodes already in the cluster are not affected; nodes that have yet to join need the new token.\n" +
			operatorExit,
	}, 0, 0, func(c *cli.Context, api *client.Client, _ []string) error {
		token, err := api.RotateJoinToken(c.Context)
		if err != nil {
			return operatorError(err)
		}
		fmt.Fprintln(c.App.Writer, token)
		fmt.Fprintln(c.App.ErrWriter, "The previous join token no longer works.")
		return nil
	})}
	return cmd
}

const keyringHelp = `Rotate the gossip key with no downtime, as with consul keyring:
  taskworker keygen                  # a new key
  taskworker keyring install NEWKEY  # every node accepts it
  taskworker keyring list            # wait until every node holds it
  taskworker keyring use NEWKEY      # every node encrypts with it
  taskworker keyring remove OLDKEY
KEY is base64 (16, 24 or 32 bytes); @FILE reads it from a file and - from stdin, which keeps it out of ps.
` + operatorExit

func keyringCommand() *cli.Command {
	return groupCommand(&cli.Command{
		Name:        "keyring",
		Usage:       "list and rotate the cluster's gossip encryption keys; needs operator rights",
		Description: keyringHelp,
		Subcommands: []*cli.Command{
			operatorCommand(&cli.Command{
				Name:        "list",
				Usage:       "list the installed keys, the primary one, and how many nodes hold each",
				Description: operatorExit,
				Flags:       []cli.Flag{jsonFlag()},
			}, 0, 0, keyringList),
			keyringOpCommand("install", "make every node accept KEY besides its other keys", (*client.Client).InstallKey,
				"Key installed; run `taskworker keyring list` until every node holds it, then `keyring use` it"),
			keyringOpCommand("use", "make every node encrypt gossip with KEY (install it first)", (*client.Client).UseKey,
				"Key in use as the primary gossip key"),
			keyringOpCommand("remove", "make every node forget KEY (not the primary key)", (*client.Client).RemoveKey,
				"Key removed"),
		},
	})
}

func keyringList(c *cli.Context, cl *client.Client, _ []string) error {
	if c.Bool("json") {
		raw, err := cl.Raw(c.Context, api.PathKeyring, nil)
		if err != nil {
			return operatorError(err)
		}
		return printJSON(c, raw)
	}
	k, err := cl.Keyring(c.Context)
	if err != nil {
		return operatorError(err)
	}
	tw := table(c.App.Writer, "KEY", "PRIMARY", "NODES")
	for _, key := range k.Keys {
		nodes := "-"
		if n, ok := k.Nodes[key]; ok {
			nodes = strconv.Itoa(n)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", key, map[bool]string{true: "yes", false: ""}[key == k.Primary], nodes)
	}
	return tw.Flush()
}

func keyringOpCommand(name, usage string, op func(*client.Client, context.Context, string) error, done string) *cli.Command {
	return operatorCommand(&cli.Command{
		Name:        name,
		Usage:       usage,
		ArgsUsage:   "KEY",
		Description: "KEY is base64 (16, 24 or 32 bytes); @FILE reads it from a file and - from stdin.\n" + operatorExit,
	}, 1, 1, func(c *cli.Context, cl *client.Client, args []string) error {
		key, err := readKey(c.App.Reader, args[0])
		if err != nil {
			return usageError(c, "%v", err)
		}
		if err := op(cl, c.Context, key); err != nil {
			return operatorError(err)
		}
		fmt.Fprintln(c.App.Writer, done)
		return nil
	})
}

// readKey returns the gossip key named by a KEY argument (text, @FILE or - for stdin) in the
// canonical base64 form, so the cluster compares keys as text. Errors never echo the key.
func readKey(stdin io.Reader, arg string) (string, error) {
	text := []byte(arg)
	var err error
	switch {
	case arg == "-":
		text, err = io.ReadAll(io.LimitReader(stdin, 4096))
	case strings.HasPrefix(arg, "@"):
		text, err = os.ReadFile(arg[1:])
	}
	if err != nil {
		return "", fmt.Errorf("read key: %w", err)
	}
	k, err := pki.DecodeGossipKey(string(text))
	if err != nil {
		return "", err
	}
	return pki.EncodeGossipKey(k), nil
}

// operatorError is the exit status of an operator command that failed: 1 when the cluster
// refused it (a 4xx other than a malformed request: no rights, a conflict such as removing
// the primary key), 2 for a usage or request error.
func operatorError(err error) error {
	var apiErr *client.APIError
	if errors.As(err, &apiErr) && apiErr.StatusCode/100 == 4 && apiErr.StatusCode != http.StatusBadRequest {
		return cli.Exit(err.Error(), 1)
	}
	return cli.Exit(err.Error(), 2)
}

// groupCommand completes a command that only holds subcommands: without one, or with an
// unknown one, it is a usage error (exit 2) rather than help and success.
func groupCommand(cmd *cli.Command) *cli.Command {
	var names []string
	for _, sub := range cmd.Subcommands {
		names = append(names, sub.Name)
	}
	cmd.OnUsageError = func(c *cli.Context, err error, _ bool) error { return usageError(c, "%v", err) }
	cmd.Action = func(c *cli.Context) error {
		if c.Args().Present() {
			return usageError(c, "unknown subcommand %q, want one of %s", c.Args().First(), strings.Join(names, ", "))
		}
		return usageError(c, "want a subcommand: %s", strings.Join(names, ", "))
	}
	cmd.ArgsUsage = "SUBCOMMAND"
	return cmd
}
