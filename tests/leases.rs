//! Leased decisions against every topology: instances decide hot limits from
//! slices leased from Redis, and across any number of them never admit more
//! than the limit; a quiet key stays exact to the unit; a CheckMany refused by
//! one limit leaves the others' units in place.

mod common;

use std::time::Duration;

use cachelock::pb::ratelimit::{
    Algorithm, CheckManyRequest, CheckRequest, Limit, rate_limit_service_client::RateLimitServiceClient,
};
use common::{Backend, assert_invalid, millis};
use tonic::transport::Channel;

type Limits = RateLimitServiceClient<Channel>;

fn leased(key: &str, limit: u64, algorithm: Algorithm) -> CheckRequest {
    CheckRequest {
        key: key.to_owned(),
        limit,
        period: Some(millis(3_600_000)),
        algorithm: algorithm as i32,
        leased: true,
        ..CheckRequest::default()
    }
}

async fn leased_checks_across_two_instances_never_admit_more_than_the_limit(backend: Backend) {
    let first = backend.service(&[]).await;
    let second = backend.service(&[]).await;
    for algorithm in [Algorithm::TokenBucket, Algorithm::FixedWindow] {
        let key = format!("leased:{algorithm:?}");
        let calls: Vec<_> = (0..300)
            .map(|i| {
                let mut limits: Limits = if i % 2 == 0 {
                    first.ratelimit()
                } else {
                    second.ratelimit()
                };
                let request = leased(&key, 100, algorithm);
                tokio::spawn(async move { limits.check(request).await.unwrap().into_inner().allowed })
            })
            .collect();
        let mut allowed = 0;
        for call in calls {
            allowed += u32::from(call.await.unwrap());
        }
        println!("{algorithm:?}: {allowed} of 300 leased checks allowed on a limit of 100");
        assert!(allowed <= 100, "{algorithm:?}: {allowed} allowed on a limit of 100");
        assert!(
            allowed >= 50,
            "{algorithm:?}: only {allowed} allowed: slices left too much unused"
        );
    }
}

async fn a_quiet_key_is_exact_to_the_unit(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut limits: Limits = service.ratelimit();
    for algorithm in [Algorithm::TokenBucket, Algorithm::FixedWindow] {
        let key = format!("quiet:{algorithm:?}");
        let mut allowed = 0;
        let mut retry = Duration::ZERO;
        for _ in 0..8 {
            let answer = limits.check(leased(&key, 5, algorithm)).await.unwrap().into_inner();
            allowed += u32::from(answer.allowed);
            if !answer.allowed {
                let after = answer.retry_after.unwrap_or_default();
                retry = Duration::new(
                    u64::try_from(after.seconds).unwrap_or(0),
                    u32::try_from(after.nanos).unwrap_or(0),
                );
            }
        }
        if algorithm == Algorithm::TokenBucket && allowed == 4 {
            // A leased bucket is smaller by one slice's life of refill: its last
            // unit comes that much later (100 ms at most).
            assert!(retry <= Duration::from_millis(100), "{retry:?}");
            tokio::time::sleep(retry).await;
            allowed += u32::from(
                limits
                    .check(leased(&key, 5, algorithm))
                    .await
                    .unwrap()
                    .into_inner()
                    .allowed,
            );
        }
        assert_eq!(allowed, 5, "{algorithm:?}");
        assert!(
            !limits
                .check(leased(&key, 5, algorithm))
                .await
                .unwrap()
                .into_inner()
                .allowed
        );
        // An exact look sees every unit counted, those in slices too.
        let look = CheckRequest {
            cost: Some(0),
            leased: false,
            ..leased(&key, 5, algorithm)
        };
        assert_eq!(limits.check(look).await.unwrap().into_inner().remaining, 0);
    }
}

