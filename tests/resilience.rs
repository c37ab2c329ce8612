//! The service when Redis goes away, comes back, runs out of memory, or is slower
//! than the caller's deadline.

mod common;

use std::time::Duration;

use cachelock::pb::cache::{GetRequest, IncrementRequest, SetCondition, SetEntry, SetManyRequest, SetRequest};
use common::{PATIENCE, TestRedis, TestService, hung_redis, redis_and_service};
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;

const CACHE: &str = "cachelock.cache.v1.CacheService";

fn set(key: &str) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: b"v".to_vec(),
        ttl: None,
        condition: SetCondition::Always as i32,
    }
}

fn get(key: &str) -> GetRequest {
    GetRequest { key: key.to_owned() }
}

/// Runs `call` but fails the test instead of hanging if it never returns.
async fn returns<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the call returns instead of hanging")
}

#[tokio::test]
async fn redis_going_away_and_coming_back_on_the_same_port() {
    let (mut redis, service) = redis_and_service(&["--operation-timeout", "300ms"]).await;
    let mut cache = service.cache();
    cache.set(set("k")).await.unwrap();
    service.wait_for_health("", ServingStatus::Serving).await;
    service.wait_for_health(CACHE, ServingStatus::Serving).await;

    redis.stop().await;
    let read = returns(cache.get(get("k"))).await.unwrap_err();
    assert_eq!(read.code(), Code::Unavailable, "{read:?}");
    let write = returns(cache.set(set("k"))).await.unwrap_err();
    assert_eq!(write.code(), Code::Unavailable, "{write:?}");
    service.wait_for_health("", ServingStatus::NotServing).await;
    service.wait_for_health(CACHE, ServingStatus::NotServing).await;

    redis.restart().await;
    service.wait_for_health("", ServingStatus::Serving).await;
    // The restarted Redis is empty; the service reconnected without a restart of its own.
    let stored = returns(cache.set(set("k"))).await.unwrap().into_inner();
    assert!(stored.stored);
    assert!(cache.get(get("k")).await.unwrap().into_inner().found);
}

#[tokio::test]
async fn the_service_starts_while_redis_is_down_and_serves_once_it_is_up() {
    let port = TestRedis::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let service = TestService::start(&url, &["--operation-timeout", "300ms"]).await;
    let mut cache = service.cache();

    assert_eq!(service.health_status("").await, Ok(ServingStatus::NotServing));
    let status = returns(cache.get(get("k"))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);

    let _redis = TestRedis::start_on(port).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    assert!(returns(cache.set(set("k"))).await.unwrap().into_inner().stored);
}

#[tokio::test]
async fn a_caller_deadline_shorter_than_the_operation_timeout_still_gets_unavailable() {
    let port = TestRedis::free_port();
    let service = TestService::start(
        &format!("redis://127.0.0.1:{port}"),
        &["--operation-timeout", "60s", "--connect-timeout", "60s"],
    )
    .await;
    let mut cache = service.cache();

    let mut request = Request::new(get("k"));
    request.set_timeout(Duration::from_secs(2));
    let status = returns(cache.get(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn a_hung_redis_gives_unavailable_for_reads_and_unknown_outcome_for_increments() {
    let service = TestService::start(&hung_redis().await, &["--operation-timeout", "300ms"]).await;
    let mut cache = service.cache();

    let read = returns(cache.get(get("k"))).await.unwrap_err();
    assert_eq!(read.code(), Code::Unavailable, "{read:?}");

    // Retrying an increment blindly could count twice: the caller is told it may have happened.
    let increment = returns(cache.increment(IncrementRequest {
        key: "n".to_owned(),
        delta: 1,
        ttl: None,
    }))
    .await
    .unwrap_err();
    assert_eq!(increment.code(), Code::DeadlineExceeded, "{increment:?}");
    assert!(
        increment.message().contains("may or may not"),
        "{}",
        increment.message()
    );
}

#[tokio::test]
async fn an_out_of_memory_redis_refuses_writes_and_still_serves_reads() {
    let (redis, service) = redis_and_service(&[]).await;
    let mut cache = service.cache();
    cache.set(set("kept")).await.unwrap();

    let mut direct = redis.connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut direct)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut direct)
        .await
        .unwrap();

    let set_status = cache.set(set("new")).await.unwrap_err();
    assert_eq!(set_status.code(), Code::ResourceExhausted, "{set_status:?}");
    let many_status = cache
        .set_many(SetManyRequest {
            entries: vec![SetEntry {
                key: "new".to_owned(),
                value: b"v".to_vec(),
                ttl: None,
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(many_status.code(), Code::ResourceExhausted, "{many_status:?}");
    let increment_status = cache
        .increment(IncrementRequest {
            key: "n".to_owned(),
            delta: 1,
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(increment_status.code(), Code::ResourceExhausted, "{increment_status:?}");

    let read = cache.get(get("kept")).await.unwrap().into_inner();
    assert!(read.found);
    assert!(!cache.get(get("new")).await.unwrap().into_inner().found);
}
