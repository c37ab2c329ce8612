//! The process's one Redis subscriber connection, shared by every Subscribe
//! stream (fanning each message out in-process) and by the lock service's
//! release notices.
//!
//! The [`Hub`] keeps a registry of which stream listens to which Redis channel
//! or pattern. Redis is subscribed once per distinct channel or pattern, and
//! unsubscribed when the last stream on it leaves. A single task owns the
//! connection ([`run_subscriber`](super::run_subscriber)): it applies subscription changes in the order
//! the registry made them, delivers messages, and after a reconnect subscribes
//! to everything in the registry again and tells every stream that messages may
//! have been missed. Each stream has a bounded buffer: a message that does not
//! fit is dropped for that stream alone and counted, and the count reaches the
//! stream as a gap before its next message, so a slow reader costs bounded
//! memory and never slows the others.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    sync::{mpsc, oneshot},
    time::timeout,
};

use crate::{
    error::{Cause, Error, Reason},
    telemetry::{Meter, Refusal},
};

/// Why messages may be missing from a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapCause {
    /// The stream's buffer was full.
    SlowReader,
    /// The Redis connection was lost and restored.
    Reconnected,
}

/// What a stream receives.
#[derive(Debug)]
pub enum Event {
    /// A published message: its Redis channel, payload, and the Redis pattern
    /// that matched it (for a pattern subscription).
    Message {
        /// The Redis channel, shared by every stream it goes to.
        channel: Arc<str>,
        /// The payload, shared by every stream it goes to.
        payload: Bytes,
        /// The Redis pattern, for a pattern subscription.
        pattern: Option<Arc<str>>,
    },
    /// Messages may be missing here; `missed` of them for certain.
    Gap {
        /// Why.
        cause: GapCause,
        /// How many were dropped, when known.
        missed: u64,
    },
}

/// The limits on subscriptions.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Messages buffered per stream before they are dropped for it.
    pub buffer: usize,
    /// Streams open at once in the process.
    pub max_streams: usize,
}

/// The registry of streams and the queue of changes for the subscriber task.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Mutex<Registry>,
    commands: mpsc::UnboundedSender<Command>,
    limits: HubLimits,
    meter: Meter,
}

#[derive(Default)]
struct Registry {
    channels: HashMap<String, HashMap<u64, Arc<Outlet>>>,
    patterns: HashMap<String, HashMap<u64, Arc<Outlet>>>,
    streams: usize,
    next_id: u64,
}

/// A change for the subscriber task, queued in the order the registry changed.
pub enum Command {
    /// Subscribe; `live` is told once the subscription is confirmed.
    Subscribe {
        channels: Vec<String>,
        patterns: Vec<String>,
        live: oneshot::Sender<()>,
    },
    Unsubscribe {
        channels: Vec<String>,
        patterns: Vec<String>,
    },
}

/// The sending side of one stream.
struct Outlet {
    events: mpsc::Sender<Event>,
    /// The gap the stream is owed: it goes before anything sent after it.
    owed: Mutex<Owed>,
}

/// What a stream has not been told yet.
#[derive(Default)]
struct Owed {
    /// Messages dropped for a full buffer.
    missed: u64,
    /// Whether the Redis connection was restored since.
    reconnected: bool,
}

impl Owed {
    fn take(&mut self) -> Option<Event> {
        let cause = if self.reconnected {
            GapCause::Reconnected
        } else if self.missed > 0 {
            GapCause::SlowReader
        } else {
            return None;
        };
        let gap = Event::Gap {
            cause,
            missed: self.missed,
        };
        *self = Owed::default();
        Some(gap)
    }
}