async fn a_refused_check_many_leaves_the_other_limits_units(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut limits: Limits = service.ratelimit();
    // Fixed windows: a leased bucket's last unit would come a slice's life later.
    let limit = |key: &str, limit: u64| Limit {
        key: key.to_owned(),
        limit,
        period: Some(millis(3_600_000)),
        algorithm: Algorithm::FixedWindow as i32,
        leased: true,
        ..Limit::default()
    };
    let both = || CheckManyRequest {
        limits: vec![limit("{many}:roomy", 10), limit("{many}:tight", 1)],
        ..CheckManyRequest::default()
    };
    assert!(limits.check_many(both()).await.unwrap().into_inner().allowed);
    assert!(!limits.check_many(both()).await.unwrap().into_inner().allowed);
    // The refused request took nothing of the roomy limit: 9 more fit.
    let mut allowed = 0;
    for _ in 0..10 {
        allowed += u32::from(
            limits
                .check(leased("{many}:roomy", 10, Algorithm::FixedWindow))
                .await
                .unwrap()
                .into_inner()
                .allowed,
        );
    }
    assert_eq!(allowed, 9);
}

async fn bad_leased_requests_name_their_field(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut limits: Limits = service.ratelimit();
    let sliding = leased("k", 10, Algorithm::SlidingWindow);
    assert_invalid(limits.check(sliding).await.unwrap_err(), "leased");
    let waiting = CheckRequest {
        wait: Some(millis(1000)),
        ..leased("k", 10, Algorithm::TokenBucket)
    };
    assert_invalid(limits.check(waiting).await.unwrap_err(), "wait");
    let mixed = CheckManyRequest {
        limits: vec![
            Limit {
                key: "{m}:a".to_owned(),
                limit: 1,
                period: Some(millis(1000)),
                leased: true,
                ..Limit::default()
            },
            Limit {
                key: "{m}:b".to_owned(),
                limit: 1,
                period: Some(millis(1000)),
                ..Limit::default()
            },
        ],
        ..CheckManyRequest::default()
    };
    assert_invalid(limits.check_many(mixed).await.unwrap_err(), "limits[1].leased");
}

/// The rate-limit script, as the service loads it.
fn script() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/scripts/ratelimit.lua")).unwrap()
}

#[tokio::test]
async fn a_slice_given_back_after_it_refilled_gives_nothing() {
    let redis = common::TestRedis::start().await;
    let script = script();
    // 100 a second: a unit every 10 ms.
    let lease = |back: &str, mark: &str| {
        [
            "EVAL", &script, "1", "bucket", "lease", "1", "100", "1000000", "1", "24", "10000", back, mark, "0",
        ]
        .map(str::to_owned)
    };
    let run = |args: [String; 14]| {
        let redis = &redis;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            redis.command::<Vec<i64>>(&args).await
        }
    };
    let first = run(lease("0", "0")).await;
    assert_eq!((first[0], first[1]), (1, 25), "a quarter of what is free: {first:?}");
    let mark = first[6].to_string();
    // The slice's units end 250 ms from now; past that the bucket is whole again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let check = |cost: &str| {
        [
            "EVAL", &script, "1", "bucket", "1", "100", "1000000", cost, "1", "roomy",
        ]
        .map(str::to_owned)
    };
    let checked = |args: [String; 10]| {
        let redis = &redis;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            redis.command::<Vec<Vec<i64>>>(&args).await
        }
    };
    assert_eq!(checked(check("100")).await[0][0], 1, "a whole bucket again");
    let before = std::time::Instant::now();
    let full = checked(check("0")).await[0][2];
    // The quiet slice's 24 unused units come back now: they refilled long ago.
    let _ = run(lease("24", &mark)).await;
    let after = checked(check("0")).await[0][2];
    let elapsed = i64::try_from(before.elapsed().as_micros()).unwrap();
    assert!(
        after + elapsed + 15_000 >= full,
        "units given back after they refilled made room: {full} µs to whole, then {after} µs {elapsed} µs later"
    );
}

in_every_mode!(
    leased_checks_across_two_instances_never_admit_more_than_the_limit,
    a_quiet_key_is_exact_to_the_unit,
    a_refused_check_many_leaves_the_other_limits_units,
    bad_leased_requests_name_their_field,
);
