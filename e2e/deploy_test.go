package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"

	"github.com/taskworker/taskworker/node"
)

// agentFlagSet maps each agent flag name and environment variable to its flag.
func agentFlagSet() (flags map[string]cli.Flag, env map[string]bool) {
	flags, env = map[string]cli.Flag{}, map[string]bool{}
	for _, f := range node.AgentCommand(node.AgentOptions{}).Flags {
		for _, n := range f.Names() {
			flags[n] = f
		}
		if d, ok := f.(cli.DocGenerationFlag); ok {
			for _, e := range d.GetEnvVars() {
				env[e] = true
			}
		}
	}
	return flags, env
}

// secretFlags put a secret in argv, which ps and the pod spec show to anyone who looks.
var secretFlags = []string{"--join-token", "--token", "--encrypt"}

// checkAgentArgs checks that args (after "agent") are real agent flags, none of them a secret,
// and returns --drain-timeout's value (the default when not given).
func checkAgentArgs(t *testing.T, where string, args []string) time.Duration {
	t.Helper()
	flags, _ := agentFlagSet()
	drain := 30 * time.Second
	for i, a := range args {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if slices.Contains(secretFlags, "--"+name) {
			t.Errorf("%s passes %s on the command line: secrets go in the environment or a file", where, a)
		}
		if _, ok := flags[name]; !ok {
			t.Errorf("%s: %s is not an agent flag", where, a)
		}
		if name == "drain-timeout" && i+1 < len(args) {
			d, err := time.ParseDuration(args[i+1])
			if err != nil {
				t.Errorf("%s: --drain-timeout %q: %v", where, args[i+1], err)
			}
			drain = d
		}
	}
	return drain
}

// dockerInstruction is one instruction of a Dockerfile, continuation lines joined.
type dockerInstruction struct {
	cmd, args string
}

func parseDockerfile(t *testing.T, path string) []dockerInstruction {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []dockerInstruction
	var cur string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		cur += line
		cmd, args, _ := strings.Cut(cur, " ")
		out = append(out, dockerInstruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur = ""
	}
	return out
}

// goModVersion is the go directive of go.mod.
func goModVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	return string(m[1])
}

// The image holds the static binary on an empty base, runs as a numeric non-root user, and
// takes nothing into the final stage from the build context (where a secret could lie about).
func TestDockerfileIsStaticScratchAndNonRoot(t *testing.T) {
	ins := parseDockerfile(t, "../Dockerfile")
	var froms []int
	for i, in := range ins {
		if in.cmd == "FROM" {
			froms = append(froms, i)
		}
		if in.cmd == "ADD" {
			t.Errorf("ADD %s: use COPY (ADD fetches URLs and unpacks archives)", in.args)
		}
	}
	if len(froms) < 2 {
		t.Fatalf("%d stages, want a build stage and a final one", len(froms))
	}
	build := strings.Fields(ins[froms[0]].args)
	if want := "golang:" + goModVersion(t); len(build) == 0 || (build[0] != want && !strings.HasPrefix(build[0], want+"@sha256:")) {
		t.Errorf("build stage FROM %s, want %s, the Go version of go.mod", ins[froms[0]].args, want)
	}
	final := ins[froms[len(froms)-1]:]
	if final[0].args != "scratch" {
		t.Errorf("final stage FROM %s, want scratch", final[0].args)
	}
	var user, entrypoint, cmd, stop string
	var exposed []string
	for _, in := range final {
		switch in.cmd {
		case "COPY":
			if !strings.Contains(in.args, "--from=") {
				t.Errorf("COPY %s in the final stage takes files from the build context", in.args)
			}
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "STOPSIGNAL":
			stop = in.args
		case "CMD":
			cmd = in.args
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(in.args)...)
		case "RUN":
			t.Errorf("RUN %s in a scratch stage: it has no shell", in.args)
		}
	}
	uid, gid, ok := strings.Cut(user, ":")
	u, uerr := strconv.Atoi(uid)
	g, gerr := strconv.Atoi(gid)
	if !ok || uerr != nil || gerr != nil || u == 0 || g == 0 {
		t.Errorf("final USER %q, want a numeric non-root uid:gid (a scratch image has no /etc/passwd, and a name cannot be checked for root)", user)
	}
	if stop != "SIGTERM" {
		t.Errorf("STOPSIGNAL %q, want SIGTERM, which starts a graceful leave", stop)
	}
	if entrypoint != `["/taskworker"]` {
		t.Errorf("ENTRYPOINT %s, want [\"/taskworker\"]", entrypoint)
	}
	var cmdArgs []string
	if err := json.Unmarshal([]byte(cmd), &cmdArgs); err != nil || len(cmdArgs) == 0 || cmdArgs[0] != "agent" {
		t.Fatalf("CMD %s, want a JSON list starting with agent (%v)", cmd, err)
	}
	checkAgentArgs(t, "Dockerfile CMD", cmdArgs[1:])
	for _, p := range []string{"7946/tcp", "7946/udp", "7947/tcp", "7948/tcp"} {
		if !slices.Contains(exposed, p) {
			t.Errorf("EXPOSE lacks %s (have %v)", p, exposed)
		}
	}
	var static bool
	for _, in := range ins[:froms[len(froms)-1]] {
		if in.cmd == "RUN" && strings.Contains(in.args, "CGO_ENABLED=0 go build") {
			static = true
		}
	}
	if !static {
		t.Error("no RUN builds with CGO_ENABLED=0: a cgo binary does not run FROM scratch")
	}
}

