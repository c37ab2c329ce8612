//! Wake-up notices heard from Redis: a registry that wakes the calls waiting
//! in this process for something another caller does — a lock's release, a
//! cache fill.
//!
//! Locks: the release script PUBLISHes on the lock's channel, after removing the
//! holder, the tickets of the queued waiters to wake: as many as permits are
//! free, first in line first. The process's one Redis subscriber connection (the
//! Pub/Sub hub's, see [`crate::pubsub::run_subscriber`]) holds a single pattern
//! subscription for every lock's channel, and wakes the waiters of this process
//! that the message names — only those, so a release does not send every waiter
//! to Redis. While it is not subscribed (Redis down, reconnecting), waiters fall
//! back to re-checking at a coarse interval; when it subscribes again, every
//! waiter is woken, since a release may have gone unheard in between.
//!
//! Cache fills work the same way with an empty message: every waiter of the
//! key is woken, since every one of them wants the value.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{
    error::{Error, Reason},
    telemetry::{Meter, Refusal, ThrottledLog, add_wait_time},
};

/// The delay suggested (`RetryInfo`) to a call refused for too many waiters:
/// places free up as waiters are served or give up.
const WAITERS_RETRY: Duration = Duration::from_secs(1);
/// How often a waiter looks again while notices cannot be heard (the
/// subscriber connection is down): a notice sent meanwhile is lost.
const UNHEARD_RECHECK: Duration = Duration::from_millis(250);

/// What ended a [`Notices::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A notice came, or the nap ended: look again.
    LookAgain,
    /// The server is draining: give up the wait.
    Draining,
}

/// Counts a wait, however it ends (a caller that gives up drops it), as time
/// the RPC waited by design: what the caller asked for does not make it slow.
struct WaitClock(Instant);

impl Drop for WaitClock {
    fn drop(&mut self) {
        add_wait_time(self.0.elapsed());
    }
}

/// Who waits, for the messages and metrics of refusals.
pub struct Waiting {
    /// The calls that wait, in the refusal messages: "Acquires".
    pub calls: &'static str,
    /// What they wait for: "locks", "this lock".
    pub what: &'static str,
    /// The same, for one channel.
    pub what_one: &'static str,
    /// The flag that limits them in all.
    pub flag: &'static str,
    /// The flag that limits them per channel (may be the same).
    pub flag_per_channel: &'static str,
    /// The `kind` label of `cachelock_waiters`: "lock", "cache_fill".
    pub kind: &'static str,
    /// The `reason` label of `cachelock_requests_refused_total`.
    pub refusal: Refusal,
    /// The log line counting refusals.
    pub log: &'static ThrottledLog,
}

/// Waiters registered per channel, and whether the subscriber is listening.
#[derive(Clone)]
pub struct Notices {
    inner: Arc<Inner>,
}

struct Inner {
    channels: Mutex<Registry>,
    listening: AtomicBool,
    max_waiters: usize,
    max_per_channel: usize,
    meter: Meter,
    waiting: &'static Waiting,
}

#[derive(Default)]
struct Registry {
    /// Per channel, each waiter's ticket and its wake-up counter.
    channels: HashMap<String, HashMap<String, watch::Sender<u64>>>,
    total: usize,
}

impl Notices {
    /// A registry of at most `max_waiters` waiters, `max_per_channel` of them per
    /// channel, counting refusals in `meter`.
    pub fn new(max_waiters: usize, max_per_channel: usize, meter: Meter, waiting: &'static Waiting) -> Notices {
        Notices {
            inner: Arc::new(Inner {
                channels: Mutex::new(Registry::default()),
                listening: AtomicBool::new(false),
                max_waiters,
                max_per_channel,
                meter,
                waiting,
            }),
        }
    }

    /// Starts watching `channel` for releases that name `ticket` until the
    /// returned registration is dropped.
    ///
    /// # Errors
    /// [`Error::Exhausted`] when the waiters in all, or on this channel, are at their limit.
    pub fn register(&self, channel: String, ticket: String) -> Result<Registration, Error> {
        let mut registry = self.inner.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting = self.inner.waiting;
        if registry.total >= self.inner.max_waiters {
            drop(registry);
            return Err(self.full(format!(
                "{} {} are already waiting for {} (--{}); retry later",
                self.inner.max_waiters, waiting.calls, waiting.what, waiting.flag
            )));
        }
        let waiters = registry.channels.entry(channel.clone()).or_default();
        if waiters.len() >= self.inner.max_per_channel {
            drop(registry);
            return Err(self.full(format!(
                "{} {} are already waiting for {} (--{}); retry later",
                self.inner.max_per_channel, waiting.calls, waiting.what_one, waiting.flag_per_channel
            )));
        }
        let releases = waiters
            .entry(ticket.clone())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        registry.total += 1;
        drop(registry);
        self.inner.meter.record(|metrics| metrics.waiting(waiting.kind, 1));
        Ok(Registration {
            notices: self.inner.clone(),
            channel,
            ticket,
            releases,
        })
    }

