//! Lock-release notices: one pub/sub subscriber for the whole process, and a
//! registry that wakes the Acquire calls waiting on the released lock.
//!
//! The release script PUBLISHes on the lock's channel after deleting the holder
//! record. The subscriber holds a single pattern subscription for every lock's
//! channel on its own connection (a subscribed connection cannot run other
//! commands), and bumps a per-channel counter in [`ReleaseNotices`] for each
//! message. While it is not subscribed (Redis down, reconnecting), waiters fall
//! back to re-checking at a coarse interval; when it subscribes again, every
//! waiter is woken, since a release may have gone unheard in between.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use futures_util::StreamExt;
use tokio::{
    sync::watch,
    time::{sleep, timeout},
};
use tracing::{info, warn};

use crate::redis::{Backoff, Cause, Endpoint};

/// Waiters registered per release channel, and whether the subscriber is listening.
#[derive(Clone, Default)]
pub struct ReleaseNotices {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    channels: Mutex<HashMap<String, Waiters>>,
    listening: AtomicBool,
}

struct Waiters {
    releases: watch::Sender<u64>,
    count: usize,
}

impl ReleaseNotices {
    /// Starts watching `channel` for releases until the returned registration is dropped.
    pub fn register(&self, channel: String) -> Registration {
        let mut channels = self.inner.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let waiters = channels.entry(channel.clone()).or_insert_with(|| Waiters {
            releases: watch::Sender::new(0),
            count: 0,
        });
        waiters.count += 1;
        let releases = waiters.releases.subscribe();
        Registration {
            notices: self.inner.clone(),
            channel,
            releases,
        }
    }

    /// Whether releases are being heard right now.
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::Acquire)
    }

    fn announce(&self, channel: &str) {
        let channels = self.inner.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waiters) = channels.get(channel) {
            waiters.releases.send_modify(|count| *count += 1);
        }
    }

    fn announce_everywhere(&self) {
        let channels = self.inner.channels.lock().unwrap_or_else(PoisonError::into_inner);
        for waiters in channels.values() {
            waiters.releases.send_modify(|count| *count += 1);
        }
    }

    fn set_listening(&self, listening: bool) {
        self.inner.listening.store(listening, Ordering::Release);
    }
}

/// One waiter's interest in a channel.
pub struct Registration {
    notices: Arc<Inner>,
    channel: String,
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
        let mut channels = self.notices.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waiters) = channels.get_mut(&self.channel) {
            waiters.count -= 1;
            if waiters.count == 0 {
                channels.remove(&self.channel);
            }
        }
    }
}

/// Keeps one pattern subscription to `pattern` alive, announcing every message to
/// `notices`; reconnects with `backoff` between failed attempts, forever. Runs
/// until its task is aborted.
pub async fn listen_for_releases(endpoint: Endpoint, pattern: String, notices: ReleaseNotices, backoff: Backoff) {
    let mut ever_listened = false;
    let mut delay = backoff.min;
    loop {
        let subscribed = async {
            let mut pubsub = endpoint.subscriber().await?;
            // Returns once Redis has confirmed the subscription.
            pubsub.psubscribe(&pattern).await.map_err(|e| Cause::of(&e))?;
            Ok::<_, Cause>(pubsub)
        };
        match timeout(endpoint.connect_timeout(), subscribed).await {
            Ok(Ok(pubsub)) => {
                delay = backoff.min;
                notices.set_listening(true);
                // Releases while nobody listened went unheard: let every waiter look again.
                notices.announce_everywhere();
                if ever_listened {
                    info!("lock-release subscription restored");
                }
                ever_listened = true;
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    notices.announce(message.get_channel_name());
                }
                notices.set_listening(false);
                warn!("lost the lock-release subscription; waiting Acquires re-check periodically until it is back");
            }
            // Why Redis is unreachable is logged by the health prober.
            Ok(Err(_)) | Err(_) => {
                notices.set_listening(false);
                sleep(delay).await;
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
}
