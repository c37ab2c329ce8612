//! What keeps one Hold's lease: renews it while the stream is open, tells the
//! holder `lost` before the lease could have ended when it cannot, and releases
//! it when the stream closes or the server drains.
//!
//! The lease is certain until the moment counted from when the grant or the
//! last renewal that succeeded was *sent* (Redis starts the lease later, when it
//! runs the script, so this errs early). Renewals go out every third of the
//! lease; one that fails is tried again at once and then every
//! [`RENEW_RETRY`], each bounded so that no answer is awaited past the moment
//! the holder must be told. At that moment — the certain end less the caller's
//! safety margin — a lease not renewed is reported `lost`, whatever is still in
//! flight, and then released in case a renewal did go through.

use std::{future::Future, pin::Pin, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    time::{Instant, sleep_until},
};
use tonic::Status;

use super::{
    acquire::record_pause,
    grant::{Lapse, Renewal},
    store::LockStore,
};
use crate::{
    error::{Error, Reason},
    pb::lock::{HoldResponse, Lost, Renewed, hold_response},
    redis::LockKeys,
    request::Ttl,
    telemetry::Meter,
    time::duration_to_proto,
};

/// How soon a failed renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_millis(100);

/// The events a Hold's stream buffers. A `renewed` is sent only while more than
/// two places are free, so that `lost` and a final status always fit.
pub(super) const EVENTS: usize = 8;

/// One Hold's lease, kept by [`Keeper::keep`].
pub(super) struct Keeper {
    pub(super) store: LockStore,
    pub(super) keys: LockKeys,
    pub(super) token: String,
    pub(super) ttl: Ttl,
    /// How long before the lease could end the holder must know it is lost.
    pub(super) margin: Duration,
    pub(super) operation_timeout: Duration,
    pub(super) events: mpsc::Sender<Result<HoldResponse, Status>>,
    pub(super) draining: watch::Receiver<bool>,
    /// Completes when the auth file takes the caller's access back.
    pub(super) revoked: Pin<Box<dyn Future<Output = Status> + Send>>,
    pub(super) meter: Meter,
}

/// Why a kept lease ended.
enum End {
    /// The caller closed the stream (or its connection is gone): release.
    Closed,
    /// The holder must be told, with this reason; release when the lease may
    /// still be held by this token.
    Lost { reason: &'static str, release: bool },
    /// The auth file took the caller's access back: told `lost` (REVOKED), then
    /// the stream ends with this status, and the lock is released.
    Revoked(Status),
}

impl Keeper {
    /// Keeps the lease granted by an attempt sent at `sent` for `granted`,
    /// until the stream closes or the lease is lost; then releases it.
    pub(super) async fn keep(mut self, sent: Instant, granted: Duration) {
        let end = self.renew_until_the_end(sent, granted).await;
        let release = match end {
            End::Closed => true,
            End::Revoked(status) => {
                let lost = hold_event(hold_response::Event::Lost(Lost {
                    reason: "REVOKED".to_owned(),
                }));
                let _ = self.events.try_send(lost);
                let _ = self.events.try_send(Err(status));
                true
            }
            End::Lost { reason, release } => {
                if reason != "SHUTTING_DOWN" {
                    self.meter.record(|metrics| metrics.lock_leases_lost.inc());
                }
                let lost = hold_event(hold_response::Event::Lost(Lost {
                    reason: reason.to_owned(),
                }));
                // Renewals leave two places free: room is certain unless the caller is gone.
                let _ = self.events.try_send(lost);
                release
            }
        };
        if release {
            let deadline = Instant::now() + self.operation_timeout;
            // Best effort: if it fails, the lease runs out by itself.
            let _ = self.store.release(&self.keys, &self.token, "", deadline).await;
        }
    }

    async fn renew_until_the_end(&mut self, sent: Instant, granted: Duration) -> End {
        let lease = Duration::from_millis(self.ttl.millis());
        let mut certain_until = sent + granted;
        let mut next_renewal = sent + granted / 3;
        let mut draining = self.draining.clone();
        loop {
            let tell_by = certain_until.checked_sub(self.margin).unwrap_or(sent);
            tokio::select! {
                () = self.events.closed() => return End::Closed,
                _ = draining.wait_for(|draining| *draining) => {
                    return End::Lost { reason: "SHUTTING_DOWN", release: true };
                }
                status = &mut self.revoked => return End::Revoked(status),
                () = sleep_until(next_renewal.min(tell_by)) => {}
            }
            if Instant::now() >= tell_by {
                return End::Lost {
                    reason: "REDIS_UNAVAILABLE",
                    release: true,
                };
            }
            let sent = Instant::now();
            // No answer is awaited past the moment the holder must be told.
            let deadline = (sent + self.operation_timeout).min(tell_by);
            let renewal = tokio::select! {
                renewal = self.store.extend(&self.keys, &self.token, self.ttl, deadline) => renewal,
                () = self.events.closed() => return End::Closed,
            };
            match renewal {
                Ok(Renewal::Extended(_)) => {
                    certain_until = sent + lease;
                    next_renewal = sent + lease / 3;
                    if self.events.capacity() > 2 {
                        let certain_for = certain_until
                            .checked_sub(self.margin)
                            .map_or(Duration::ZERO, |until| until.saturating_duration_since(Instant::now()));
                        let renewed = hold_event(hold_response::Event::Renewed(Renewed {
                            certain_for: Some(duration_to_proto(certain_for)),
                        }));
                        let _ = self.events.try_send(renewed);
                    }
                }
                Ok(Renewal::Lapsed(lapse)) => {
                    let reason = match lapse {
                        Lapse::Taken => "LEASE_LOST",
                        Lapse::Free => "LOCK_NOT_HELD",
                    };
                    return End::Lost { reason, release: false };
                }
                Ok(Renewal::Paused { cause, .. }) => {
                    record_pause(cause);
                    return End::Lost {
                        reason: "LOCKS_PAUSED",
                        release: true,
                    };
                }
                Err(Error::FailedPrecondition(Reason::EvictionPolicy, _)) => {
                    return End::Lost {
                        reason: "EVICTION_POLICY",
                        release: true,
                    };
                }
                // Tried again soon, while the lease is certain.
                Err(_) => next_renewal = Instant::now() + RENEW_RETRY,
            }
        }
    }
}

/// A Hold stream's message carrying `event`.
pub fn hold_event(event: hold_response::Event) -> Result<HoldResponse, Status> {
    Ok(HoldResponse { event: Some(event) })
}
