//! WatchDbCreds: live database credentials for as long as the stream is open.
//!
//! ISSUED at once; then the lease is renewed at two thirds of its duration, asking for its first
//! duration again (RENEWED). When Vault gives less than that (the lease is near its max TTL), or
//! a renewal fails, or the lease is not renewable (at two thirds of it), new credentials are
//! issued (ROTATED) and the old lease is revoked after `watch.rotation_grace_ms`. When new
//! credentials cannot be issued for a transient reason (Vault unreachable, sealed, rate-limited),
//! they are asked for again, backing off, while the held lease lasts: the stream ends only when
//! it would run out. When the stream ends, however it ends, the current lease is revoked after
//! the same grace.
//!
//! Invariants:
//! - Every lease this stream obtained is revoked: each is held by a [`Held`] whose drop hands its
//!   revocation to `Streams::linger` (after the grace, or at once at shutdown, awaited by the
//!   server before it stops). A lease being issued when the caller goes away is still held: the
//!   issue runs in a task of its own, whose result (the `Held`) is dropped, and so revoked, when
//!   nobody awaits it any more.
//! - Leases are the caller's own (`leases.rs`): issued with its token, recorded as its own, the
//!   parent token kept alive as long (`keep_parent`), a `lease_token` signed; revoked with its
//!   token (its policy needs `update` on `sys/leases/revoke/<mount>/creds/<role>/*`, as for
//!   RevokeLease). Passwords are never logged (`redact.rs`).

use super::duration;
use crate::{
    error::{Error, Subject},
    pb::vaultgate::v1::{GetDbCredsResponse, WatchDbCredsEvent, WatchDbCredsResponse},
    service::Gateway,
    session::Actor,
    stream::{Heartbeat, Sender},
    vault::retry,
};
use std::{sync::Arc, time::Duration};
use tokio::time::Instant;

impl Heartbeat for WatchDbCredsResponse {
    fn heartbeat() -> Self {
        WatchDbCredsResponse { heartbeat: true, ..Default::default() }
    }
}

/// What to do with the current lease next.
#[derive(Debug, PartialEq)]
enum Next {
    /// Renew it, asking for this many seconds.
    Renew(u64),
    /// Replace it with new credentials.
    Rotate,
}

/// When to act on a lease of `duration` seconds obtained (or renewed) at `since`, first issued
/// for `first` seconds, and what to do then: renew at two thirds of it while it is renewable, else
/// rotate at two thirds of it.
fn plan(since: Instant, duration: u64, first: u64, renewable: bool) -> (Instant, Next) {
    let at = since + Duration::from_secs(duration.min(crate::leases::MAX_TTL.as_secs())) * 2 / 3;
    (at, if renewable && first > 0 { Next::Renew(first) } else { Next::Rotate })
}

/// After a renewal asked for `asked` seconds and got `got`: keep the lease, or rotate now because
/// Vault could not give the whole duration (its max TTL is near).
fn after_renewal(asked: u64, got: u64) -> Next {
    if got < asked {
        Next::Rotate
    } else {
        Next::Renew(asked)
    }
}

/// First and longest wait between two tries to replace credentials.
const REISSUE_FIRST_WAIT: Duration = Duration::from_secs(1);
const REISSUE_MAX_WAIT: Duration = Duration::from_secs(30);
/// How long before the held lease ends the last try to replace it is made.
const REISSUE_MARGIN: Duration = Duration::from_secs(1);

/// After the `failures`-th transient failure (≥ 1) to replace credentials whose lease ends at
/// `lease_end`: when to try again (1, 2, 4 … 30 s after `now`, but never later than
/// [`REISSUE_MARGIN`] before the lease ends), or `None` when no try is left before then, and the
/// stream ends with the failure. Meanwhile the caller keeps using the credentials it holds.
fn reissue_at(now: Instant, lease_end: Instant, failures: u32) -> Option<Instant> {
    // The shared backoff without its jitter (one stream's tries, not a herd): 1, 2, 4 … 30 s.
    let wait = retry::backoff(failures.saturating_sub(1), REISSUE_FIRST_WAIT, REISSUE_MAX_WAIT, 1.0);
    let last = lease_end.checked_sub(REISSUE_MARGIN)?;
    let at = (now + wait).min(last);
    (at > now).then_some(at)
}

