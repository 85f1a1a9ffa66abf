package main

// Random loss and delay between nodes, without tc netem (the kernel this was written on has no
// sch_netem, no tc actions and no nfnetlink_queue): loss is an nftables rule in the node's
// namespace that drops a random share of the packets to and from its peers; delay is a TCP proxy
// in this program that holds every chunk for a fixed time before passing it on, and nftables DNAT
// rules in the nodes' namespaces that send the TCP connections between the chosen nodes through
// it. See the package comment for what each does and does not cover.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// nftSeq names each fault's nftables table, so that two faults on one namespace (a double) add
// and remove their own rules without touching the other's.
var nftSeq atomic.Int64

// nft runs an nftables script (nft -f -) in the network namespace ns: one atomic transaction.
func nft(ns, script string) error {
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft in %s: %w: %v: %s\nscript:\n%s", ns, errCommand, err, strings.TrimSpace(string(out)), script)
	}
	return nil
}

// canNft reports whether nftables works inside a network namespace here: the nft command and the
// kernel's nf_tables with the expressions the faults use (numgen, nat, reject). It tries them in a
// namespace of its own, named with prefix, and removes it.
func canNft(prefix string) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return errors.New("no nft (apt-get install nftables)")
	}
	ns := prefix + "nftprobe"
	if err := sh("ip", "netns", "add", ns); err != nil {
		return err
	}
	defer func() { _ = sh("ip", "netns", "del", ns) }()
	err := nft(ns, `table ip probe {
  chain out { type filter hook output priority 0; policy accept;
    ip daddr 192.0.2.1 numgen random mod 100 < 20 drop
    ip daddr 192.0.2.2 tcp dport 7947 reject with tcp reset
  }
  chain nat { type nat hook output priority -100; policy accept;
    ip daddr 192.0.2.3 tcp dport 7947 dnat to 192.0.2.4:7000
  }
}`)
	if err != nil {
		return fmt.Errorf("nftables does not work in a namespace: %w", err)
	}
	return nil
}

// addrSet is an nftables anonymous set of the members' addresses.
func addrSet(ms []*member) string {
	ips := make([]string, len(ms))
	for i, m := range ms {
		ips[i] = m.ip
	}
	return "{ " + strings.Join(ips, ", ") + " }"
}

// addLoss drops pct % of the packets between m and peers, both ways, each packet drawn at random
// (nftables numgen), where they arrive: on the input hook of m's namespace for packets from the
// peers, and of each peer's for packets from m. Dropping on output instead would tell the sender
// (sendto and connect fail with EPERM), which no lost packet does. It returns how to remove it.
// Only node-to-node traffic is hit: the bridge address (this program) is no peer.
func (e *env) addLoss(m *member, peers []*member, pct int) (heal func() error, err error) {
	tables := map[string]string{} // namespace -> table
	heal = func() error {
		var errs []error
		for ns, table := range tables {
			errs = append(errs, nft(ns, "delete table inet "+table))
		}
		return errors.Join(errs...)
	}
	add := func(at *member, from []*member) error {
		table := fmt.Sprintf("chaos_loss_%d", nftSeq.Add(1))
		script := fmt.Sprintf(`table inet %s {
  chain in { type filter hook input priority 0; policy accept;
    ip saddr %s numgen random mod 100 < %d drop
  }
}`, table, addrSet(from), pct)
		if err := nft(at.ns, script); err != nil {
			return err
		}
		tables[at.ns] = table
		return nil
	}
	if err := add(m, peers); err != nil {
		return nil, err
	}
	for _, p := range peers {
		if err := add(p, []*member{m}); err != nil {
			_ = heal()
			return nil, err
		}
	}
	return heal, nil
}

// delayPorts are the node-to-node TCP ports a delay fault sends through the proxy: gossip (its TCP
// side: push-pull state syncs, the join exchange and every internode call) and raft. Gossip's UDP
// probes are not delayed.
var delayPorts = []int{nsGossipPort, nsRaftPort}

// delayFault is one injected delay: the proxies it started and the tables it added.
type delayFault struct {
	proxies []*delayProxy
	tables  map[string]string // namespace -> table
}

// addDelay makes every TCP connection between m and each of peers, whichever side dials, pass
// through a proxy of this program that holds each chunk of bytes for d in each direction. In the
// dialling node's namespace an nftables nat rule sends new connections to the other node's gossip
// and raft ports to that port's proxy (on the bridge address); connections already open between
// them are reset (a TCP RST from the dialler's own namespace), so that they reconnect through the
// proxy. heal removes the rules and closes the proxies, which ends the proxied connections: the
// nodes reconnect directly.
func (e *env) addDelay(m *member, peers []*member, d time.Duration) (*delayFault, error) {
	df := &delayFault{tables: map[string]string{}}
	bridge := e.subnet + ".1"
	// Every (dialler, listener) pair in both directions: m to each peer and each peer to m.
	type pair struct{ from, to *member }
	var pairs []pair
	for _, p := range peers {
		pairs = append(pairs, pair{m, p}, pair{p, m})
	}
	// One proxy per listening (node, port), shared by its diallers in this fault.
	proxyFor := map[string]*delayProxy{}
	rules := map[*member][]string{}
	var order []*member
	for _, pr := range pairs {
		for _, port := range delayPorts {
			target := fmt.Sprintf("%s:%d", pr.to.ip, port)
			px := proxyFor[target]
			if px == nil {
				var err error
				if px, err = startDelayProxy(bridge, target, d); err != nil {
					df.heal()
					return nil, err
				}
				proxyFor[target] = px
				df.proxies = append(df.proxies, px)
			}
			if rules[pr.from] == nil {
				order = append(order, pr.from)
			}
			rules[pr.from] = append(rules[pr.from], fmt.Sprintf("ip daddr %s tcp dport %d dnat to %s", pr.to.ip, port, px.Addr()))
		}
	}
	ports := fmt.Sprintf("{ %d, %d }", delayPorts[0], delayPorts[1])
	for _, from := range order {
		table := fmt.Sprintf("chaos_delay_%d", nftSeq.Add(1))
		// After the nat chain (priority -100) a proxied connection's packets are addressed to the
		// proxy, so only connections opened before the fault still match a peer's address here.
		var resets []string
		for _, pr := range pairs {
			if pr.from == from {
				resets = append(resets, fmt.Sprintf("ip daddr %s tcp dport %s reject with tcp reset", pr.to.ip, ports))
			}
		}
		script := fmt.Sprintf(`table ip %s {
  chain nat { type nat hook output priority -100; policy accept;
    %s
  }
  chain out { type filter hook output priority 0; policy accept;
    %s
  }
}`, table, strings.Join(rules[from], "\n    "), strings.Join(resets, "\n    "))
		if err := nft(from.ns, script); err != nil {
			df.heal()
			return nil, err
		}
		df.tables[from.ns] = table
	}
	return df, nil
}

