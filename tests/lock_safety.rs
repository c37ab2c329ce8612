//! The ways two callers could come to believe they hold one lock (beyond its
//! permits), one test each: every one is refused inside the script that grants
//! (`lock_grant.lua`), whatever the service's memory says. The randomized
//! adversary that looks for the ways nobody listed is `tests/nemesis.rs`.

mod common;

use std::time::Duration;

use cachelock::pb::lock::{
    AcquireRequest, AcquireResponse, DescribeRequest, DescribeResponse, ExtendRequest, HoldRequest, HoldResponse,
    ReleaseRequest, hold_response::Event as HoldEvent, lock_service_client::LockServiceClient,
};
use common::requests::acquire;
use common::{
    Backend, FaultyLink, Node, PATIENCE, TestCluster, TestRedis, TestService, assert_invalid, assert_reason,
    eventually, millis,
};
use tokio::time::Instant;
use tonic::{Code, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

fn hold(name: &str, ttl_ms: i64, wait_ms: i64) -> HoldRequest {
    HoldRequest {
        name: name.to_owned(),
        ttl: Some(millis(ttl_ms)),
        wait_timeout: (wait_ms > 0).then(|| millis(wait_ms)),
        owner: "safety".to_owned(),
        permits: 0,
        safety_margin: None,
    }
}

async fn take(client: &mut LockServiceClient<Channel>, request: AcquireRequest) -> AcquireResponse {
    client.acquire(request).await.expect("Acquire answers").into_inner()
}

async fn describe(client: &mut LockServiceClient<Channel>, name: &str) -> DescribeResponse {
    client
        .describe(DescribeRequest { name: name.to_owned() })
        .await
        .expect("Describe answers")
        .into_inner()
}

async fn next_event(stream: &mut tonic::Streaming<HoldResponse>) -> HoldEvent {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a Hold event comes")
        .expect("the Hold stream is healthy")
        .and_then(|response| response.event)
        .expect("an event")
}

/// Asserts that `result` is LOCKS_PAUSED, not a grant.
fn assert_paused(result: Result<tonic::Response<AcquireResponse>, tonic::Status>, what: &str) {
    match result {
        Err(status) => assert_reason(&status, Code::Unavailable, "LOCKS_PAUSED"),
        Ok(answer) => panic!("{what}: expected LOCKS_PAUSED, got {:?}", answer.into_inner()),
    }
}

// 1. Redis restarts empty; the very next Acquire must not be granted while the
// old holder's lease may still run, however soon after the restart it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_acquire_after_redis_restarts_empty_is_paused() {
    let mut redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), &["--lock-max-ttl", "30s"]).await;
    let mut client = service.locks();
    assert!(take(&mut client, acquire("report", 30_000, 0)).await.acquired);

    redis.restart().await;
    // Sent at once: the call waits for the new connection, and the grant script
    // on it sees the marker this instance knew is gone.
    let mut next = acquire("report", 30_000, 0);
    next.owner = "another".to_owned();
    assert_paused(client.acquire(next).await, "the first Acquire after the restart");
}

// 1, with the race made certain: a flush leaves the connection up, so no
// reconnection can notice the loss first; only the grant's own script can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_acquire_after_redis_is_flushed_is_paused() {
    let redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), &["--lock-max-ttl", "30s"]).await;
    let mut client = service.locks();
    assert!(take(&mut client, acquire("report", 30_000, 0)).await.acquired);

    let _: () = redis.command(&["FLUSHALL"]).await;
    let mut next = acquire("report", 30_000, 0);
    next.owner = "another".to_owned();
    assert_paused(client.acquire(next).await, "the first Acquire after the flush");
}

// 2. An Acquire already waiting when Redis loses its data is not granted
// before the lease it was waiting behind could have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_already_waiting_when_redis_loses_its_data_waits_out_the_pause() {
    let mut redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), &["--lock-max-ttl", "3s"]).await;
    let mut holder = service.locks();
    let held_from = Instant::now();
    assert!(take(&mut holder, acquire("ledger", 3_000, 0)).await.acquired);

    let mut waiter = service.locks();
    let waiting = tokio::spawn(async move { take(&mut waiter, acquire("ledger", 3_000, 20_000)).await });
    eventually("the waiter queues", async || {
        describe(&mut holder, "ledger").await.waiting == 1
    })
    .await;

    redis.restart().await;
    let granted = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiter is answered")
        .expect("the waiter's task");
    let granted_at = Instant::now();
    assert!(granted.acquired, "the wait covers the pause");
    assert!(
        granted_at >= held_from + Duration::from_secs(3),
        "granted {:?} after the first grant was asked for, inside its 3 s lease",
        granted_at - held_from
    );
}

