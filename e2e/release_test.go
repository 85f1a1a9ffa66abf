package e2e

import (
	"bufio"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const mainModule = "github.com/taskworker/taskworker"

// releaseScript runs scripts/release.sh with env added, from the repository root.
func releaseScript(t *testing.T, env []string, args ...string) ([]byte, error) {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}
	cmd := exec.Command("bash", append([]string{"scripts/release.sh"}, args...)...)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), env...)
	return cmd.CombinedOutput()
}

// cyclonedxInstalled says whether cyclonedx-gomod is on this machine; the test never downloads it.
func cyclonedxInstalled() bool {
	if _, err := exec.LookPath("cyclonedx-gomod"); err == nil {
		return true
	}
	gobin, _ := exec.Command("go", "env", "GOBIN").Output()
	dir := strings.TrimSpace(string(gobin))
	if dir == "" {
		gopath, _ := exec.Command("go", "env", "GOPATH").Output()
		dir = filepath.Join(strings.TrimSpace(string(gopath)), "bin")
	}
	_, err := os.Stat(filepath.Join(dir, "cyclonedx-gomod"))
	return err == nil
}

// The release script builds a static, version-stamped binary that runs, sums that verify, and
// SBOMs that name the main module and its dependencies.
func TestReleaseScriptBuildsVerifiableBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the release binary; skipped in -short mode")
	}
	const version = "v0.0.0-releasetest"
	dist := t.TempDir()
	cdx := cyclonedxInstalled()
	env := []string{"DIST=" + dist, "TARGETS=linux/amd64", "CYCLONEDX=0"}
	if cdx {
		env[2] = "CYCLONEDX=1"
	}
	if out, err := releaseScript(t, env, version); err != nil {
		t.Fatalf("release.sh: %v\n%s", err, out)
	}
	dir := filepath.Join(dist, version)
	name := "taskworker_" + version + "_linux_amd64"
	bin := filepath.Join(dir, name)

	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), version) {
		t.Fatalf("%s version: %v, %q; want it to print %s", name, err, out, version)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Fatalf("%s is dynamically linked (program header %v): want a static binary", name, p.Type)
		}
	}
	f.Close()

	// SHA256SUMS lists every other file, in sha256sum's format, and each sum is right.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, e := range entries {
		if e.Name() != "SHA256SUMS" {
			want = append(want, e.Name())
		}
	}
	sums, err := os.Open(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	defer sums.Close()
	var listed []string
	sc := bufio.NewScanner(sums)
	for sc.Scan() {
		sum, file, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 64 {
			t.Fatalf("SHA256SUMS line %q: want HASH, two spaces, FILE", sc.Text())
		}
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatalf("SHA256SUMS names %s: %v", file, err)
		}
		if got := sha256.Sum256(b); hex.EncodeToString(got[:]) != sum {
			t.Fatalf("SHA256SUMS: %s has sum %x, listed %s", file, got, sum)
		}
		listed = append(listed, file)
	}
	slices.Sort(listed)
	if !slices.Equal(listed, want) {
		t.Fatalf("SHA256SUMS lists %q, want every file of the release %q", listed, want)
	}

	sbom, err := os.ReadFile(filepath.Join(dir, name+".sbom.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"\tpath\t" + mainModule + "\n", "\tmod\t" + mainModule + "\t", "\tdep\tgithub.com/hashicorp/raft\t",
		"\tdep\tgithub.com/hashicorp/memberlist\t", "\tbuild\tCGO_ENABLED=0\n", "\tbuild\t-trimpath=true\n",
	} {
		if !strings.Contains(string(sbom), line) {
			t.Errorf("text SBOM lacks %q:\n%s", line, sbom)
		}
	}

	cdxFile := filepath.Join(dir, name+".cdx.json")
	if !cdx {
		if _, err := os.Stat(cdxFile); err == nil {
			t.Fatal("CYCLONEDX=0 wrote a CycloneDX SBOM")
		}
		t.Log("cyclonedx-gomod not installed: CycloneDX SBOM not checked")
		return
	}
	b, err := os.ReadFile(cdxFile)
	if err != nil {
		t.Fatal(err)
	}
	var bom struct {
		BOMFormat string `json:"bomFormat"`
		Metadata  struct {
			Component struct{ Name, Version string } `json:"component"`
		} `json:"metadata"`
		Components []struct{ Name, Version string } `json:"components"`
	}
	if err := json.Unmarshal(b, &bom); err != nil {
		t.Fatalf("CycloneDX SBOM: %v", err)
	}
	if bom.BOMFormat != "CycloneDX" || bom.Metadata.Component.Name != mainModule || bom.Metadata.Component.Version != version {
		t.Fatalf("CycloneDX SBOM is of %q %s@%s, want CycloneDX of %s@%s", bom.BOMFormat,
			bom.Metadata.Component.Name, bom.Metadata.Component.Version, mainModule, version)
	}
	if !slices.ContainsFunc(bom.Components, func(c struct{ Name, Version string }) bool {
		return c.Name == "github.com/hashicorp/raft" && c.Version != ""
	}) {
		t.Fatal("CycloneDX SBOM does not list github.com/hashicorp/raft with its version")
	}
}

// A version is a file name in dist/: one that could climb out of it, or hide a shell word,
// is refused before anything is built or removed.
func TestReleaseScriptRefusesUnsafeVersions(t *testing.T) {
	dist := t.TempDir()
	for _, v := range []string{"../escape", "a/b", "-rf", "v1 2", "v1;true", ""} {
		out, err := releaseScript(t, []string{"DIST=" + dist, "TARGETS=linux/amd64", "CYCLONEDX=0"}, v)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("release.sh %q: %v, want exit 2\n%s", v, err, out)
		}
	}
	if entries, _ := os.ReadDir(dist); len(entries) != 0 {
		t.Fatalf("a refused version wrote %v", entries)
	}
}
