//! `envoy.service.ratelimit.v3.RateLimitService`: Envoy's global rate limit API,
//! so that Envoy, Istio and Gateway API implementations can use cachelock as
//! their rate limit service unchanged.
//!
//! Each descriptor of a request is matched against rules in envoyproxy/ratelimit's
//! YAML format ([`rules`]); the limits found are decided by the rate limiter's
//! script, all in one Redis round trip (one per slot on a Redis Cluster), with the
//! rate limiter's budget and outage policy. Enforced limits are all or nothing,
//! decided one after the other: a request refused by one limit consumes nothing
//! from the others, and a counter two descriptors name is charged both costs.
//! Shadow-mode and quota-mode limits never refuse and are counted on their own,
//! except on a counter an enforced limit of the request also counts: there they
//! follow the enforced ones ([`Counting::Follows`]).

mod format;
mod limit;
mod rules;
mod source;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tonic::{Request, Response, Status};

use crate::{
    auth::Caller,
    error::Error,
    pb::envoy::{
        config::core::v3::HeaderValue,
        extensions::common::ratelimit::v3::RateLimitDescriptor,
        service::ratelimit::v3::{
            RateLimitRequest, RateLimitResponse,
            rate_limit_response::{Code, DescriptorStatus, RateLimit},
            rate_limit_service_server::RateLimitService,
        },
    },
    ratelimit::{Algorithm, Counting, Decision, LimitCheck, Limiter, MAX_LIMIT, Outcome},
    redis::envoy_descriptor,
    telemetry::{Meter, Metrics},
    time::duration_to_proto,
};

pub use limit::{Limit, Unit};
use rules::Rule;
pub use rules::Rules;
pub use source::RulesSource;

/// The response headers `--rls-headers` adds, as envoyproxy/ratelimit names them
/// (the IETF RateLimit header fields draft).
const HEADER_LIMIT: &str = "RateLimit-Limit";
const HEADER_REMAINING: &str = "RateLimit-Remaining";
const HEADER_RESET: &str = "RateLimit-Reset";

/// The settings of the Envoy API.
#[derive(Debug, Clone, Copy)]
pub struct RlsSettings {
    /// Add the RateLimit-* response headers.
    pub headers: bool,
    /// Most descriptors in one request.
    pub max_descriptors: usize,
}

/// The handler of `ShouldRateLimit`.
pub struct RlsApi {
    rules: Arc<RulesSource>,
    limiter: Arc<Limiter>,
    settings: RlsSettings,
    meter: Meter,
}

/// A descriptor a rule, or Envoy's per-route override, matched.
struct Matched<'r> {
    /// The rule; `None` for the override (`descriptor.limit`).
    rule: Option<&'r Rule>,
    /// `None` for an unlimited rule.
    limit: Option<Limit>,
    /// The counter's key: the domain and the entries, shared ones by their pattern.
    key: String,
    /// What the request costs on it.
    cost: u64,
}

/// What applies to one descriptor.
enum Applied<'a> {
    /// No rule, or one another rule replaces: OK, no limit.
    Nothing,
    /// An unlimited rule: OK, with the most remaining.
    Unlimited,
    /// A limit; `check` indexes the limits sent to Redis, `None` when the limit
    /// (0 per unit) is decided without it.
    Limited {
        name: &'a str,
        limit: &'a Limit,
        shadow: bool,
        quota: bool,
        cost: u64,
        check: Option<usize>,
    },
}

impl RlsApi {
    /// The handler, deciding through `limiter` by `rules`.
    pub fn new(rules: Arc<RulesSource>, limiter: Arc<Limiter>, settings: RlsSettings, meter: Meter) -> RlsApi {
        RlsApi {
            rules,
            limiter,
            settings,
            meter,
        }
    }

    /// Checks the request's shape; its cost per descriptor when the descriptor
    /// names none (0 on the wire costs 1, as in Envoy).
    fn request_cost(&self, request: &RateLimitRequest) -> Result<u64, Error> {
        if request.domain.is_empty() {
            return Err(Error::invalid("domain", "must not be empty"));
        }
        if request.descriptors.is_empty() {
            return Err(Error::invalid("descriptors", "must not be empty"));
        }
        if request.descriptors.len() > self.settings.max_descriptors {
            return Err(Error::invalid(
                "descriptors",
                format!(
                    "has {} descriptors, above the limit of {} (--ratelimit-max-batch)",
                    request.descriptors.len(),
                    self.settings.max_descriptors
                ),
            ));
        }
        Ok(u64::from(request.hits_addend.max(1)))
    }

