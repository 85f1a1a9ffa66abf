package node

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
)

func TestOversizedInputIsRefusedAndChangesNothing(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{twin: true, tweak: func(_ int, c *Config) { c.MaxInputBytes = 1024 }})
	n := tc.nodes[0]
	var e api.Error
	big := strings.Repeat("x", 2000)
	if code := httpCall(t, n, "POST", "/v1/tasks", map[string]any{"type": "echo", "input": big}, &e); code != http.StatusRequestEntityTooLarge || e.Code != api.CodeInputTooLarge {
		t.Fatalf("submit of a 2 KB input with a 1 KiB cap = %d %+v, want 413 input_too_large", code, e)
	}
	if strings.Contains(e.Message, "xxxxxxxx") {
		t.Fatalf("the error echoes the input: %q", e.Message)
	}
	var list []api.Task
	if code := httpCall(t, n, "GET", "/v1/tasks", nil, &list); code != http.StatusOK || len(list) != 0 {
		t.Fatalf("after a refused submit: %d, %d tasks; want none", code, len(list))
	}
	// Just under the cap is fine.
	task := submit(t, n, "echo", strings.Repeat("y", 900), "20s")
	if task.State != api.StateSucceeded {
		t.Fatalf("900-byte echo = %s, want succeeded", task.State)
	}
}

func TestOversizedResultFailsTheAttempt(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{twin: true, tweak: func(_ int, c *Config) { c.MaxResultBytes = 512 }})
	n := tc.nodes[0]
	var task api.Task
	body := map[string]any{"type": "echo", "input": strings.Repeat("z", 800), "max_attempts": 1}
	if code := httpCall(t, n, "POST", "/v1/tasks?wait=20s", body, &task); code != http.StatusCreated {
		t.Fatalf("submit: %d", code)
	}
	if task.State != api.StateFailed || task.Error == nil || task.Error.Type != string(api.CodeResultTooLarge) || len(task.Result) > 4 {
		t.Fatalf("echo of 800 bytes with a 512-byte result cap = %s %+v result %d bytes; want failed result_too_large, no result",
			task.State, task.Error, len(task.Result))
	}
}

func TestRateLimitAnswers429WithRetryAfterAndSparesHealth(t *testing.T) {
	tc := startCluster(t, 1, clusterOpts{twin: true, tweak: func(_ int, c *Config) { c.RateLimit, c.RateBurst = 0.5, 3 }})
	n := tc.nodes[0]
	var last *http.Response
	for i := 0; i < 10; i++ {
		resp, err := http.Get("http://" + n.HTTPAddr() + "/v1/cluster")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			last = resp
			break
		}
	}
	if last == nil {
		t.Fatal("10 requests at a rate of 0.5/s with burst 3: none refused")
	}
	if ra := last.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("429 without a useful Retry-After: %q", ra)
	}
	for i := 0; i < 5; i++ {
		if code := httpCall(t, n, "GET", "/v1/health", nil, nil); code != http.StatusOK {
			t.Fatalf("health while rate limited = %d, want 200 (exempt)", code)
		}
	}
}

func TestConnectionFloodFromOneAddressLeavesOthersServed(t *testing.T) {
	const perClient = 10
	tc := startCluster(t, 1, clusterOpts{twin: true, tweak: func(_ int, c *Config) { c.MaxConnsPerClient = perClient }})
	n := tc.nodes[0]
	// Idle keep-alive connections from 127.0.0.1, well past the per-client cap.
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < 5*perClient; i++ {
		c, err := net.Dial("tcp", n.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// A client from another address is served.
	_, port, _ := net.SplitHostPort(n.HTTPAddr())
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second,
	}).DialContext}}
	resp, err := other.Get("http://127.0.0.1:" + port + "/v1/health")
	if err != nil {
		t.Fatalf("client from 127.0.0.2 during a flood from 127.0.0.1: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("client from 127.0.0.2 = %d, want 200", resp.StatusCode)
	}
	// The flooding address gets a 429 on a new connection, not a hang, once the refusals of the
	// flood itself (answered a few at a time, each within a second) are done.
	deadline := time.Now().Add(30 * time.Second)
	for {
		line, err := rawGet(n.HTTPAddr())
		if err == nil && strings.Contains(line, "429") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("connection over the per-client cap answered %q (%v), want HTTP 429", line, err)
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
}

// rawGet sends one health request on a new connection and returns the status line.
func rawGet(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}
