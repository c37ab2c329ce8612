//! `cachelock.pubsub.v1.PubSubService`: Publish through the shared command
//! connection, Subscribe through the [`Hub`]'s one subscriber connection.
//!
//! Topics live in the caller's key space (`<prefix>:<tenant>:pubsub:<topic>`),
//! so no caller can reach another tenant's topics or the service's own channels
//! (lock release notices), and a pattern only ever matches topics of its tenant.

mod hub;
mod subscriber;

use std::{collections::HashSet, pin::Pin, time::Duration};

use futures_util::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub use hub::{Commands, Event, GapCause, Hub, HubLimits, Subscription};
pub use subscriber::{Wakers, run_subscriber};

use crate::{
    auth::Caller,
    context::Context,
    error::Error,
    pb::pubsub::{
        Discontinuity, Message, PublishRequest, PublishResponse, SubscribeRequest, SubscribeResponse, Subscribed,
        discontinuity::Cause, pub_sub_service_server::PubSubService, subscribe_response,
    },
    redis::{KeySpace, Op, Redis},
    request::{Limits, deadline},
    telemetry::Meter,
};

/// The gRPC handlers of Pub/Sub.
pub struct PubSubApi {
    redis: Redis,
    hub: Hub,
    limits: Limits,
    max_topics: usize,
    operation_timeout: Duration,
    draining: watch::Receiver<bool>,
    meter: Meter,
}

impl PubSubApi {
    /// Handlers that publish through the context's Redis and subscribe through
    /// `hub`, with at most `max_topics` topics and patterns per stream; streams
    /// end once the server drains.
    pub fn new(context: &Context, hub: Hub, max_topics: usize, operation_timeout: Duration) -> PubSubApi {
        PubSubApi {
            redis: context.redis.clone(),
            hub,
            limits: context.limits.clone(),
            max_topics,
            operation_timeout,
            draining: context.draining.clone(),
            meter: context.meter.clone(),
        }
    }

    /// The Redis channels and patterns of a request, checked.
    fn names(&self, space: &KeySpace, request: &SubscribeRequest) -> Result<(Vec<String>, Vec<String>), Error> {
        let count = request.topics.len() + request.patterns.len();
        if count == 0 {
            return Err(Error::invalid("topics", "name at least one topic or pattern"));
        }
        if count > self.max_topics {
            return Err(Error::invalid(
                "topics",
                format!(
                    "{count} topics and patterns, above the limit of {} (--pubsub-max-topics)",
                    self.max_topics
                ),
            ));
        }
        let channels = self.redis_names("topics", &request.topics, |name| space.topic(name))?;
        let patterns = self.redis_names("patterns", &request.patterns, |name| space.topic_pattern(name))?;
        Ok((channels, patterns))
    }

    /// The Redis names `redis_name` makes of the request's `field` list, each
    /// checked as a key and named at most once.
    fn redis_names(
        &self,
        field: &str,
        names: &[String],
        redis_name: impl Fn(&str) -> String,
    ) -> Result<Vec<String>, Error> {
        let mut seen = HashSet::new();
        let mut redis_names = Vec::with_capacity(names.len());
        for (index, name) in names.iter().enumerate() {
            let field = format!("{field}[{index}]");
            let name = self.limits.key(&field, name)?;
            if !seen.insert(name) {
                return Err(Error::invalid(field, "is named twice"));
            }
            redis_names.push(redis_name(name));
        }
        Ok(redis_names)
    }
}

/// The stream of one Subscribe.
type EventStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

fn event(event: subscribe_response::Event) -> SubscribeResponse {
    SubscribeResponse { event: Some(event) }
}

#[tonic::async_trait]
impl PubSubService for PubSubApi {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let deadline = deadline(request.metadata(), self.operation_timeout)?;
        let space = Caller::writing(&request, 0)?;
        let request = request.into_inner();
        let topic = self.limits.key("topic", &request.topic)?;
        self.limits.value("payload", &request.payload)?;
        let mut command = redis::cmd("PUBLISH");
        command.arg(space.topic(topic)).arg(&request.payload);
        // Sent once: a resend would deliver the message twice.
        let receivers: u64 = self.redis.run(Op::write("pubsub_publish"), deadline, &command).await?;
        self.meter.record(|metrics| metrics.pubsub_published.inc());
        Ok(Response::new(PublishResponse { receivers }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let caller = Caller::of(&request)?;
        let space = caller.space.clone();
        let revoked = Box::pin(caller.revoked());
        let request = request.into_inner();
        let (channels, patterns) = self.names(&space, &request)?;
        let subscription = self.hub.subscribe(channels, patterns, self.operation_timeout).await?;
        let state = Streaming {
            subscription,
            prefix_len: space.topic("").len(),
            pattern_prefix_len: space.topic_pattern("").len(),
            sequence: 0,
            draining: self.draining.clone(),
            revoked,
            started: false,
            ended: false,
        };
        let stream = futures_util::stream::unfold(state, |mut state| async move {
            if state.ended {
                return None;
            }
            if !state.started {
                state.started = true;
                let live = event(subscribe_response::Event::Subscribed(Subscribed {}));
                return Some((Ok(live), state));
            }
            let next = tokio::select! {
                // Revocation first: nothing more reaches a client whose access was taken back.
                biased;
                status = &mut state.revoked => Err(status),
                next = state.subscription.next() => Ok(next?),
                // Ending the stream lets the caller subscribe again on another instance.
                _ = state.draining.wait_for(|draining| *draining) => return None,
            };
            let next = match next {
                Ok(next) => next,
                Err(status) => {
                    state.ended = true;
                    return Some((Err(status), state));
                }
            };
            let answer = match next {
                Event::Message {
                    channel,
                    payload,
                    pattern,
                } => {
                    state.sequence += 1;
                    subscribe_response::Event::Message(Message {
                        topic: channel.get(state.prefix_len..).unwrap_or_default().to_owned(),
                        payload,
                        pattern: pattern
                            .as_deref()
                            .and_then(|pattern| pattern.get(state.pattern_prefix_len..))
                            .unwrap_or_default()
                            .to_owned(),
                        sequence: state.sequence,
                    })
                }
                Event::Gap { cause, missed } => {
                    state.sequence += missed;
                    subscribe_response::Event::Discontinuity(Discontinuity {
                        cause: match cause {
                            GapCause::SlowReader => Cause::SlowReader,
                            GapCause::Reconnected => Cause::RedisReconnected,
                        }
                        .into(),
                        missed,
                    })
                }
            };
            Some((Ok(event(answer)), state))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What a Subscribe stream carries between events.
struct Streaming {
    subscription: Subscription,
    /// The length of the key-space part of a channel name, and of a pattern
    /// (where it is escaped).
    prefix_len: usize,
    pattern_prefix_len: usize,
    sequence: u64,
    draining: watch::Receiver<bool>,
    /// Completes when the auth file takes the caller's access back.
    revoked: Pin<Box<dyn Future<Output = Status> + Send>>,
    started: bool,
    /// The stream ended with an error: nothing follows it.
    ended: bool,
}
