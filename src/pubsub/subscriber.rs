//! The task that owns the process's one Redis subscriber connection: it
//! applies the [`Hub`]'s subscription changes in order, delivers messages to
//! the hub's streams and wake-up notices to their waiters, and after a
//! reconnect subscribes to everything again and tells every stream that
//! messages may have been missed.

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::{
    sync::{oneshot, watch},
    time::{sleep, timeout},
};
use tracing::{info, warn};

use super::hub::{Command, Commands, Hub};
use crate::{
    error::Cause,
    notices::Notices,
    redis::{Backoff, Topology},
};

/// Wake-up notices heard on the same connection (lock releases, cache fills):
/// one pattern subscription for each kind's channels, never unsubscribed.
pub struct Wakers {
    /// Each pattern, and where its messages are announced.
    pub routes: Vec<(String, Notices)>,
}

impl Wakers {
    /// Every kind's notices.
    fn notices(&self) -> impl Iterator<Item = &Notices> {
        self.routes.iter().map(|(_, notices)| notices)
    }
}

/// Keeps the process's Redis subscriber connection: connects (with `backoff`
/// between failed attempts, forever, and again when `failovers` changes: the
/// primary moved), subscribes to the `wakers`' patterns and everything registered, applies
/// changes and delivers messages. On a Cluster any node will do: every node
/// hears every PUBLISH. Runs until its task is aborted.
pub async fn run_subscriber(
    hub: Hub,
    Commands(commands): Commands,
    wakers: Wakers,
    topology: Topology,
    backoff: Backoff,
    failovers: watch::Receiver<u64>,
) {
    let mut subscriber = Subscriber {
        hub,
        commands,
        wakers,
        waiting: Vec::new(),
        failovers,
    };
    let mut ever_connected = false;
    let mut delay = backoff.min;
    loop {
        subscriber.failovers.borrow_and_update();
        let (sink, stream, node) = match timeout(topology.connect_timeout(), subscriber.open(&topology)).await {
            Ok(Ok(connected)) => connected,
            // Why Redis is unreachable is logged by the health prober.
            Ok(Err(_)) | Err(_) => {
                sleep(delay).await;
                delay = (delay * 2).min(backoff.max);
                continue;
            }
        };
        delay = backoff.min;
        // Notices while nobody listened went unheard: let every waiter look again.
        for notices in subscriber.wakers.notices() {
            notices.set_listening(true);
            notices.announce_everywhere();
        }
        // Everything registered so far is live again.
        subscriber.confirm_waiting();
        if ever_connected {
            subscriber.hub.gap_everywhere();
            info!(%node, "Redis subscriptions restored (lock releases, Pub/Sub)");
        }
        ever_connected = true;
        let ended = subscriber.relay(sink, stream, &node).await;
        for notices in subscriber.wakers.notices() {
            notices.set_listening(false);
        }
        if let Ended::HubGone = ended {
            return;
        }
    }
}

/// Why a connection's relay ended.
enum Ended {
    /// The connection was lost, or the primary moved: connect again.
    Reconnect,
    /// The hub is gone: nothing will subscribe again.
    HubGone,
}

/// The subscriber task's state, kept across connections.
struct Subscriber {
    hub: Hub,
    commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
    wakers: Wakers,
    /// Streams waiting for their subscription to be confirmed, across reconnects.
    waiting: Vec<oneshot::Sender<()>>,
    failovers: watch::Receiver<u64>,
}

impl Subscriber {
    /// Opens a subscriber connection and subscribes to everything registered
    /// and to the wakers' patterns.
    async fn open(&self, topology: &Topology) -> Result<(PubSubSink, PubSubStream, String), Cause> {
        let (pubsub, node) = topology.subscriber().await?;
        let (mut sink, stream) = pubsub.split();
        let (channels, mut patterns) = self.hub.everything();
        patterns.extend(self.wakers.routes.iter().map(|(pattern, _)| pattern.clone()));
        subscribe(&mut sink, &channels, &patterns)
            .await
            .map_err(|e| Cause::of(&e))?;
        Ok((sink, stream, node))
    }

    /// Tells every stream waiting for its subscription that it is live.
    fn confirm_waiting(&mut self) {
        for live in self.waiting.drain(..) {
            let _ = live.send(());
        }
    }

    /// Applies subscription changes and delivers messages on one connection
    /// until it is lost, the primary moves, or the hub is gone.
    async fn relay(&mut self, mut sink: PubSubSink, mut stream: PubSubStream, node: &str) -> Ended {
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ended::HubGone };
                    if let Err(error) = self.apply(&mut sink, command).await {
                        warn!(%error, "lost the Redis subscriber connection; reconnecting");
                        return Ended::Reconnect;
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        warn!(
                            %node,
                            "lost the Redis subscriber connection; waiting Acquires re-check periodically until it \
                             is back"
                        );
                        return Ended::Reconnect;
                    };
                    self.deliver(&message);
                }
                Ok(()) = self.failovers.changed() => return Ended::Reconnect,
            }
        }
    }

    /// Applies one subscription change.
    async fn apply(&mut self, sink: &mut PubSubSink, command: Command) -> redis::RedisResult<()> {
        match command {
            Command::Subscribe {
                channels,
                patterns,
                live,
            } => {
                self.waiting.push(live);
                subscribe(sink, &channels, &patterns).await?;
                self.confirm_waiting();
                Ok(())
            }
            Command::Unsubscribe { channels, patterns } => unsubscribe(sink, &channels, &patterns).await,
        }
    }

    /// Hands a message to its waker's notices, or to the hub's streams.
    fn deliver(&self, message: &redis::Msg) {
        let pattern: Option<String> = if message.from_pattern() {
            message.get_pattern().ok()
        } else {
            None
        };
        let waker = self
            .wakers
            .routes
            .iter()
            .find(|(route, _)| pattern.as_deref() == Some(route.as_str()));
        match waker {
            Some((_, notices)) => notices.announce(message.get_channel_name(), message.get_payload_bytes()),
            None => self.hub.dispatch(
                message.get_channel_name(),
                pattern.as_deref(),
                message.get_payload_bytes(),
            ),
        }
    }
}

async fn subscribe(sink: &mut PubSubSink, channels: &[String], patterns: &[String]) -> redis::RedisResult<()> {
    if !channels.is_empty() {
        sink.subscribe(channels).await?;
    }
    if !patterns.is_empty() {
        sink.psubscribe(patterns).await?;
    }
    Ok(())
}

async fn unsubscribe(sink: &mut PubSubSink, channels: &[String], patterns: &[String]) -> redis::RedisResult<()> {
    if !channels.is_empty() {
        sink.unsubscribe(channels).await?;
    }
    if !patterns.is_empty() {
        sink.punsubscribe(patterns).await?;
    }
    Ok(())
}