    fn full(&self, message: String) -> Error {
        self.inner.waiting.log.record();
        self.inner
            .meter
            .record(|metrics| metrics.refuse(self.inner.waiting.refusal));
        Error::Exhausted {
            reason: Reason::TooManyWaiters,
            message,
            retry_after: Some(WAITERS_RETRY),
        }
    }

    /// Whether releases are being heard right now.
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::Acquire)
    }

    /// Every server-side wait: until the notice `registration` waits for, `nap`
    /// passes, or the server drains, whichever comes first. While notices cannot
    /// be heard it naps at most [`UNHEARD_RECHECK`]. Without a registration only
    /// the nap or the drain end it.
    pub async fn wait(
        &self,
        registration: Option<&mut Registration>,
        nap: Duration,
        draining: &watch::Receiver<bool>,
    ) -> Woken {
        let nap = if self.is_listening() {
            nap
        } else {
            nap.min(UNHEARD_RECHECK)
        };
        let notice = async {
            match registration {
                Some(registration) => registration.released().await,
                None => std::future::pending().await,
            }
        };
        let mut draining = draining.clone();
        let _clock = WaitClock(Instant::now());
        tokio::select! {
            () = notice => Woken::LookAgain,
            () = tokio::time::sleep(nap) => Woken::LookAgain,
            // The caller can retry on another instance rather than be cut off at the grace's end.
            _ = draining.wait_for(|draining| *draining) => Woken::Draining,
        }
    }

    /// Wakes the waiters of `channel` whose tickets `tickets` names
    /// (space-separated); every waiter of the channel when it names none.
    pub(crate) fn announce(&self, channel: &str, tickets: &[u8]) {
        let registry = self.inner.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(waiters) = registry.channels.get(channel) else {
            return;
        };
        if tickets.is_empty() {
            waiters.values().for_each(wake);
            return;
        }
        for ticket in tickets.split(|&byte| byte == b' ') {
            if let Some(waiter) = std::str::from_utf8(ticket).ok().and_then(|ticket| waiters.get(ticket)) {
                wake(waiter);
            }
        }
    }

    /// Wakes every waiter: releases may have gone unheard.
    pub(crate) fn announce_everywhere(&self) {
        let registry = self.inner.channels.lock().unwrap_or_else(PoisonError::into_inner);
        registry.channels.values().flat_map(HashMap::values).for_each(wake);
    }

    /// Records whether releases are being heard.
    pub(crate) fn set_listening(&self, listening: bool) {
        self.inner.listening.store(listening, Ordering::Release);
    }
}

fn wake(waiter: &watch::Sender<u64>) {
    waiter.send_modify(|count| *count += 1);
}

/// One waiter's interest in a channel.
pub struct Registration {
    notices: Arc<Inner>,
    channel: String,
    ticket: String,
    releases: watch::Receiver<u64>,
}

impl Registration {
    /// Marks every release announced so far as seen. Call it *before* each attempt
    /// to take the lock.
    pub fn mark_seen(&mut self) {
        self.releases.borrow_and_update();
    }

    /// Completes when a release is announced after the last [`Registration::mark_seen`].
    ///
    /// SAFETY (no lost wake-up): a release that happens after an attempt found the
    /// lock held is published after that attempt, so its notice bumps the counter
    /// after `mark_seen`; `changed` then returns at once even if the bump came
    /// before this call. A notice of an older release only causes one extra attempt.
    pub async fn released(&mut self) {
        if self.releases.changed().await.is_err() {
            // The sender lives as long as any registration: unreachable in practice.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let kind = self.notices.waiting.kind;
        self.notices.meter.record(|metrics| metrics.waiting(kind, -1));
        let mut registry = self.notices.channels.lock().unwrap_or_else(PoisonError::into_inner);
        registry.total -= 1;
        if let Some(waiters) = registry.channels.get_mut(&self.channel) {
            waiters.remove(&self.ticket);
            if waiters.is_empty() {
                registry.channels.remove(&self.channel);
            }
        }
    }
}
