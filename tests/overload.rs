//! One caller must not take the service, or Redis, down for everyone: floods are
//! shed at once, waiters and Watch streams are capped, replies that would not fit
//! are refused before Redis builds them, oversized and malformed requests get a
//! clean status.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use cachelock::pb::{
    cache::{GetManyRequest, SetRequest},
    lock::AcquireRequest,
    ratelimit::{CheckRequest, OutagePolicy},
};
use common::requests::{self, get};
use common::{FaultyLink, PATIENCE, TestRedis, TestService, assert_reason, millis, redis_and_service};
use http_body_util::BodyExt;
use tokio_stream::StreamExt;
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

fn set(key: &str, value: Vec<u8>) -> SetRequest {
    SetRequest {
        value,
        ttl: None,
        ..requests::set(key, b"")
    }
}

/// The peak resident memory of this process (the service runs in it), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// The p99 of `samples`.
fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() * 99 / 100).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_shed_at_once_while_admitted_calls_succeed_and_health_answers() {
    const CALLERS: usize = 2_000;
    const ADMITTED: usize = 100;
    let redis = TestRedis::start().await;
    let link = FaultyLink::start(redis.port()).await;
    let service = TestService::start(
        &link.url,
        &[
            "--max-in-flight",
            "100",
            "--max-concurrent-streams",
            "1000",
            "--operation-timeout",
            "30s",
            "--health-interval",
            "60s",
        ],
    )
    .await;
    service.wait_for_health("", ServingStatus::Serving).await;
    service.cache().set(set("k", b"v".to_vec())).await.unwrap();
    let channels: Vec<Channel> = (0..4).map(|_| service.channel()).collect();

    // Phase one: Redis holds every admitted call, so exactly the limit is in flight
    // and everything beyond it must be refused at once.
    link.hold_requests(true);
    let shed = Arc::new(AtomicUsize::new(0));
    let mut shed_latencies = Vec::new();
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let mut cache = cachelock::pb::cache::cache_service_client::CacheServiceClient::new(
                channels[i % channels.len()].clone(),
            );
            let shed = shed.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = cache.get(get("k")).await;
                if matches!(&result, Err(status) if status.code() == Code::ResourceExhausted) {
                    shed.fetch_add(1, Ordering::Relaxed);
                }
                (started.elapsed(), result)
            })
        })
        .collect();
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while shed.load(Ordering::Relaxed) < CALLERS - ADMITTED {
        assert!(
            tokio::time::Instant::now() < give_up,
            "only {} shed",
            shed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Full, and the load balancer still gets its answer.
    assert_eq!(service.health_status("").await, Ok(ServingStatus::Serving));
    let peak_while_full = peak_rss_mib();
    link.hold_requests(false);

    let (mut succeeded, mut other) = (0, Vec::new());
    for caller in callers {
        let (latency, result) = tokio::time::timeout(PATIENCE, caller).await.unwrap().unwrap();
        match result {
            Ok(found) => {
                assert!(found.into_inner().found);
                succeeded += 1;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert_reason(&status, Code::ResourceExhausted, "OVERLOADED");
                shed_latencies.push(latency);
            }
            Err(status) => other.push(status),
        }
    }
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(succeeded, ADMITTED);
    assert_eq!(shed_latencies.len(), CALLERS - ADMITTED);

    // Phase two: the same flood against a Redis that answers.
    let mut admitted_latencies = Vec::new();
    let mut shed_again = 0;
    let started = Instant::now();
    let rounds: Vec<_> = (0..CALLERS)
        .map(|i| {
            let mut cache = cachelock::pb::cache::cache_service_client::CacheServiceClient::new(
                channels[i % channels.len()].clone(),
            );
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for _ in 0..5 {
                    let started = Instant::now();
                    let result = cache.get(get("k")).await.map(|_| ());
                    outcomes.push((started.elapsed(), result));
                }
                outcomes
            })
        })
        .collect();
    for round in rounds {
        for (latency, result) in tokio::time::timeout(PATIENCE, round).await.unwrap().unwrap() {
            match result {
                Ok(()) => admitted_latencies.push(latency),
                Err(status) if status.code() == Code::ResourceExhausted => shed_again += 1,
                Err(status) => panic!("{status:?}"),
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "flood of {CALLERS} callers, --max-in-flight {ADMITTED}: held Redis: {} shed, p99 of a refusal {:?}; \
         answering Redis: {} calls in {elapsed:?}, {shed_again} shed, admitted p99 {:?}; peak RSS {} MiB while \
         full, {} MiB at the end",
        CALLERS - ADMITTED,
        p99(&mut shed_latencies),
        admitted_latencies.len() + shed_again,
        p99(&mut admitted_latencies),
        peak_while_full,
        peak_rss_mib()
    );
    assert!(!admitted_latencies.is_empty());
    // The bound this flood must stay under (service, test clients and harness together).
    assert!(peak_rss_mib() < 512, "peak RSS {} MiB", peak_rss_mib());
}

#[tokio::test]
async fn waiting_acquires_beyond_their_caps_are_refused() {
    let (redis, service) = redis_and_service(&[
        "--lock-max-waiters",
        "3",
        "--lock-max-waiters-per-name",
        "2",
        "--health-interval",
        "60s",
    ])
    .await;
    let mut locks = service.locks();
    let acquire = |name: &str, wait_ms: i64| AcquireRequest {
        name: name.to_owned(),
        ttl: Some(millis(30_000)),
        wait_timeout: (wait_ms > 0).then(|| millis(wait_ms)),
        owner: "overload".to_owned(),
        request_id: String::new(),
        permits: 0,
    };
    let mut held = Vec::new();
    for name in ["a", "b", "c"] {
        let grant = locks.acquire(acquire(name, 0)).await.unwrap().into_inner();
        assert!(grant.acquired);
        held.push((name, grant.token));
    }

    let attempts = redis.calls("evalsha").await;
    // Each waiter gives the lock back as soon as it has it, so that the next can have it.
    let wait_for = |name: &'static str| {
        let mut client = service.locks();
        let request = acquire(name, 30_000);
        tokio::spawn(async move {
            let grant = client.acquire(request).await?.into_inner();
            if grant.acquired {
                client
                    .release(cachelock::pb::lock::ReleaseRequest {
                        name: name.to_owned(),
                        token: grant.token,
                    })
                    .await?;
            }
            Ok::<bool, tonic::Status>(grant.acquired)
        })
    };
    let mut waiters = vec![wait_for("a"), wait_for("a")];
    // Each waiter tries, takes its place, and tries once more before it sleeps.
    redis.wait_for_calls("evalsha", attempts + 4).await;
    let per_name = locks.acquire(acquire("a", 30_000)).await.unwrap_err();
    assert_reason(&per_name, Code::ResourceExhausted, "TOO_MANY_WAITERS");
    assert!(
        per_name.message().contains("--lock-max-waiters-per-name"),
        "{per_name:?}"
    );

    let attempts = redis.calls("evalsha").await;
    waiters.push(wait_for("b"));
    redis.wait_for_calls("evalsha", attempts + 2).await;
    let overall = locks.acquire(acquire("c", 30_000)).await.unwrap_err();
    assert_reason(&overall, Code::ResourceExhausted, "TOO_MANY_WAITERS");
    assert!(overall.message().contains("(--lock-max-waiters)"), "{overall:?}");
    let free = locks.acquire(acquire("d", 30_000)).await.unwrap().into_inner();
    assert!(free.acquired, "an Acquire of a free lock never takes a waiter's place");

    for (name, token) in held {
        locks
            .release(cachelock::pb::lock::ReleaseRequest {
                name: name.to_owned(),
                token,
            })
            .await
            .unwrap();
    }
    for waiter in waiters {
        let granted = tokio::time::timeout(PATIENCE, waiter).await.unwrap().unwrap().unwrap();
        assert!(granted, "every waiter that was let in is served");
    }
}