// 3. Redis Cluster: every primary's data is watched, not one shard's. A lock on
// a primary that restarts empty (its replica told not to fail over, so the
// node comes back as primary) is not granted again while its lease may run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_a_cluster_primary_that_restarts_empty_is_paused() {
    let mut cluster = TestCluster::start();
    let service =
        TestService::start_with_args(&["--redis-cluster-nodes", &cluster.seeds(), "--lock-max-ttl", "30s"]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    // A name on another primary than the one a single deployment-wide marker would live on.
    let marker_node = owner_of(&cluster, "cachelock:epoch");
    let name = (0..)
        .map(|n| format!("shard-job-{n}"))
        .find(|name| owner_of(&cluster, &format!("{{{}}}", tag(name))) != marker_node)
        .expect("a name on another primary");
    let primary = owner_of(&cluster, &format!("{{{}}}", tag(&name)));
    let replica_of_it = cluster.nodes[primary].port.to_string();
    for node in &cluster.nodes {
        if node.info("replication", "master_port") == replica_of_it {
            let _: () = node
                .query(&["CONFIG", "SET", "cluster-replica-no-failover", "yes"])
                .expect("CONFIG SET on the replica");
        }
    }
    let mut client = service.locks();
    assert!(take(&mut client, acquire(&name, 30_000, 0)).await.acquired);

    cluster.nodes[primary].kill();
    cluster.nodes[primary].restart();
    cluster.wait_until_formed();
    let mut next = acquire(&name, 30_000, 0);
    next.owner = "another".to_owned();
    let answer = tokio::time::timeout(PATIENCE, async {
        loop {
            match client.acquire(next.clone()).await {
                // The Cluster connection finds the restarted node again.
                Err(status) if status.code() == Code::Unavailable && !status.message().contains("paused") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                answer => return answer,
            }
        }
    })
    .await
    .expect("an answer once the Cluster is whole");
    assert_paused(answer, "a grant on the restarted primary");
}

/// The index in `cluster.nodes` of the primary serving `key`'s slot.
fn owner_of(cluster: &TestCluster, key: &str) -> usize {
    let slot: i64 = cluster.nodes[0]
        .query(&["CLUSTER", "KEYSLOT", key])
        .expect("CLUSTER KEYSLOT");
    let ranges: Vec<(i64, i64, (String, u16))> = cluster.nodes[0]
        .query::<Vec<redis::Value>>(&["CLUSTER", "SLOTS"])
        .expect("CLUSTER SLOTS")
        .into_iter()
        .filter_map(|range| {
            let redis::Value::Array(fields) = range else {
                return None;
            };
            let start = redis::from_redis_value(fields.first()?.clone()).ok()?;
            let end = redis::from_redis_value(fields.get(1)?.clone()).ok()?;
            let redis::Value::Array(primary) = fields.get(2)?.clone() else {
                return None;
            };
            let host = redis::from_redis_value(primary.first()?.clone()).ok()?;
            let port = redis::from_redis_value(primary.get(1)?.clone()).ok()?;
            Some((start, end, (host, port)))
        })
        .collect();
    let (_, _, (_, port)) = ranges
        .iter()
        .find(|(start, end, _)| (*start..=*end).contains(&slot))
        .expect("every slot is served");
    cluster
        .nodes
        .iter()
        .position(|node| node.port == *port)
        .expect("the primary is one of the nodes")
}

// 4. cachelock and Redis restart together (a node failure): the new instance
// has no memory of the old data, and the new Redis no record of it; a Redis
// younger than the longest lease is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_on_a_redis_that_just_restarted_empty_pauses_grants() {
    let mut redis = TestRedis::start().await;
    let first = TestService::start_strict(&redis.url(), &["--lock-max-ttl", "3s"]).await;
    let mut client = first.locks();
    // A fresh redis-server is young too: the first grant waits out its first 3 s.
    assert!(take(&mut client, acquire("nightly", 3_000, 10_000)).await.acquired);

    drop(first);
    // Before the restart: Redis counts its age from a moment after this one, and
    // the time it takes to answer again (long on a busy machine) is part of it.
    let restarted = Instant::now();
    redis.restart().await;
    let second = TestService::start_strict(&redis.url(), &["--lock-max-ttl", "3s"]).await;
    let mut client = second.locks();
    let refused = client.acquire(acquire("nightly", 3_000, 0)).await;
    assert_paused(refused, "the new instance's first Acquire");

    let waited = take(&mut client, acquire("nightly", 3_000, 10_000)).await;
    assert!(waited.acquired);
    assert!(
        restarted.elapsed() >= Duration::from_secs(3),
        "granted before Redis was 3 s old"
    );
}