/// A lease this stream obtained: revoked (after the grace) when dropped.
struct Held {
    gw: Arc<Gateway>,
    actor: Actor,
    creds: GetDbCredsResponse,
    first: u64,
    since: Instant,
    secs: u64,
}

impl Held {
    fn message(&self, event: WatchDbCredsEvent) -> WatchDbCredsResponse {
        let c = &self.creds;
        WatchDbCredsResponse {
            event: event as i32,
            username: c.username.clone(),
            password: c.password.clone(),
            lease_id: c.lease_id.clone(),
            lease_duration: Some(duration(self.secs)),
            renewable: c.renewable,
            lease_token: c.lease_token.clone(),
            heartbeat: false,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let (gw, token, lease_id) =
            (self.gw.clone(), self.actor.token.clone(), std::mem::take(&mut self.creds.lease_id));
        let grace = Duration::from_millis(gw.config.watch.rotation_grace_ms);
        let streams = gw.streams.clone();
        streams.linger(grace, async move {
            match gw.vault.lease_revoke(&token, &lease_id, None).await {
                Ok(()) => {
                    gw.leases.remove(&lease_id);
                    tracing::info!(lease_id = %lease_id, "watched database lease revoked");
                }
                Err(e) => {
                    let e = Error::from_vault(e, Subject::Lease(&lease_id));
                    tracing::warn!(error = ?e, lease_id = %lease_id, "could not revoke a watched database lease; it ends at its TTL");
                }
            }
        });
    }
}

impl Gateway {
    /// Credentials held by a task of its own: if the caller goes away meanwhile, the task still
    /// finishes and its `Held` is dropped, so the lease is revoked.
    async fn issue_held(self: &Arc<Self>, actor: &Actor, mount: &str, role: &str) -> Result<Held, Error> {
        let (gw, actor, mount, role) = (self.clone(), actor.clone(), mount.to_string(), role.to_string());
        let issuing = tokio::spawn(async move {
            let creds = gw.issue_creds(&actor, &mount, &role, None).await?;
            let secs = creds.lease_duration.as_ref().map_or(0, |d| u64::try_from(d.seconds).unwrap_or(0));
            Ok::<_, Error>(Held { gw, actor, creds, first: secs, since: Instant::now(), secs })
        });
        issuing.await.map_err(|e| Error::Internal(format!("issuing credentials: {e}")))?
    }

    /// Streams live credentials of `role` on `mount` to `out` until the stream ends.
    pub(crate) async fn watch_db_creds(
        self: Arc<Self>,
        actor: Actor,
        mount: String,
        role: String,
        out: Sender<WatchDbCredsResponse>,
    ) -> Result<(), Error> {
        let mut held = self.issue_held(&actor, &mount, &role).await?;
        out.send(held.message(WatchDbCredsEvent::Issued)).await?;
        loop {
            let (at, next) = plan(held.since, held.secs, held.first, held.creds.renewable);
            tokio::time::sleep_until(at).await;
            let next = match next {
                Next::Renew(asked) => self.renew_held(&mut held, asked).await,
                Next::Rotate => Next::Rotate,
            };
            match next {
                Next::Renew(_) => out.send(held.message(WatchDbCredsEvent::Renewed)).await?,
                Next::Rotate => {
                    let fresh = self.reissue(&actor, &mount, &role, &held).await?;
                    // The old lease is revoked after the grace (dropped here).
                    let old = std::mem::replace(&mut held, fresh);
                    tracing::info!(old = %old.creds.lease_id, new = %held.creds.lease_id, "watched database credentials rotated");
                    drop(old);
                    out.send(held.message(WatchDbCredsEvent::Rotated)).await?;
                }
            }
        }
    }

