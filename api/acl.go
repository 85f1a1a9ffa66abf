package api

import "time"

// ACL routes. With ACLs on (taskworker agent --acl) they need the `acl` cluster right, but for
// bootstrap, open until the cluster is bootstrapped, and token/self, open to any caller with a
// working credential (a token may always look at itself, as in Consul).
const (
	PathACLBootstrap = "/v1/acl/bootstrap"  // POST: the first management token, once per cluster
	PathACLPolicies  = "/v1/acl/policies"   // GET: every policy
	PathACLPolicy    = "/v1/acl/policy/"    // + name; PUT ACLPolicy: create or replace; DELETE
	PathACLTokens    = "/v1/acl/tokens"     // GET: every token, without secrets; POST ACLTokenRequest: create
	PathACLToken     = "/v1/acl/token/"     // + accessor ID; DELETE
	PathACLTokenSelf = "/v1/acl/token/self" // GET: the caller's own identity
)

// ACLPolicy is a policy document: task-type patterns with capabilities (submit, read, cancel,
// logs, or deny alone), and cluster rights (operator, acl). Deny wins over every allow. A policy
// named "anonymous" applies to requests without a credential.
type ACLPolicy struct {
	Name        string    `json:"name"`
	Description string    `json:"description,omitempty"`
	Rules       []ACLRule `json:"rules,omitempty"`
	Cluster     []string  `json:"cluster,omitempty"`
	// Quota caps what the policy's principals may make the cluster hold; nil leaves the agent's
	// --quota-* settings.
	Quota *ACLQuota `json:"quota,omitempty"`
}

// ACLQuota caps one principal: a zero field leaves the agent's setting, and of several policies
// the most generous value of each field counts (the largest count or size, the shortest interval).
type ACLQuota struct {
	Pending             int    `json:"pending,omitempty"`               // tasks waiting to run (pending or delayed)
	Schedules           int    `json:"schedules,omitempty"`             // schedules
	ScheduleMinInterval string `json:"schedule_min_interval,omitempty"` // shortest time between two ticks, "10s"
	ScheduleInputBytes  int    `json:"schedule_input_bytes,omitempty"`  // largest schedule input
	Retained            int    `json:"retained,omitempty"`              // finished tasks kept; the oldest go first
}

// ACLRule grants capabilities on the task types its pattern matches ('*' matches any run of
// characters).
type ACLRule struct {
	TaskType     string   `json:"task_type"`
	Capabilities []string `json:"capabilities"`
}

// ACLTokenRequest is the body of POST /v1/acl/tokens.
type ACLTokenRequest struct {
	Policies    []string `json:"policies"`
	Description string   `json:"description,omitempty"`
	// TTL is Go duration text ("24h"); empty means the token never expires.
	TTL string `json:"ttl,omitempty"`
}

// ACLToken is a token as the API shows it. SecretID is present once, in the reply that created
// the token (bootstrap, create): the cluster stores only its hash and cannot show it again.
type ACLToken struct {
	AccessorID     string     `json:"accessor_id"`
	SecretID       string     `json:"secret_id,omitempty"`
	Description    string     `json:"description,omitempty"`
	Policies       []string   `json:"policies"`
	Management     bool       `json:"management,omitempty"`
	CreateTime     time.Time  `json:"create_time"`
	ExpirationTime *time.Time `json:"expiration_time,omitempty"`
}

// Kinds of principal in ACLSelf.Kind.
const (
	PrincipalToken     = "token"
	PrincipalJWT       = "jwt"
	PrincipalAnonymous = "anonymous"
)

// ACLSelf is GET /v1/acl/token/self: who the caller is. Principal is what tasks record as
// submitted_by: a token's accessor ID, a JWT's subject, or "anonymous".
type ACLSelf struct {
	Principal  string   `json:"principal"`
	Kind       string   `json:"kind"`
	Policies   []string `json:"policies"`
	Management bool     `json:"management,omitempty"`
	// Description and ExpirationTime are the token's, for a token caller.
	Description    string     `json:"description,omitempty"`
	ExpirationTime *time.Time `json:"expiration_time,omitempty"`
	// Capabilities is what the caller may do (submit, read, cancel, logs) with each task type the
	// cluster offers or has pending, and ClusterRights its cluster rights (operator, acl), so a
	// client such as the web console can offer only what will be allowed.
	Capabilities  map[string][]string `json:"capabilities"`
	ClusterRights []string            `json:"cluster_rights"`
}