    /// What applies to each descriptor, and the limits Redis must decide.
    fn apply<'m>(&self, matched: &'m [Option<Matched<'_>>]) -> Result<(Vec<Applied<'m>>, Vec<LimitCheck<'m>>), Error> {
        // The rules other matched rules replace apply as if they had not matched.
        let replaced: HashSet<&str> = matched
            .iter()
            .flatten()
            .filter_map(|matched| matched.rule)
            .flat_map(|rule| rule.replaces.iter().map(String::as_str))
            .collect();
        let mut applied = Vec::with_capacity(matched.len());
        let mut checks: Vec<LimitCheck<'m>> = Vec::new();
        for (i, matched) in matched.iter().enumerate() {
            let Some(Matched { rule, limit, key, cost }) = matched else {
                applied.push(Applied::Nothing);
                continue;
            };
            let (name, shadow, quota) = match rule {
                Some(rule) if !rule.name.is_empty() && replaced.contains(rule.name.as_str()) => {
                    applied.push(Applied::Nothing);
                    continue;
                }
                Some(rule) => (rule.name.as_str(), rule.shadow_mode, rule.quota_mode),
                None => ("", false, false),
            };
            let Some(limit) = limit else {
                applied.push(Applied::Unlimited);
                continue;
            };
            let check = if limit.requests_per_unit == 0 {
                None
            } else {
                let key = self.limiter.limits().key(&format!("descriptors[{i}]"), key)?;
                // Every descriptor is its own limit, even on a counter another one
                // names: the script decides them one after the other, each charged
                // its own cost, all or nothing.
                checks.push(LimitCheck {
                    key,
                    algorithm: limit.algorithm,
                    limit: u64::from(limit.requests_per_unit),
                    period_micros: limit.period_micros(),
                    calendar: limit.calendar.clone(),
                    cost: *cost,
                    counting: match (shadow, quota) {
                        (true, _) => Counting::Alone,
                        (false, true) => Counting::Quota,
                        (false, false) => Counting::Together,
                    },
                });
                Some(checks.len() - 1)
            };
            applied.push(Applied::Limited {
                name,
                limit,
                shadow,
                quota,
                cost: *cost,
                check,
            });
        }
        follow_enforced(&mut checks);
        // A request a rule of 0 per unit refuses before Redis is asked consumes
        // nothing from its other limits: they are only looked at.
        if refused_without_redis(&applied) {
            for check in &mut checks {
                if check.counting != Counting::Alone {
                    check.cost = 0;
                }
            }
        }
        Ok((applied, checks))
    }

    /// The response for `applied` descriptors decided as `outcome`.
    fn respond(&self, applied: &[Applied<'_>], outcome: &Outcome) -> RateLimitResponse {
        let mut statuses: Vec<DescriptorStatus> = Vec::with_capacity(applied.len());
        let mut over_enforced = false;
        let (mut quota_total, mut quota_over) = (0, 0);
        // The descriptor the headers describe: the last one over its limit, else
        // the one with the least left.
        let mut headline: Option<usize> = None;
        for applied in applied {
            let (result, status) = descriptor_status(applied, outcome);
            if let Applied::Limited { shadow, quota, .. } = *applied {
                let over = result.ends_with("over_limit");
                if quota {
                    quota_total += 1;
                    quota_over += usize::from(over);
                } else if over && !shadow {
                    over_enforced = true;
                }
                let better = match headline.map(|h| &statuses[h]) {
                    _ if status.code == i32::from(Code::OverLimit) => true,
                    Some(other) if other.code == i32::from(Code::OverLimit) => false,
                    Some(other) => status.limit_remaining < other.limit_remaining,
                    None => true,
                };
                if better {
                    headline = Some(statuses.len());
                }
            }
            self.meter
                .record(|metrics| Metrics::count(&metrics.rls_descriptors, result));
            statuses.push(status);
        }
        let over = over_enforced || (quota_total > 0 && quota_total == quota_over);
        let response_headers_to_add = match headline.map(|h| &statuses[h]) {
            Some(status) if self.settings.headers => headers(status),
            _ => Vec::new(),
        };
        RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok }.into(),
            statuses,
            response_headers_to_add,
            ..RateLimitResponse::default()
        }
    }
}

