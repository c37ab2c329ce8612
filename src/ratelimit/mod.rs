//! `cachelock.ratelimit.v1.RateLimitService`: validates each request and
//! decides it through the [`Limiter`] it shares with Envoy's API (`rls`).

mod calendar;
mod lease;
mod limiter;
mod store;

use std::{collections::HashSet, sync::Arc, time::Duration};

use tonic::{Request, Response, Status};

pub use calendar::{Calendar, CalendarError, CalendarUnit};
pub use limiter::{Limiter, MAX_LIMIT, Outcome, RateLimitSettings, Waiting};
pub use store::{Algorithm, Budget, BudgetAnswer, Counting, Decision, LimitCheck, Settled, invocation, scripts};

use crate::{
    auth::Caller,
    config::OutagePolicy,
    error::Error,
    ids::random_token,
    pb::ratelimit::{
        self as pb, CancelRequest, CancelResponse, CheckManyRequest, CheckManyResponse, CheckRequest, CheckResponse,
        CommitRequest, CommitResponse, LimitDecision, ReportRequest, ReportResponse, ReserveRequest, ReserveResponse,
        ResetRequest, ResetResponse, rate_limit_service_server::RateLimitService,
    },
    request::{cross_slot, deadline, positive_duration},
    time::duration_to_proto,
};

/// The shortest period.
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// How long a reservation waits for Commit or Cancel when the request says nothing.
const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(60);
/// The longest a reservation may wait.
const MAX_RESERVATION_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest reservation id a caller can hand back (ours are 22 characters).
const MAX_RESERVATION_ID_BYTES: usize = 64;
/// Longest time-zone name (the longest IANA name has 32 bytes).
const MAX_TIME_ZONE_BYTES: usize = 64;

/// The gRPC handlers of the rate limiter.
pub struct RateLimitApi {
    limiter: Arc<Limiter>,
}

impl RateLimitApi {
    /// Handlers deciding through `limiter`.
    pub fn new(limiter: Arc<Limiter>) -> RateLimitApi {
        RateLimitApi { limiter }
    }

