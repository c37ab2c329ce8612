//! A rule's limit: how many requests per unit of time, counted by which algorithm.

use std::{fmt, time::Duration};

use crate::ratelimit::{Algorithm, Calendar, CalendarUnit, MAX_LIMIT};

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

    /// The calendar unit of the same name.
    pub fn calendar_unit(self) -> CalendarUnit {
        match self {
            Unit::Second => CalendarUnit::Second,
            Unit::Minute => CalendarUnit::Minute,
            Unit::Hour => CalendarUnit::Hour,
            Unit::Day => CalendarUnit::Day,
            Unit::Week => CalendarUnit::Week,
            Unit::Month => CalendarUnit::Month,
            Unit::Year => CalendarUnit::Year,
        }
    }

    /// The unit named `name`, in any case, as envoyproxy/ratelimit reads it.
    pub fn from_name(name: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|unit| unit.name().eq_ignore_ascii_case(name))
    }
}

/// How many requests a rule lets through per window, counted how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// 0 refuses every request that costs anything.
    pub requests_per_unit: u32,
    /// The unit of time.
    pub unit: Unit,
    /// How many units one window holds (at least 1).
    pub unit_multiplier: u32,
    pub algorithm: Algorithm,
    /// Fixed windows aligned to this calendar, instead of `unit_multiplier`
    /// units counted from 2024-01-01 UTC.
    pub calendar: Option<Calendar>,
    /// Decided from slices leased from Redis (see `CheckRequest.leased`).
    pub leased: bool,
}

impl Limit {
    /// The period in microseconds; 0 for a calendar window.
    pub fn period_micros(&self) -> u64 {
        if self.calendar.is_some() {
            return 0;
        }
        u64::try_from(self.window().as_micros()).unwrap_or(u64::MAX)
    }

    /// A window's length (a calendar's windows vary: its longest).
    pub fn window(&self) -> Duration {
        match &self.calendar {
            Some(calendar) => calendar.longest(),
            None => self.unit.period().saturating_mul(self.unit_multiplier.max(1)),
        }
    }

    /// The most requests per window the rate limiter can count exactly in
    /// `unit_multiplier` `unit`s.
    pub fn max_requests_per_unit(unit: Unit, unit_multiplier: u32) -> u64 {
        let period = unit.period().saturating_mul(unit_multiplier.max(1));
        MAX_LIMIT.min(u64::try_from(period.as_micros()).unwrap_or(u64::MAX))
    }

    /// How the limit reads in a description of the rules: "100 per 15 minute
    /// (fixed_window, calendar Europe/Berlin)".
    pub fn describe(&self) -> String {
        let leased = if self.leased { ", leased" } else { "" };
        let per = if self.unit_multiplier > 1 {
            format!("{} {}", self.unit_multiplier, self.unit.name())
        } else {
            self.unit.name().to_owned()
        };
        match &self.calendar {
            Some(calendar) => format!(
                "{} per {per} ({}, calendar {}{leased})",
                self.requests_per_unit,
                algorithm_name(self.algorithm),
                calendar.zone_name()
            ),
            None => format!(
                "{} per {per} ({}{leased})",
                self.requests_per_unit,
                algorithm_name(self.algorithm)
            ),
        }
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
