//! A rule's limit: how many requests per unit of time, counted by which algorithm.

use std::{fmt, time::Duration};

use crate::ratelimit::{Algorithm, MAX_LIMIT};

/// A rule's unit of time, with Envoy's numbering (`RateLimitResponse.RateLimit.Unit`
/// and `envoy.type.v3.RateLimitUnit` agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A second.
    Second,
    /// A minute.
    Minute,
    /// An hour.
    Hour,
    /// A day of 24 hours.
    Day,
    /// Seven days.
    Week,
    /// 30 days, as envoyproxy/ratelimit counts it.
    Month,
    /// 365 days, as envoyproxy/ratelimit counts it.
    Year,
}

impl Unit {
    const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The unit's length.
    pub fn period(self) -> Duration {
        const DAY: u64 = 24 * 60 * 60;
        Duration::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 60 * 60,
            Unit::Day => DAY,
            Unit::Week => 7 * DAY,
            Unit::Month => 30 * DAY,
            Unit::Year => 365 * DAY,
        })
    }

    /// Envoy's enum number.
    pub fn number(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// The unit of Envoy's enum number, if it is one.
    pub fn from_number(number: i32) -> Option<Unit> {
        Unit::ALL.into_iter().find(|unit| unit.number() == number)
    }

    /// The name configuration files use.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// The unit named `name`, in any case, as envoyproxy/ratelimit reads it.
    pub fn from_name(name: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|unit| unit.name().eq_ignore_ascii_case(name))
    }
}

/// How many requests a rule lets through per unit, counted how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// 0 refuses every request that costs anything.
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub algorithm: Algorithm,
}

impl Limit {
    /// The period in microseconds.
    pub fn period_micros(self) -> u64 {
        u64::try_from(self.unit.period().as_micros()).unwrap_or(u64::MAX)
    }

    /// The most requests per unit the rate limiter can count exactly in `unit`.
    pub fn max_requests_per_unit(unit: Unit) -> u64 {
        let period = u64::try_from(unit.period().as_micros()).unwrap_or(u64::MAX);
        MAX_LIMIT.min(period)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name an `algorithm:` field gives the algorithm.
pub fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::TokenBucket => "token_bucket",
        Algorithm::FixedWindow => "fixed_window",
        Algorithm::SlidingWindow => "sliding_window",
    }
}