// The build context leaves out what must never be baked into an image.
func TestDockerignoreLeavesOutSecretsAndBuilds(t *testing.T) {
	b, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	for _, want := range []string{".git", "dist/", "bin/", "**/*.pem", "**/*.key", "**/join-token", "**/management-token", "**/gossip-key"} {
		if !slices.Contains(patterns, want) {
			t.Errorf(".dockerignore lacks %s", want)
		}
	}
	// The console's built files are embedded in the binary: they must stay in the context.
	for _, p := range patterns {
		if ok, _ := filepath.Match(p, "ui/dist"); ok || strings.HasPrefix(p, "ui") || strings.HasPrefix(p, "**/dist") {
			t.Errorf(".dockerignore pattern %s leaves out ui/dist, which the binary embeds", p)
		}
	}
}

// The unit stops the agent with SIGTERM, its graceful leave, and waits longer than the drain.
func TestSystemdUnitDrainsOnStopAndIsHardened(t *testing.T) {
	b, err := os.ReadFile("../deploy/systemd/taskworker.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			keys[k] = v
		}
	}
	exec := strings.Fields(keys["ExecStart"])
	if len(exec) < 2 || exec[1] != "agent" {
		t.Fatalf("ExecStart=%s, want the agent", keys["ExecStart"])
	}
	drain := checkAgentArgs(t, "ExecStart", exec[2:])
	stop, err := time.ParseDuration(keys["TimeoutStopSec"])
	if err != nil || stop <= drain {
		t.Errorf("TimeoutStopSec=%s, want a duration above --drain-timeout %s (%v)", keys["TimeoutStopSec"], drain, err)
	}
	for k, want := range map[string]string{
		"KillSignal": "SIGTERM", "KillMode": "mixed", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"DynamicUser": "yes", "StateDirectory": "taskworker", "CapabilityBoundingSet": "",
		"Environment": "TASKWORKER_DATA_DIR=%S/taskworker",
	} {
		if got, ok := keys[k]; !ok || got != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
	_, env := agentFlagSet()
	if !env["TASKWORKER_DATA_DIR"] || !env["TASKWORKER_JOIN_TOKEN"] || !env["TASKWORKER_JOIN"] {
		t.Error("the agent no longer reads TASKWORKER_DATA_DIR, TASKWORKER_JOIN or TASKWORKER_JOIN_TOKEN, which the unit's comments name")
	}
}