/// Matches descriptor `i` against `rules`, or takes Envoy's per-route override.
fn match_descriptor<'r>(
    rules: &'r Rules,
    domain: &str,
    i: usize,
    descriptor: &RateLimitDescriptor,
    request_cost: u64,
) -> Result<Option<Matched<'r>>, Error> {
    let entries: Vec<(&str, &str)> = descriptor
        .entries
        .iter()
        .map(|entry| (entry.key.as_str(), entry.value.as_str()))
        .collect();
    let cost = match descriptor.hits_addend {
        Some(hits) if hits > MAX_LIMIT => {
            return Err(Error::invalid(
                format!("descriptors[{i}].hits_addend"),
                format!("must be at most {MAX_LIMIT}"),
            ));
        }
        Some(hits) => hits,
        None => request_cost,
    };
    let key = |shared: &[Option<&str>]| {
        let entries = entries.iter().enumerate().map(|(depth, (key, value))| {
            let value = shared.get(depth).copied().flatten().unwrap_or(value);
            (*key, value)
        });
        envoy_descriptor(domain, entries)
    };
    let Some(limit) = &descriptor.limit else {
        return Ok(rules.find(domain, &entries).map(|found| Matched {
            rule: Some(found.rule),
            limit: found.rule.limit.clone(),
            key: key(&found.shared),
            cost,
        }));
    };
    // Envoy's per-route override: this limit, counted as a fixed window.
    let unit = Unit::from_number(limit.unit).ok_or_else(|| {
        Error::invalid(
            format!("descriptors[{i}].limit.unit"),
            format!("{} is not a RateLimitUnit", limit.unit),
        )
    })?;
    let cap = Limit::max_requests_per_unit(unit, 1);
    if u64::from(limit.requests_per_unit) > cap {
        return Err(Error::invalid(
            format!("descriptors[{i}].limit.requests_per_unit"),
            format!("must be at most {cap} per {unit}"),
        ));
    }
    Ok(Some(Matched {
        rule: None,
        limit: Some(Limit {
            requests_per_unit: limit.requests_per_unit,
            unit,
            unit_multiplier: 1,
            algorithm: Algorithm::FixedWindow,
            calendar: None,
            leased: false,
        }),
        key: key(&[]),
        cost,
    }))
}

