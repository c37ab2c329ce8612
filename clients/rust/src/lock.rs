//! Locks and semaphores: a [`Lease`] the server keeps alive while you hold it,
//! and the plain Acquire / Extend / Release calls.

use std::{
    fmt,
    future::Future,
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};

use crate::{
    Client, Error, Fence, Reason,
    client::{Idempotent, random_id},
    pb::lock::{self as pb, hold_response::Event, lock_service_client::LockServiceClient},
    time::{duration_from, time_from, to_proto},
};

/// How to take a lock.
#[derive(Clone, Debug)]
pub struct LockOptions {
    /// The lease: for [`Locks::hold`], renewed by the server every third of it.
    pub ttl: Duration,
    /// How long to wait for a held lock; `None`: do not wait.
    pub wait: Option<Duration>,
    /// Who is asking, shown by Describe: a host name, a job id.
    pub owner: String,
    /// How many holders at once: 1 for a lock, more for a semaphore.
    pub permits: u32,
    /// How long before the lease could end the server says it is lost, at the
    /// latest: the time the holder needs to stop. `None`: a tenth of `ttl`.
    pub safety_margin: Option<Duration>,
}

impl LockOptions {
    /// A lock with a lease of `ttl`, not waiting.
    pub fn new(ttl: Duration) -> LockOptions {
        LockOptions {
            ttl,
            wait: None,
            owner: String::new(),
            permits: 1,
            safety_margin: None,
        }
    }

    /// Waits up to `wait` for the lock.
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> LockOptions {
        self.wait = Some(wait);
        self
    }

    /// Shows `owner` in Describe.
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> LockOptions {
        self.owner = owner.into();
        self
    }

    /// Makes the name a semaphore of `permits`.
    #[must_use]
    pub fn permits(mut self, permits: u32) -> LockOptions {
        self.permits = permits;
        self
    }
}

/// A grant of [`Locks::acquire`]: its token proves ownership to Release and Extend.
#[derive(Clone)]
pub struct Grant {
    /// The lock's name.
    pub name: String,
    token: String,
    /// Strictly larger than any earlier grant's of this name: pass it with
    /// every write the lock protects.
    pub fencing_token: u64,
    /// The lease left when granted.
    pub ttl: Duration,
}

