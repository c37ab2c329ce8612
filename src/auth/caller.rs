//! The [`Caller`] of a request, as the auth layer identified it: its tenant's
//! key space, what it may do, its write budget, and whether the auth file still
//! allows what it allowed when the request came.

use std::{future::Future, num::NonZeroU32, sync::Arc, time::Duration};

use governor::DefaultDirectRateLimiter;
use tonic::Status;

use super::{
    file::{Access, Client, Service},
    reload::AuthFile,
};
use crate::{
    error::{Error, Reason},
    redis::KeySpace,
    telemetry::ThrottledLog,
};

static OVER_WRITE_BUDGET: ThrottledLog =
    ThrottledLog::new("writes refused with RESOURCE_EXHAUSTED: a client went over its max_write_bytes_per_second");

/// What Redis spends on a key beyond its name and value (its entry, object and
/// expiry), and cachelock's prefix, tenant and tag: counted against write budgets.
pub const KEY_OVERHEAD: usize = 128;

/// Who made a request, as its handler sees it (in the request's extensions).
#[derive(Clone)]
pub struct Caller {
    /// The client's name from the auth file; `None` without one.
    pub client: Option<Arc<str>>,
    /// The tenant's key space: every key the request touches is in it.
    pub space: KeySpace,
    /// What the client may do with the service it called (every method without an auth file).
    pub access: Access,
    /// What the auth file allowed this request, watched for revocation; `None` without one.
    pub(super) standing: Option<Standing>,
    /// The client's budget of written bytes, if it has one.
    pub(super) write_budget: Option<Arc<DefaultDirectRateLimiter>>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("client", &self.client)
            .field("space", &self.space)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// The caller of `request`.
    ///
    /// # Errors
    /// INTERNAL when the auth layer did not run (a wiring bug, never a caller's fault).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
        Caller::in_extensions(request.extensions())
    }

    /// The caller recorded in a request's `extensions`.
    ///
    /// # Errors
    /// INTERNAL when the auth layer did not run (a wiring bug, never a caller's fault).
    pub fn in_extensions(extensions: &tonic::Extensions) -> Result<&Caller, Status> {
        extensions
            .get::<Caller>()
            .ok_or_else(|| Error::Internal("the auth layer did not run".to_owned()).into())
    }

    /// The key space of a request that may store what it carries in up to
    /// `keys` keys (a cache write, session data, a lock or lease record,
    /// rate-limit state) or send it on (a publish: `keys` 0), once that is
    /// counted against the client's `max_write_bytes_per_second`: its encoded
    /// size, and [`KEY_OVERHEAD`] bytes per key.
    ///
    /// # Errors
    /// As [`Caller::of`] and [`Caller::charge_write`].
    pub fn writing<T: prost::Message>(request: &tonic::Request<T>, keys: usize) -> Result<KeySpace, Status> {
        let caller = Caller::of(request)?;
        caller.charge(request.get_ref(), keys)?;
        Ok(caller.space.clone())
    }

    /// Counts `message`, which may be stored in up to `keys` keys, against the
    /// client's `max_write_bytes_per_second` (see [`Caller::writing`]).
    ///
    /// # Errors
    /// As [`Caller::charge_write`].
    pub fn charge<T: prost::Message>(&self, message: &T, keys: usize) -> Result<(), Error> {
        self.charge_write(message.encoded_len() + keys * KEY_OVERHEAD)
    }

    /// Refuses a request whose effect is a write although its method may read
    /// (a Session Get that touches) when the client may only read.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] naming what the request would change.
    pub fn may_write(&self, what: &str) -> Result<(), Error> {
        match (self.access, &self.client) {
            (Access::Read, Some(client)) => Err(Error::PermissionDenied(format!(
                "client {client} may only read this service; {what} changes data"
            ))),
            _ => Ok(()),
        }
    }

    /// Counts `bytes` against the client's `max_write_bytes_per_second`.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED (reason WRITE_BUDGET_EXCEEDED) when they do not fit:
    /// with a `RetryInfo` when waiting helps, without when the one write is larger
    /// than a second's budget.
    pub fn charge_write(&self, bytes: usize) -> Result<(), Error> {
        let Some(budget) = &self.write_budget else {
            return Ok(());
        };
        let client = self.client.as_deref().unwrap_or_default();
        let Some(cells) = u32::try_from(bytes).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match budget.check_n(cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                OVER_WRITE_BUDGET.record();
                let wait = not_until
                    .wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()))
                    .max(Duration::from_millis(1));
                Err(Error::Exhausted {
                    reason: Reason::WriteBudgetExceeded,
                    message: format!(
                        "client {client} is over its max_write_bytes_per_second with this write of {bytes} bytes; \
                         retry after {} ms",
                        wait.as_millis()
                    ),
                    retry_after: Some(wait),
                })
            }
            Err(_) => Err(Error::Exhausted {
                reason: Reason::WriteBudgetExceeded,
                message: format!(
                    "this write of {bytes} bytes is more than client {client}'s max_write_bytes_per_second allows \
                     at once"
                ),
                retry_after: None,
            }),
        }
    }

    /// Completes when the auth file no longer allows what it allowed this
    /// request (its client removed, its credential or tenant changed, its
    /// permission taken back), with the status to end the request with. Never
    /// completes without an auth file. For calls that outlive a reload: streams
    /// and waits.
    pub fn revoked(&self) -> impl Future<Output = Status> + Send + 'static {
        let standing = self.standing.clone();
        async move {
            let Some(standing) = standing else {
                return std::future::pending().await;
            };
            let mut changes = standing.file.changes();
            let expiry = async {
                match standing
                    .expires
                    .and_then(|expires| expires.duration_since(std::time::SystemTime::now()).ok())
                {
                    // A moment past it, so that the check below sees it expired.
                    Some(left) => tokio::time::sleep(left + Duration::from_millis(1)).await,
                    None => std::future::pending().await,
                }
            };
            let mut expiry = std::pin::pin!(expiry);
            loop {
                changes.borrow_and_update();
                if let Some(error) = standing.lost() {
                    return Status::from(error);
                }
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return std::future::pending().await;
                        }
                    }
                    () = &mut expiry => {}
                }
            }
        }
    }
}