// 5. An epoch that cannot be checked is no epoch: a grant whose marker Redis
// will not let the script read (an ACL that hides it) is refused, not made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_epoch_marker_cannot_be_read_is_not_made() {
    let redis = TestRedis::start_with(&[
        "--user",
        "app",
        "on",
        ">secret",
        "resetchannels",
        "&*",
        "~cachelock:default:*",
        "+@all",
    ])
    .await;
    let url = format!("redis://app:secret@127.0.0.1:{}", redis.port());
    let service = TestService::start(&url, &[]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let mut client = service.locks();
    let refused = client.acquire(acquire("audit", 5_000, 0)).await;
    assert!(
        refused.is_err(),
        "a grant was made although its epoch could not be checked: {refused:?}"
    );
    let holders: u32 = redis
        .command::<Option<u32>>(&["ZCARD", &format!("cachelock:default:lock:{{{}}}:audit", tag("audit"))])
        .await
        .unwrap_or(0);
    assert_eq!(holders, 0, "nothing was granted in Redis either");
}

fn tag(name: &str) -> String {
    cachelock::slot_tag(name)
}

// 6. A Hold whose instance is cut off from Redis is told `lost` before its lease
// could end: before a caller on another instance is granted the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_cut_off_from_redis_is_told_lost_before_anyone_else_is_granted() {
    let redis = TestRedis::start().await;
    let link = FaultyLink::start(redis.port()).await;
    let cut_off = TestService::start(&link.url, &[]).await;
    let healthy = TestService::start(&redis.url(), &[]).await;

    let mut request = hold("exporter", 3_000, 0);
    request.safety_margin = Some(millis(1_000));
    let mut stream = cut_off.locks().hold(request).await.unwrap().into_inner();
    assert!(matches!(next_event(&mut stream).await, HoldEvent::Acquired(_)));

    // A black hole: requests and replies are held, the sockets stay open.
    link.hold_requests(true);
    link.hold_replies(true);
    let mut other = healthy.locks();
    let contender = tokio::spawn(async move {
        let granted = take(&mut other, acquire("exporter", 3_000, 20_000)).await;
        (Instant::now(), granted)
    });
    let lost = next_event(&mut stream).await;
    let told_at = Instant::now();
    let HoldEvent::Lost(lost) = lost else {
        panic!("expected lost, got {lost:?}");
    };
    assert_eq!(lost.reason, "REDIS_UNAVAILABLE");
    let (granted_at, granted) = tokio::time::timeout(PATIENCE, contender)
        .await
        .expect("the contender is answered")
        .expect("the contender's task");
    assert!(granted.acquired, "the lease ran out, so the other instance grants it");
    assert!(
        told_at < granted_at,
        "the Hold was told {:?} after another caller was granted its lock",
        told_at - granted_at
    );
    link.hold_requests(false);
    link.hold_replies(false);
}

// 7. The permits of a name are those its holders were granted with: a caller
// cannot join an exclusive lock by asking for more permits.
async fn a_caller_cannot_join_a_lock_by_asking_for_more_permits(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = service.locks();
    assert!(take(&mut client, acquire("vault", 10_000, 0)).await.acquired);
    for permits in [2, 10_000] {
        let mut more = acquire("vault", 10_000, 0);
        more.permits = permits;
        let refused = client
            .acquire(more)
            .await
            .expect_err("a caller with more permits joined");
        assert_reason(&refused, Code::FailedPrecondition, "PERMITS_MISMATCH");
        assert!(refused.message().contains("permits 1"), "{refused:?}");
    }
    let seen = describe(&mut client, "vault").await;
    assert_eq!((seen.holders, seen.permits), (1, 1));
}