type k8sObject struct {
	Kind     string
	Metadata struct{ Name string }
	Spec     struct {
		ClusterIP                string `yaml:"clusterIP"`
		PublishNotReadyAddresses bool   `yaml:"publishNotReadyAddresses"`
		Ports                    []struct {
			Port     int
			Protocol string
		}
		Replicas             int
		ServiceName          string `yaml:"serviceName"`
		VolumeClaimTemplates []struct {
			Metadata struct{ Name string }
		} `yaml:"volumeClaimTemplates"`
		Template struct {
			Spec struct {
				TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               struct {
					RunAsNonRoot bool `yaml:"runAsNonRoot"`
					RunAsUser    int  `yaml:"runAsUser"`
				} `yaml:"securityContext"`
				Containers []struct {
					Args []string
					Env  []struct {
						Name      string
						Value     string
						ValueFrom map[string]struct{ Name, Key string } `yaml:"valueFrom"`
					}
					ReadinessProbe struct {
						HTTPGet struct{ Path string } `yaml:"httpGet"`
					} `yaml:"readinessProbe"`
					SecurityContext struct {
						AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
					} `yaml:"securityContext"`
					VolumeMounts []struct {
						Name      string
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				}
			}
		}
	}
}

// The StatefulSet runs three nodes that find each other through a headless Service, keep their
// data dir on a claim, are ready when healthy, get the join token from a Secret and drain in
// full before the kubelet kills them.
func TestKubernetesStatefulSet(t *testing.T) {
	b, err := os.ReadFile("../deploy/kubernetes/taskworker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]k8sObject{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		objs[o.Kind+"/"+o.Metadata.Name] = o
	}
	headless, ok := objs["Service/taskworker-headless"]
	if !ok || headless.Spec.ClusterIP != "None" || !headless.Spec.PublishNotReadyAddresses {
		t.Errorf("Service taskworker-headless: %+v, want headless (clusterIP None) listing pods not ready yet", headless.Spec)
	}
	var gossipTCP, gossipUDP bool
	for _, p := range headless.Spec.Ports {
		gossipTCP = gossipTCP || p.Port == 7946 && p.Protocol == "TCP"
		gossipUDP = gossipUDP || p.Port == 7946 && p.Protocol == "UDP"
	}
	if !gossipTCP || !gossipUDP {
		t.Error("the headless Service lacks gossip 7946 over TCP and UDP")
	}
	ss, ok := objs["StatefulSet/taskworker"]
	if !ok {
		t.Fatal("no StatefulSet taskworker")
	}
	if ss.Spec.Replicas != 3 || ss.Spec.ServiceName != "taskworker-headless" {
		t.Errorf("StatefulSet: %d replicas behind %q, want 3 behind taskworker-headless", ss.Spec.Replicas, ss.Spec.ServiceName)
	}
	pod := ss.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "agent" {
		t.Fatalf("args %q, want the agent", c.Args)
	}
	drain := checkAgentArgs(t, "StatefulSet args", c.Args[1:])
	if grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; grace <= drain {
		t.Errorf("terminationGracePeriodSeconds %s, want above --drain-timeout %s", grace, drain)
	}
	if c.ReadinessProbe.HTTPGet.Path != "/v1/health" {
		t.Errorf("readiness probe %q, want GET /v1/health", c.ReadinessProbe.HTTPGet.Path)
	}
	if !pod.SecurityContext.RunAsNonRoot || pod.SecurityContext.RunAsUser == 0 {
		t.Errorf("pod security context %+v, want a non-root user", pod.SecurityContext)
	}
	if p := c.SecurityContext.AllowPrivilegeEscalation; p == nil || *p {
		t.Error("the container may escalate privileges")
	}
	_, agentEnv := agentFlagSet()
	env := map[string]string{}
	for _, e := range c.Env {
		if !agentEnv[e.Name] {
			t.Errorf("env %s is not read by the agent", e.Name)
		}
		env[e.Name] = e.Value
		if ref, ok := e.ValueFrom["secretKeyRef"]; ok {
			env[e.Name] = "secret:" + ref.Name
		}
		if ref, ok := e.ValueFrom["configMapKeyRef"]; ok {
			env[e.Name] = "configmap:" + ref.Name + "/" + ref.Key
		}
	}
	if !strings.HasPrefix(env["TASKWORKER_JOIN_TOKEN"], "secret:") {
		t.Errorf("TASKWORKER_JOIN_TOKEN is %q, want it from a Secret", env["TASKWORKER_JOIN_TOKEN"])
	}
	if env["TASKWORKER_JOIN"] != "configmap:taskworker-join/join" {
		t.Errorf("TASKWORKER_JOIN is %q, want the ConfigMap the README creates", env["TASKWORKER_JOIN"])
	}
	readme, err := os.ReadFile("../deploy/kubernetes/README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "kubectl create configmap taskworker-join --from-literal=join=taskworker-headless:7946") {
		t.Error("the README does not create the join ConfigMap with the headless Service's name")
	}
	if len(ss.Spec.VolumeClaimTemplates) != 1 {
		t.Fatal("want one volume claim template, for the data dir")
	}
	claim := ss.Spec.VolumeClaimTemplates[0].Metadata.Name
	if !slices.ContainsFunc(c.VolumeMounts, func(m struct {
		Name      string
		MountPath string `yaml:"mountPath"`
	}) bool {
		// The data dir is below the mount: the agent makes it 0700 itself.
		return m.Name == claim && filepath.Dir(env["TASKWORKER_DATA_DIR"]) == m.MountPath
	}) {
		t.Errorf("the claim %s is not mounted at the parent of the data dir %q", claim, env["TASKWORKER_DATA_DIR"])
	}
}