    /// Validates one limit; `field` is the prefix of its fields' names ("" or "limits[2].").
    fn limit_check<'a>(&self, field: &str, asked: Asked<'a>) -> Result<LimitCheck<'a>, Error> {
        let key = self.limiter.limits().key(&format!("{field}key"), asked.key)?;
        let period_field = format!("{field}period");
        let (period_micros, calendar) = match (asked.period, asked.calendar) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    format!("{field}calendar"),
                    "cannot be given with a period: give one of them",
                ));
            }
            (None, None) => return Err(Error::invalid(&period_field, "is required, unless a calendar is given")),
            (None, Some(calendar)) => (0, Some(self.calendar(field, calendar)?)),
            (Some(period), None) => {
                let period = positive_duration(&period_field, period)?;
                if period < MIN_PERIOD || period > self.limiter.settings().max_period {
                    return Err(Error::invalid(
                        period_field,
                        format!(
                            "must be between 1ms and {}",
                            humantime::format_duration(self.limiter.settings().max_period)
                        ),
                    ));
                }
                (u64::try_from(period.as_micros()).unwrap_or(u64::MAX), None)
            }
        };
        let limit = asked.limit;
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Error::invalid(
                format!("{field}limit"),
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        if calendar.is_none() && limit > period_micros {
            return Err(Error::invalid(
                format!("{field}limit"),
                "must be at most one per microsecond of the period",
            ));
        }
        let cost = asked.cost.unwrap_or(1);
        if cost > MAX_LIMIT {
            return Err(Error::invalid(
                format!("{field}cost"),
                format!("must be at most {MAX_LIMIT}"),
            ));
        }
        let algorithm = match (pb::Algorithm::try_from(asked.algorithm), &calendar) {
            (Ok(pb::Algorithm::Unspecified | pb::Algorithm::FixedWindow), Some(_)) => Algorithm::FixedWindow,
            (Ok(_), Some(_)) => {
                return Err(Error::invalid(
                    format!("{field}algorithm"),
                    "a calendar window counts as ALGORITHM_FIXED_WINDOW: leave it unset or give that",
                ));
            }
            (Ok(pb::Algorithm::Unspecified | pb::Algorithm::TokenBucket), None) => Algorithm::TokenBucket,
            (Ok(pb::Algorithm::FixedWindow), None) => Algorithm::FixedWindow,
            (Ok(pb::Algorithm::SlidingWindow), None) => Algorithm::SlidingWindow,
            (Err(_), _) => {
                return Err(Error::invalid(
                    format!("{field}algorithm"),
                    format!("{} is not an Algorithm", asked.algorithm),
                ));
            }
        };
        Ok(LimitCheck {
            key,
            algorithm,
            limit,
            period_micros,
            cost,
            counting: Counting::Together,
            calendar,
        })
    }

    /// Validates a calendar window; `field` as for [`RateLimitApi::limit_check`].
    fn calendar(&self, field: &str, asked: &pb::CalendarWindow) -> Result<Calendar, Error> {
        let unit = match pb::CalendarUnit::try_from(asked.unit) {
            Ok(pb::CalendarUnit::Unspecified) => {
                return Err(Error::invalid(format!("{field}calendar.unit"), "is required"));
            }
            Ok(pb::CalendarUnit::Second) => CalendarUnit::Second,
            Ok(pb::CalendarUnit::Minute) => CalendarUnit::Minute,
            Ok(pb::CalendarUnit::Hour) => CalendarUnit::Hour,
            Ok(pb::CalendarUnit::Day) => CalendarUnit::Day,
            Ok(pb::CalendarUnit::Week) => CalendarUnit::Week,
            Ok(pb::CalendarUnit::Month) => CalendarUnit::Month,
            Ok(pb::CalendarUnit::Year) => CalendarUnit::Year,
            Err(_) => {
                return Err(Error::invalid(
                    format!("{field}calendar.unit"),
                    format!("{} is not a CalendarUnit", asked.unit),
                ));
            }
        };
        if asked.time_zone.len() > MAX_TIME_ZONE_BYTES {
            return Err(Error::invalid(
                format!("{field}calendar.time_zone"),
                format!("must be at most {MAX_TIME_ZONE_BYTES} bytes"),
            ));
        }
        let calendar = Calendar::new(unit, asked.multiplier, &asked.time_zone).map_err(|error| {
            let part = match error {
                CalendarError::Multiplier(_) => "multiplier",
                CalendarError::TimeZone(_) => "time_zone",
            };
            Error::invalid(format!("{field}calendar.{part}"), error.to_string())
        })?;
        let max_period = self.limiter.settings().max_period;
        if calendar.longest() > max_period {
            return Err(Error::invalid(
                format!("{field}calendar"),
                format!(
                    "has windows of up to {}, longer than the longest period this service takes ({}, --ratelimit-max-period)",
                    humantime::format_duration(calendar.longest()),
                    humantime::format_duration(max_period)
                ),
            ));
        }
        Ok(calendar)
    }

    /// The limits of a CheckMany, each checked, none repeated.
    fn checks<'a>(&self, request: &'a CheckManyRequest) -> Result<Vec<LimitCheck<'a>>, Error> {
        if request.limits.is_empty() {
            return Err(Error::invalid("limits", "must not be empty"));
        }
        if request.limits.len() > self.limiter.settings().max_batch {
            return Err(Error::invalid(
                "limits",
                format!(
                    "has {} limits, above the limit of {} (--ratelimit-max-batch)",
                    request.limits.len(),
                    self.limiter.settings().max_batch
                ),
            ));
        }
        let checks = request
            .limits
            .iter()
            .enumerate()
            .map(|(i, limit)| self.limit_check(&format!("limits[{i}]."), Asked::from(limit)))
            .collect::<Result<Vec<_>, Error>>()?;
        let mut seen = HashSet::with_capacity(checks.len());
        for (i, check) in checks.iter().enumerate() {
            // The script decides the limits one after the other, so a repeated limit
            // would be charged twice: almost always a caller's mistake, refused
            // rather than guessed at. (Envoy's API means it: there, a counter two
            // descriptors name is charged both costs.)
            if !seen.insert(check.identity()) {
                return Err(Error::invalid(
                    format!("limits[{i}]"),
                    "repeats the key, algorithm, limit and period of an earlier limit",
                ));
            }
        }
        Ok(checks)
    }

    /// Counts a token-budget operation's result.
    fn count(&self, result: &'static str) {
        self.limiter
            .meter()
            .record(|metrics| crate::telemetry::Metrics::count(&metrics.ratelimit_budget, result));
    }

    /// The limit of a budget request, checked; its cost `default_cost` when
    /// unset, and at least `min_cost`.
    fn budget_limit<'a>(
        &self,
        limit: Option<&'a pb::Limit>,
        default_cost: u64,
        min_cost: u64,
    ) -> Result<LimitCheck<'a>, Error> {
        let limit = limit.ok_or_else(|| Error::invalid("limit", "is required"))?;
        let check = self.limit_check(
            "limit.",
            Asked {
                cost: Some(limit.cost.unwrap_or(default_cost)),
                ..Asked::from(limit)
            },
        )?;
        if check.cost < min_cost {
            return Err(Error::invalid("limit.cost", format!("must be at least {min_cost}")));
        }
        Ok(check)
    }

    /// Settles a reservation (Commit or Cancel), counts how, and maps the answer.
    async fn settle(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        space: &crate::redis::KeySpace,
        check: &LimitCheck<'_>,
        operation: Budget<'_>,
    ) -> Result<Option<Settled>, Error> {
        let deadline = deadline(metadata, self.limiter.settings().operation_timeout)?;
        let settling = if matches!(operation, Budget::Cancel { .. }) {
            "cancelled"
        } else {
            "committed"
        };
        match self.limiter.store().budget(space, check, operation, deadline).await? {
            BudgetAnswer::Settled(settled) => {
                self.count(match &settled {
                    Some(settled) if settled.before => "already_settled",
                    Some(_) => settling,
                    None => "unknown",
                });
                Ok(settled)
            }
            BudgetAnswer::OtherLimit => Err(Error::invalid(
                "reservation_id",
                "was reserved under another limit: give the key, limit, period and algorithm it was reserved with",
            )),
            _ => Err(Error::Internal("a settlement answered something else".to_owned())),
        }
    }

    /// A Check's wait, checked: `None` for none.
    fn wait(&self, wait: Option<&prost_types::Duration>, check: &LimitCheck<'_>) -> Result<Option<Duration>, Error> {
        let Some(wait) = wait else {
            return Ok(None);
        };
        let wait = positive_duration("wait", wait)?;
        if wait.is_zero() {
            return Ok(None);
        }
        let max_wait = self.limiter.settings().max_wait;
        if wait > max_wait {
            return Err(Error::invalid(
                "wait",
                format!(
                    "must be at most {} (--ratelimit-max-wait)",
                    humantime::format_duration(max_wait)
                ),
            ));
        }
        if check.algorithm == Algorithm::SlidingWindow {
            return Err(Error::invalid(
                "wait",
                "is for ALGORITHM_TOKEN_BUCKET and ALGORITHM_FIXED_WINDOW: a sliding window's units come back gradually, with no moment to wait for",
            ));
        }
        Ok(Some(wait))
    }

    /// Decides a Check that may wait: `None` when no waiter's place is free, so
    /// that it is decided at once instead.
    async fn check_waiting(
        &self,
        space: &crate::redis::KeySpace,
        metadata: &tonic::metadata::MetadataMap,
        check: &LimitCheck<'_>,
        wait: Duration,
        policy: OutagePolicy,
    ) -> Result<Option<CheckResponse>, Status> {
        let Some(waiting) = self.limiter.waiting(space, metadata, check, wait, policy).await? else {
            return Ok(None);
        };
        Ok(Some(match waiting {
            Waiting::Decided { decision, waited } => decided(check, &decision, Some(waited)),
            Waiting::Policy(allowed) => self.policy_answer(check, allowed),
        }))
    }

    /// The answer of the outage policy.
    fn policy_answer(&self, check: &LimitCheck<'_>, allowed: bool) -> CheckResponse {
        CheckResponse {
            allowed,
            limit: check.limit,
            remaining: 0,
            reset_after: Some(duration_to_proto(Duration::ZERO)),
            retry_after: self.limiter.policy_retry_after(allowed),
            decided_by_outage_policy: true,
            waited: None,
        }
    }

    fn policy(&self, requested: i32) -> Result<OutagePolicy, Error> {
        match pb::OutagePolicy::try_from(requested) {
            Ok(pb::OutagePolicy::Unspecified) => Ok(self.limiter.settings().on_unavailable),
            Ok(pb::OutagePolicy::FailOpen) => Ok(OutagePolicy::FailOpen),
            Ok(pb::OutagePolicy::FailClosed) => Ok(OutagePolicy::FailClosed),
            Err(_) => Err(Error::invalid(
                "on_unavailable",
                format!("{requested} is not an OutagePolicy"),
            )),
        }
    }
}

