package node

import (
	"strings"
	"testing"
)

func TestAnAPIBeyondLoopbackNeedsAccessControlOrTheFlagThatWaivesIt(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		modify func(c *Config)
		refuse bool
	}{
		{"127.0.0.1:7948", func(*Config) {}, false},
		{"[::1]:7948", func(*Config) {}, false},
		{"localhost:7948", func(*Config) {}, false},
		{"0.0.0.0:7948", func(*Config) {}, true},
		{":7948", func(*Config) {}, true},
		{"10.0.0.5:7948", func(*Config) {}, true},
		{"node.example:7948", func(*Config) {}, true},
		{"0.0.0.0:7948", func(c *Config) { c.ACL = true }, false},
		{"0.0.0.0:7948", func(c *Config) { c.Token = "shared" }, false},
		{"0.0.0.0:7948", func(c *Config) { c.AllowAnonymousAPI = true }, false},
		{"0.0.0.0:7948", func(c *Config) { c.Insecure = true }, false},
		{"0.0.0.0:7948", func(c *Config) { c.Dev, c.DataDir = true, "" }, false},
	} {
		c := validConfig()
		c.HTTPAddr = tc.addr
		tc.modify(&c)
		err := c.Validate()
		refused := err != nil && strings.Contains(err.Error(), "--allow-anonymous-api")
		if refused != tc.refuse {
			t.Errorf("--http-addr %s (%+v): %v, want refused %v", tc.addr, c.ACL || c.Token != "" || c.AllowAnonymousAPI || c.Insecure || c.Dev, err, tc.refuse)
		}
	}
}
