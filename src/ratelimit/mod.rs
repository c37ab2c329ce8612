//! `cachelock.ratelimit.v1.RateLimitService`: validates each request, decides it
//! through [`RateLimitStore`] within a short budget, and answers from the outage
//! policy when Redis cannot decide in time.

mod store;

use std::{
    collections::HashSet,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::warn;

pub use store::{Algorithm, Counting, Decision, LimitCheck, RateLimitStore, invocation, scripts};

use crate::{
    auth::Caller,
    config::{Config, OutagePolicy},
    error::Error,
    pb::ratelimit::{
        self as pb, CheckManyRequest, CheckManyResponse, CheckRequest, CheckResponse, LimitDecision, ResetRequest,
        ResetResponse, rate_limit_service_server::RateLimitService,
    },
    redis::KeySpace,
    request::{Limits, budget, cross_slot, deadline, duration_to_proto, positive_duration},
    telemetry::{Meter, Metrics},
};

/// The largest limit and cost: keeps every count exact in the script's doubles.
pub const MAX_LIMIT: u64 = 1_000_000_000;
/// The shortest period.
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// Below this much time left, Redis is not asked at all: the policy answers.
const MIN_REDIS_BUDGET: Duration = Duration::from_millis(1);
/// How often answers given by the outage policy are logged (with their count).
const POLICY_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The rate limiter's settings, from the configuration.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// The default outage policy.
    pub on_unavailable: OutagePolicy,
    /// Longest wait for Redis in one check.
    pub timeout: Duration,
    /// Longest wait for Redis in a Reset.
    pub operation_timeout: Duration,
    /// Longest period a check may ask for.
    pub max_period: Duration,
    /// Most limits in one CheckMany.
    pub max_batch: usize,
    /// What a policy denial tells the caller to wait: the health probe interval,
    /// after which the service knows more.
    pub outage_retry_after: Duration,
}

impl From<&Config> for RateLimitSettings {
    fn from(config: &Config) -> RateLimitSettings {
        RateLimitSettings {
            on_unavailable: config.ratelimit_on_unavailable,
            timeout: config.ratelimit_timeout,
            operation_timeout: config.operation_timeout,
            max_period: config.ratelimit_max_period,
            max_batch: config.ratelimit_max_batch,
            outage_retry_after: config.health_interval,
        }
    }
}

/// The gRPC handlers of the rate limiter.
pub struct RateLimitApi {
    store: RateLimitStore,
    meter: Meter,
    limits: Limits,
    settings: RateLimitSettings,
    policy_log: PolicyLog,
}

/// Answers given by the outage policy, logged at most once per interval so that
/// a limiter silently failing open (Redis down, full, or too slow) is visible
/// without a log line per request.
struct PolicyLog {
    state: Mutex<PolicyLogState>,
}

struct PolicyLogState {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl PolicyLog {
    fn new() -> PolicyLog {
        PolicyLog {
            state: Mutex::new(PolicyLogState {
                last_logged: None,
                unlogged: 0,
            }),
        }
    }

    fn record(&self, cause: &Error, allowed: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.unlogged += 1;
        if state
            .last_logged
            .is_some_and(|last| last.elapsed() < POLICY_LOG_INTERVAL)
        {
            return;
        }
        let answers = std::mem::take(&mut state.unlogged);
        state.last_logged = Some(Instant::now());
        drop(state);
        warn!(
            answers,
            latest = if allowed { "allowed" } else { "denied" },
            cause = %cause,
            "rate-limit checks answered by the outage policy, not by Redis"
        );
    }
}

/// How a request was decided.
pub(crate) enum Outcome {
    /// By Redis, one decision per limit.
    Decided(Vec<Decision>),
    /// By the outage policy: allowed or not.
    Policy(bool),
}

impl RateLimitApi {
    /// Handlers over `store`.
    pub fn new(store: RateLimitStore, limits: Limits, settings: RateLimitSettings, meter: Meter) -> RateLimitApi {
        RateLimitApi {
            store,
            meter,
            limits,
            settings,
            policy_log: PolicyLog::new(),
        }
    }

