//! The requests the tests build again and again, with the defaults they
//! share: a minute's ttl, no wait, the service's default algorithm and outage
//! policy. A test that needs more sets only the fields it is about:
//! `SetRequest { condition: …, ..requests::set("k", b"v") }`.

use cachelock::pb::{
    cache::{GetRequest, SetCondition, SetRequest},
    lock::AcquireRequest,
    ratelimit::CheckRequest,
    session::CreateRequest,
};

use crate::status::millis;

/// A Get of `key`.
pub fn get(key: &str) -> GetRequest {
    GetRequest { key: key.to_owned() }
}

/// A Set of `key` to `value` for a minute, whatever is there.
pub fn set(key: &str, value: &[u8]) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: value.to_vec(),
        ttl: Some(millis(60_000)),
        condition: SetCondition::Always as i32,
        lease_token: String::new(),
        stale_ttl: None,
        fence: None,
    }
}

/// An Acquire of `name` for `ttl_ms`, waiting up to `wait_ms` (0: not at all), by owner "test".
pub fn acquire(name: &str, ttl_ms: i64, wait_ms: i64) -> AcquireRequest {
    AcquireRequest {
        name: name.to_owned(),
        ttl: Some(millis(ttl_ms)),
        wait_timeout: (wait_ms > 0).then(|| millis(wait_ms)),
        owner: "test".to_owned(),
        request_id: String::new(),
        permits: 0,
    }
}

/// A Check of `limit` per `period_ms` on `key`, costing 1.
pub fn check(key: &str, limit: u64, period_ms: i64) -> CheckRequest {
    CheckRequest {
        key: key.to_owned(),
        limit,
        period: Some(millis(period_ms)),
        cost: None,
        algorithm: 0,
        on_unavailable: 0,
        wait: None,
        calendar: None,
        leased: false,
    }
}

/// A session for `user` with the service's default timeouts.
pub fn create(user: &str) -> CreateRequest {
    CreateRequest {
        user_id: user.to_owned(),
        ..CreateRequest::default()
    }
}