/// What the auth file allowed one request: its client as loaded then, the
/// service it called and the access it needed.
#[derive(Clone)]
pub(super) struct Standing {
    /// The auth file, to look at as it is loaded now.
    pub(super) file: Arc<AuthFile>,
    /// The client as the file named it when the request came.
    pub(super) client: Arc<Client>,
    /// The service the request called.
    pub(super) service: Service,
    /// The access the request needed.
    pub(super) needed: Access,
    /// When the client certificate it was identified by expires.
    pub(super) expires: Option<std::time::SystemTime>,
}

impl Standing {
    /// Why the auth file as loaded now no longer allows it, if it does not.
    fn lost(&self) -> Option<Error> {
        let loaded = self.file.loaded();
        let name = &self.client.name;
        if self
            .expires
            .is_some_and(|expires| std::time::SystemTime::now() > expires)
        {
            return Some(Error::Unauthenticated(format!(
                "client {name}'s certificate has expired"
            )));
        }
        let Some(now) = loaded.clients.find(name) else {
            return Some(Error::Unauthenticated(format!(
                "client {name} was removed from the auth file"
            )));
        };
        if now.credential != self.client.credential || now.tenant != self.client.tenant {
            return Some(Error::Unauthenticated(format!(
                "client {name}'s credential or tenant changed in the auth file"
            )));
        }
        match (now.access(self.service), self.needed) {
            (None, _) => Some(Error::PermissionDenied(format!(
                "client {name} may no longer call the {} service",
                self.service.name()
            ))),
            (Some(Access::Read), Access::Full) => Some(Error::PermissionDenied(format!(
                "client {name} may now only read the {} service",
                self.service.name()
            ))),
            _ => None,
        }
    }
}