/// A shadow limit on a counter an enforced one also counts follows the
/// enforced ones: a refused request consumes nothing from that counter.
fn follow_enforced(checks: &mut [LimitCheck<'_>]) {
    let follows: Vec<bool> = checks
        .iter()
        .map(|check| {
            check.counting == Counting::Alone
                && checks
                    .iter()
                    .any(|other| other.counting != Counting::Alone && other.identity() == check.identity())
        })
        .collect();
    for (check, follows) in checks.iter_mut().zip(follows) {
        if follows {
            check.counting = Counting::Follows;
        }
    }
}

/// Whether the request is over a limit before Redis decides anything: an
/// enforced rule of 0 per unit charged something, or every quota-mode rule is one.
fn refused_without_redis(applied: &[Applied<'_>]) -> bool {
    let mut quotas = applied.iter().filter_map(|applied| match applied {
        Applied::Limited {
            quota: true,
            cost,
            check,
            ..
        } => Some(check.is_none() && *cost > 0),
        _ => None,
    });
    let enforced_zero = applied.iter().any(|applied| {
        matches!(applied, Applied::Limited { shadow: false, quota: false, cost, check: None, .. } if *cost > 0)
    });
    let first_quota = quotas.next();
    enforced_zero || first_quota.is_some_and(|over| over && quotas.all(|over| over))
}

/// One descriptor's status, and what the metrics call its result.
fn descriptor_status(applied: &Applied<'_>, outcome: &Outcome) -> (&'static str, DescriptorStatus) {
    let Applied::Limited {
        name,
        limit,
        shadow,
        quota,
        cost,
        check,
    } = *applied
    else {
        let (result, remaining) = match applied {
            Applied::Unlimited => ("unlimited", u32::MAX),
            _ => ("no_rule", 0),
        };
        let status = DescriptorStatus {
            code: Code::Ok.into(),
            limit_remaining: remaining,
            ..DescriptorStatus::default()
        };
        return (result, status);
    };
    let (allowed, remaining, reset, by_policy) = match (check, outcome) {
        (None, _) => (cost == 0, 0, until_window_end(limit), false),
        (Some(index), Outcome::Decided(decisions)) => {
            let Decision {
                allowed,
                remaining,
                reset_after,
                ..
            } = decisions.get(index).cloned().unwrap_or(Decision {
                allowed: true,
                remaining: 0,
                reset_after: Duration::ZERO,
                retry_after: Some(Duration::ZERO),
            });
            // Envoy's hits_addend 0 reports without refusing: a counter is
            // over only once a hit would have taken it past the limit.
            (allowed || cost == 0, remaining, reset_after, false)
        }
        (Some(_), Outcome::Policy(allowed)) => (*allowed, 0, Duration::ZERO, true),
    };
    let result = match (by_policy, allowed, shadow) {
        (true, true, _) => "policy_ok",
        (true, false, _) => "policy_over_limit",
        (false, true, _) => "ok",
        (false, false, true) => "shadow_over_limit",
        (false, false, false) => "over_limit",
    };
    let code = if allowed || shadow || quota {
        Code::Ok
    } else {
        Code::OverLimit
    };
    let status = DescriptorStatus {
        code: code.into(),
        current_limit: Some(current_limit(name, limit)),
        limit_remaining: remaining_u32(remaining),
        duration_until_reset: Some(duration_to_proto(reset)),
        quota: None,
    };
    (result, status)
}

/// How long until the current window of `limit` ends, by this machine's clock:
/// for limits decided without Redis.
fn until_window_end(limit: &Limit) -> Duration {
    if let Some(calendar) = &limit.calendar {
        let now = jiff::Timestamp::now();
        let end = calendar.window_at(now).end;
        return end.duration_since(now).unsigned_abs();
    }
    let period = limit.window().as_secs().max(1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Duration::from_secs(period - now % period)
}

fn current_limit(name: &str, limit: &Limit) -> RateLimit {
    RateLimit {
        name: name.to_owned(),
        requests_per_unit: limit.requests_per_unit,
        unit: limit.unit.number(),
    }
}

fn remaining_u32(remaining: u64) -> u32 {
    u32::try_from(remaining).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl RateLimitService for RlsApi {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = Caller::in_extensions(&extensions)?;
        caller.charge(&request, request.descriptors.len())?;
        let request_cost = self.request_cost(&request)?;
        let rules = self.rules.current();
        let matched = request
            .descriptors
            .iter()
            .enumerate()
            .map(|(i, descriptor)| match_descriptor(&rules, &request.domain, i, descriptor, request_cost))
            .collect::<Result<Vec<_>, Error>>()?;
        let (applied, checks) = self.apply(&matched)?;
        let policy = self.limiter.settings().on_unavailable;
        let outcome = if checks.is_empty() {
            Outcome::Decided(Vec::new())
        } else if leased(&applied, &checks) {
            self.limiter
                .decide_leased(&caller.space, &metadata, &checks, policy)
                .await?
        } else {
            self.limiter.decide(&caller.space, &metadata, &checks, policy).await?
        };
        Ok(Response::new(self.respond(&applied, &outcome)))
    }
}

/// Whether a request is decided from leased slices: when every limit it sends
/// to Redis is a leased rule's and all of them count together (no shadow or
/// quota mode); otherwise it is decided exactly.
fn leased(applied: &[Applied<'_>], checks: &[LimitCheck<'_>]) -> bool {
    checks.iter().all(|check| check.counting == Counting::Together)
        && applied.iter().all(|applied| match applied {
            Applied::Limited {
                limit, check: Some(_), ..
            } => limit.leased,
            _ => true,
        })
}

/// The RateLimit-* headers describing `status`.
fn headers(status: &DescriptorStatus) -> Vec<HeaderValue> {
    let Some(limit) = &status.current_limit else {
        return Vec::new();
    };
    let reset = status.duration_until_reset.as_ref().map_or(0, |reset| {
        // Whole seconds, rounded up: waiting that long is always enough.
        reset.seconds + i64::from(reset.nanos > 0)
    });
    [
        (HEADER_LIMIT, limit.requests_per_unit.to_string()),
        (HEADER_REMAINING, status.limit_remaining.to_string()),
        (HEADER_RESET, reset.to_string()),
    ]
    .into_iter()
    .map(|(key, value)| HeaderValue {
        key: key.to_owned(),
        value,
        raw_value: Vec::new(),
    })
    .collect()
}
