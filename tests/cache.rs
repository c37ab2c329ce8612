//! CacheService against a real redis-server: every RPC, its limits and its bad inputs.

mod common;

use std::time::Duration;

use cachelock::pb::cache::{
    DeleteRequest, ExpireRequest, GetManyRequest, GetOrLeaseRequest, GetOrLeaseResponse, IncrementRequest,
    LeaseOutcome, SetCondition, SetEntry, SetManyRequest, SetRequest, TakeRequest,
    cache_service_client::CacheServiceClient,
};
use common::requests::{self, get};
use common::{
    Backend, FaultyLink, TestRedis, TestService, as_millis, assert_invalid, assert_reason, eventually, millis,
};
use redis::AsyncCommands;
use tonic::Code;

fn set(key: &str, value: &[u8], ttl_ms: Option<i64>, condition: SetCondition) -> SetRequest {
    SetRequest {
        ttl: ttl_ms.map(millis),
        condition: condition as i32,
        ..requests::set(key, value)
    }
}

async fn get_misses_then_hits_with_the_remaining_ttl(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();

    let miss = cache.get(get("greeting")).await.unwrap().into_inner();
    assert!(!miss.found);
    assert!(miss.value.is_empty());
    assert_eq!(miss.ttl, None);

    let stored = cache
        .set(set("greeting", b"hello", Some(60_000), SetCondition::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert!(stored.stored);

    let hit = cache.get(get("greeting")).await.unwrap().into_inner();
    assert!(hit.found);
    assert_eq!(hit.value, b"hello");
    let ttl = as_millis(&hit.ttl.expect("a ttl on a hit"));
    assert!(ttl > 55_000 && ttl <= 60_000, "ttl {ttl} ms");
}

async fn values_expire_after_their_ttl(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();

    cache
        .set(set("short", b"v", Some(150), SetCondition::Always))
        .await
        .unwrap();
    let hit = cache.get(get("short")).await.unwrap().into_inner();
    assert!(hit.found);
    let left = as_millis(&hit.ttl.expect("a ttl"));
    tokio::time::sleep(Duration::from_millis(left as u64 + 50)).await;

    assert!(!cache.get(get("short")).await.unwrap().into_inner().found);
}

async fn a_write_without_ttl_gets_the_default(backend: Backend) {
    let service = backend.service(&["--default-ttl", "90s"]).await;
    let mut cache = service.cache();

    cache.set(set("k", b"v", None, SetCondition::Always)).await.unwrap();
    let ttl = as_millis(&cache.get(get("k")).await.unwrap().into_inner().ttl.expect("a ttl"));
    assert!(ttl > 85_000 && ttl <= 90_000, "ttl {ttl} ms");
}

async fn set_conditions_decide_whether_to_store(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();

    let present_on_missing = cache
        .set(set("k", b"one", None, SetCondition::IfPresent))
        .await
        .unwrap()
        .into_inner();
    assert!(!present_on_missing.stored);
    assert!(!cache.get(get("k")).await.unwrap().into_inner().found);

    let absent_on_missing = cache
        .set(set("k", b"one", None, SetCondition::IfAbsent))
        .await
        .unwrap()
        .into_inner();
    assert!(absent_on_missing.stored);

    let absent_on_present = cache
        .set(set("k", b"two", None, SetCondition::IfAbsent))
        .await
        .unwrap()
        .into_inner();
    assert!(!absent_on_present.stored);
    assert_eq!(cache.get(get("k")).await.unwrap().into_inner().value, b"one");

    let present_on_present = cache
        .set(set("k", b"three", Some(5_000), SetCondition::IfPresent))
        .await
        .unwrap()
        .into_inner();
    assert!(present_on_present.stored);
    let hit = cache.get(get("k")).await.unwrap().into_inner();
    assert_eq!(hit.value, b"three");
    assert!(as_millis(&hit.ttl.expect("a ttl")) <= 5_000);

    let always = cache
        .set(set("k", b"four", None, SetCondition::Always))
        .await
        .unwrap()
        .into_inner();
    assert!(always.stored);
    assert_eq!(cache.get(get("k")).await.unwrap().into_inner().value, b"four");
}

async fn take_returns_the_value_once(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    cache
        .set(set("otp", b"123456", None, SetCondition::Always))
        .await
        .unwrap();

    let first = cache
        .take(TakeRequest {
            key: "otp".to_owned(),
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(first.found);
    assert_eq!(first.value, b"123456");

    let second = cache
        .take(TakeRequest {
            key: "otp".to_owned(),
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!second.found);
    assert!(!cache.get(get("otp")).await.unwrap().into_inner().found);
}

async fn concurrent_takes_hand_the_value_to_exactly_one_caller(backend: Backend) {
    let service = backend.service(&[]).await;
    service
        .cache()
        .set(set("token", b"t", None, SetCondition::Always))
        .await
        .unwrap();

    let takers: Vec<_> = (0..20)
        .map(|_| {
            let mut cache = service.cache();
            tokio::spawn(async move {
                cache
                    .take(TakeRequest {
                        key: "token".to_owned(),
                        fence: None,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .found
            })
        })
        .collect();
    let mut winners = 0;
    for taker in takers {
        if taker.await.unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

async fn increment_creates_with_ttl_and_adds_signed_deltas(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    let increment = |delta: i64, ttl_ms: Option<i64>| IncrementRequest {
        key: "hits".to_owned(),
        delta,
        ttl: ttl_ms.map(millis),
        fence: None,
    };

    assert_eq!(
        cache
            .increment(increment(5, Some(30_000)))
            .await
            .unwrap()
            .into_inner()
            .value,
        5
    );
    assert_eq!(
        cache
            .increment(increment(-8, Some(999_000)))
            .await
            .unwrap()
            .into_inner()
            .value,
        -3
    );
    assert_eq!(
        cache.increment(increment(0, None)).await.unwrap().into_inner().value,
        -3
    );

    // The ttl is the one given when the counter was created, not the later ones.
    let counter = cache.get(get("hits")).await.unwrap().into_inner();
    assert_eq!(counter.value, b"-3");
    let ttl = as_millis(&counter.ttl.expect("a ttl"));
    assert!(ttl > 25_000 && ttl <= 30_000, "ttl {ttl} ms");
}

async fn increment_is_exact_across_the_whole_64_bit_range(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    // Above 2^53 a Lua number (a double) cannot hold every integer: the answer must still be exact.
    for start in [
        9_223_372_036_854_775_800_i64,
        9_007_199_254_740_993,
        -9_223_372_036_854_775_800,
    ] {
        cache
            .set(set("big", start.to_string().as_bytes(), None, SetCondition::Always))
            .await
            .unwrap();
        let value = cache
            .increment(IncrementRequest {
                key: "big".to_owned(),
                delta: 1,
                ttl: None,
                fence: None,
            })
            .await
            .unwrap()
            .into_inner()
            .value;
        assert_eq!(value, start + 1);
        let stored = cache.get(get("big")).await.unwrap().into_inner().value;
        assert_eq!(stored, (start + 1).to_string().as_bytes());
    }
}

async fn increment_refuses_a_value_that_is_not_a_counter(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    cache
        .set(set("name", b"alice", None, SetCondition::Always))
        .await
        .unwrap();

    let status = cache
        .increment(IncrementRequest {
            key: "name".to_owned(),
            delta: 1,
            ttl: None,
            fence: None,
        })
        .await
        .unwrap_err();
    assert_reason(&status, Code::FailedPrecondition, "NOT_AN_INTEGER");
    assert!(
        status.message().contains("not a 64-bit integer"),
        "{}",
        status.message()
    );

    cache
        .set(set("big", i64::MAX.to_string().as_bytes(), None, SetCondition::Always))
        .await
        .unwrap();
    let overflow = cache
        .increment(IncrementRequest {
            key: "big".to_owned(),
            delta: 1,
            ttl: None,
            fence: None,
        })
        .await
        .unwrap_err();
    assert_reason(&overflow, Code::FailedPrecondition, "INTEGER_OVERFLOW");
    assert!(overflow.message().contains("overflow"), "{}", overflow.message());
}

async fn get_many_and_set_many_handle_mixed_keys_in_order(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();

    let stored = cache
        .set_many(SetManyRequest {
            entries: vec![
                // One hash tag: on a Cluster, SetMany is all-or-none within one slot.
                SetEntry {
                    key: "{order}a".to_owned(),
                    value: b"1".to_vec(),
                    ttl: Some(millis(10_000)),
                },
                SetEntry {
                    key: "{order}b".to_owned(),
                    value: b"2".to_vec(),
                    ttl: None,
                },
                SetEntry {
                    key: "{order}a".to_owned(),
                    value: b"1 again".to_vec(),
                    ttl: Some(millis(20_000)),
                },
            ],
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.stored, 3);

    // Keys in several slots: on a Cluster, read slot by slot and answered in order.
    let keys = ["{order}b", "missing", "{order}a", "{order}b"]
        .map(str::to_owned)
        .to_vec();
    let entries = cache
        .get_many(GetManyRequest { keys: keys.clone() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let seen: Vec<(&str, bool, &[u8])> = entries
        .iter()
        .map(|entry| (entry.key.as_str(), entry.found, entry.value.as_slice()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("{order}b", true, &b"2"[..]),
            ("missing", false, &b""[..]),
            ("{order}a", true, &b"1 again"[..]),
            ("{order}b", true, &b"2"[..]),
        ]
    );
    let a_ttl = as_millis(entries[2].ttl.as_ref().expect("a ttl"));
    assert!(
        a_ttl > 15_000 && a_ttl <= 20_000,
        "the later entry's ttl wins: {a_ttl} ms"
    );
    assert_eq!(entries[1].ttl, None);

    let empty = cache
        .get_many(GetManyRequest { keys: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.entries.is_empty());
}

async fn delete_counts_the_keys_that_existed(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    for key in ["x", "y"] {
        cache.set(set(key, b"v", None, SetCondition::Always)).await.unwrap();
    }

    let deleted = cache
        .delete(DeleteRequest {
            keys: ["x", "y", "z"].map(str::to_owned).to_vec(),
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 2);
    assert!(!cache.get(get("x")).await.unwrap().into_inner().found);

    let again = cache
        .delete(DeleteRequest {
            keys: vec!["x".to_owned()],
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.deleted, 0);
}

async fn expire_sets_a_new_ttl_on_existing_keys_only(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    cache
        .set(set("k", b"v", Some(600_000), SetCondition::Always))
        .await
        .unwrap();

    let found = cache
        .expire(ExpireRequest {
            key: "k".to_owned(),
            ttl: Some(millis(2_000)),
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(found.found);
    let ttl = as_millis(&cache.get(get("k")).await.unwrap().into_inner().ttl.expect("a ttl"));
    assert!(ttl <= 2_000, "ttl {ttl} ms");

    let missing = cache
        .expire(ExpireRequest {
            key: "nope".to_owned(),
            ttl: Some(millis(2_000)),
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!missing.found);
}

async fn keys_live_under_the_prefix_inside_a_hash_tag(backend: Backend) {
    let service = backend.service(&[]).await;
    service
        .cache()
        .set(set("user:42", b"v", None, SetCondition::Always))
        .await
        .unwrap();

    let mut direct = backend.connection().await;
    let tag = cachelock::slot_tag("user:42");
    let value: Option<Vec<u8>> = direct
        .get(format!("{}:default:cache:{{{tag}}}:user:42", backend.prefix()))
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some(&b"v"[..]));
}

async fn foreign_data_under_the_prefix_is_an_internal_error(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();

    // Something other than cachelock wrote a list where a cached value belongs.
    let mut direct = backend.connection().await;
    let tag = cachelock::slot_tag("listed");
    let _: i64 = direct
        .rpush(format!("{}:default:cache:{{{tag}}}:listed", backend.prefix()), "x")
        .await
        .unwrap();
    let status = cache.get(get("listed")).await.unwrap_err();
    assert_reason(&status, Code::Internal, "INTERNAL");
    assert_eq!(status.message(), "internal error", "no Redis detail reaches the caller");
}

async fn bad_inputs_are_refused_naming_the_field(backend: Backend) {
    let service = backend
        .service(&[
            "--max-key-bytes",
            "8",
            "--max-value-bytes",
            "16",
            "--max-batch",
            "3",
            "--max-ttl",
            "1h",
        ])
        .await;
    let mut cache = service.cache();

    assert_invalid(cache.get(get("")).await.unwrap_err(), "key");
    let mut bad_lease = or_lease("k", 1_000, None);
    for refresh in [1.0, -0.1, f64::NAN] {
        bad_lease.refresh_ahead = refresh;
        assert_invalid(
            cache.get_or_lease(bad_lease.clone()).await.unwrap_err(),
            "refresh_ahead",
        );
    }
    assert_invalid(
        cache.get_or_lease(or_lease("k", -5, None)).await.unwrap_err(),
        "lease_ttl",
    );
    assert_invalid(
        cache
            .get_or_lease(or_lease("k", 1_000, Some(3_600_000)))
            .await
            .unwrap_err(),
        "wait",
    );
    assert_invalid(cache.get_or_lease(or_lease("", 1_000, None)).await.unwrap_err(), "key");
    let mut conditional_fill = fill("k", b"v", 1_000, "token");
    conditional_fill.condition = SetCondition::IfAbsent as i32;
    assert_invalid(cache.set(conditional_fill).await.unwrap_err(), "condition");
    let mut long_stale = set("k", b"v", Some(1_000), SetCondition::Always);
    long_stale.stale_ttl = Some(millis(-1));
    assert_invalid(cache.set(long_stale).await.unwrap_err(), "stale_ttl");
    assert_invalid(cache.get(get("123456789")).await.unwrap_err(), "key");
    assert_invalid(
        cache
            .set(set("k", &[0; 17], None, SetCondition::Always))
            .await
            .unwrap_err(),
        "value",
    );
    assert_invalid(
        cache
            .set(set("k", b"v", Some(0), SetCondition::Always))
            .await
            .unwrap_err(),
        "ttl",
    );
    assert_invalid(
        cache
            .set(set("k", b"v", Some(-1_000), SetCondition::Always))
            .await
            .unwrap_err(),
        "ttl",
    );
    assert_invalid(
        cache
            .set(set("k", b"v", Some(3_600_001), SetCondition::Always))
            .await
            .unwrap_err(),
        "ttl",
    );
    let mut bad_condition = set("k", b"v", None, SetCondition::Always);
    bad_condition.condition = 42;
    assert_invalid(cache.set(bad_condition).await.unwrap_err(), "condition");

    let four_keys = ["a", "b", "c", "d"].map(str::to_owned).to_vec();
    assert_invalid(
        cache
            .get_many(GetManyRequest {
                keys: four_keys.clone(),
            })
            .await
            .unwrap_err(),
        "keys",
    );
    assert_invalid(
        cache
            .delete(DeleteRequest {
                keys: four_keys,
                fence: None,
            })
            .await
            .unwrap_err(),
        "keys",
    );
    assert_invalid(
        cache
            .get_many(GetManyRequest {
                keys: vec!["ok".to_owned(), String::new()],
            })
            .await
            .unwrap_err(),
        "keys[1]",
    );
    let entry = |key: &str, ttl: Option<i64>| SetEntry {
        key: key.to_owned(),
        value: b"v".to_vec(),
        ttl: ttl.map(millis),
    };
    assert_invalid(
        cache
            .set_many(SetManyRequest {
                entries: vec![entry("a", None), entry("b", None), entry("c", None), entry("d", None)],
                fence: None,
            })
            .await
            .unwrap_err(),
        "entries",
    );
    assert_invalid(
        cache
            .set_many(SetManyRequest {
                entries: vec![entry("a", None), entry("b", Some(0))],
                fence: None,
            })
            .await
            .unwrap_err(),
        "entries[1].ttl",
    );
    assert_invalid(
        cache
            .expire(ExpireRequest {
                key: "k".to_owned(),
                ttl: None,
                fence: None,
            })
            .await
            .unwrap_err(),
        "ttl",
    );
    assert_invalid(
        cache
            .increment(IncrementRequest {
                key: String::new(),
                delta: 1,
                ttl: None,
                fence: None,
            })
            .await
            .unwrap_err(),
        "key",
    );

    // A refused SetMany wrote nothing, and the server keeps serving.
    assert!(!cache.get(get("a")).await.unwrap().into_inner().found);
    assert!(
        cache
            .set(set("k", b"v", None, SetCondition::Always))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
}

/// Waits until `count` Cache.Gets have reached the service (its RPC metrics count them).
async fn gets_reaching(service: &TestService, count: u32) {
    let started = "grpc_server_started_total{grpc_type=\"unary\",grpc_service=\"cachelock.cache.v1.CacheService\",\
                   grpc_method=\"Get\"}";
    eventually(&format!("all {count} Gets reaching the service"), async || {
        service.metric(started).await >= f64::from(count)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_of_different_keys_go_together_and_each_gets_its_own_answer() {
    let redis = TestRedis::start().await;
    // A proxy that holds the first read: the Gets behind it queue for the next call.
    let link = FaultyLink::start(redis.port()).await;
    let service = TestService::start(&link.url, &["--health-interval", "60s"]).await;
    let mut cache = service.cache();
    for i in 0..50 {
        cache
            .set(set(
                &format!("k{i}"),
                format!("v{i}").as_bytes(),
                None,
                SetCondition::Always,
            ))
            .await
            .unwrap();
    }
    // Something other than cachelock put a list under one of the keys.
    let foreign = format!("cachelock:default:cache:{{{}}}:k7", cachelock::slot_tag("k7"));
    let _: i64 = redis.command(&["DEL", &foreign]).await;
    let _: i64 = redis.command(&["RPUSH", &foreign, "x"]).await;
    let reads_before = redis.calls("evalsha").await;

    link.hold_requests(true);
    let first = {
        let mut cache = service.cache();
        tokio::spawn(async move { cache.get(get("k0")).await })
    };
    link.held_bytes_arrived().await;
    let rest: Vec<_> = (1..50)
        .map(|i| {
            let mut cache = service.cache();
            tokio::spawn(async move { (i, cache.get(get(&format!("k{i}"))).await) })
        })
        .collect();
    gets_reaching(&service, 50).await;
    link.hold_requests(false);

    assert_eq!(first.await.unwrap().unwrap().into_inner().value, b"v0");
    for task in rest {
        let (i, answer) = task.await.unwrap();
        if i == 7 {
            // The foreign value fails its own Get, not the others of its batch.
            assert_reason(&answer.unwrap_err(), Code::Internal, "INTERNAL");
        } else {
            assert_eq!(answer.unwrap().into_inner().value, format!("v{i}").into_bytes());
        }
    }
    let reads = redis.calls("evalsha").await - reads_before;
    assert!(reads < 50, "50 Gets took {reads} Redis reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_of_one_key_share_one_redis_read() {
    let redis = TestRedis::start().await;
    let link = FaultyLink::start(redis.port()).await;
    let service = TestService::start(&link.url, &["--health-interval", "60s"]).await;
    let mut cache = service.cache();
    cache.set(set("hot", b"v1", None, SetCondition::Always)).await.unwrap();
    let reads_before = redis.calls("evalsha").await;

    // Redis's answers are held: the first Get's read stays in flight while 500 arrive.
    link.hold_replies(true);
    let gets: Vec<_> = (0..500)
        .map(|_| {
            let mut cache = cache.clone();
            tokio::spawn(async move { cache.get(get("hot")).await })
        })
        .collect();
    // Every Get but the first joined its read: none can start a read of its own.
    eventually("499 Gets joining the read in flight", async || {
        service.metric("cachelock_cache_shared_reads_total").await >= 499.0
    })
    .await;
    link.hold_replies(false);
    for answer in gets {
        let answer = answer.await.unwrap().unwrap().into_inner();
        assert!(answer.found);
        assert_eq!(answer.value, b"v1");
    }
    let reads = redis.calls("evalsha").await - reads_before;
    assert!(reads <= 2, "{reads} Redis reads for 500 Gets");
}

fn or_lease(key: &str, lease_ms: i64, wait_ms: Option<i64>) -> GetOrLeaseRequest {
    GetOrLeaseRequest {
        key: key.to_owned(),
        lease_ttl: Some(millis(lease_ms)),
        wait: wait_ms.map(millis),
        refresh_ahead: 0.0,
    }
}

async fn get_or_lease(
    cache: &mut CacheServiceClient<tonic::transport::Channel>,
    request: GetOrLeaseRequest,
) -> GetOrLeaseResponse {
    cache.get_or_lease(request).await.unwrap().into_inner()
}

fn fill(key: &str, value: &[u8], ttl_ms: i64, lease_token: &str) -> SetRequest {
    SetRequest {
        lease_token: lease_token.to_owned(),
        ..set(key, value, Some(ttl_ms), SetCondition::Always)
    }
}

async fn a_stampede_on_a_missing_key_gives_one_lease_and_everyone_the_filled_value(backend: Backend) {
    let service = backend.service(&[]).await;
    let callers = 200;
    let source_reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut cache = service.cache();
            let source_reads = source_reads.clone();
            tokio::spawn(async move {
                let answer = get_or_lease(&mut cache, or_lease("hot", 10_000, None)).await;
                if answer.outcome() == LeaseOutcome::Lease {
                    // The one caller that reads the source of truth, slowly.
                    source_reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let stored = cache
                        .set(fill("hot", b"from the database", 60_000, &answer.lease_token))
                        .await;
                    assert!(stored.unwrap().into_inner().stored);
                }
                answer
            })
        })
        .collect();
    let mut outcomes = std::collections::HashMap::new();
    for task in tasks {
        let answer = task.await.unwrap();
        if answer.outcome() == LeaseOutcome::Hit {
            assert_eq!(answer.value, b"from the database");
        }
        *outcomes.entry(answer.outcome()).or_insert(0) += 1;
    }
    assert_eq!(source_reads.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(outcomes.get(&LeaseOutcome::Lease), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get(&LeaseOutcome::Hit), Some(&(callers - 1)), "{outcomes:?}");
}

async fn a_lease_that_runs_out_unfilled_passes_to_the_next_caller(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    // The leaseholder dies mid-fill: it never calls back.
    let started = std::time::Instant::now();
    let first = get_or_lease(&mut cache, or_lease("orphaned", 500, Some(0))).await;
    assert_eq!(first.outcome(), LeaseOutcome::Lease);
    assert!(!first.found);

    // Another caller that does not wait is told someone fills it.
    let impatient = get_or_lease(&mut cache, or_lease("orphaned", 5_000, Some(0))).await;
    assert_eq!(impatient.outcome(), LeaseOutcome::Miss);
    assert!(impatient.lease_ttl.is_some_and(|left| as_millis(&left) <= 500));

    // One that waits gets the lease when the first one's runs out: not before
    // 500 ms after the first call began (by Redis's clock, which runs as ours).
    let next = get_or_lease(&mut cache, or_lease("orphaned", 5_000, Some(10_000))).await;
    assert_eq!(next.outcome(), LeaseOutcome::Lease);
    assert_ne!(next.lease_token, first.lease_token);
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );

    // The first leaseholder's late fill is refused: its lease passed on.
    let late = cache
        .set(fill("orphaned", b"late", 60_000, &first.lease_token))
        .await
        .unwrap_err();
    assert_reason(&late, Code::FailedPrecondition, "LEASE_LOST");
    assert!(
        cache
            .set(fill("orphaned", b"fresh", 60_000, &next.lease_token))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    let hit = get_or_lease(&mut cache, or_lease("orphaned", 5_000, Some(0))).await;
    assert_eq!(
        (hit.outcome(), hit.value.as_slice()),
        (LeaseOutcome::Hit, &b"fresh"[..])
    );
}

async fn a_stale_copy_is_served_while_one_caller_refreshes(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    let mut request = set("quote", b"old", Some(200), SetCondition::Always);
    request.stale_ttl = Some(millis(30_000));
    cache.set(request).await.unwrap();
    eventually("the value's ttl runs out", async || {
        !service.cache().get(get("quote")).await.unwrap().into_inner().found
    })
    .await;

    // The first caller past the ttl refreshes it, with the stale value in hand.
    let refresher = get_or_lease(&mut cache, or_lease("quote", 10_000, Some(0))).await;
    assert_eq!(refresher.outcome(), LeaseOutcome::Lease);
    assert_eq!((refresher.found, refresher.value.as_slice()), (true, &b"old"[..]));
    // Everyone else reads the stale copy meanwhile, without waiting.
    let reader = get_or_lease(&mut cache, or_lease("quote", 10_000, None)).await;
    assert_eq!(
        (reader.outcome(), reader.value.as_slice()),
        (LeaseOutcome::Stale, &b"old"[..])
    );
    assert!(reader.lease_token.is_empty());

    cache
        .set(fill("quote", b"new", 60_000, &refresher.lease_token))
        .await
        .unwrap();
    let fresh = get_or_lease(&mut cache, or_lease("quote", 10_000, None)).await;
    assert_eq!(
        (fresh.outcome(), fresh.value.as_slice()),
        (LeaseOutcome::Hit, &b"new"[..])
    );
}

async fn refresh_ahead_hands_one_caller_a_lease_while_the_value_still_serves(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    let lease = get_or_lease(&mut cache, or_lease("rates", 10_000, None)).await;
    cache
        .set(fill("rates", b"v1", 10_000, &lease.lease_token))
        .await
        .unwrap();
    let mut early = or_lease("rates", 10_000, None);
    early.refresh_ahead = 0.5;
    let plenty_left = get_or_lease(&mut cache, early.clone()).await;
    assert_eq!(plenty_left.outcome(), LeaseOutcome::Hit);
    assert!(plenty_left.lease_token.is_empty());

    // Less than half of its 10 s left: one caller is chosen to refresh it.
    cache
        .expire(ExpireRequest {
            key: "rates".to_owned(),
            ttl: Some(millis(3_000)),
            fence: None,
        })
        .await
        .unwrap();
    let chosen = get_or_lease(&mut cache, early.clone()).await;
    assert_eq!(
        (chosen.outcome(), chosen.value.as_slice()),
        (LeaseOutcome::Hit, &b"v1"[..])
    );
    assert!(!chosen.lease_token.is_empty());
    let others = get_or_lease(&mut cache, early.clone()).await;
    assert_eq!(
        (others.outcome(), others.value.as_slice()),
        (LeaseOutcome::Hit, &b"v1"[..])
    );
    assert!(others.lease_token.is_empty(), "only one caller refreshes");
    cache
        .set(fill("rates", b"v2", 10_000, &chosen.lease_token))
        .await
        .unwrap();
    let refreshed = get_or_lease(&mut cache, early).await;
    assert_eq!(
        (refreshed.value.as_slice(), refreshed.lease_token.as_str()),
        (&b"v2"[..], "")
    );
}

async fn writes_and_deletes_end_a_lease_and_wake_its_waiters(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    let lease = get_or_lease(&mut cache, or_lease("profile", 30_000, None)).await;
    assert_eq!(lease.outcome(), LeaseOutcome::Lease);

    // A waiter, far from the lease's end; a plain write by someone else fills it.
    let mut waiting = service.cache();
    let waiter =
        tokio::spawn(async move { get_or_lease(&mut waiting, or_lease("profile", 30_000, Some(20_000))).await });
    let waiters = "cachelock_waiters{kind=\"cache_fill\"}";
    eventually("the GetOrLease waiting for the fill", async || {
        service.metric(waiters).await == 1.0
    })
    .await;
    cache
        .set(set("profile", b"written", Some(60_000), SetCondition::Always))
        .await
        .unwrap();
    let woken = tokio::time::timeout(common::PATIENCE, waiter).await.unwrap().unwrap();
    assert_eq!(
        (woken.outcome(), woken.value.as_slice()),
        (LeaseOutcome::Hit, &b"written"[..])
    );
    // The lease it ended no longer fills.
    let refused = cache
        .set(fill("profile", b"older", 60_000, &lease.lease_token))
        .await
        .unwrap_err();
    assert_reason(&refused, Code::FailedPrecondition, "LEASE_LOST");

    // A Delete ends a lease too.
    cache
        .delete(DeleteRequest {
            keys: vec!["profile".to_owned()],
            fence: None,
        })
        .await
        .unwrap();
    let again = get_or_lease(&mut cache, or_lease("profile", 30_000, None)).await;
    assert_eq!(again.outcome(), LeaseOutcome::Lease);
    cache
        .delete(DeleteRequest {
            keys: vec!["profile".to_owned()],
            fence: None,
        })
        .await
        .unwrap();
    let refused = cache
        .set(fill("profile", b"older", 60_000, &again.lease_token))
        .await
        .unwrap_err();
    assert_reason(&refused, Code::FailedPrecondition, "LEASE_LOST");
}

async fn an_increment_ends_a_lease_like_every_other_write(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    let lease = get_or_lease(&mut cache, or_lease("visits", 30_000, None)).await;
    assert_eq!(lease.outcome(), LeaseOutcome::Lease);
    let counted = cache
        .increment(IncrementRequest {
            key: "visits".to_owned(),
            delta: 5,
            ttl: Some(millis(60_000)),
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counted.value, 5);
    // A filler holding the older lease must not overwrite the newer counter.
    let refused = cache
        .set(fill("visits", b"0", 60_000, &lease.lease_token))
        .await
        .unwrap_err();
    assert_reason(&refused, Code::FailedPrecondition, "LEASE_LOST");
    let stored = cache.get(get("visits")).await.unwrap().into_inner();
    assert_eq!(stored.value, b"5");
}

in_every_mode!(
    an_increment_ends_a_lease_like_every_other_write,
    a_stampede_on_a_missing_key_gives_one_lease_and_everyone_the_filled_value,
    a_lease_that_runs_out_unfilled_passes_to_the_next_caller,
    a_stale_copy_is_served_while_one_caller_refreshes,
    refresh_ahead_hands_one_caller_a_lease_while_the_value_still_serves,
    writes_and_deletes_end_a_lease_and_wake_its_waiters,
    get_misses_then_hits_with_the_remaining_ttl,
    values_expire_after_their_ttl,
    a_write_without_ttl_gets_the_default,
    set_conditions_decide_whether_to_store,
    take_returns_the_value_once,
    concurrent_takes_hand_the_value_to_exactly_one_caller,
    increment_creates_with_ttl_and_adds_signed_deltas,
    increment_is_exact_across_the_whole_64_bit_range,
    increment_refuses_a_value_that_is_not_a_counter,
    get_many_and_set_many_handle_mixed_keys_in_order,
    delete_counts_the_keys_that_existed,
    expire_sets_a_new_ttl_on_existing_keys_only,
    keys_live_under_the_prefix_inside_a_hash_tag,
    foreign_data_under_the_prefix_is_an_internal_error,
    bad_inputs_are_refused_naming_the_field,
);
