//! PubSubService against real redis-servers: fan-out from one subscriber
//! connection, patterns, unsubscribing, slow readers, Redis restarts and bad input.

mod common;

use cachelock::pb::{
    lock::{AcquireRequest, ReleaseRequest},
    pubsub::{
        PublishRequest, SubscribeRequest, SubscribeResponse, discontinuity::Cause,
        pub_sub_service_client::PubSubServiceClient, subscribe_response::Event,
    },
};
use common::{Backend, PATIENCE, TestRedis, TestService, assert_invalid, assert_reason, eventually, millis};
use tonic::{Code, Streaming, transport::Channel};

fn client(service: &TestService) -> PubSubServiceClient<Channel> {
    PubSubServiceClient::new(service.channel())
}

fn topics(topics: &[&str], patterns: &[&str]) -> SubscribeRequest {
    SubscribeRequest {
        topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
        patterns: patterns.iter().map(|pattern| (*pattern).to_owned()).collect(),
    }
}

/// A stream that has received its `subscribed` event: live from now on.
async fn subscribed(
    client: &mut PubSubServiceClient<Channel>,
    request: SubscribeRequest,
) -> Streaming<SubscribeResponse> {
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    let first = next(&mut stream).await;
    assert!(matches!(first, Event::Subscribed(_)), "{first:?}");
    stream
}

async fn next(stream: &mut Streaming<SubscribeResponse>) -> Event {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an event within the patience")
        .unwrap()
        .expect("the stream goes on")
        .event
        .expect("an event")
}

async fn publish(client: &mut PubSubServiceClient<Channel>, topic: &str, payload: &[u8]) -> u64 {
    client
        .publish(PublishRequest {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .receivers
}

/// The next `count` messages: (topic, payload, pattern, sequence) each.
async fn messages(stream: &mut Streaming<SubscribeResponse>, count: usize) -> Vec<(String, Vec<u8>, String, u64)> {
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        match next(stream).await {
            Event::Message(message) => {
                received.push((
                    message.topic,
                    message.payload.to_vec(),
                    message.pattern,
                    message.sequence,
                ));
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    received
}

async fn subscribers_of_a_topic_and_a_pattern_get_every_message_in_order(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut publisher = client(&service);
    let mut first = subscribed(&mut client(&service), topics(&["room:1"], &[])).await;
    let mut second = subscribed(&mut client(&service), topics(&["room:1"], &[])).await;
    let mut pattern = subscribed(&mut client(&service), topics(&[], &["room:*"])).await;
    let mut elsewhere = subscribed(&mut client(&service), topics(&["room:2"], &[])).await;

    for index in 1..=20u8 {
        publish(&mut publisher, "room:1", &[index]).await;
    }
    publish(&mut publisher, "room:2", b"other room").await;

    for stream in [&mut first, &mut second] {
        let received = messages(stream, 20).await;
        for (index, (topic, payload, from_pattern, sequence)) in received.into_iter().enumerate() {
            assert_eq!(topic, "room:1");
            assert_eq!(payload, vec![u8::try_from(index + 1).unwrap()], "in publishing order");
            assert_eq!(from_pattern, "");
            assert_eq!(sequence, u64::try_from(index + 1).unwrap());
        }
    }
    let matched = messages(&mut pattern, 21).await;
    assert!(matched.iter().all(|(_, _, from_pattern, _)| from_pattern == "room:*"));
    // Order holds per topic; across topics a Cluster may deliver in another order.
    let room_1: Vec<Vec<u8>> = matched
        .iter()
        .filter(|(topic, ..)| topic == "room:1")
        .map(|(_, payload, ..)| payload.clone())
        .collect();
    assert_eq!(room_1, (1..=20u8).map(|index| vec![index]).collect::<Vec<_>>());
    assert!(matched.iter().any(|(topic, ..)| topic == "room:2"));
    assert_eq!(messages(&mut elsewhere, 1).await[0].1, b"other room");
}

#[tokio::test]
async fn a_closed_stream_unsubscribes_and_publish_counts_the_instances_listening() {
    let redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), &[]).await;
    let mut publisher = client(&service);
    assert_eq!(publish(&mut publisher, "news", b"nobody").await, 0);

    let first = subscribed(&mut client(&service), topics(&["news"], &["news:*"])).await;
    let second = subscribed(&mut client(&service), topics(&["news"], &[])).await;
    // Two streams, one subscriber connection: one receiver.
    assert_eq!(publish(&mut publisher, "news", b"hello").await, 1);
    let numsub = async || -> i64 {
        let counts: Vec<(String, i64)> = redis
            .command(&["PUBSUB", "NUMSUB", "cachelock:default:pubsub:news"])
            .await;
        counts[0].1
    };
    assert_eq!(numsub().await, 1);

    drop(first);
    // The other stream still listens: the channel stays, the pattern goes (the
    // two left are the service's own: lock releases and cache fills).
    eventually("the pattern unsubscribed", async || {
        redis.command::<i64>(&["PUBSUB", "NUMPAT"]).await == 2
    })
    .await;
    assert_eq!(numsub().await, 1);
    drop(second);
    eventually("the channel unsubscribed", async || numsub().await == 0).await;
    assert_eq!(publish(&mut publisher, "news", b"gone").await, 0);
}

#[tokio::test]
async fn a_thousand_streams_share_one_redis_connection_and_each_gets_every_message() {
    let redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), &[]).await;
    let pubsub_connections = async || -> usize {
        let list: String = redis.command(&["CLIENT", "LIST", "TYPE", "pubsub"]).await;
        list.lines().count()
    };
    // The process's one subscriber connection, subscribed to lock releases from the start.
    eventually("the subscriber connection", async || pubsub_connections().await == 1).await;

    // Several client connections: one carries at most --max-concurrent-streams streams.
    let channels: Vec<Channel> = (0..4).map(|_| service.channel()).collect();
    let mut streams = Vec::with_capacity(1000);
    for index in 0..1000 {
        let mut client = PubSubServiceClient::new(channels[index % 4].clone());
        streams.push(subscribed(&mut client, topics(&["fanout"], &[])).await);
    }
    assert_eq!(
        pubsub_connections().await,
        1,
        "one connection for every stream and the lock releases"
    );

    let mut publisher = client(&service);
    for payload in [b"one", b"two", b"six"] {
        publish(&mut publisher, "fanout", payload).await;
    }
    for stream in &mut streams {
        let received: Vec<Vec<u8>> = messages(stream, 3).await.into_iter().map(|message| message.1).collect();
        assert_eq!(received, [b"one".to_vec(), b"two".to_vec(), b"six".to_vec()]);
    }
}

