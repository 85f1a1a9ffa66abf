package pki

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Issuer issues a fresh identity for spec. LocalIssuer does it with the CA in this process; a
// node without the CA would implement it with a call to one that has it.
type Issuer interface {
	IssueIdentity(ctx context.Context, spec NodeSpec) (*Identity, error)
}

// Renewer keeps a Holder's certificate fresh: when it reaches RenewAt, it asks the Issuer for a
// new identity (new key too), stores it in the Holder, and hands it to OnRenew to persist.
type Renewer struct {
	Holder *Holder
	Issuer Issuer
	// Spec describes the certificate to reissue (the node's name, IPs, lifetime).
	Spec NodeSpec
	// OnRenew persists the new identity (SaveIdentity); an error is logged and the new identity
	// is still used, since the old one would only expire.
	OnRenew func(*Identity) error
	Logger  *slog.Logger
	// Now is time.Now when nil.
	Now func() time.Time
	// RetryAfter is the wait after a failed renewal (1 minute when zero).
	RetryAfter time.Duration
	// MaxWait caps one wait, so a clock jump (a suspended laptop) is noticed within it
	// (1 hour when zero).
	MaxWait time.Duration
}

func (r *Renewer) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// RenewIfDue renews when the current certificate needs it (or there is none) and reports
// whether it did.
func (r *Renewer) RenewIfDue(ctx context.Context) (bool, error) {
	if id := r.Holder.Identity(); id != nil && !NeedsRenewal(id.Leaf(), r.now()) {
		return false, nil
	}
	id, err := r.Issuer.IssueIdentity(ctx, r.Spec)
	if err != nil {
		return false, fmt.Errorf("renew certificate: %w", err)
	}
	r.Holder.Store(id)
	if r.OnRenew != nil {
		if err := r.OnRenew(id); err != nil {
			r.logger().Error("renewed certificate not saved; it is in use until restart", "error", err)
		}
	}
	r.logger().Info("renewed node certificate", "serial", id.Leaf().SerialNumber.Text(16),
		"not_after", id.Leaf().NotAfter, "renew_at", RenewAt(id.Leaf()))
	return true, nil
}

// Run renews at each certificate's RenewAt until ctx ends, retrying failures after RetryAfter.
// It returns ctx's error.
func (r *Renewer) Run(ctx context.Context) error {
	retry := r.RetryAfter
	if retry <= 0 {
		retry = time.Minute
	}
	maxWait := r.MaxWait
	if maxWait <= 0 {
		maxWait = time.Hour
	}
	for {
		wait := maxWait
		if _, err := r.RenewIfDue(ctx); err != nil {
			r.logger().Warn("certificate renewal failed; will retry", "error", err, "retry_in", retry)
			wait = retry
		} else if id := r.Holder.Identity(); id != nil {
			wait = min(max(RenewAt(id.Leaf()).Sub(r.now()), 0), maxWait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (r *Renewer) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}
