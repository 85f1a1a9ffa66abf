package main

import (
	_ "github.com/hashicorp/memberlist"
	_ "github.com/hashicorp/raft"
	_ "github.com/hashicorp/raft-boltdb/v2"
	_ "github.com/oklog/ulid/v2"
	_ "github.com/urfave/cli/v2"
	_ "github.com/vmihailenco/msgpack/v5"
	_ "go.etcd.io/bbolt"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/hashicorp/go-hclog"
)

func main() {}