// heal removes the fault's rules, then closes its proxies.
func (df *delayFault) heal() error {
	var errs []error
	for ns, table := range df.tables {
		errs = append(errs, nft(ns, "delete table ip "+table))
	}
	for _, px := range df.proxies {
		px.Close()
	}
	return errors.Join(errs...)
}

// delayProxy accepts TCP connections and relays each to target, holding every chunk read for d
// before writing it on, in both directions. Throughput is kept (chunks are pipelined, not one at
// a time), so the added latency is d each way whatever the traffic, as with netem's delay.
type delayProxy struct {
	ln     net.Listener
	target string
	d      time.Duration

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func startDelayProxy(host, target string, d time.Duration) (*delayProxy, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, fmt.Errorf("delay proxy for %s: %w", target, err)
	}
	p := &delayProxy{ln: ln, target: target, d: d, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *delayProxy) Addr() string { return p.ln.Addr().String() }

func (p *delayProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.relay(c)
		}()
	}
}

// track registers c so that Close ends it; false when the proxy is already closed.
func (p *delayProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *delayProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *delayProxy) relay(c net.Conn) {
	if !p.track(c) {
		c.Close()
		return
	}
	defer p.untrack(c)
	u, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return // the dialler sees its connection closed, as when the node is down
	}
	if !p.track(u) {
		u.Close()
		return
	}
	defer p.untrack(u)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.pipe(u, c)
	}()
	p.pipe(c, u)
	wg.Wait()
}

// pipe copies src to dst, each chunk written d after it was read. At src's end it half-closes
// dst, once the chunks before have been delivered; on a write error it closes both.
func (p *delayProxy) pipe(dst, src net.Conn) {
	type chunk struct {
		at  time.Time
		b   []byte
		end bool // src ended (FIN or error): half-close dst, as late as the data
	}
	ch := make(chan chunk, 1024)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				ch <- chunk{at: time.Now().Add(p.d), b: buf[:n]}
			}
			if err != nil {
				ch <- chunk{at: time.Now().Add(p.d), end: true}
				return
			}
		}
	}()
	t := time.NewTimer(0)
	defer t.Stop()
	for c := range ch {
		if wait := time.Until(c.at); wait > 0 {
			t.Reset(wait)
			<-t.C // the delay is the fault itself
		}
		if c.end {
			break
		}
		if _, err := dst.Write(c.b); err != nil {
			dst.Close()
			src.Close()
			for range ch { // let the reader end
			}
			return
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// Close stops accepting and ends every relayed connection.
func (p *delayProxy) Close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}

// inNetns runs f on an OS thread that has entered the network namespace ns, so that the sockets f
// opens live there, and then returns the thread to this program's namespace. The thread must
// not die: the nodes are started with Pdeathsig SIGKILL, which the kernel sends when the thread
// that forked a node exits, and any thread may have forked one. (A first version let the locked
// thread end with its goroutine, as Go does, and so killed a node now and then, silently.)
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open this thread's netns: %w", err)
			return
		}
		defer unix.Close(orig)
		fd, err := unix.Open("/var/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", ns, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}
		errc <- f()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// The thread is in the wrong namespace and may not run anything else, nor end
			// (see above): park this goroutine on it for good.
			select {}
		}
		runtime.UnlockOSThread()
	}()
	return <-errc
}

// tcpRTT measures, from inside from's namespace, one round trip to to's raft port as the nodes'
// own connections see it: it connects, sends a few bytes that are no raft or TLS message, and
// waits for the node to answer or close the connection (the node logs one bad connection).
func tcpRTT(from, to *member) (time.Duration, error) {
	var rtt time.Duration
	err := inNetns(from.ns, func() error {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", to.ip, nsRaftPort), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		t0 := time.Now()
		if _, err := c.Write([]byte("chaos rtt probe\n")); err != nil {
			return err
		}
		var b [64]byte
		_, err = c.Read(b[:])
		rtt = time.Since(t0)
		if err != nil && !errors.Is(err, io.EOF) && !isReset(err) {
			return err
		}
		return nil
	})
	return rtt, err
}

func isReset(err error) bool { return errors.Is(err, unix.ECONNRESET) }
