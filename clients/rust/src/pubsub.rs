//! Publish and subscribe, over the service's one Redis subscriber connection.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use tokio_stream::Stream;
use tonic::Streaming;

use crate::{
    Client, Error,
    client::Idempotent,
    pb::pubsub::{self as pb, pub_sub_service_client::PubSubServiceClient, subscribe_response::Event as PbEvent},
};

/// What a subscription receives.
#[derive(Clone, Debug)]
pub enum Event {
    /// A published message.
    Message {
        /// The topic it was published on.
        topic: String,
        /// What was published.
        payload: Bytes,
        /// The pattern it matched, for pattern subscriptions.
        pattern: String,
        /// Its number on this stream, counting every message, missed ones too.
        sequence: u64,
    },
    /// Messages were missed: the reader was slow, or Redis reconnected.
    Discontinuity {
        /// Why: `SLOW_READER` or `REDIS_RECONNECTED`.
        cause: String,
        /// How many, when known.
        missed: u64,
    },
}

/// The events of [`PubSub::subscribe`]; dropping it ends the subscription.
pub struct Subscription {
    stream: Streaming<pb::SubscribeResponse>,
}

impl Stream for Subscription {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let event = match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(Err(Error::from(status)))),
                Poll::Ready(Some(Ok(answer))) => answer.event,
            };
            match event {
                Some(PbEvent::Message(message)) => {
                    return Poll::Ready(Some(Ok(Event::Message {
                        topic: message.topic,
                        payload: message.payload,
                        pattern: message.pattern,
                        sequence: message.sequence,
                    })));
                }
                Some(PbEvent::Discontinuity(gap)) => {
                    let cause = pb::discontinuity::Cause::try_from(gap.cause)
                        .map(|cause| cause.as_str_name().trim_start_matches("CAUSE_").to_owned())
                        .unwrap_or_default();
                    return Poll::Ready(Some(Ok(Event::Discontinuity {
                        cause,
                        missed: gap.missed,
                    })));
                }
                Some(PbEvent::Subscribed(_)) | None => continue,
            }
        }
    }
}

/// The pub/sub calls. Get one from [`Client::pubsub`].
#[derive(Clone, Debug)]
pub struct PubSub {
    client: Client,
}

impl Client {
    /// Publish and subscribe.
    pub fn pubsub(&self) -> PubSub {
        PubSub { client: self.clone() }
    }
}

impl PubSub {
    fn stub(&self) -> PubSubServiceClient<tonic::transport::Channel> {
        PubSubServiceClient::new(self.client.channel.clone())
    }

    /// Publishes `payload` on `topic`; how many subscribers received it. Never
    /// repeated by the library: a repeat would deliver twice.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<u64, Error> {
        let request = pb::PublishRequest {
            topic: topic.to_owned(),
            payload: payload.into(),
        };
        let answer = self
            .client
            .unary("pubsub.Publish", Idempotent::No, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.publish(r).await }
            })
            .await?;
        Ok(answer.receivers)
    }

    /// Subscribes to `topics` and `patterns`; returns once the subscription is
    /// in place, so that every message published after it is received.
    ///
    /// # Errors
    /// Any [`Error`] the service answers with, or a deadline before it is in place.
    pub async fn subscribe(&self, topics: &[&str], patterns: &[&str]) -> Result<Subscription, Error> {
        let request = pb::SubscribeRequest {
            topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
            patterns: patterns.iter().map(|pattern| (*pattern).to_owned()).collect(),
        };
        let mut stub = self.stub();
        let request = self.client.request(request, None);
        let opened = async {
            let mut stream = stub.subscribe(request).await?.into_inner();
            loop {
                match stream.message().await? {
                    Some(pb::SubscribeResponse {
                        event: Some(PbEvent::Subscribed(_)),
                    }) => return Ok(stream),
                    Some(_) => continue,
                    None => {
                        return Err(tonic::Status::unavailable(
                            "the Subscribe stream ended before it was in place",
                        ));
                    }
                }
            }
        };
        let stream = tokio::time::timeout_at(self.client.deadline(Duration::ZERO), opened)
            .await
            .map_err(|_| Error::deadline("pubsub.Subscribe"))?
            .map_err(Error::from)?;
        Ok(Subscription { stream })
    }
}