#[tokio::test]
async fn a_slow_reader_is_told_how_many_it_missed_and_does_not_hold_up_the_others() {
    let redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), &["--pubsub-buffer", "8"]).await;
    // A client that reads nothing more once its small HTTP/2 windows are full.
    let small_windows = tonic::transport::Endpoint::from_shared(format!("http://{}", service.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut slow = subscribed(&mut PubSubServiceClient::new(small_windows), topics(&["ticks"], &[])).await;
    let fast = subscribed(&mut client(&service), topics(&["ticks"], &[])).await;
    let total = 1000u64;
    let reader = tokio::spawn(async move {
        let mut fast = fast;
        messages(&mut fast, 1000).await
    });

    // Payloads large enough that the slow stream's HTTP/2 window and buffers fill.
    let mut publisher = client(&service);
    for index in 0..total {
        let mut payload = vec![0u8; 4096];
        payload[..8].copy_from_slice(&index.to_be_bytes());
        publish(&mut publisher, "ticks", &payload).await;
    }
    let fast = reader.await.unwrap();
    for (index, message) in fast.iter().enumerate() {
        assert_eq!(
            message.1[..8],
            u64::try_from(index).unwrap().to_be_bytes(),
            "every message, in order"
        );
    }

    // The slow stream: what it got and what it was told it missed add up, and
    // every sequence number counts both.
    let (mut received, mut missed) = (0u64, 0u64);
    while received + missed < total {
        match next(&mut slow).await {
            Event::Message(message) => {
                received += 1;
                assert_eq!(message.sequence, received + missed);
                let index = u64::from_be_bytes(message.payload[..8].try_into().unwrap());
                assert_eq!(index + 1, message.sequence, "the sequence says which message this is");
            }
            Event::Discontinuity(gap) => {
                assert_eq!(gap.cause(), Cause::SlowReader);
                assert!(gap.missed > 0);
                missed += gap.missed;
            }
            Event::Subscribed(_) => panic!("subscribed twice"),
        }
    }
    assert!(missed > 0, "the slow stream missed some: {received} received");
    assert_eq!(service.metric("cachelock_pubsub_dropped_total").await, missed as f64);
}

#[tokio::test]
async fn after_redis_restarts_every_stream_is_told_and_messages_flow_again() {
    let mut redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), &[]).await;
    let mut by_topic = subscribed(&mut client(&service), topics(&["jobs"], &[])).await;
    let mut by_pattern = subscribed(&mut client(&service), topics(&[], &["jo*"])).await;

    redis.restart().await;
    for stream in [&mut by_topic, &mut by_pattern] {
        match next(stream).await {
            Event::Discontinuity(gap) => {
                assert_eq!(gap.cause(), Cause::RedisReconnected);
                assert_eq!(gap.missed, 0, "unknown");
            }
            other => panic!("expected a discontinuity, got {other:?}"),
        }
    }
    // The Discontinuity comes once the subscriptions are restored.
    let mut publisher = client(&service);
    eventually("a publish after the restart", async || {
        publisher
            .publish(PublishRequest {
                topic: "jobs".to_owned(),
                payload: b"after".to_vec(),
            })
            .await
            .is_ok()
    })
    .await;
    for stream in [&mut by_topic, &mut by_pattern] {
        assert_eq!(messages(stream, 1).await[0].1, b"after");
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_internal_channels_are_out_of_reach() {
    let redis = TestRedis::start().await;
    let service = TestService::start(
        &redis.url(),
        &[
            "--pubsub-max-topics",
            "2",
            "--pubsub-max-streams",
            "3",
            "--max-value-bytes",
            "16",
        ],
    )
    .await;
    let mut pubsub = client(&service);
    let refused =
        async |pubsub: &mut PubSubServiceClient<Channel>, request| pubsub.subscribe(request).await.unwrap_err();
    assert_invalid(refused(&mut pubsub, topics(&[], &[])).await, "topics");
    assert_invalid(refused(&mut pubsub, topics(&[""], &[])).await, "topics[0]");
    assert_invalid(refused(&mut pubsub, topics(&["a"], &[""])).await, "patterns[0]");
    assert_invalid(refused(&mut pubsub, topics(&["a", "b", "c"], &[])).await, "topics");
    assert_invalid(refused(&mut pubsub, topics(&["a", "a"], &[])).await, "topics[1]");
    let publish_refused = async |pubsub: &mut PubSubServiceClient<Channel>, topic: &str, payload: &[u8]| {
        pubsub
            .publish(PublishRequest {
                topic: topic.to_owned(),
                payload: payload.to_vec(),
            })
            .await
            .unwrap_err()
    };
    assert_invalid(publish_refused(&mut pubsub, "", b"x").await, "topic");
    assert_invalid(publish_refused(&mut pubsub, "t", &[0; 17]).await, "payload");

    // Everything a caller can name lives under its own pubsub space: a pattern of
    // "*" does not hear the lock service's release notices.
    let mut everything = subscribed(&mut pubsub, topics(&[], &["*"])).await;
    let mut locks = service.locks();
    let grant = locks
        .acquire(AcquireRequest {
            name: "job".to_owned(),
            ttl: Some(millis(10_000)),
            ..AcquireRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    locks
        .release(ReleaseRequest {
            name: "job".to_owned(),
            token: grant.token,
        })
        .await
        .unwrap();
    publish(&mut pubsub, "marker", b"m").await;
    assert_eq!(messages(&mut everything, 1).await[0].0, "marker");

    let _second = subscribed(&mut pubsub, topics(&["a"], &[])).await;
    let _third = subscribed(&mut pubsub, topics(&["a"], &[])).await;
    let full = refused(&mut pubsub, topics(&["a"], &[])).await;
    assert_reason(&full, Code::ResourceExhausted, "TOO_MANY_SUBSCRIBERS");
}

in_every_mode!(subscribers_of_a_topic_and_a_pattern_get_every_message_in_order);