impl Outlet {
    /// Delivers `event`, or counts it as missed when the buffer is full. A gap
    /// owed to the stream goes first, so it stands where the messages went missing.
    fn deliver(&self, event: Event, meter: &Meter) {
        let mut owed = self.owed.lock().unwrap_or_else(PoisonError::into_inner);
        let reconnected = owed.reconnected;
        if let Some(gap) = owed.take()
            && let Err(error) = self.events.try_send(gap)
        {
            // The gap does not fit either: this message is dropped too, and counted.
            if let mpsc::error::TrySendError::Full(Event::Gap { missed, .. }) = error {
                *owed = Owed {
                    missed: missed + 1,
                    reconnected,
                };
                meter.record(|metrics| metrics.pubsub_dropped.inc());
            }
            return;
        }
        match self.events.try_send(event) {
            Ok(()) => meter.record(|metrics| metrics.pubsub_delivered.inc()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                owed.missed += 1;
                meter.record(|metrics| metrics.pubsub_dropped.inc());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Tells the stream that the Redis connection was restored, now or before its next event.
    fn reconnected(&self) {
        let mut owed = self.owed.lock().unwrap_or_else(PoisonError::into_inner);
        owed.reconnected = true;
        if let Some(gap) = owed.take()
            && let Err(mpsc::error::TrySendError::Full(Event::Gap { missed, .. })) = self.events.try_send(gap)
        {
            *owed = Owed {
                missed,
                reconnected: true,
            };
        }
    }
}

/// One stream's subscription: its events, until it is dropped.
pub struct Subscription {
    shared: Arc<Shared>,
    id: u64,
    channels: Vec<String>,
    patterns: Vec<String>,
    outlet: Arc<Outlet>,
    events: mpsc::Receiver<Event>,
}

impl Subscription {
    /// The next event, in order; `None` only if the hub is gone.
    pub async fn next(&mut self) -> Option<Event> {
        match self.events.try_recv() {
            Ok(event) => Some(event),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                // A gap owed while the buffer was full is told now, not only before
                // the next message (which may never come).
                let owed = self.outlet.owed.lock().unwrap_or_else(PoisonError::into_inner).take();
                match owed {
                    Some(gap) => Some(gap),
                    None => self.events.recv().await,
                }
            }
        }
    }
}

impl Hub {
    /// A hub with `limits`, and the queue its subscriber task reads
    /// (give it to [`run_subscriber`]).
    pub fn new(limits: HubLimits, meter: Meter) -> (Hub, Commands) {
        let (commands, queue) = mpsc::unbounded_channel();
        let hub = Hub {
            shared: Arc::new(Shared {
                registry: Mutex::new(Registry::default()),
                commands,
                limits,
                meter,
            }),
        };
        (hub, Commands(queue))
    }

    /// Registers a stream on Redis `channels` and `patterns` and waits, at most
    /// `patience`, until Redis confirms that all of them are subscribed.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED when the process has its most streams; UNAVAILABLE when
    /// Redis did not confirm in time (nothing stays registered).
    pub async fn subscribe(
        &self,
        channels: Vec<String>,
        patterns: Vec<String>,
        patience: Duration,
    ) -> Result<Subscription, Error> {
        let (sender, events) = mpsc::channel(self.shared.limits.buffer);
        let outlet = Arc::new(Outlet {
            events: sender,
            owed: Mutex::new(Owed::default()),
        });
        let (live, confirmed) = oneshot::channel();
        let subscription = {
            let mut registry = self.shared.registry.lock().unwrap_or_else(PoisonError::into_inner);
            if registry.streams >= self.shared.limits.max_streams {
                drop(registry);
                self.shared
                    .meter
                    .record(|metrics| metrics.refuse(Refusal::PubsubStreams));
                return Err(Error::Exhausted {
                    reason: Reason::TooManySubscribers,
                    message: format!(
                        "{} Subscribe streams are open (--pubsub-max-streams); retry later",
                        self.shared.limits.max_streams
                    ),
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
            registry.streams += 1;
            registry.next_id += 1;
            let id = registry.next_id;
            for channel in &channels {
                registry
                    .channels
                    .entry(channel.clone())
                    .or_default()
                    .insert(id, outlet.clone());
            }
            for pattern in &patterns {
                registry
                    .patterns
                    .entry(pattern.clone())
                    .or_default()
                    .insert(id, outlet.clone());
            }
            self.shared.meter.record(|metrics| metrics.pubsub_streams.inc());
            // Every channel is (re)subscribed: when the answer comes, all of them are live,
            // including those another stream's SUBSCRIBE may still have in flight.
            let _ = self.shared.commands.send(Command::Subscribe {
                channels: channels.clone(),
                patterns: patterns.clone(),
                live,
            });
            Subscription {
                shared: self.shared.clone(),
                id,
                channels,
                patterns,
                outlet,
                events,
            }
        };
        match timeout(patience, confirmed).await {
            Ok(Ok(())) => Ok(subscription),
            // Dropping the subscription takes it out of the registry again.
            _ => Err(Error::Unavailable(Cause::Timeout(patience))),
        }
    }

    pub(super) fn dispatch(&self, channel: &str, pattern: Option<&str>, payload: &[u8]) {
        let registry = self.shared.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let outlets = match pattern {
            Some(pattern) => registry.patterns.get(pattern),
            None => registry.channels.get(channel),
        };
        // Nobody here listens any more (the UNSUBSCRIBE is on its way).
        let Some(outlets) = outlets else { return };
        // Made once per message; each stream gets references.
        let payload = Bytes::copy_from_slice(payload);
        let channel: Arc<str> = Arc::from(channel);
        let pattern: Option<Arc<str>> = pattern.map(Arc::from);
        for outlet in outlets.values() {
            let event = Event::Message {
                channel: channel.clone(),
                payload: payload.clone(),
                pattern: pattern.clone(),
            };
            outlet.deliver(event, &self.shared.meter);
        }
    }

    pub(super) fn gap_everywhere(&self) {
        let registry = self.shared.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let mut told = std::collections::HashSet::new();
        for (id, outlet) in registry.channels.values().chain(registry.patterns.values()).flatten() {
            if told.insert(*id) {
                outlet.reconnected();
            }
        }
    }

    pub(super) fn everything(&self) -> (Vec<String>, Vec<String>) {
        let registry = self.shared.registry.lock().unwrap_or_else(PoisonError::into_inner);
        (
            registry.channels.keys().cloned().collect(),
            registry.patterns.keys().cloned().collect(),
        )
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = self.shared.registry.lock().unwrap_or_else(PoisonError::into_inner);
        registry.streams -= 1;
        let unused = |map: &mut HashMap<String, HashMap<u64, Arc<Outlet>>>, names: &[String]| {
            let mut unused = Vec::new();
            for name in names {
                if let Some(streams) = map.get_mut(name) {
                    streams.remove(&self.id);
                    if streams.is_empty() {
                        map.remove(name);
                        unused.push(name.clone());
                    }
                }
            }
            unused
        };
        let channels = unused(&mut registry.channels, &self.channels);
        let patterns = unused(&mut registry.patterns, &self.patterns);
        self.shared.meter.record(|metrics| metrics.pubsub_streams.dec());
        if !channels.is_empty() || !patterns.is_empty() {
            let _ = self.shared.commands.send(Command::Unsubscribe { channels, patterns });
        }
    }
}

/// The queue of subscription changes, for [`run_subscriber`].
pub struct Commands(pub(super) mpsc::UnboundedReceiver<Command>);
