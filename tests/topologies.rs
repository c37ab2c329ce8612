//! What only a Redis Cluster or a Sentinel group shows: keys spread over every
//! primary, multi-key requests split by slot or refused exactly as documented,
//! lock releases heard across nodes, the topology in the log, and bad topology
//! settings named in the log while health stays NOT_SERVING. (The scenarios of
//! every service run on all three topologies in their own test files; the
//! failovers are in `failover.rs`.)

mod common;

use std::time::Duration;

use cachelock::pb::{
    cache::{DeleteRequest, GetManyRequest, GetRequest, SetEntry, SetManyRequest, SetRequest},
    lock::{AcquireRequest, ReleaseRequest},
    ratelimit::{Algorithm, CheckManyRequest, CheckRequest, Limit},
};
use common::{
    Backend, CapturedLogs, MASTER, Mode, TestCluster, TestRedis, TestSentinels, TestService, eventually, millis,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn entry(key: &str, value: &str) -> SetEntry {
    SetEntry {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        ttl: Some(millis(60_000)),
    }
}

fn limit(key: &str) -> Limit {
    Limit {
        key: key.to_owned(),
        limit: 5,
        period: Some(millis(60_000)),
        cost: None,
        algorithm: Algorithm::TokenBucket as i32,
        calendar: None,
        leased: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keys_spread_over_every_primary_and_multi_key_requests_split_or_refuse() {
    let backend = Backend::start(Mode::Cluster).await;
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    let keys: Vec<String> = (0..60).map(|i| format!("spread:{i}")).collect();
    for key in &keys {
        cache
            .set(SetRequest {
                key: key.clone(),
                value: key.as_bytes().to_vec(),
                ttl: Some(millis(60_000)),
                condition: 0,
                lease_token: String::new(),
                stale_ttl: None,
                fence: None,
            })
            .await
            .unwrap();
    }

    // Every primary holds some of them.
    let pattern = format!("{}:*", backend.prefix());
    for primary in TestCluster::shared().primaries() {
        let held: Vec<String> = primary.query(&["KEYS", &pattern]).unwrap();
        assert!(!held.is_empty(), "primary {} holds none of the keys", primary.port);
    }

    // GetMany and Delete split by slot and answer as one.
    let entries = cache
        .get_many(GetManyRequest { keys: keys.clone() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(entries.len(), keys.len());
    for (entry, key) in entries.iter().zip(&keys) {
        assert_eq!(&entry.key, key);
        assert!(entry.found, "{key}");
        assert_eq!(entry.value, key.as_bytes());
    }
    let deleted = cache
        .delete(DeleteRequest {
            keys: keys.clone(),
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 60);

    // SetMany across slots is refused, naming the keys and the remedy, and writes nothing.
    let refused = cache
        .set_many(SetManyRequest {
            entries: vec![entry("cart:1", "a"), entry("cart:2", "b")],
            fence: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    for expected in [
        "entries:",
        "\"cart:1\"",
        "\"cart:2\"",
        "different Redis Cluster slots",
        "{",
    ] {
        assert!(
            refused.message().contains(expected),
            "{expected} in {}",
            refused.message()
        );
    }
    for key in ["cart:1", "cart:2"] {
        let found = cache
            .get(GetRequest { key: key.to_owned() })
            .await
            .unwrap()
            .into_inner()
            .found;
        assert!(!found, "{key} was written");
    }
    // With one hash tag they go together.
    let stored = cache
        .set_many(SetManyRequest {
            entries: vec![entry("{cart}:1", "a"), entry("{cart}:2", "b")],
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.stored, 2);

    // CheckMany across slots is refused and consumes nothing; with one tag it decides.
    let mut limits = service.ratelimit();
    let refused = limits
        .check_many(CheckManyRequest {
            limits: vec![limit("login:ann"), limit("login:ip")],
            on_unavailable: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("limits:"), "{}", refused.message());
    let alone = limits
        .check(CheckRequest {
            key: "login:ann".to_owned(),
            limit: 5,
            period: Some(millis(60_000)),
            cost: Some(0),
            algorithm: Algorithm::TokenBucket as i32,
            on_unavailable: 0,
            calendar: None,
            wait: None,
            leased: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alone.remaining, 5, "the refused CheckMany consumed nothing");
    let decided = limits
        .check_many(CheckManyRequest {
            limits: vec![limit("{login}:ann"), limit("{login}:ip")],
            on_unavailable: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(decided.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lock_releases_wake_waiters_whichever_node_their_keys_live_on() {
    let backend = Backend::start(Mode::Cluster).await;
    let service = backend.service(&[]).await;
    // The service listens for releases on one node; every node hears every PUBLISH.
    common::eventually("the service subscribing to lock releases", async || {
        TestCluster::shared()
            .nodes
            .iter()
            .map(|node| node.query::<u64>(&["PUBSUB", "NUMPAT"]).unwrap_or(0))
            .sum::<u64>()
            > 0
    })
    .await;
    let mut holder = service.locks();
    // Names whose keys land on different primaries.
    for name in ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"] {
        let acquire = |wait: i64| AcquireRequest {
            name: name.to_owned(),
            ttl: Some(millis(60_000)),
            wait_timeout: Some(millis(wait)),
            owner: "test".to_owned(),
            request_id: String::new(),
            permits: 0,
        };
        let held = holder.acquire(acquire(0)).await.unwrap().into_inner();
        assert!(held.acquired);
        let mut waiter = service.locks();
        let waiting = tokio::spawn(async move { waiter.acquire(acquire(30_000)).await });
        // The waiter found the lock held and waits for its release.
        eventually("the Acquire waiting", async || {
            service.metric("cachelock_waiters{kind=\"lock\"}").await == 1.0
        })
        .await;
        holder
            .release(ReleaseRequest {
                name: name.to_owned(),
                token: held.token,
            })
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let granted = waiting.await.unwrap().unwrap().into_inner();
        assert!(granted.acquired, "{name}");
        // Woken by the notice, not by its 30 s wait or the holder's 60 s lease running out.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn cluster_topology_is_logged_at_connect() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::INFO);
    let cluster = TestCluster::shared();
    let service = TestService::start_with_args(&["--redis-cluster-nodes", &cluster.seeds()]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    logs.wait_for("Redis topology").await;
    let line = logs
        .text()
        .lines()
        .find(|line| line.contains("Redis topology"))
        .unwrap_or_default()
        .to_owned();
    for node in &cluster.nodes {
        assert!(line.contains(&format!("127.0.0.1:{}", node.port)), "{line}");
    }
}

#[tokio::test]
async fn a_cluster_seed_that_is_not_a_cluster_node_is_named_in_the_log_and_not_serving() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let standalone = TestRedis::start().await;
    let service = TestService::start_with_args(&["--redis-cluster-nodes", &standalone.url()]).await;
    logs.wait_for("cluster support disabled").await;
    assert_eq!(service.health_status("").await, Ok(ServingStatus::NotServing));
    assert!(logs.text().contains("NOT_SERVING"), "{}", logs.text());
}

#[tokio::test]
async fn unreachable_cluster_seeds_are_named_in_the_log_and_not_serving() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let port = TestRedis::free_port();
    let service = TestService::start_with_args(&["--redis-cluster-nodes", &format!("redis://127.0.0.1:{port}")]).await;
    logs.wait_for("Redis cannot serve").await;
    assert_eq!(service.health_status("").await, Ok(ServingStatus::NotServing));
    let status = service
        .cache()
        .get(GetRequest { key: "k".to_owned() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn a_sentinel_that_does_not_know_the_master_name_is_named_in_the_log_and_not_serving() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let group = TestSentinels::shared();
    let service = TestService::start_with_args(&[
        "--redis-sentinel-nodes",
        &group.urls(),
        "--redis-sentinel-master",
        "no-such-master",
    ])
    .await;
    logs.wait_for("does not know a master named \"no-such-master\"").await;
    assert_eq!(service.health_status("").await, Ok(ServingStatus::NotServing));
}

#[tokio::test]
async fn unreachable_sentinels_are_named_in_the_log_and_not_serving() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let port = TestRedis::free_port();
    let service = TestService::start_with_args(&[
        "--redis-sentinel-nodes",
        &format!("redis://127.0.0.1:{port}"),
        "--redis-sentinel-master",
        MASTER,
    ])
    .await;
    logs.wait_for(&format!("127.0.0.1:{port}: connection refused")).await;
    assert_eq!(service.health_status("").await, Ok(ServingStatus::NotServing));
}

#[tokio::test]
async fn behind_sentinel_the_service_reaches_the_primary_and_logs_it() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::INFO);
    let group = TestSentinels::shared();
    let service = TestService::start_with_args(&[
        "--redis-sentinel-nodes",
        &group.urls(),
        "--redis-sentinel-master",
        MASTER,
    ])
    .await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let primary = format!("127.0.0.1:{}", group.primary().port);
    logs.wait_for(&format!("primary={primary}")).await;
    logs.wait_for("Redis topology").await;
}

#[tokio::test]
async fn sentinels_and_data_nodes_may_have_different_passwords_and_neither_is_logged() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::TRACE);
    let group = TestSentinels::start_with_passwords(Some("data-secret-1"), Some("sentinel-secret-2"));
    let service = TestService::start_with_args(&[
        "--redis-sentinel-nodes",
        &group.urls(),
        "--redis-sentinel-master",
        MASTER,
        "--redis-password",
        "data-secret-1",
    ])
    .await;
    service.wait_for_health("", ServingStatus::Serving).await;
    service
        .cache()
        .set(SetRequest {
            key: "k".to_owned(),
            value: b"v".to_vec(),
            ttl: None,
            condition: 0,
            lease_token: String::new(),
            stale_ttl: None,
            fence: None,
        })
        .await
        .unwrap();
    let text = logs.text();
    assert!(!text.contains("data-secret-1"), "the data password was logged");
    assert!(!text.contains("sentinel-secret-2"), "the Sentinel password was logged");

    // The wrong data password: the cause is named, the password is not.
    let wrong = TestService::start_with_args(&[
        "--redis-sentinel-nodes",
        &group.urls(),
        "--redis-sentinel-master",
        MASTER,
        "--redis-password",
        "not-the-password-3",
    ])
    .await;
    logs.wait_for("authentication failed").await;
    assert_eq!(wrong.health_status("").await, Ok(ServingStatus::NotServing));
    assert!(!logs.text().contains("not-the-password-3"), "a password was logged");
}
