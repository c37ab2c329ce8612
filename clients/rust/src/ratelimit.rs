//! Rate limits: decisions counted in Redis, shared by every caller of a key.

use std::time::Duration;

use crate::{
    Client, Error,
    client::Idempotent,
    pb::ratelimit::{self as pb, rate_limit_service_client::RateLimitServiceClient},
    time::{duration_from, to_proto},
};

/// How a limit counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// A token bucket (GCRA): `limit` a `period`, smoothly refilled.
    #[default]
    TokenBucket,
    /// A fixed window of `period`.
    FixedWindow,
    /// A sliding window of `period`.
    SlidingWindow,
}

impl Algorithm {
    fn to_proto(self) -> i32 {
        match self {
            Algorithm::TokenBucket => pb::Algorithm::TokenBucket,
            Algorithm::FixedWindow => pb::Algorithm::FixedWindow,
            Algorithm::SlidingWindow => pb::Algorithm::SlidingWindow,
        }
        .into()
    }
}

/// What to answer when Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutagePolicy {
    /// Allow.
    FailOpen,
    /// Deny.
    FailClosed,
}

fn outage_to_proto(policy: Option<OutagePolicy>) -> i32 {
    match policy {
        None => pb::OutagePolicy::Unspecified,
        Some(OutagePolicy::FailOpen) => pb::OutagePolicy::FailOpen,
        Some(OutagePolicy::FailClosed) => pb::OutagePolicy::FailClosed,
    }
    .into()
}

/// The unit of a [`Calendar`] window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalendarUnit {
    /// Seconds; a multiple divides 60.
    Second,
    /// Minutes; a multiple divides 60.
    Minute,
    /// Hours; a multiple divides 24.
    Hour,
    /// Days, counted from the 1st of each month.
    Day,
    /// Weeks from Monday.
    Week,
    /// Months; a multiple divides 12.
    Month,
    /// Years.
    Year,
}

/// Fixed windows aligned to the calendar of an IANA time zone: "a month in
/// Berlin" resets at midnight on the 1st, Berlin time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calendar {
    /// The unit.
    pub unit: CalendarUnit,
    /// How many units a window holds (0 or 1: one).
    pub multiplier: u32,
    /// The IANA time zone; empty: UTC.
    pub time_zone: String,
}

impl Calendar {
    /// Windows of one `unit` in UTC.
    pub fn new(unit: CalendarUnit) -> Calendar {
        Calendar {
            unit,
            multiplier: 1,
            time_zone: String::new(),
        }
    }

    /// Windows of `multiplier` units.
    #[must_use]
    pub fn times(mut self, multiplier: u32) -> Calendar {
        self.multiplier = multiplier;
        self
    }

    /// In the IANA time zone `time_zone` ("Europe/Berlin").
    #[must_use]
    pub fn in_zone(mut self, time_zone: &str) -> Calendar {
        time_zone.clone_into(&mut self.time_zone);
        self
    }

    fn to_proto(&self) -> pb::CalendarWindow {
        pb::CalendarWindow {
            unit: match self.unit {
                CalendarUnit::Second => pb::CalendarUnit::Second,
                CalendarUnit::Minute => pb::CalendarUnit::Minute,
                CalendarUnit::Hour => pb::CalendarUnit::Hour,
                CalendarUnit::Day => pb::CalendarUnit::Day,
                CalendarUnit::Week => pb::CalendarUnit::Week,
                CalendarUnit::Month => pb::CalendarUnit::Month,
                CalendarUnit::Year => pb::CalendarUnit::Year,
            }
            .into(),
            multiplier: self.multiplier,
            time_zone: self.time_zone.clone(),
        }
    }
}

/// A limit: `limit` units a `period`, or a calendar window.
#[derive(Clone, Debug)]
pub struct Limit {
    /// How many units a period.
    pub limit: u64,
    /// The period (unused with a calendar).
    pub period: Duration,
    /// What this call costs; `None`: 1.
    pub cost: Option<u64>,
    /// How it counts.
    pub algorithm: Algorithm,
    /// Fixed windows on this calendar instead of a period.
    pub calendar: Option<Calendar>,
    /// Decided from a slice the service leases from Redis, in memory while it
    /// lasts: for hot keys ([`Limit::leased`]).
    pub leased: bool,
}

