//! The rate-limit scenarios: RateLimit.Check with each algorithm, the same
//! script sent to Redis directly, and Envoy's ShouldRateLimit.

use cachelock::{
    direct::{Algorithm, Counting, LimitCheck, invocation},
    pb::{
        envoy::{
            extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor::Entry},
            service::ratelimit::v3::{
                RateLimitRequest, rate_limit_response::Code as EnvoyCode,
                rate_limit_service_client::RateLimitServiceClient as EnvoyClient,
            },
        },
        ratelimit::{
            self as rl, CheckRequest, CommitRequest, Limit, ReserveRequest,
            rate_limit_service_client::RateLimitServiceClient,
        },
    },
};

use super::{BENCH_DOMAIN, Clients, Conn, RATE_LIMIT, RATE_PERIOD_MICROS, Scenario};

/// A Check of `key` with the algorithm of `scenario`; never decided by the outage policy.
pub(crate) async fn check(channel: Conn, scenario: Scenario, key: String) -> Result<(), String> {
    let algorithm = match scenario.algorithm().ok_or("no such scenario")? {
        Algorithm::TokenBucket => rl::Algorithm::TokenBucket,
        Algorithm::FixedWindow => rl::Algorithm::FixedWindow,
        Algorithm::SlidingWindow => rl::Algorithm::SlidingWindow,
    };
    let response = RateLimitServiceClient::new(channel)
        .check(CheckRequest {
            key,
            limit: RATE_LIMIT,
            period: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            cost: None,
            algorithm: algorithm as i32,
            on_unavailable: rl::OutagePolicy::FailClosed as i32,
            calendar: None,
            wait: None,
            leased: false,
        })
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    if response.decided_by_outage_policy {
        Err("decided by the outage policy".to_owned())
    } else {
        Ok(())
    }
}

/// A Check of one of the hot keys, token bucket, exact or leased; never refused
/// (the limit is far above any rate this machine reaches).
pub(crate) async fn check_hot(channel: Conn, key: String, leased: bool) -> Result<(), String> {
    let response = RateLimitServiceClient::new(channel)
        .check(CheckRequest {
            key,
            limit: RATE_LIMIT,
            period: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            on_unavailable: rl::OutagePolicy::FailClosed as i32,
            leased,
            ..CheckRequest::default()
        })
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    if response.decided_by_outage_policy {
        Err("decided by the outage policy".to_owned())
    } else if !response.allowed {
        Err("refused: the bench limit is spent".to_owned())
    } else {
        Ok(())
    }
}

/// A Reserve of an estimate of 10 units on `key`, then a Commit of 7: a token
/// budget's two calls, token bucket, on the limit of the Check scenarios.
pub(crate) async fn reserve_commit(channel: Conn, key: String) -> Result<(), String> {
    let mut client = RateLimitServiceClient::new(channel);
    let limit = |cost| Limit {
        key: key.clone(),
        limit: RATE_LIMIT,
        period: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        cost: Some(cost),
        algorithm: rl::Algorithm::TokenBucket as i32,
        calendar: None,
        leased: false,
    };
    let reserved = client
        .reserve(ReserveRequest {
            limit: Some(limit(10)),
            reservation_ttl: None,
        })
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    if !reserved.allowed {
        return Err("the reservation was refused: the bench limit is spent".to_owned());
    }
    client
        .commit(CommitRequest {
            limit: Some(limit(7)),
            reservation_id: reserved.reservation_id,
            allow_debt: false,
        })
        .await
        .map_err(|status| status.to_string())?;
    Ok(())
}

/// The script call a Check makes, sent to Redis directly.
pub(crate) async fn check_direct(clients: &Clients, scenario: Scenario, key: &str) -> Result<(), String> {
    let algorithm = scenario.algorithm().ok_or("no direct baseline")?;
    let mut conn = clients.redis.clone();
    let check = LimitCheck {
        key,
        algorithm,
        limit: RATE_LIMIT,
        period_micros: RATE_PERIOD_MICROS,
        cost: 1,
        counting: Counting::Together,
        calendar: None,
    };
    let invocation = invocation(&clients.keys, std::slice::from_ref(&check));
    // The service loaded the script into this Redis when it connected.
    invocation
        .evalsha()
        .query_async::<Vec<(i64, i64, i64, i64)>>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A ShouldRateLimit with one descriptor the bench rule decides.
pub(crate) async fn should_rate_limit(channel: Conn, key: String) -> Result<(), String> {
    let response = EnvoyClient::new(channel)
        .should_rate_limit(RateLimitRequest {
            domain: BENCH_DOMAIN.to_owned(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "bench".to_owned(),
                    value: key,
                }],
                ..RateLimitDescriptor::default()
            }],
            hits_addend: 1,
        })
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    if response.overall_code == EnvoyCode::Ok as i32
        && response.statuses.first().is_some_and(|s| s.current_limit.is_some())
    {
        Ok(())
    } else {
        Err(format!("not decided by the bench rule: {response:?}"))
    }
}