/// One limit as a request gives it, before it is checked.
struct Asked<'a> {
    key: &'a str,
    limit: u64,
    period: Option<&'a prost_types::Duration>,
    cost: Option<u64>,
    algorithm: i32,
    calendar: Option<&'a pb::CalendarWindow>,
}

impl<'a> From<&'a pb::Limit> for Asked<'a> {
    fn from(limit: &'a pb::Limit) -> Asked<'a> {
        Asked {
            key: &limit.key,
            limit: limit.limit,
            period: limit.period.as_ref(),
            cost: limit.cost,
            algorithm: limit.algorithm,
            calendar: limit.calendar.as_ref(),
        }
    }
}

impl<'a> From<&'a CheckRequest> for Asked<'a> {
    fn from(request: &'a CheckRequest) -> Asked<'a> {
        Asked {
            key: &request.key,
            limit: request.limit,
            period: request.period.as_ref(),
            cost: request.cost,
            algorithm: request.algorithm,
            calendar: request.calendar.as_ref(),
        }
    }
}

/// Checks that a leased limit is one leases serve.
fn leased(field: &str, leased: bool, check: &LimitCheck<'_>) -> Result<(), Error> {
    if leased && check.algorithm == Algorithm::SlidingWindow {
        return Err(Error::invalid(
            format!("{field}leased"),
            "is for ALGORITHM_TOKEN_BUCKET and ALGORITHM_FIXED_WINDOW",
        ));
    }
    Ok(())
}