impl Limit {
    /// `limit` units a `period`, by token bucket, each call costing 1.
    pub fn per(limit: u64, period: Duration) -> Limit {
        Limit {
            limit,
            period,
            cost: None,
            algorithm: Algorithm::TokenBucket,
            calendar: None,
            leased: false,
        }
    }

    /// `limit` units a window of `calendar`, each call costing 1.
    pub fn per_calendar(limit: u64, calendar: Calendar) -> Limit {
        Limit {
            limit,
            period: Duration::ZERO,
            cost: None,
            algorithm: Algorithm::FixedWindow,
            calendar: Some(calendar),
            leased: false,
        }
    }

    /// The period as the protocol takes it: none with a calendar.
    fn period_proto(&self) -> Option<prost_types::Duration> {
        self.calendar.is_none().then(|| to_proto(self.period))
    }

    fn calendar_proto(&self) -> Option<pb::CalendarWindow> {
        self.calendar.as_ref().map(Calendar::to_proto)
    }

    /// Each call costs `cost` units.
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Limit {
        self.cost = Some(cost);
        self
    }

    /// Decided by the service from a slice of the limit it leases from Redis:
    /// one Redis round trip per slice instead of per call, never admitting more
    /// than the limit (token buckets and fixed windows; checks only).
    #[must_use]
    pub fn leased(mut self) -> Limit {
        self.leased = true;
        self
    }

    /// Counted by `algorithm`.
    #[must_use]
    pub fn algorithm(mut self, algorithm: Algorithm) -> Limit {
        self.algorithm = algorithm;
        self
    }
}

/// A decision.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Whether the call may go ahead.
    pub allowed: bool,
    /// The limit.
    pub limit: u64,
    /// The units left.
    pub remaining: u64,
    /// When the limit is whole again.
    pub reset_after: Duration,
    /// When denied: how long until this cost would be allowed.
    pub retry_after: Duration,
    /// Decided by the outage policy, Redis being unreachable.
    pub decided_by_outage_policy: bool,
    /// How long the answer waited for the cost to fit ([`RateLimits::check_waiting`]).
    pub waited: Duration,
}

/// A reservation of [`RateLimits::reserve`]: the estimate counted against the
/// limit, to settle with [`RateLimits::commit`] or [`RateLimits::cancel`].
#[derive(Clone, Debug)]
pub struct Reservation {
    /// The key reserved on.
    pub key: String,
    /// The limit, its cost the estimate.
    pub limit: Limit,
    /// Whether the estimate fits and was counted.
    pub allowed: bool,
    /// The reservation's id (empty when not allowed).
    pub id: String,
    /// Units left, after the estimate when allowed.
    pub remaining: u64,
    /// When the limit is whole again.
    pub reset_after: Duration,
    /// When not allowed: how long until the estimate would fit.
    pub retry_after: Option<Duration>,
}

/// How a reservation was settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// False when the reservation is unknown: it expired, settled at its estimate.
    pub found: bool,
    /// What it cost in the end.
    pub charged: u64,
    /// What was given back of the estimate.
    pub refunded: u64,
    /// Units left now.
    pub remaining: u64,
    /// When the limit is whole again.
    pub reset_after: Duration,
    /// Settled before this call (a repeat, or another Commit or Cancel): the
    /// figures are that settlement's.
    pub settled_before: bool,
}

impl Settlement {
    /// The fields Commit and Cancel answer alike.
    fn of(
        found: bool,
        charged: u64,
        refunded: u64,
        remaining: u64,
        reset_after: Option<prost_types::Duration>,
        settled_before: bool,
    ) -> Settlement {
        Settlement {
            found,
            charged,
            refunded,
            remaining,
            reset_after: duration_from(reset_after),
            settled_before,
        }
    }
}

/// Where a limit stands after [`RateLimits::report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    /// Units left now: 0 in debt.
    pub remaining: u64,
    /// When the limit is whole again.
    pub reset_after: Duration,
    /// How long until a cost of 1 fits.
    pub retry_after: Duration,
}

