package scheduler

import (
	"fmt"
	"strings"

	goversion "github.com/hashicorp/go-version"

	"github.com/taskworker/taskworker/fsm"
)

// CompareVersions orders task-type versions, for picking the newest one during a rolling upgrade.
// It returns -1, 0 or +1 as a is older than, the same as, or newer than b.
//
// The rule:
//   - Versions that parse as semantic versions (hashicorp/go-version: "1", "v2", "1.10.0",
//     "2.0.0-rc1") are ordered by semver: numerically per segment, so v10 is above v9, and a
//     pre-release is below its release (1.0.0-rc1 < 1.0.0).
//   - Every valid version is above every string that does not parse ("dev", "latest"), so a
//     free-form label never displaces a numbered release.
//   - Strings that do not parse are ordered bytewise among themselves.
//   - Two texts that are semver-equal but spelt differently ("v1", "1.0.0") are ordered bytewise,
//     so the order is total and every node picks the same version.
func CompareVersions(a, b string) int {
	if a == b {
		return 0 // the common case (every node offers the same version), without parsing
	}
	va, erra := goversion.NewVersion(a)
	vb, errb := goversion.NewVersion(b)
	switch {
	case erra == nil && errb == nil:
		if c := va.Compare(vb); c != 0 {
			return c
		}
	case erra == nil:
		return 1
	case errb == nil:
		return -1
	}
	return strings.Compare(a, b)
}

// maxVersionLen bounds a version string in a submit.
const maxVersionLen = 64

// CheckVersion reports whether s may name a task-type version in a submit: 1 to 64 characters
// from letters, digits and ". _ + -". It does not require semver (see CompareVersions).
func CheckVersion(s string) error {
	if s == "" || len(s) > maxVersionLen {
		return fmt.Errorf("version must be 1 to %d characters", maxVersionLen)
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._+-", r)
		if !ok {
			return fmt.Errorf("version may hold only letters, digits and . _ + -")
		}
	}
	return nil
}

// ChooseVersion picks the version of typ for a submit: the pinned one when set, else the newest
// (by CompareVersions) offered by a node that is up, alive in gossip and not draining, else the
// newest any registered node ever offered, else local (this node's own registry, "" if none).
// known is false when no node offers the type at all: the submit names an unknown type.
func ChooseVersion(typ, pinned string, nodes []fsm.Node, alive map[string]bool, local string) (version string, known bool) {
	var newestAlive, newestAny string
	newer := func(v, than string) bool { return than == "" || CompareVersions(v, than) > 0 }
	for _, nd := range nodes {
		for _, ti := range nd.Types {
			if ti.Type != typ {
				continue
			}
			if newer(ti.Version, newestAny) {
				newestAny = ti.Version
			}
			if nd.Status == fsm.NodeUp && !nd.Draining && nd.Alive(alive) && newer(ti.Version, newestAlive) {
				newestAlive = ti.Version
			}
		}
	}
	if newestAny == "" {
		newestAny = local
	}
	switch {
	case newestAny == "":
		return "", false
	case pinned != "":
		return pinned, true
	case newestAlive != "":
		return newestAlive, true
	}
	return newestAny, true
}