// 8. A Hold whose caller goes away while it waits leaves the queue at once,
// and never takes a grant nobody will use.
async fn a_hold_cancelled_while_waiting_leaves_the_queue_and_takes_no_grant(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = service.locks();
    let first = take(&mut client, acquire("printer", 10_000, 0)).await;
    assert!(first.acquired);
    let waiting = service.locks().hold(hold("printer", 10_000, 30_000)).await.unwrap();
    eventually("the Hold queues", async || {
        describe(&mut client, "printer").await.waiting == 1
    })
    .await;

    drop(waiting);
    eventually("the cancelled Hold leaves the queue", async || {
        describe(&mut client, "printer").await.waiting == 0
    })
    .await;
    client
        .release(ReleaseRequest {
            name: "printer".to_owned(),
            token: first.token,
        })
        .await
        .unwrap();
    let next = take(&mut client, acquire("printer", 10_000, 0)).await;
    assert!(next.acquired, "a ghost of the cancelled Hold took the lock");
}

// 9. A request id another owner also uses never gives either one the other's
// grant, nor a second grant of its own on retry.
async fn a_request_id_reused_by_another_owner_does_not_double_grant_the_first(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = service.locks();
    let with = |owner: &str| {
        let mut request = acquire("seats", 10_000, 0);
        request.permits = 3;
        request.request_id = "shared-id".to_owned();
        request.owner = owner.to_owned();
        request
    };
    let first = take(&mut client, with("alice")).await;
    let second = take(&mut client, with("bob")).await;
    assert!(first.acquired && second.acquired);
    assert_ne!(first.token, second.token);

    let retried = take(&mut client, with("alice")).await;
    assert_eq!(retried.token, first.token, "alice's retry gets alice's grant");
    assert_eq!(retried.fencing_token, first.fencing_token);
    assert_eq!(take(&mut client, with("bob")).await.token, second.token);
    assert_eq!(describe(&mut client, "seats").await.holders, 2);
}

// 10. A Redis that may evict keys can drop a held lease: grants and extensions
// are refused and the lock service is NOT_SERVING until it cannot, and an
// eviction that happened anyway pauses grants like a data loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_refuses_grants_and_an_eviction_pauses_them() {
    let redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), &["--lock-max-ttl", "5s"]).await;
    let mut client = service.locks();
    let held = take(&mut client, acquire("batch", 5_000, 0)).await;
    assert!(held.acquired);

    let _: () = redis.command(&["CONFIG", "SET", "maxmemory", "1gb"]).await;
    let _: () = redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"])
        .await;
    let refused = client
        .acquire(acquire("other", 5_000, 0))
        .await
        .expect_err("granted on an evicting Redis");
    assert_reason(&refused, Code::FailedPrecondition, "EVICTION_POLICY");
    assert!(refused.message().contains("volatile-lru"), "{refused:?}");
    let extended = client
        .extend(ExtendRequest {
            name: "batch".to_owned(),
            token: held.token.clone(),
            ttl: Some(millis(5_000)),
        })
        .await
        .expect_err("extended on an evicting Redis");
    assert_reason(&extended, Code::FailedPrecondition, "EVICTION_POLICY");
    service
        .wait_for_health("cachelock.lock.v1.LockService", ServingStatus::NotServing)
        .await;
    assert_eq!(
        service.health_status("").await,
        Ok(ServingStatus::Serving),
        "the cache still serves"
    );

    // An operator who accepts the risk says so.
    let accepting = TestService::start(&redis.url(), &["--allow-evicting-redis"]).await;
    assert!(take(&mut accepting.locks(), acquire("other", 5_000, 0)).await.acquired);
    accepting
        .wait_for_health("cachelock.lock.v1.LockService", ServingStatus::Serving)
        .await;
    drop(accepting);

    // Memory pressure evicts keys (perhaps the lease); the policy is then set back.
    let used: String = redis.command(&["INFO", "memory"]).await;
    let used: u64 = used
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("used_memory");
    let _: () = redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])
        .await;
    let _: () = redis
        .command(&["CONFIG", "SET", "maxmemory", &(used + 200_000).to_string()])
        .await;
    let filler = "x".repeat(10_000);
    for key in 0..100 {
        let _: () = redis.command(&["SET", &format!("filler:{key}"), &filler]).await;
    }
    let evicted: String = redis.command(&["INFO", "stats"]).await;
    assert!(!evicted.contains("evicted_keys:0\r"), "the filler evicted keys");
    let _: () = redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await;
    let _: () = redis.command(&["CONFIG", "SET", "maxmemory", "0"]).await;
    service
        .wait_for_health("cachelock.lock.v1.LockService", ServingStatus::Serving)
        .await;
    let mut after = acquire("batch", 5_000, 0);
    after.owner = "another".to_owned();
    assert_paused(client.acquire(after).await, "a grant after keys were evicted");
}