impl Grant {
    /// The secret proof of ownership.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The fence for writes this grant protects ([`crate::Cache::fenced`]).
    pub fn fence(&self) -> Fence {
        Fence {
            lock: self.name.clone(),
            fencing_token: self.fencing_token,
        }
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("name", &self.name)
            .field("token", &"<secret>")
            .field("fencing_token", &self.fencing_token)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Who holds a lock, from [`Locks::describe`]; never their token.
#[derive(Clone, Debug)]
pub struct Holder {
    /// Whether someone holds it.
    pub held: bool,
    /// The latest holder's owner text.
    pub owner: String,
    /// The latest holder's lease left.
    pub ttl: Duration,
    /// When the latest holder's lease ends, by the service's clock.
    pub expires_at: Option<SystemTime>,
    /// The latest fencing token granted.
    pub fencing_token: u64,
    /// How many grants hold it now.
    pub holders: u32,
    /// How many callers wait for it, on every instance.
    pub waiting: u32,
}

/// Where a kept lease stands.
#[derive(Clone, Debug)]
enum State {
    /// Held, certainly until this instant unless a renewal comes.
    Held(Instant),
    /// Lost, for this reason.
    Lost(String),
}

/// What a stream that keeps a lease says (Hold's and Campaign's events alike).
pub(crate) enum Kept {
    /// The lease was renewed: certain for this long from now.
    Renewed(Duration),
    /// The server could not keep it, for this reason.
    Lost(String),
    /// Nothing that changes the lease.
    Other,
}

/// A lease kept by a stream that a task reads: what [`Lease`] and
/// [`crate::Leadership`] are made of. The stream is closed (and the server
/// releases) when this is dropped or the lease is lost.
pub(crate) struct Keeping {
    state: watch::Receiver<State>,
    // Dropped with this: the keeper then closes the stream, and the server releases.
    _release: oneshot::Sender<()>,
}

impl Keeping {
    /// Starts reading `stream`, whose lease is certain for `certain_for` from now.
    pub(crate) fn start<S>(stream: S, certain_for: Duration) -> Keeping
    where
        S: Stream<Item = Result<Kept, Status>> + Send + Unpin + 'static,
    {
        let certain_until = Instant::now() + certain_for;
        let (state_tx, state) = watch::channel(State::Held(certain_until));
        let (release, released) = oneshot::channel();
        tokio::spawn(keep(stream, state_tx, released, certain_until));
        Keeping {
            state,
            _release: release,
        }
    }

    pub(crate) fn lost_reason(&self) -> Option<String> {
        match &*self.state.borrow() {
            State::Lost(reason) => Some(reason.clone()),
            // The clock is read here too, so that a check between the certain
            // time's end and the keeper's wake-up already says lost.
            State::Held(until) if *until <= Instant::now() => Some("NOT_RENEWED".to_owned()),
            State::Held(_) if self.state.has_changed().is_err() => Some("STREAM_BROKEN".to_owned()),
            State::Held(_) => None,
        }
    }

    pub(crate) fn certain_for(&self) -> Duration {
        match &*self.state.borrow() {
            State::Held(until) => until.saturating_duration_since(Instant::now()),
            State::Lost(_) => Duration::ZERO,
        }
    }

    pub(crate) fn check(&self, name: &str) -> Result<(), Error> {
        match self.lost_reason() {
            None => Ok(()),
            Some(reason) => Err(lost_error(name, &reason)),
        }
    }

    pub(crate) async fn lost(&self) -> String {
        let mut state = self.state.clone();
        // An error: the keeper is gone without a word, and nothing vouches for
        // the lease any more; lost_reason says so.
        let _ = state.wait_for(|state| matches!(state, State::Lost(_))).await;
        self.lost_reason().unwrap_or_else(|| "STREAM_BROKEN".to_owned())
    }

    pub(crate) async fn run<F: Future>(&self, name: &str, work: F) -> Result<F::Output, Error> {
        self.check(name)?;
        tokio::select! {
            biased;
            reason = self.lost() => Err(lost_error(name, &reason)),
            output = work => Ok(output),
        }
    }
}

/// A lock held through `LockService.Hold`: the server renews it while this
/// value lives, and releases it when it is dropped, when it is lost, or when
/// the process dies.
///
/// The lease is lost, and [`Lease::lost`] resolves, at the first of: the
/// server's `lost` event, the stream breaking, or the time the server last
/// vouched for running out with no renewal (a frozen instance sends nothing).
pub struct Lease {
    name: String,
    fencing_token: u64,
    keeping: Keeping,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .field("fencing_token", &self.fencing_token)
            .field("lost", &self.lost_reason())
            .finish()
    }
}

impl Lease {
    /// A lease of `name` with `fencing_token`, kept by `keeping`.
    pub(crate) fn kept(name: &str, fencing_token: u64, keeping: Keeping) -> Lease {
        Lease {
            name: name.to_owned(),
            fencing_token,
            keeping,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The grant's fencing token: pass it with every write the lock protects.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// The fence for writes this lease protects ([`crate::Cache::fenced`],
    /// [`crate::Sessions::fenced`]): refused once the lock was granted again.
    pub fn fence(&self) -> Fence {
        Fence {
            lock: self.name.clone(),
            fencing_token: self.fencing_token,
        }
    }

    /// Why the lease was lost (`LEASE_LOST`, `LOCK_NOT_HELD`, `REDIS_UNAVAILABLE`,
    /// `LOCKS_PAUSED`, `EVICTION_POLICY`, `SHUTTING_DOWN` from the server;
    /// `NOT_RENEWED` when the time the server vouched for ran out with no
    /// renewal, `STREAM_BROKEN` when the stream ended or broke without a word),
    /// or `None` while held.
    pub fn lost_reason(&self) -> Option<String> {
        self.keeping.lost_reason()
    }

    /// How long the lease is certain to last if no renewal comes; zero once lost.
    pub fn certain_for(&self) -> Duration {
        self.keeping.certain_for()
    }

    /// `Ok` while the lease holds.
    ///
    /// # Errors
    /// [`Reason::LeaseLost`] once it was lost: stop the protected work.
    pub fn check(&self) -> Result<(), Error> {
        self.keeping.check(&self.name)
    }

    /// Resolves when the lease is lost, with the reason.
    pub async fn lost(&self) -> String {
        self.keeping.lost().await
    }

    /// Runs `work` while the lease holds: its output, or [`Reason::LeaseLost`]
    /// as soon as the lease is lost (`work` is then dropped, mid-way).
    ///
    /// # Errors
    /// [`Reason::LeaseLost`] when the lease was lost first.
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, Error> {
        self.keeping.run(&self.name, work).await
    }

    /// Gives the lock up now (dropping the lease does the same).
    pub fn release(self) {}
}

pub(crate) fn lost_error(name: &str, reason: &str) -> Error {
    Error::local(
        Code::FailedPrecondition,
        Reason::LeaseLost,
        format!("the lease of {name:?} was lost ({reason}): stop the work it protected"),
    )
}

/// The lock calls. Get one from [`Client::locks`].
#[derive(Clone, Debug)]
pub struct Locks {
    client: Client,
}

impl Client {
    /// Locks and semaphores.
    pub fn locks(&self) -> Locks {
        Locks { client: self.clone() }
    }
}

impl Locks {
    fn stub(&self) -> LockServiceClient<tonic::transport::Channel> {
        LockServiceClient::new(self.client.channel.clone())
    }

    /// Takes `name` and keeps it while the returned [`Lease`] lives: the server
    /// renews the lease and releases it when the lease is dropped.
    ///
    /// # Errors
    /// [`Reason::NotAcquired`] when the wait ended without the lock; any
    /// [`Error`] the server answers with (never retried: see [`Locks::acquire`]).
    pub async fn hold(&self, name: &str, options: &LockOptions) -> Result<Lease, Error> {
        let wait = options.wait.unwrap_or_default();
        let request = pb::HoldRequest {
            name: name.to_owned(),
            ttl: Some(to_proto(options.ttl)),
            wait_timeout: options.wait.map(to_proto),
            owner: options.owner.clone(),
            permits: options.permits,
            safety_margin: options.safety_margin.map(to_proto),
        };
        // The stream itself has no deadline: it lives as long as the lease.
        // Only the wait for the grant is bounded.
        let until = self.client.deadline(wait);
        let mut stub = self.stub();
        let opened = async {
            let mut stream = stub.hold(self.client.request(request, None)).await?.into_inner();
            loop {
                match stream.message().await? {
                    Some(pb::HoldResponse { event: Some(event) }) => return Ok((event, stream)),
                    Some(_) => continue,
                    None => return Err(tonic::Status::unavailable("the Hold stream ended before an answer")),
                }
            }
        };
        let (event, stream) = tokio::time::timeout_at(until, opened)
            .await
            .map_err(|_| Error::deadline("lock.Hold"))?
            .map_err(Error::from)?;
        let acquired = match event {
            Event::Acquired(acquired) => acquired,
            Event::NotAcquired(not) => {
                return Err(Error::local(
                    Code::FailedPrecondition,
                    Reason::NotAcquired,
                    format!(
                        "{name:?} stayed held (its lease had {:?} left when the wait ended)",
                        duration_from(not.ttl)
                    ),
                ));
            }
            Event::Lost(lost) => return Err(lost_error(name, &lost.reason)),
            Event::Renewed(_) => {
                return Err(Error::local(
                    Code::Internal,
                    Reason::Internal,
                    "a renewal came before the grant",
                ));
            }
        };
        let events = stream.map(|message| {
            message.map(|response| match response.event {
                Some(Event::Renewed(renewed)) => Kept::Renewed(duration_from(renewed.certain_for)),
                Some(Event::Lost(lost)) => Kept::Lost(lost.reason),
                _ => Kept::Other,
            })
        });
        Ok(Lease::kept(
            name,
            acquired.fencing_token,
            Keeping::start(events, duration_from(acquired.certain_for)),
        ))
    }

    /// Takes `name` if it is free (or becomes free within `options.wait`):
    /// `None` when it stayed held. The caller must extend and release the grant;
    /// [`Locks::hold`] does both by itself. Sent with a fresh request id, so a
    /// repeat after a lost answer returns the same grant.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with, after the retries the policy allows.
    pub async fn acquire(&self, name: &str, options: &LockOptions) -> Result<Option<Grant>, Error> {
        let wait = options.wait.unwrap_or_default();
        let request = pb::AcquireRequest {
            name: name.to_owned(),
            ttl: Some(to_proto(options.ttl)),
            wait_timeout: options.wait.map(to_proto),
            owner: options.owner.clone(),
            request_id: random_id()?,
            permits: options.permits,
        };
        let answer = self
            .client
            .unary("lock.Acquire", Idempotent::Yes, wait, request, |r| {
                let mut stub = self.stub();
                async move { stub.acquire(r).await }
            })
            .await?;
        Ok(answer.acquired.then(|| Grant {
            name: name.to_owned(),
            token: answer.token,
            fencing_token: answer.fencing_token,
            ttl: duration_from(answer.ttl),
        }))
    }

    /// Gives `grant`'s lease a new `ttl` from now; the lease left.
    ///
    /// # Errors
    /// [`Reason::LeaseLost`] when another token holds the lock now,
    /// [`Reason::LockNotHeld`] when nobody does.
    pub async fn extend(&self, grant: &Grant, ttl: Duration) -> Result<Duration, Error> {
        let request = pb::ExtendRequest {
            name: grant.name.clone(),
            token: grant.token.clone(),
            ttl: Some(to_proto(ttl)),
        };
        let answer = self
            .client
            .unary("lock.Extend", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.extend(r).await }
            })
            .await?;
        Ok(duration_from(answer.ttl))
    }

