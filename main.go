// Command taskworker runs a node of a taskworker cluster (`taskworker agent`) and talks to one
// (`exec`, `submit`, `task`, `status`, `leave`, `types`, `join-token`, `keyring`), and makes
// certificates and gossip keys offline (`tls`, `keygen`).
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/client/clicmd"
	"github.com/taskworker/taskworker/node"
)

// version is set at build time with -ldflags "-X main.version=$(git describe --always --dirty)"
// (scripts/build.sh, scripts/cluster.sh and the e2e binaries do); `go build` alone leaves "dev".
var version = "dev"

func main() {
	app := &cli.App{
		Name:     "taskworker",
		Usage:    "run tasks on a fault-tolerant cluster of identical nodes",
		Version:  version,
		Commands: append([]*cli.Command{node.AgentCommand(node.AgentOptions{Version: version})}, clicmd.Commands()...),
	}
	clicmd.Configure(app)
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "taskworker:", err)
		os.Exit(2)
	}
}