    /// New credentials to replace `held`: a transient failure is tried again ([`reissue_at`])
    /// while the held lease lasts, so a Vault that is away for a while does not end the stream.
    async fn reissue(self: &Arc<Self>, actor: &Actor, mount: &str, role: &str, held: &Held) -> Result<Held, Error> {
        let lease_end = held.since + Duration::from_secs(held.secs.min(crate::leases::MAX_TTL.as_secs()));
        let mut failures = 0;
        loop {
            let err = match self.issue_held(actor, mount, role).await {
                Ok(fresh) => return Ok(fresh),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            failures += 1;
            let Some(at) = reissue_at(Instant::now(), lease_end, failures) else { return Err(err) };
            tracing::warn!(error = ?err, failures, lease_id = %held.creds.lease_id, "new watched database credentials could not be issued; trying again while the current lease lasts");
            tokio::time::sleep_until(at).await;
        }
    }

    /// Renews the held lease for `asked` seconds; what to do next.
    async fn renew_held(&self, held: &mut Held, asked: u64) -> Next {
        let lease_id = held.creds.lease_id.clone();
        match self.vault.lease_renew(&held.actor.token, &lease_id, Some(asked), None).await {
            Ok(got) => {
                let secs = self.keep_parent(&held.actor, &held.actor.token, got, None).await;
                self.leases.extend(&lease_id, Duration::from_secs(secs));
                (held.since, held.secs) = (Instant::now(), secs);
                after_renewal(asked, secs)
            }
            Err(e) => {
                let e = Error::from_vault(e, Subject::Lease(&lease_id));
                tracing::warn!(error = ?e, lease_id = %lease_id, "renewal of a watched database lease failed: rotating");
                Next::Rotate
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_at_two_thirds_while_renewable_else_rotate() {
        let t = Instant::now();
        assert_eq!(plan(t, 6, 6, true), (t + Duration::from_secs(4), Next::Renew(6)));
        assert_eq!(plan(t, 3, 6, true), (t + Duration::from_secs(2), Next::Renew(6)));
        assert_eq!(plan(t, 60, 60, false), (t + Duration::from_secs(40), Next::Rotate));
        assert_eq!(plan(t, 0, 0, true), (t, Next::Rotate), "a lease without a duration is replaced at once");
        // Vault's answers are bounded before the arithmetic.
        let (at, _) = plan(t, u64::MAX, u64::MAX, true);
        assert!(at <= t + crate::leases::MAX_TTL);
    }

    #[test]
    fn reissue_backs_off_until_the_held_lease_nearly_ends() {
        let now = Instant::now();
        let s = Duration::from_secs;
        // (seconds of lease left, failures so far, seconds until the next try or None: give up)
        let cases = [
            (60, 1, Some(1)),
            (60, 2, Some(2)),
            (60, 3, Some(4)),
            (60, 6, Some(30)),
            (600, 40, Some(30)),
            (600, u32::MAX, Some(30)),
            (5, 3, Some(4)),
            (4, 3, Some(3)),
            (2, 2, Some(1)),
            (1, 1, None),
            (0, 1, None),
        ];
        for (left, failures, want) in cases {
            let at = reissue_at(now, now + s(left), failures);
            assert_eq!(at.map(|at| (at - now).as_secs()), want, "{left} s left, {failures} failures");
        }
        assert!(Error::Unavailable("sealed".into()).is_transient());
        assert!(!Error::NotFound("role".into()).is_transient());
        assert!(!Error::VaultDenied("policy".into()).is_transient());
    }

    #[test]
    fn a_capped_renewal_rotates() {
        // 6 s lease, 15 s max TTL: renewals at 4 s and 8 s get 6 s; the one at 12 s gets 3 s.
        assert_eq!(after_renewal(6, 6), Next::Renew(6));
        assert_eq!(after_renewal(6, 3), Next::Rotate);
        assert_eq!(after_renewal(6, 0), Next::Rotate);
    }
}
