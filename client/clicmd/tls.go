package clicmd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/internal/pki"
)

// The offline tools: they write files or print a key and never call a node, so they take
// no --addr. Exit status: 0 done, 1 not done (a file exists, the CA cannot be read),
// 2 usage error.

const toolExit = "Exit status: 0 done, 1 not done (a file exists, the CA cannot be read), 2 usage error."

// Default lifetimes, as `consul tls`: the CA outlives the cluster, operators' certificates
// are re-made yearly (they are not renewed automatically as the cluster's own are).
const (
	defaultCADays   = int(pki.CAValidity / (24 * time.Hour))
	defaultCertDays = 365
)

func tlsCommand() *cli.Command {
	return groupCommand(&cli.Command{
		Name:  "tls",
		Usage: "create a CA and certificates for --tls-cert, --tls-key, --tls-ca and --ca-file, as consul tls does",
		Description: `For operators who keep their own certificate files; a cluster started without them makes
its own CA and certificates. Files are never overwritten.
  taskworker tls ca create                 # taskworker-agent-ca.pem, taskworker-agent-ca-key.pem
  taskworker tls cert create --server --node n1   # global-server-taskworker-0.pem and -key.pem, one per node
  taskworker tls cert create --client      # global-client-taskworker-0.pem, for --tls-verify-incoming`,
		Subcommands: []*cli.Command{
			groupCommand(&cli.Command{
				Name:        "ca",
				Usage:       "create a cluster CA",
				Subcommands: []*cli.Command{tlsCACreateCommand()},
			}),
			groupCommand(&cli.Command{
				Name:        "cert",
				Usage:       "create a node (server) or operator (client) certificate signed by the CA",
				Subcommands: []*cli.Command{tlsCertCreateCommand()},
			}),
		},
	})
}

func tlsCACreateCommand() *cli.Command {
	return toolCommand(&cli.Command{
		Name:  "create",
		Usage: "create a cluster CA: " + pki.ToolCACertFile + " and " + pki.ToolCAKeyFile + " (0600)",
		Description: "Prints the CA's SHA-256 fingerprint, which clients may pin with --ca-fingerprint.\n" +
			toolExit,
		Flags: []cli.Flag{
			dirFlag(),
			&cli.StringFlag{Name: "cluster", Value: pki.DefaultCluster, Usage: "cluster name; certificates name server.<cluster>.taskworker"},
			&cli.IntFlag{Name: "days", Value: defaultCADays, Usage: "how long the CA is valid"},
		},
	}, func(c *cli.Context) error {
		days := c.Int("days")
		if days <= 0 {
			return usageError(c, "--days must be positive")
		}
		if err := pki.ValidateCluster(c.String("cluster")); err != nil {
			return usageError(c, "--cluster: %v", err)
		}
		dir, err := makeDir(c.String("dir"))
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		files, err := pki.CreateCAFilesValidFor(dir, c.String("cluster"), time.Now(), time.Duration(days)*24*time.Hour)
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		ca, err := pki.LoadCAFiles(files.Cert, files.Key)
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		fmt.Fprintf(c.App.Writer, "==> Saved %s\n==> Saved %s\nCA fingerprint (SHA-256): %s\n", files.Cert, files.Key, ca.Fingerprint())
		return nil
	})
}