    /// Gives `grant` up.
    ///
    /// # Errors
    /// As [`Locks::extend`].
    pub async fn release(&self, grant: &Grant) -> Result<(), Error> {
        let request = pb::ReleaseRequest {
            name: grant.name.clone(),
            token: grant.token.clone(),
        };
        self.client
            .unary("lock.Release", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.release(r).await }
            })
            .await
            .map(|_| ())
    }

    /// Who holds `name`.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with, after the retries the policy allows.
    pub async fn describe(&self, name: &str) -> Result<Holder, Error> {
        let request = pb::DescribeRequest { name: name.to_owned() };
        let answer = self
            .client
            .unary("lock.Describe", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.describe(r).await }
            })
            .await?;
        Ok(Holder {
            held: answer.held,
            owner: answer.owner,
            ttl: duration_from(answer.ttl),
            expires_at: time_from(answer.expires_at),
            fencing_token: answer.fencing_token,
            holders: answer.holders,
            waiting: answer.waiting,
        })
    }
}

/// Reads the Hold stream for as long as the lease lives, and says when it is
/// lost: the server's `lost`, the stream's end, or the certain time running
/// out with no renewal. Returning drops the stream, which the server takes as
/// the release: when the lease is dropped, or as soon as it is lost.
async fn keep<S>(
    mut stream: S,
    state: watch::Sender<State>,
    mut released: oneshot::Receiver<()>,
    mut certain_until: Instant,
) where
    S: Stream<Item = Result<Kept, Status>> + Unpin,
{
    loop {
        let reason = tokio::select! {
            biased;
            _ = &mut released => return,
            () = tokio::time::sleep_until(certain_until) => "NOT_RENEWED".to_owned(),
            message = stream.next() => match message {
                Some(Ok(Kept::Renewed(certain_for))) => {
                    certain_until = Instant::now() + certain_for;
                    state.send_replace(State::Held(certain_until));
                    continue;
                }
                Some(Ok(Kept::Lost(reason))) => reason,
                Some(Ok(Kept::Other)) => continue,
                None => "STREAM_BROKEN".to_owned(),
                // cachelock's reason when it gave one (SHUTTING_DOWN, say).
                Some(Err(status)) => match Error::from(status).reason() {
                    Reason::None => "STREAM_BROKEN".to_owned(),
                    reason => reason.name().to_owned(),
                },
            },
        };
        tracing::debug!(%reason, "lease lost");
        state.send_replace(State::Lost(reason));
        // Returning drops the stream: a server still renewing (a stall, not a
        // death) releases the lock at once, for the next holder, as the holder
        // has been told to stop.
        return;
    }
}