// Found by the adversarial review: a restart from a snapshot brings the marker
// back, with data that may miss the last grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_from_a_snapshot_that_misses_grants_pauses_them() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let mut redis = TestRedis::start_with(&["--dir", &dir_arg, "--dbfilename", "locks.rdb"]).await;
    let service = TestService::start(&redis.url(), &["--lock-max-ttl", "30s"]).await;
    let mut client = service.locks();
    let before = take(&mut client, acquire("invoice", 30_000, 0)).await;
    client
        .release(ReleaseRequest {
            name: "invoice".to_owned(),
            token: before.token,
        })
        .await
        .unwrap();
    let _: () = redis.command(&["SAVE"]).await;
    // Granted after the snapshot: a restart from it forgets this grant.
    assert!(take(&mut client, acquire("invoice", 30_000, 0)).await.acquired);

    redis.stop().await;
    redis.start_again().await;
    let mut next = acquire("invoice", 30_000, 0);
    next.owner = "another".to_owned();
    assert_paused(
        client.acquire(next).await,
        "the first Acquire after a restart from a snapshot",
    );
}

// Found by the adversarial review: a marker made by an instance that trusts
// young Redis servers does not vouch for the node's age to one that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_made_trusting_a_young_redis_does_not_vouch_for_it() {
    let redis = TestRedis::start().await;
    let trusting = TestService::start(&redis.url(), &["--lock-max-ttl", "30s"]).await;
    let granted = take(&mut trusting.locks(), acquire("audit", 30_000, 0)).await;
    assert!(granted.acquired);
    trusting
        .locks()
        .release(ReleaseRequest {
            name: "audit".to_owned(),
            token: granted.token,
        })
        .await
        .unwrap();
    let strict = TestService::start_strict(&redis.url(), &["--lock-max-ttl", "30s"]).await;
    assert_paused(
        strict.locks().acquire(acquire("audit", 30_000, 0)).await,
        "a grant on a 1 s old Redis",
    );
}

// Found by the adversarial review: with --lock-min-replicas, an extension the
// replica did not acknowledge in time is refused, and the lease stays the
// holder's (it was released before, while its holder still counted on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_no_replica_acknowledged_keeps_the_lease() {
    let primary = Node::standalone(&[]);
    let replica = Node::standalone(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    eventually("the replica is in sync", async || {
        replica.info("replication", "master_link_status") == "up"
    })
    .await;
    let service = TestService::start(&primary.url(), &["--lock-min-replicas", "1"]).await;
    let mut client = service.locks();
    let held = take(&mut client, acquire("payroll", 30_000, 0)).await;
    assert!(held.acquired);

    replica.pause();
    let refused = client
        .extend(ExtendRequest {
            name: "payroll".to_owned(),
            token: held.token.clone(),
            ttl: Some(millis(30_000)),
        })
        .await
        .expect_err("no replica acknowledged the extension");
    replica.resume();
    assert_reason(&refused, Code::Unavailable, "REDIS_UNAVAILABLE");
    let seen = describe(&mut client, "payroll").await;
    assert_eq!(seen.holders, 1, "the lease was released under its holder");
    client
        .release(ReleaseRequest {
            name: "payroll".to_owned(),
            token: held.token,
        })
        .await
        .expect("the holder still holds it");
}