func tlsCertCreateCommand() *cli.Command {
	return toolCommand(&cli.Command{
		Name:  "create",
		Usage: "create a certificate signed by the CA: <cluster>-server|client-taskworker-<n>.pem and -key.pem (0600)",
		Description: `--server certificates are for nodes (--tls-cert, --tls-key): they name server.<cluster>.taskworker,
localhost and 127.0.0.1, plus --additional-dnsname and --additional-ipaddress (the names and IPs
clients dial with --ca-file), and --node, the node that uses it: a node acts only as the node its
certificate names, so one made without --node serves HTTPS but can never act as a node (an agent
refuses it). --client certificates are for operators' tools when nodes run --tls-verify-incoming;
they can never act as a node either. The file holds the certificate, then the CA.
` + toolExit,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "server", Usage: "a node certificate"},
			&cli.BoolFlag{Name: "client", Usage: "an operator's client certificate"},
			&cli.StringFlag{Name: "ca", TakesFile: true, Usage: "the CA certificate (default: <dir>/" + pki.ToolCACertFile + ")"},
			&cli.StringFlag{Name: "key", TakesFile: true, Usage: "the CA key (default: <dir>/" + pki.ToolCAKeyFile + ")"},
			&cli.StringFlag{Name: "node", Usage: "the node (its --name) a --server certificate is for; without it the certificate cannot act as any node"},
			&cli.StringSliceFlag{Name: "additional-dnsname", Usage: "another DNS name for the certificate; repeatable"},
			&cli.StringSliceFlag{Name: "additional-ipaddress", Usage: "another IP address for the certificate; repeatable"},
			&cli.IntFlag{Name: "days", Value: defaultCertDays, Usage: "how long the certificate is valid (at most until the CA expires)"},
			dirFlag(),
		},
	}, func(c *cli.Context) error {
		spec, err := certSpec(c)
		if err != nil {
			return usageError(c, "%v", err)
		}
		dir, err := makeDir(c.String("dir"))
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		caFile, keyFile := c.String("ca"), c.String("key")
		if caFile == "" {
			caFile = filepath.Join(dir, pki.ToolCACertFile)
		}
		if keyFile == "" {
			keyFile = filepath.Join(dir, pki.ToolCAKeyFile)
		}
		ca, err := pki.LoadCAFiles(caFile, keyFile)
		if errors.Is(err, pki.ErrNoCA) {
			return cli.Exit(fmt.Sprintf("%v (create one with `taskworker tls ca create`, or name it with --ca and --key)", err), 1)
		}
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		files, err := pki.CreateCertFiles(dir, ca, spec, time.Now())
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		fmt.Fprintf(c.App.Writer, "==> Using CA %s and key %s\n==> Saved %s\n==> Saved %s\n", caFile, keyFile, files.Cert, files.Key)
		switch {
		case spec.Role == pki.RoleServer && spec.Name != "":
			fmt.Fprintf(c.App.Writer, "==> For node %q only: start it with --name %s\n", spec.Name, spec.Name)
		case spec.Role == pki.RoleServer:
			fmt.Fprintln(c.App.Writer, "==> Names no node (no --node): it can serve HTTPS, but cannot act as any node; a node refuses it as --tls-cert")
		}
		return nil
	})
}

// certSpec reads `tls cert create`'s flags; its errors are usage errors.
func certSpec(c *cli.Context) (pki.NodeSpec, error) {
	var spec pki.NodeSpec
	switch server, client := c.Bool("server"), c.Bool("client"); {
	case server == client:
		return spec, errors.New("give exactly one of --server and --client")
	case client:
		spec.Role = pki.RoleClient
		if c.IsSet("node") {
			return spec, errors.New("--node names a node, so it goes with --server only")
		}
	default:
		spec.Role = pki.RoleServer
	}
	if name := c.String("node"); name != "" {
		if err := pki.ValidateNodeName(name); err != nil {
			return spec, fmt.Errorf("--node: %w", err)
		}
		spec.Name = name
	}
	for _, s := range c.StringSlice("additional-ipaddress") {
		ip := net.ParseIP(s)
		if ip == nil {
			return spec, fmt.Errorf("--additional-ipaddress %q is not an IP address", s)
		}
		spec.IPs = append(spec.IPs, ip)
	}
	for _, s := range c.StringSlice("additional-dnsname") {
		if s == "" {
			return spec, errors.New("--additional-dnsname is empty")
		}
		spec.DNSNames = append(spec.DNSNames, s)
	}
	days := c.Int("days")
	if days <= 0 {
		return spec, errors.New("--days must be positive")
	}
	spec.Validity = time.Duration(days) * 24 * time.Hour
	return spec, nil
}

func keygenCommand() *cli.Command {
	return toolCommand(&cli.Command{
		Name:  "keygen",
		Usage: "print a new random gossip encryption key (base64, 32 bytes) for --encrypt and `keyring install`",
	}, func(c *cli.Context) error {
		fmt.Fprintln(c.App.Writer, pki.EncodeGossipKey(pki.GenerateGossipKey()))
		return nil
	})
}

// toolCommand completes an offline tool: no positional arguments, usage errors exit 2.
func toolCommand(cmd *cli.Command, run func(*cli.Context) error) *cli.Command {
	cmd.OnUsageError = func(c *cli.Context, err error, _ bool) error { return usageError(c, "%v", err) }
	cmd.Action = func(c *cli.Context) error {
		if c.Args().Present() {
			return usageError(c, "unexpected arguments %q: this command takes flags only", c.Args().Slice())
		}
		return run(c)
	}
	return cmd
}

func dirFlag() cli.Flag {
	return &cli.StringFlag{Name: "dir", Value: ".", TakesFile: true, Usage: "directory to write the files to (created if missing)"}
}

// makeDir creates dir if needed: 0700, since it will hold private keys.
func makeDir(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create --dir: %w", err)
	}
	return dir, nil
}