fn limit_to_proto(key: &str, limit: &Limit, cost: u64) -> pb::Limit {
    pb::Limit {
        key: key.to_owned(),
        limit: limit.limit,
        period: limit.period_proto(),
        cost: Some(cost),
        algorithm: limit.algorithm.to_proto(),
        calendar: limit.calendar_proto(),
        leased: false,
    }
}

/// The rate limit calls. Get one from [`Client::rate_limits`].
#[derive(Clone, Debug)]
pub struct RateLimits {
    client: Client,
}

impl Client {
    /// Rate limits.
    pub fn rate_limits(&self) -> RateLimits {
        RateLimits { client: self.clone() }
    }
}

impl RateLimits {
    fn stub(&self) -> RateLimitServiceClient<tonic::transport::Channel> {
        RateLimitServiceClient::new(self.client.channel.clone())
    }

    /// Counts a call against `limit` of `key` and decides it. Never repeated by
    /// the library: a repeat would count twice.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with (a denial is not one: `allowed` is false).
    pub async fn check(
        &self,
        key: &str,
        limit: &Limit,
        on_unavailable: Option<OutagePolicy>,
    ) -> Result<Decision, Error> {
        self.check_within(key, limit, Duration::ZERO, on_unavailable).await
    }

    /// As [`RateLimits::check`], but waits up to `wait` for the cost to fit:
    /// answered allowed at the moment it fits, in the order callers arrived
    /// across every instance, or at once refused when it cannot fit within the
    /// wait. For token buckets and fixed (and calendar) windows.
    ///
    /// # Errors
    /// As [`RateLimits::check`].
    pub async fn check_waiting(
        &self,
        key: &str,
        limit: &Limit,
        wait: Duration,
        on_unavailable: Option<OutagePolicy>,
    ) -> Result<Decision, Error> {
        self.check_within(key, limit, wait, on_unavailable).await
    }

    async fn check_within(
        &self,
        key: &str,
        limit: &Limit,
        wait: Duration,
        on_unavailable: Option<OutagePolicy>,
    ) -> Result<Decision, Error> {
        let request = pb::CheckRequest {
            key: key.to_owned(),
            limit: limit.limit,
            period: limit.period_proto(),
            cost: limit.cost,
            algorithm: limit.algorithm.to_proto(),
            on_unavailable: outage_to_proto(on_unavailable),
            wait: (!wait.is_zero()).then(|| to_proto(wait)),
            calendar: limit.calendar_proto(),
            leased: limit.leased,
        };
        let answer = self
            .client
            .unary("ratelimit.Check", Idempotent::No, wait, request, |r| {
                let mut stub = self.stub();
                async move { stub.check(r).await }
            })
            .await?;
        Ok(Decision {
            allowed: answer.allowed,
            limit: answer.limit,
            remaining: answer.remaining,
            reset_after: duration_from(answer.reset_after),
            retry_after: duration_from(answer.retry_after),
            decided_by_outage_policy: answer.decided_by_outage_policy,
            waited: duration_from(answer.waited),
        })
    }