    /// Validates one limit; `field` is the prefix of its fields' names ("" or "limits[2].").
    fn limit_check<'a>(
        &self,
        field: &str,
        key: &'a str,
        limit: u64,
        period: Option<&prost_types::Duration>,
        cost: Option<u64>,
        algorithm: i32,
    ) -> Result<LimitCheck<'a>, Error> {
        let key = self.limits.key(&format!("{field}key"), key)?;
        let period_field = format!("{field}period");
        let period = positive_duration(
            &period_field,
            period.ok_or_else(|| Error::invalid(&period_field, "is required"))?,
        )?;
        if period < MIN_PERIOD || period > self.settings.max_period {
            return Err(Error::invalid(
                period_field,
                format!(
                    "must be between 1ms and {}",
                    humantime::format_duration(self.settings.max_period)
                ),
            ));
        }
        let period_micros = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Error::invalid(
                format!("{field}limit"),
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        if limit > period_micros {
            return Err(Error::invalid(
                format!("{field}limit"),
                "must be at most one per microsecond of the period",
            ));
        }
        let cost = cost.unwrap_or(1);
        if cost > MAX_LIMIT {
            return Err(Error::invalid(
                format!("{field}cost"),
                format!("must be at most {MAX_LIMIT}"),
            ));
        }
        let algorithm = match pb::Algorithm::try_from(algorithm) {
            Ok(pb::Algorithm::Unspecified | pb::Algorithm::TokenBucket) => Algorithm::TokenBucket,
            Ok(pb::Algorithm::FixedWindow) => Algorithm::FixedWindow,
            Ok(pb::Algorithm::SlidingWindow) => Algorithm::SlidingWindow,
            Err(_) => {
                return Err(Error::invalid(
                    format!("{field}algorithm"),
                    format!("{algorithm} is not an Algorithm"),
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
        })
    }

    /// The request size limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The configured outage policy.
    pub(crate) fn default_policy(&self) -> OutagePolicy {
        self.settings.on_unavailable
    }

    fn policy(&self, requested: i32) -> Result<OutagePolicy, Error> {
        match pb::OutagePolicy::try_from(requested) {
            Ok(pb::OutagePolicy::Unspecified) => Ok(self.settings.on_unavailable),
            Ok(pb::OutagePolicy::FailOpen) => Ok(OutagePolicy::FailOpen),
            Ok(pb::OutagePolicy::FailClosed) => Ok(OutagePolicy::FailClosed),
            Err(_) => Err(Error::invalid(
                "on_unavailable",
                format!("{requested} is not an OutagePolicy"),
            )),
        }
    }

    /// Asks Redis within the rate limiter's budget; falls back to `policy` when
    /// the last connection attempt failed, the caller's deadline is too near, or
    /// Redis fails, is full, or does not answer in time.
    pub(crate) async fn decide(
        &self,
        space: &KeySpace,
        metadata: &MetadataMap,
        checks: &[LimitCheck<'_>],
        policy: OutagePolicy,
    ) -> Result<Outcome, Status> {
        let allowed = policy == OutagePolicy::FailOpen;
        let budget = match budget(metadata, self.settings.timeout) {
            Ok(budget) if budget >= MIN_REDIS_BUDGET => budget,
            Ok(_) | Err(_) => {
                self.policy_log.record(&Error::DeadlineExceeded, allowed);
                let result = if allowed { "policy_allowed" } else { "policy_denied" };
                self.meter
                    .record(|metrics| Metrics::count(&metrics.ratelimit_decisions, result));
                return Ok(Outcome::Policy(allowed));
            }
        };
        let deadline = tokio::time::Instant::now() + budget;
        let outcome = match self.store.check(space, checks, deadline).await {
            Ok(decisions) => Outcome::Decided(decisions),
            Err(error) if error.is_outage() => {
                self.policy_log.record(&error, allowed);
                Outcome::Policy(allowed)
            }
            Err(error) => return Err(error.into()),
        };
        let result = match &outcome {
            Outcome::Decided(decisions) if decisions.iter().all(|decision| decision.allowed) => "allowed",
            Outcome::Decided(_) => "denied",
            Outcome::Policy(true) => "policy_allowed",
            Outcome::Policy(false) => "policy_denied",
        };
        self.meter
            .record(|metrics| Metrics::count(&metrics.ratelimit_decisions, result));
        Ok(outcome)
    }

    fn policy_retry_after(&self, allowed: bool) -> Option<prost_types::Duration> {
        Some(duration_to_proto(if allowed {
            Duration::ZERO
        } else {
            self.settings.outage_retry_after
        }))
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
        let check = self.limit_check(
            "",
            &request.key,
            request.limit,
            request.period.as_ref(),
            request.cost,
            request.algorithm,
        )?;
        let policy = self.policy(request.on_unavailable)?;
        let response = match self
            .decide(&space, &metadata, std::slice::from_ref(&check), policy)
            .await?
        {
            Outcome::Decided(decisions) => {
                let decision = decisions
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Internal("a rate-limit check answered no decision".to_owned()))?;
                CheckResponse {
                    allowed: decision.allowed,
                    limit: check.limit,
                    remaining: decision.remaining,
                    reset_after: Some(duration_to_proto(decision.reset_after)),
                    retry_after: retry_after(&decision),
                    decided_by_outage_policy: false,
                }
            }
            Outcome::Policy(allowed) => CheckResponse {
                allowed,
                limit: check.limit,
                remaining: 0,
                reset_after: Some(duration_to_proto(Duration::ZERO)),
                retry_after: self.policy_retry_after(allowed),
                decided_by_outage_policy: true,
            },
        };
        Ok(Response::new(response))
    }

    async fn check_many(&self, request: Request<CheckManyRequest>) -> Result<Response<CheckManyResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = Caller::in_extensions(&extensions)?;
        caller.charge(&request, request.limits.len())?;
        let space = caller.space.clone();
        if request.limits.is_empty() {
            return Err(Error::invalid("limits", "must not be empty").into());
        }
        if request.limits.len() > self.settings.max_batch {
            return Err(Error::invalid(
                "limits",
                format!(
                    "has {} limits, above the limit of {} (--ratelimit-max-batch)",
                    request.limits.len(),
                    self.settings.max_batch
                ),
            )
            .into());
        }
        let mut checks = Vec::with_capacity(request.limits.len());
        let mut seen = HashSet::with_capacity(request.limits.len());
        for (i, limit) in request.limits.iter().enumerate() {
            let check = self.limit_check(
                &format!("limits[{i}]."),
                &limit.key,
                limit.limit,
                limit.period.as_ref(),
                limit.cost,
                limit.algorithm,
            )?;
            // The script decides each limit on the state before any is consumed, so a
            // repeated limit would be checked once but charged twice.
            if !seen.insert((check.key, check.algorithm, check.limit, check.period_micros)) {
                return Err(Error::invalid(
                    format!("limits[{i}]"),
                    "repeats the key, algorithm, limit and period of an earlier limit",
                )
                .into());
            }
            checks.push(check);
        }
        if let Some((first, other)) = self.store.cross_slot(&space, &checks) {
            let keys: Vec<&str> = checks.iter().map(|check| check.key).collect();
            return Err(cross_slot("limits", "CheckMany", &keys, first, other).into());
        }
        let policy = self.policy(request.on_unavailable)?;
        let response = match self.decide(&space, &metadata, &checks, policy).await? {
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
                retry_after: self.policy_retry_after(allowed),
                decided_by_outage_policy: true,
            },
        };
        Ok(Response::new(response))
    }

    async fn reset(&self, request: Request<ResetRequest>) -> Result<Response<ResetResponse>, Status> {
        // Reset has no fallback: it gets the ordinary operation timeout.
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let check = self.limit_check(
            "",
            &request.key,
            request.limit,
            request.period.as_ref(),
            None,
            pb::Algorithm::Unspecified as i32,
        )?;
        let algorithms: &[Algorithm] = match pb::Algorithm::try_from(request.algorithm) {
            Ok(pb::Algorithm::Unspecified) => &Algorithm::ALL,
            Ok(pb::Algorithm::TokenBucket) => &[Algorithm::TokenBucket],
            Ok(pb::Algorithm::FixedWindow) => &[Algorithm::FixedWindow],
            Ok(pb::Algorithm::SlidingWindow) => &[Algorithm::SlidingWindow],
            Err(_) => {
                let reason = format!("{} is not an Algorithm", request.algorithm);
                return Err(Error::invalid("algorithm", reason).into());
            }
        };
        let existed = self
            .store
            .reset(
                &space,
                check.key,
                check.limit,
                check.period_micros,
                algorithms,
                deadline,
            )
            .await?;
        Ok(Response::new(ResetResponse { existed }))
    }
}
