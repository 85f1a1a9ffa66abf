package acl

import "testing"

// identityOf compiles policies as Resolve would, for checks that need no store.
func identityOf(t *testing.T, docs ...string) *Identity {
	t.Helper()
	id := &Identity{Principal: "p", Kind: KindToken}
	for _, doc := range docs {
		p, err := ParsePolicy([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		id.add(p)
	}
	return id
}

func TestMetricsRight(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   *Identity
		want bool
	}{
		{"metrics", identityOf(t, `{"name": "m", "cluster": ["metrics"]}`), true},
		{"operator implies it", identityOf(t, `{"name": "o", "cluster": ["operator"]}`), true},
		{"acl does not", identityOf(t, `{"name": "a", "cluster": ["acl"]}`), false},
		{"reading every type does not", identityOf(t, `{"name": "r", "rules": [{"task_type": "*", "capabilities": ["read"]}]}`), false},
		{"management", &Identity{Management: true}, true},
		{"nil", nil, false},
	} {
		if got := tc.id.Cluster(RightMetrics) == nil; got != tc.want {
			t.Errorf("%s: metrics allowed %v, want %v", tc.name, got, tc.want)
		}
	}
	// Metrics grants nothing else.
	if identityOf(t, `{"name": "m", "cluster": ["metrics"]}`).Cluster(RightOperator) == nil {
		t.Error("the metrics right allows operator routes")
	}
}

func TestReadsAll(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   *Identity
		want bool
	}{
		{"read on *", identityOf(t, `{"name": "r", "rules": [{"task_type": "*", "capabilities": ["read"]}]}`), true},
		{"read on * and a deny", identityOf(t, `{"name": "r", "rules": [{"task_type": "*", "capabilities": ["read"]}, {"task_type": "pay", "capabilities": ["deny"]}]}`), false},
		{"read on a prefix", identityOf(t, `{"name": "r", "rules": [{"task_type": "report-*", "capabilities": ["read"]}]}`), false},
		{"submit on *", identityOf(t, `{"name": "r", "rules": [{"task_type": "*", "capabilities": ["submit"]}]}`), false},
		{"management", &Identity{Management: true}, true},
		{"nil", nil, false},
	} {
		if got := tc.id.ReadsAll(); got != tc.want {
			t.Errorf("%s: ReadsAll %v, want %v", tc.name, got, tc.want)
		}
	}
}
