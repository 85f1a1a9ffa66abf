package fsm

import (
	"testing"

	"github.com/taskworker/taskworker/internal/acl"
)

// A replica older than the metrics right refuses a policy that grants it, so the leader writes
// such a policy only once every up node speaks AdmissionProtocol.
func TestPolicyGrantingTheMetricsRightNeedsAdmissionProtocol(t *testing.T) {
	for _, tc := range []struct {
		rights []acl.ClusterRight
		want   int
	}{
		{nil, 0},
		{[]acl.ClusterRight{acl.RightOperator, acl.RightACL}, 0},
		{[]acl.ClusterRight{acl.RightOperator, acl.RightMetrics}, AdmissionProtocol},
	} {
		p := &ACLPolicySet{Policy: acl.Policy{Name: "p", Cluster: tc.rights}}
		if got := p.NeedsProtocol(); got != tc.want {
			t.Errorf("rights %v: needs protocol %d, want %d", tc.rights, got, tc.want)
		}
	}
}
