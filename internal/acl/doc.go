// Package acl owns who may do what: policies and their JSON format, tokens (stored only as a hash
// of their secret), the one-time bootstrap of the first management token, JWT principals, and the
// Authorizer that turns a credential into an Identity and answers "may it do this?".
//
// It does not know HTTP, raft or the FSM. The FSM stores Policy and Token values (plain data with
// msgpack tags) and offers them to the Authorizer through the Store interface; MemStore is the
// in-memory twin. The HTTP layer maps ErrUnauthenticated to 401 and *Denied (errors.Is
// ErrPermissionDenied) to 403, whose message names the missing capability and type.
//
// # Policies
//
// A policy is a JSON document:
//
//	{
//	  "name": "reports",
//	  "description": "The reports team runs and follows its own tasks",
//	  "rules": [
//	    {"task_type": "report-*",       "capabilities": ["submit", "read", "cancel", "logs"]},
//	    {"task_type": "report-payroll", "capabilities": ["deny"]},
//	    {"task_type": "*",              "capabilities": ["read"]}
//	  ],
//	  "cluster": ["operator"]
//	}
//
// name is required: letters, digits, '_', '-' and '.', starting with a letter or digit, at most
// 64 bytes. Each rule's task_type is a pattern (see MatchPattern): '*' matches any run of
// characters, everything else matches itself, so "*" is every type, "report-*" every type that
// starts with "report-", and "echo" only echo. capabilities are submit, read, cancel, logs and
// work (register a worker that runs the type), or "deny" alone. cluster lists the cluster rights: operator (leave, keyring, join token) and acl
// (manage tokens and policies). Unknown fields are errors.
//
// How rules combine: an identity's capabilities on a task type are the union of what every
// matching rule of every one of its policies grants, and any matching deny rule refuses them all.
// Specificity does not matter: in the example, "report-payroll" is refused everything, although
// "report-*" and "*" also match it. Management tokens bypass every rule.
//
// A policy named "anonymous", when it exists, applies to requests that carry no credential;
// without it such requests are unauthenticated (401).
//
// # Tokens
//
// A token has a public accessor ID (a random UUID, what tasks record as their submitter) and a
// secret ("tws_" and 43 base64url characters of 256 random bits) that is returned once, at
// creation, and stored only as its SHA-256 (see HashSecret for why a fast hash is right here).
// The Secret type redacts itself in fmt, slog, JSON and text encodings; Reveal gives the text.
//
// # JWTs
//
// The JWT auth method accepts JWTs signed by a configured public key or a JWKS (asymmetric
// algorithms only), checks exp (required), nbf, iss and aud with a small clock skew, takes the
// subject as the principal and maps one claim's values to policy names.
package acl