    /// Counts a call against every `(key, limit)` at once: allowed only when
    /// every limit allows it, and then counted against all of them; a denial
    /// counts against none. The decisions come in the order asked. Never
    /// repeated by the library.
    ///
    /// # Errors
    /// As [`RateLimits::check`].
    pub async fn check_many(
        &self,
        limits: &[(&str, Limit)],
        on_unavailable: Option<OutagePolicy>,
    ) -> Result<(bool, Vec<Decision>), Error> {
        let request = pb::CheckManyRequest {
            limits: limits
                .iter()
                .map(|(key, limit)| pb::Limit {
                    key: (*key).to_owned(),
                    limit: limit.limit,
                    period: limit.period_proto(),
                    cost: limit.cost,
                    algorithm: limit.algorithm.to_proto(),
                    calendar: limit.calendar_proto(),
                    leased: limit.leased,
                })
                .collect(),
            on_unavailable: outage_to_proto(on_unavailable),
        };
        let answer = self
            .client
            .unary("ratelimit.CheckMany", Idempotent::No, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.check_many(r).await }
            })
            .await?;
        let decisions = answer
            .decisions
            .into_iter()
            .map(|decision| Decision {
                allowed: decision.allowed,
                limit: decision.limit,
                remaining: decision.remaining,
                reset_after: duration_from(decision.reset_after),
                retry_after: duration_from(decision.retry_after),
                decided_by_outage_policy: answer.decided_by_outage_policy,
                waited: Duration::ZERO,
            })
            .collect();
        Ok((answer.allowed, decisions))
    }

    /// Counts `limit`'s cost (the estimate) against `key` as a Check would, and
    /// when it fits returns a reservation to settle once the actual cost is
    /// known; unsettled, it settles at its estimate after `ttl` (`None`: 1
    /// minute). Never repeated by the library: a repeat would count twice.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with.
    pub async fn reserve(&self, key: &str, limit: &Limit, ttl: Option<Duration>) -> Result<Reservation, Error> {
        let request = pb::ReserveRequest {
            limit: Some(limit_to_proto(key, limit, limit.cost.unwrap_or(1))),
            reservation_ttl: ttl.map(to_proto),
        };
        let answer = self
            .client
            .unary("ratelimit.Reserve", Idempotent::No, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.reserve(r).await }
            })
            .await?;
        Ok(Reservation {
            key: key.to_owned(),
            limit: limit.clone(),
            allowed: answer.allowed,
            id: answer.reservation_id,
            remaining: answer.remaining,
            reset_after: duration_from(answer.reset_after),
            retry_after: answer.retry_after.map(|retry| duration_from(Some(retry))),
        })
    }

    /// Settles `reservation` at its `actual` cost: the difference refunded, or
    /// the excess charged (beyond the limit only with `allow_debt`). Settling
    /// is once, so the library repeats it where the server advises.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with, after the retries the policy allows.
    pub async fn commit(&self, reservation: &Reservation, actual: u64, allow_debt: bool) -> Result<Settlement, Error> {
        let request = pb::CommitRequest {
            limit: Some(limit_to_proto(&reservation.key, &reservation.limit, actual)),
            reservation_id: reservation.id.clone(),
            allow_debt,
        };
        let answer = self
            .client
            .unary("ratelimit.Commit", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.commit(r).await }
            })
            .await?;
        Ok(Settlement::of(
            answer.found,
            answer.charged,
            answer.refunded,
            answer.remaining,
            answer.reset_after,
            answer.settled_before,
        ))
    }

    /// Settles `reservation` at no cost: its estimate is refunded.
    ///
    /// # Errors
    /// As [`RateLimits::commit`].
    pub async fn cancel(&self, reservation: &Reservation) -> Result<Settlement, Error> {
        let request = pb::CancelRequest {
            limit: Some(limit_to_proto(&reservation.key, &reservation.limit, 0)),
            reservation_id: reservation.id.clone(),
        };
        let answer = self
            .client
            .unary("ratelimit.Cancel", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.cancel(r).await }
            })
            .await?;
        Ok(Settlement::of(
            answer.found,
            answer.charged,
            answer.refunded,
            answer.remaining,
            answer.reset_after,
            answer.settled_before,
        ))
    }

    /// Counts `limit`'s cost against `key` after the fact, without deciding:
    /// past the limit it is a debt the next check waits off. Never repeated by
    /// the library.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with.
    pub async fn report(&self, key: &str, limit: &Limit) -> Result<Reported, Error> {
        let request = pb::ReportRequest {
            limit: Some(limit_to_proto(key, limit, limit.cost.unwrap_or(1))),
        };
        let answer = self
            .client
            .unary("ratelimit.Report", Idempotent::No, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.report(r).await }
            })
            .await?;
        Ok(Reported {
            remaining: answer.remaining,
            reset_after: duration_from(answer.reset_after),
            retry_after: duration_from(answer.retry_after),
        })
    }

    /// Forgets what `key` has counted under `limit`; whether anything was counted.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with, after the retries the policy allows.
    pub async fn reset(&self, key: &str, limit: &Limit) -> Result<bool, Error> {
        let request = pb::ResetRequest {
            key: key.to_owned(),
            algorithm: limit.algorithm.to_proto(),
            limit: limit.limit,
            period: limit.period_proto(),
            calendar: limit.calendar_proto(),
        };
        let answer = self
            .client
            .unary("ratelimit.Reset", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.reset(r).await }
            })
            .await?;
        Ok(answer.existed)
    }
}