// Found by the adversarial review: an Acquire with a request id whose answer
// was lost leaves its grant for the retry, rather than releasing it under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_answer_was_lost_stays_for_its_request_ids_retry() {
    let redis = TestRedis::start().await;
    let link = FaultyLink::start(redis.port()).await;
    let behind = TestService::start(&link.url, &[]).await;
    let direct = TestService::start(&redis.url(), &[]).await;
    behind.wait_for_health("", ServingStatus::Serving).await;
    let mut request = acquire("refund:9", 30_000, 0);
    request.request_id = "refund-9-attempt".to_owned();

    link.hold_replies(true);
    let grants_before = redis.calls("evalsha").await;
    let mut first = tonic::Request::new(request.clone());
    first.set_timeout(Duration::from_millis(500));
    let mut lost_answer = behind.locks();
    let first = tokio::spawn(async move { lost_answer.acquire(first).await });
    redis.wait_for_calls("evalsha", grants_before + 1).await;
    // Whatever the first call sends once it gives up is held too, to land late.
    link.hold_requests(true);
    let answer = tokio::time::timeout(PATIENCE, first).await.unwrap().unwrap();
    assert!(answer.is_err(), "the first answer was lost: {answer:?}");

    let retried = take(&mut direct.locks(), request).await;
    assert!(retried.acquired, "the retry collects the grant");
    let calls = redis.calls("evalsha").await;
    link.hold_requests(false);
    link.hold_replies(false);
    // A release the first call left behind would arrive now.
    common::holds_within(Duration::from_millis(500), async || {
        redis.calls("evalsha").await > calls
    })
    .await;
    let holders: Vec<String> = redis
        .command(&[
            "ZRANGE",
            &format!("cachelock:default:lock:{{{}}}:refund:9", tag("refund:9")),
            "0",
            "-1",
        ])
        .await;
    assert_eq!(holders, [retried.token], "the retried grant is still held");
}

// A Hold says, at its grant and at each renewal, how long its caller may count
// on the lease: a caller whose instance freezes stops when that runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_says_how_long_its_lease_is_certain() {
    let redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), &[]).await;
    let mut stream = service.locks().hold(hold("digest", 900, 0)).await.unwrap().into_inner();
    let HoldEvent::Acquired(acquired) = next_event(&mut stream).await else {
        panic!("granted");
    };
    let certain = |duration: Option<prost_types::Duration>| common::as_millis(&duration.expect("certain_for"));
    let first = certain(acquired.certain_for);
    assert!(
        first > 0 && first <= 900 - 90,
        "{first} ms: within the lease less its margin"
    );
    let HoldEvent::Renewed(renewed) = next_event(&mut stream).await else {
        panic!("renewed");
    };
    let again = certain(renewed.certain_for);
    assert!(again > 0 && again <= 900 - 90, "{again} ms");
}

// A Hold's safety margin is checked like every other field.
#[tokio::test]
async fn a_hold_safety_margin_above_half_its_ttl_is_refused() {
    let redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), &[]).await;
    let mut request = hold("margin", 2_000, 0);
    request.safety_margin = Some(millis(1_500));
    let refused = service
        .locks()
        .hold(request)
        .await
        .expect_err("a margin above half the ttl");
    assert_invalid(refused, "safety_margin");
}

in_every_mode!(
    a_caller_cannot_join_a_lock_by_asking_for_more_permits,
    a_hold_cancelled_while_waiting_leaves_the_queue_and_takes_no_grant,
    a_request_id_reused_by_another_owner_does_not_double_grant_the_first,
);

// Found by the nemesis on a Cluster: a grant's WAIT for its replicas, released
// because its node became a replica meanwhile (UNBLOCKED, a failover), was
// answered INTERNAL. The grant script ran, on a node no longer in charge: the
// caller is told it may have applied, and holds nothing it was not told of.
#[tokio::test]
async fn a_grant_whose_node_is_demoted_while_it_waits_for_replicas_is_answered_as_may_have_applied() {
    let redis = TestRedis::start().await;
    let service = TestService::start(
        &redis.url(),
        &["--lock-min-replicas", "1", "--operation-timeout", "30s"],
    )
    .await;
    let mut locks = service.locks();
    let waiting = tokio::spawn(async move { locks.acquire(acquire("demoted", 30_000, 0)).await });
    // No replica will acknowledge: the grant's WAIT blocks until the node changes role.
    eventually("the grant's WAIT blocking", async || {
        let clients: String = redis.command(&["INFO", "clients"]).await;
        clients.contains("blocked_clients:1")
    })
    .await;
    let _: String = redis.command(&["REPLICAOF", "127.0.0.1", "1"]).await;
    let answer = tokio::time::timeout(PATIENCE, waiting).await.unwrap().unwrap();
    let status = answer.expect_err("no grant is answered from a demoted node");
    assert_reason(&status, Code::DeadlineExceeded, "MAY_HAVE_APPLIED");
    assert!(status.message().contains("replica"), "{status:?}");
}