fn reservation_id(id: &str) -> Result<&str, Error> {
    if id.is_empty() || id.len() > MAX_RESERVATION_ID_BYTES {
        return Err(Error::invalid(
            "reservation_id",
            "is not a reservation this service made",
        ));
    }
    Ok(id)
}

/// The answer to a Check that Redis decided; `waited` when it asked to wait.
fn decided(check: &LimitCheck<'_>, decision: &Decision, waited: Option<Duration>) -> CheckResponse {
    CheckResponse {
        allowed: decision.allowed,
        limit: check.limit,
        remaining: decision.remaining,
        reset_after: Some(duration_to_proto(decision.reset_after)),
        retry_after: retry_after(decision),
        decided_by_outage_policy: false,
        waited: waited.map(duration_to_proto),
    }
}

fn retry_after(decision: &Decision) -> Option<prost_types::Duration> {
    decision.retry_after.map(duration_to_proto)
}

#[tonic::async_trait]
impl RateLimitService for RateLimitApi {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = Caller::in_extensions(&extensions)?;
        // A limiter's state, when the key is new.
        caller.charge(&request, 1)?;
        let space = caller.space.clone();
        let check = self.limit_check("", Asked::from(&request))?;
        let wait = self.wait(request.wait.as_ref(), &check)?;
        leased("", request.leased, &check)?;
        if request.leased && wait.is_some() {
            return Err(Error::invalid("wait", "cannot be given with leased: a leased check answers at once").into());
        }
        let policy = self.policy(request.on_unavailable)?;
        if let Some(wait) = wait
            && let Some(response) = self.check_waiting(&space, &metadata, &check, wait, policy).await?
        {
            return Ok(Response::new(response));
        }
        let checks = std::slice::from_ref(&check);
        let outcome = if request.leased {
            self.limiter.decide_leased(&space, &metadata, checks, policy).await?
        } else {
            self.limiter.decide(&space, &metadata, checks, policy).await?
        };
        let response = match outcome {
            Outcome::Decided(decisions) => {
                let decision = decisions
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Internal("a rate-limit check answered no decision".to_owned()))?;
                decided(&check, &decision, None)
            }
            Outcome::Policy(allowed) => self.policy_answer(&check, allowed),
        };
        Ok(Response::new(response))
    }

    async fn check_many(&self, request: Request<CheckManyRequest>) -> Result<Response<CheckManyResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = Caller::in_extensions(&extensions)?;
        caller.charge(&request, request.limits.len())?;
        let space = caller.space.clone();
        let checks = self.checks(&request)?;
        if let Some((first, other)) = self.limiter.store().cross_slot(&space, &checks) {
            let keys: Vec<&str> = checks.iter().map(|check| check.key).collect();
            return Err(cross_slot("limits", "CheckMany", &keys, first, other).into());
        }
        let policy = self.policy(request.on_unavailable)?;
        let leased_limits = request.limits.iter().filter(|limit| limit.leased).count();
        if leased_limits != 0 && leased_limits != request.limits.len() {
            let first = request
                .limits
                .iter()
                .position(|limit| limit.leased != request.limits[0].leased);
            return Err(Error::invalid(
                format!("limits[{}].leased", first.unwrap_or(0)),
                "every limit of a CheckMany is leased or none is",
            )
            .into());
        }
        for (i, (limit, check)) in request.limits.iter().zip(&checks).enumerate() {
            leased(&format!("limits[{i}]."), limit.leased, check)?;
        }
        let outcome = if leased_limits > 0 {
            self.limiter.decide_leased(&space, &metadata, &checks, policy).await?
        } else {
            self.limiter.decide(&space, &metadata, &checks, policy).await?
        };
        let response = match outcome {
            Outcome::Decided(decisions) => {
                let allowed = decisions.iter().all(|decision| decision.allowed);
                let retry = if allowed {
                    Some(Duration::ZERO)
                } else {
                    decisions
                        .iter()
                        .filter(|decision| !decision.allowed)
                        .map(|decision| decision.retry_after)
                        .try_fold(Duration::ZERO, |longest, retry| retry.map(|retry| longest.max(retry)))
                };
                CheckManyResponse {
                    allowed,
                    decisions: checks
                        .iter()
                        .zip(&decisions)
                        .map(|(check, decision)| LimitDecision {
                            key: check.key.to_owned(),
                            allowed: decision.allowed,
                            limit: check.limit,
                            remaining: decision.remaining,
                            reset_after: Some(duration_to_proto(decision.reset_after)),
                            retry_after: retry_after(decision),
                        })
                        .collect(),
                    retry_after: retry.map(duration_to_proto),
                    decided_by_outage_policy: false,
                }
            }
            Outcome::Policy(allowed) => CheckManyResponse {
                allowed,
                decisions: Vec::new(),
                retry_after: self.limiter.policy_retry_after(allowed),
                decided_by_outage_policy: true,
            },
        };
        Ok(Response::new(response))
    }

    async fn reset(&self, request: Request<ResetRequest>) -> Result<Response<ResetResponse>, Status> {
        // Reset has no fallback: it gets the ordinary operation timeout.
        let deadline = deadline(request.metadata(), self.limiter.settings().operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let check = self.limit_check(
            "",
            Asked {
                key: &request.key,
                limit: request.limit,
                period: request.period.as_ref(),
                cost: None,
                algorithm: pb::Algorithm::Unspecified as i32,
                calendar: request.calendar.as_ref(),
            },
        )?;
        let algorithms: &[Algorithm] = match pb::Algorithm::try_from(request.algorithm) {
            Ok(pb::Algorithm::Unspecified | pb::Algorithm::FixedWindow) if check.calendar.is_some() => {
                &[Algorithm::FixedWindow]
            }
            Ok(_) if check.calendar.is_some() => {
                let reason = "a calendar window counts as ALGORITHM_FIXED_WINDOW: leave it unset or give that";
                return Err(Error::invalid("algorithm", reason).into());
            }
            Ok(pb::Algorithm::Unspecified) => &Algorithm::ALL,
            Ok(pb::Algorithm::TokenBucket) => &[Algorithm::TokenBucket],
            Ok(pb::Algorithm::FixedWindow) => &[Algorithm::FixedWindow],
            Ok(pb::Algorithm::SlidingWindow) => &[Algorithm::SlidingWindow],
            Err(_) => {
                let reason = format!("{} is not an Algorithm", request.algorithm);
                return Err(Error::invalid("algorithm", reason).into());
            }
        };
        let existed = self.limiter.store().reset(&space, &check, algorithms, deadline).await?;
        Ok(Response::new(ResetResponse { existed }))
    }

    async fn reserve(&self, request: Request<ReserveRequest>) -> Result<Response<ReserveResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = Caller::in_extensions(&extensions)?;
        // A limiter's state and a reservation's record.
        caller.charge(&request, 2)?;
        let space = caller.space.clone();
        let check = self.budget_limit(request.limit.as_ref(), 1, 1)?;
        let ttl = match request.reservation_ttl.as_ref() {
            None => DEFAULT_RESERVATION_TTL,
            Some(ttl) => positive_duration("reservation_ttl", ttl)?,
        };
        if ttl < Duration::from_millis(1) || ttl > MAX_RESERVATION_TTL {
            return Err(Error::invalid("reservation_ttl", "must be between 1ms and 1 day").into());
        }
        let id = random_token()?;
        let deadline = deadline(&metadata, self.limiter.settings().operation_timeout)?;
        let operation = Budget::Reserve { id: &id, ttl };
        let decision = match self.limiter.store().budget(&space, &check, operation, deadline).await? {
            BudgetAnswer::Reserved(decision) => decision,
            BudgetAnswer::NotDecided => return Err(Error::OutOfMemory.into()),
            _ => return Err(Error::Internal("a reservation answered something else".to_owned()).into()),
        };
        self.count(if decision.allowed { "reserved" } else { "reserve_denied" });
        Ok(Response::new(ReserveResponse {
            allowed: decision.allowed,
            reservation_id: if decision.allowed { id } else { String::new() },
            limit: check.limit,
            remaining: decision.remaining,
            reset_after: Some(duration_to_proto(decision.reset_after)),
            retry_after: retry_after(&decision),
        }))
    }

    async fn commit(&self, request: Request<CommitRequest>) -> Result<Response<CommitResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = Caller::in_extensions(&extensions)?;
        caller.charge(&request, 1)?;
        let space = caller.space.clone();
        let check = self.budget_limit(request.limit.as_ref(), 0, 0)?;
        let id = reservation_id(&request.reservation_id)?;
        let operation = Budget::Commit {
            id,
            allow_debt: request.allow_debt,
        };
        let settled = self.settle(&metadata, &space, &check, operation).await?;
        Ok(Response::new(match settled {
            Some(settled) => CommitResponse {
                found: true,
                charged: settled.charged,
                refunded: settled.refunded,
                remaining: settled.remaining,
                reset_after: Some(duration_to_proto(settled.reset_after)),
                settled_before: settled.before,
            },
            None => CommitResponse::default(),
        }))
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Result<Response<CancelResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = Caller::in_extensions(&extensions)?;
        caller.charge(&request, 1)?;
        let space = caller.space.clone();
        let check = self.budget_limit(request.limit.as_ref(), 0, 0)?;
        let id = reservation_id(&request.reservation_id)?;
        let settled = self.settle(&metadata, &space, &check, Budget::Cancel { id }).await?;
        Ok(Response::new(match settled {
            Some(settled) => CancelResponse {
                found: true,
                charged: settled.charged,
                refunded: settled.refunded,
                remaining: settled.remaining,
                reset_after: Some(duration_to_proto(settled.reset_after)),
                settled_before: settled.before,
            },
            None => CancelResponse::default(),
        }))
    }

    async fn report(&self, request: Request<ReportRequest>) -> Result<Response<ReportResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = Caller::in_extensions(&extensions)?;
        caller.charge(&request, 1)?;
        let space = caller.space.clone();
        let check = self.budget_limit(request.limit.as_ref(), 1, 1)?;
        let deadline = deadline(&metadata, self.limiter.settings().operation_timeout)?;
        match self
            .limiter
            .store()
            .budget(&space, &check, Budget::Report, deadline)
            .await?
        {
            BudgetAnswer::NotDecided => Err(Error::OutOfMemory.into()),
            BudgetAnswer::Reported {
                remaining,
                reset_after,
                retry_after,
            } => {
                self.count("reported");
                Ok(Response::new(ReportResponse {
                    remaining,
                    reset_after: Some(duration_to_proto(reset_after)),
                    retry_after: Some(duration_to_proto(retry_after)),
                }))
            }
            _ => Err(Error::Internal("a report answered something else".to_owned()).into()),
        }
    }
}