#[tokio::test]
async fn watch_streams_beyond_the_cap_are_refused() {
    let (_redis, service) = redis_and_service(&["--max-watch-streams", "2"]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let watch = || {
        let mut health = service.health();
        async move { health.watch(HealthCheckRequest { service: String::new() }).await }
    };
    let mut first = watch().await.unwrap().into_inner();
    let mut second = watch().await.unwrap().into_inner();
    assert!(first.next().await.is_some() && second.next().await.is_some());
    let refused = watch().await.unwrap_err();
    assert_reason(&refused, Code::ResourceExhausted, "TOO_MANY_WATCHERS");
    assert!(refused.message().contains("--max-watch-streams"));
    // Check still answers.
    assert_eq!(service.health_status("").await, Ok(ServingStatus::Serving));

    // A closed stream gives its place back (once the server has seen it close).
    drop(first);
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        match watch().await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert!(tokio::time::Instant::now() < give_up, "the place never came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_many_too_big_for_the_response_is_refused_before_redis_reads_it() {
    let (redis, service) = redis_and_service(&["--max-value-bytes", "65536"]).await;
    // 1,000 values of 64 KiB: 64 MiB, far above the 4 MiB response budget.
    let mut direct = redis.connection().await;
    let value = vec![b'x'; 65_536];
    let mut fill = redis::pipe();
    let keys: Vec<String> = (0..1000).map(|i| format!("big-{i}")).collect();
    for key in &keys {
        let mut tagged = String::from("cachelock:default:cache:{");
        tagged.push_str(&cachelock::slot_tag(key));
        tagged.push_str("}:");
        tagged.push_str(key);
        fill.cmd("SET").arg(tagged).arg(&value).ignore();
    }
    let _: () = fill.query_async(&mut direct).await.unwrap();

    // Rate limits keep being decided by Redis meanwhile: the refusal costs Redis little.
    let mut ratelimit = service.ratelimit();
    let checks = tokio::spawn(async move {
        let mut by_policy = 0;
        for i in 0..200 {
            let decided = ratelimit
                .check(CheckRequest {
                    key: format!("api-{i}"),
                    limit: 100,
                    period: Some(millis(60_000)),
                    cost: None,
                    algorithm: 0,
                    on_unavailable: OutagePolicy::FailClosed as i32,
                    calendar: None,
                    wait: None,
                    leased: false,
                })
                .await
                .unwrap()
                .into_inner();
            by_policy += usize::from(decided.decided_by_outage_policy);
        }
        by_policy
    });
    let mut cache = service.cache();
    for _ in 0..5 {
        let refused = cache.get_many(GetManyRequest { keys: keys.clone() }).await.unwrap_err();
        assert_reason(&refused, Code::ResourceExhausted, "RESPONSE_TOO_LARGE");
        assert!(refused.message().contains("--max-response-bytes"), "{refused:?}");
    }
    assert_eq!(checks.await.unwrap(), 0, "no check was answered by the outage policy");

    // What fits is served.
    let fits = cache
        .get_many(GetManyRequest {
            keys: keys[..50].to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        fits.entries
            .iter()
            .all(|entry| entry.found && entry.value.len() == 65_536)
    );
}

#[tokio::test]
async fn oversized_requests_are_resource_exhausted_and_the_server_lives_on() {
    let (_redis, service) = redis_and_service(&[]).await;
    let mut cache = service.cache();
    for mib in [5, 64] {
        let refused = cache.set(set("huge", vec![0u8; mib << 20])).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{mib} MiB: {refused:?}");
    }
    cache.set(set("small", b"v".to_vec())).await.unwrap();
    assert!(cache.get(get("small")).await.unwrap().into_inner().found);
}

/// Sends `body` as the raw request body of `path`; returns the gRPC status
/// (code, message and details) from the response's headers or trailers.
async fn raw_call(channel: &mut Channel, path: &str, body: Bytes) -> Status {
    use tower::Service;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(body)))
        .unwrap();
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.unwrap();
    let response = channel.call(request).await.unwrap();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let source = if headers.contains_key("grpc-status") {
        &headers
    } else {
        &trailers
    };
    Status::from_header_map(source).expect("a grpc-status")
}

fn frame(flag: u8, declared_length: u32, payload: &[u8]) -> Bytes {
    let mut buffer = BytesMut::new();
    buffer.put_u8(flag);
    buffer.put_u32(declared_length);
    buffer.put_slice(payload);
    buffer.freeze()
}

#[tokio::test]
async fn malformed_frames_and_invalid_utf8_get_a_clean_status() {
    let (_redis, service) = redis_and_service(&[]).await;
    let mut channel = service.channel();
    let get_path = "/cachelock.cache.v1.CacheService/Get";
    // Field 1 (key), 2 bytes that are not UTF-8.
    let invalid_utf8 = [0x0a, 0x02, 0xff, 0xfe];
    // Field 1 declares 10 bytes and carries 2.
    let truncated_field = [0x0a, 0x0a, b'a', b'b'];
    let cases: HashMap<&str, (Bytes, Code)> = HashMap::from([
        (
            "invalid UTF-8 in a string",
            (frame(0, 4, &invalid_utf8), Code::InvalidArgument),
        ),
        (
            "a truncated field",
            (frame(0, 4, &truncated_field), Code::InvalidArgument),
        ),
        (
            "an unknown compression flag",
            (frame(7, 4, &invalid_utf8), Code::Internal),
        ),
        ("a frame cut short", (frame(0, 100, b"\x0a\x01k"), Code::Internal)),
        (
            "garbage",
            (Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"), Code::Internal),
        ),
    ]);
    for (case, (body, expected)) in cases {
        let status = raw_call(&mut channel, get_path, body).await;
        assert_eq!(status.code(), expected, "{case}: {status:?}");
        if expected == Code::InvalidArgument {
            assert_reason(&status, expected, "MALFORMED_REQUEST");
        }
    }
    // Still serving.
    service.cache().set(set("k", b"v".to_vec())).await.unwrap();
}
