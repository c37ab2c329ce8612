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

mod rules;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::{
    auth::Caller,
    error::Error,
    pb::envoy::{
        config::core::v3::HeaderValue,
        service::ratelimit::v3::{
            RateLimitRequest, RateLimitResponse,
            rate_limit_response::{Code, DescriptorStatus, RateLimit},
            rate_limit_service_server::RateLimitService,
        },
    },
    ratelimit::{Algorithm, Counting, Decision, LimitCheck, Outcome, RateLimitApi},
    redis::envoy_descriptor,
    request::duration_to_proto,
    telemetry::{Meter, Metrics},
};

pub use rules::{Limit, Rules, RulesError, Unit};

/// How often the rules' files are read for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_millis(250);

/// The response headers `--rls-headers` adds, as envoyproxy/ratelimit names them
/// (the IETF RateLimit header fields draft).
const HEADER_LIMIT: &str = "RateLimit-Limit";
const HEADER_REMAINING: &str = "RateLimit-Remaining";
const HEADER_RESET: &str = "RateLimit-Reset";

/// The rules in force, and where they are read from.
pub struct RulesSource {
    /// `None`: no rules, none to reload.
    path: Option<PathBuf>,
    current: ArcSwap<Rules>,
    /// What the files held when last read: a reload happens only when it changes.
    last_read: Mutex<Vec<(PathBuf, Vec<u8>)>>,
    meter: Meter,
}

impl RulesSource {
    /// Loads the rules at `path` (a file or a directory of files).
    ///
    /// # Errors
    /// [`RulesError`] when they cannot be read or are not valid.
    pub fn load(path: &Path, meter: Meter) -> Result<RulesSource, RulesError> {
        let last_read = read_files(path);
        let rules = Rules::load(path)?;
        info!(
            path = %path.display(),
            files = rules.files().len(),
            "Envoy rate-limit rules loaded"
        );
        Ok(RulesSource {
            path: Some(path.to_owned()),
            current: ArcSwap::from_pointee(rules),
            last_read: Mutex::new(last_read),
            meter,
        })
    }

    /// No rules: every Envoy request is OK, with no limit.
    pub fn none() -> RulesSource {
        RulesSource {
            path: None,
            current: ArcSwap::from_pointee(Rules::default()),
            last_read: Mutex::new(Vec::new()),
            meter: Meter::off(),
        }
    }

    /// Whether there are files to reload the rules from.
    pub fn has_files(&self) -> bool {
        self.path.is_some()
    }

    /// The rules in force.
    pub fn current(&self) -> Arc<Rules> {
        self.current.load_full()
    }

    /// Reloads the rules if their files changed; an invalid change is logged and
    /// the previous rules stay in force.
    pub fn reload_if_changed(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let read = read_files(path);
        let mut last = self.last_read.lock().unwrap_or_else(PoisonError::into_inner);
        if *last == read {
            return;
        }
        *last = read;
        drop(last);
        match Rules::load(path) {
            Ok(rules) => {
                info!(
                    path = %path.display(),
                    files = rules.files().len(),
                    "Envoy rate-limit rules reloaded"
                );
                self.current.store(Arc::new(rules));
                self.meter
                    .record(|metrics| Metrics::count(&metrics.rls_reloads, "loaded"));
            }
            Err(error) => {
                warn!(%error, "refused the changed Envoy rate-limit rules; the previous rules stay in force");
                self.meter
                    .record(|metrics| Metrics::count(&metrics.rls_reloads, "refused"));
            }
        }
    }

    /// Reads the files for changes every [`RELOAD_INTERVAL`]; runs until aborted.
    pub async fn reload_on_change(self: Arc<Self>) {
        let mut interval = tokio::time::interval(RELOAD_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.reload_if_changed();
        }
    }
}

/// The names and contents of the files under `path` (empty where unreadable), to
/// notice a change: a comparison of contents, not of times, so that a Kubernetes
/// ConfigMap's symlink swap and a same-second edit are both seen.
fn read_files(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut files: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
            files.sort();
            files
        }
        Err(_) => vec![path.to_owned()],
    };
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read(&file).unwrap_or_default();
            (file, text)
        })
        .collect()
}

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
    limiter: Arc<RateLimitApi>,
    settings: RlsSettings,
    meter: Meter,
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
        limit: Limit,
        shadow: bool,
        quota: bool,
        cost: u64,
        check: Option<usize>,
    },
}

impl RlsApi {
    /// The handler, deciding through `limiter` by `rules`.
    pub fn new(rules: Arc<RulesSource>, limiter: Arc<RateLimitApi>, settings: RlsSettings, meter: Meter) -> RlsApi {
        RlsApi {
            rules,
            limiter,
            settings,
            meter,
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

/// How long until the current window of `unit` ends, by this machine's clock: for
/// limits decided without Redis.
fn until_window_end(unit: Unit) -> Duration {
    let period = unit.period().as_secs();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Duration::from_secs(period - now % period)
}

fn current_limit(name: &str, limit: Limit) -> RateLimit {
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
        let space = caller.space.clone();
        if request.domain.is_empty() {
            return Err(Error::invalid("domain", "must not be empty").into());
        }
        if request.descriptors.is_empty() {
            return Err(Error::invalid("descriptors", "must not be empty").into());
        }
        if request.descriptors.len() > self.settings.max_descriptors {
            return Err(Error::invalid(
                "descriptors",
                format!(
                    "has {} descriptors, above the limit of {} (--ratelimit-max-batch)",
                    request.descriptors.len(),
                    self.settings.max_descriptors
                ),
            )
            .into());
        }
        let rules = self.rules.current();
        // A request without hits_addend (0 on the wire) costs 1, as in Envoy.
        let request_cost = u64::from(request.hits_addend.max(1));

        // Match every descriptor.
        let mut matched = Vec::with_capacity(request.descriptors.len());
        let mut keys = Vec::with_capacity(request.descriptors.len());
        for (i, descriptor) in request.descriptors.iter().enumerate() {
            let entries: Vec<(&str, &str)> = descriptor
                .entries
                .iter()
                .map(|entry| (entry.key.as_str(), entry.value.as_str()))
                .collect();
            let cost = match descriptor.hits_addend {
                Some(hits) if hits > crate::ratelimit::MAX_LIMIT => {
                    return Err(Error::invalid(
                        format!("descriptors[{i}].hits_addend"),
                        format!("must be at most {}", crate::ratelimit::MAX_LIMIT),
                    )
                    .into());
                }
                Some(hits) => hits,
                None => request_cost,
            };
            let found = match &descriptor.limit {
                // Envoy's per-route override: this limit, counted as a fixed window.
                Some(limit) => {
                    let unit = Unit::from_number(limit.unit).ok_or_else(|| {
                        Error::invalid(
                            format!("descriptors[{i}].limit.unit"),
                            format!("{} is not a RateLimitUnit", limit.unit),
                        )
                    })?;
                    let limit = Limit {
                        requests_per_unit: limit.requests_per_unit,
                        unit,
                        algorithm: crate::ratelimit::Algorithm::FixedWindow,
                    };
                    let cap = Limit::max_requests_per_unit(unit);
                    if u64::from(limit.requests_per_unit) > cap {
                        return Err(Error::invalid(
                            format!("descriptors[{i}].limit.requests_per_unit"),
                            format!("must be at most {cap} per {unit}"),
                        )
                        .into());
                    }
                    Some((None, Some(limit), entries.iter().map(|_| None).collect()))
                }
                None => rules
                    .find(&request.domain, &entries)
                    .map(|found| (Some(found.rule), found.rule.limit, found.shared)),
            };
            let key = found.as_ref().map(|(_, _, shared)| {
                envoy_descriptor(
                    &request.domain,
                    entries
                        .iter()
                        .zip(shared)
                        .map(|((key, value), shared): (&(&str, &str), &Option<&str>)| (*key, shared.unwrap_or(value))),
                )
            });
            matched.push((found.map(|(rule, limit, _)| (rule, limit)), cost));
            keys.push(key);
        }

        // Drop the rules other matched rules replace.
        let replaced: HashSet<&str> = matched
            .iter()
            .filter_map(|(found, _)| found.as_ref().and_then(|(rule, _)| *rule))
            .flat_map(|rule| rule.replaces.iter().map(String::as_str))
            .collect();

        // What applies to each descriptor, and the limits Redis must decide.
        let mut applied = Vec::with_capacity(matched.len());
        let mut checks: Vec<LimitCheck<'_>> = Vec::new();
        for (i, ((found, cost), key)) in matched.iter().zip(&keys).enumerate() {
            let Some((rule, limit)) = found else {
                applied.push(Applied::Nothing);
                continue;
            };
            let (name, shadow, quota) = match rule {
                // Replaced: as if it had not matched.
                Some(rule) if !rule.name.is_empty() && replaced.contains(rule.name.as_str()) => {
                    applied.push(Applied::Nothing);
                    continue;
                }
                Some(rule) => (rule.name.as_str(), rule.shadow_mode, rule.quota_mode),
                None => ("", false, false),
            };
            let (Some(limit), Some(key)) = (limit, key) else {
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
                limit: *limit,
                shadow,
                quota,
                cost: *cost,
                check,
            });
        }

        // A shadow limit on a counter an enforced one also counts follows the
        // enforced ones: a refused request consumes nothing from that counter.
        let enforced: Vec<(&str, Algorithm, u64, u64)> = checks
            .iter()
            .filter(|check| check.counting != Counting::Alone)
            .map(|check| (check.key, check.algorithm, check.limit, check.period_micros))
            .collect();
        for check in &mut checks {
            if check.counting == Counting::Alone
                && enforced.contains(&(check.key, check.algorithm, check.limit, check.period_micros))
            {
                check.counting = Counting::Follows;
            }
        }
        // A request a rule of 0 per unit refuses before Redis is asked consumes
        // nothing from its other limits: they are only looked at.
        if refused_without_redis(&applied) {
            for check in &mut checks {
                if check.counting != Counting::Alone {
                    check.cost = 0;
                }
            }
        }

        let outcome = if checks.is_empty() {
            Outcome::Decided(Vec::new())
        } else {
            self.limiter
                .decide(&space, &metadata, &checks, self.limiter.default_policy())
                .await?
        };
        Ok(Response::new(self.respond(&applied, &outcome)))
    }
}

impl RlsApi {
    /// The response for `applied` descriptors decided as `outcome`.
    fn respond(&self, applied: &[Applied<'_>], outcome: &Outcome) -> RateLimitResponse {
        let mut statuses = Vec::with_capacity(applied.len());
        let mut over_enforced = false;
        let (mut quota_total, mut quota_over) = (0, 0);
        // The descriptor the headers describe: the last one over its limit, else
        // the one with the least left.
        let mut headline: Option<usize> = None;
        for (i, applied) in applied.iter().enumerate() {
            let (result, status) = match *applied {
                Applied::Nothing => (
                    "no_rule",
                    DescriptorStatus {
                        code: Code::Ok.into(),
                        ..DescriptorStatus::default()
                    },
                ),
                Applied::Unlimited => (
                    "unlimited",
                    DescriptorStatus {
                        code: Code::Ok.into(),
                        limit_remaining: u32::MAX,
                        ..DescriptorStatus::default()
                    },
                ),
                Applied::Limited {
                    name,
                    limit,
                    shadow,
                    quota,
                    cost,
                    check,
                } => {
                    let (allowed, remaining, reset, by_policy) = match (check, outcome) {
                        (None, _) => (cost == 0, 0, until_window_end(limit.unit), false),
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
                            // Envoy's hits_addend 0 reports without refusing: a counter
                            // is over only once a hit would have taken it past the limit.
                            (allowed || cost == 0, remaining, reset_after, false)
                        }
                        (Some(_), Outcome::Policy(allowed)) => (*allowed, 0, Duration::ZERO, true),
                    };
                    if quota {
                        quota_total += 1;
                        if !allowed {
                            quota_over += 1;
                        }
                    } else if !allowed && !shadow {
                        over_enforced = true;
                    }
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
                    let better = match headline.map(|h: usize| &statuses[h]) {
                        _ if code == Code::OverLimit => true,
                        Some(DescriptorStatus { code: other_code, .. })
                            if *other_code == i32::from(Code::OverLimit) =>
                        {
                            false
                        }
                        Some(DescriptorStatus { limit_remaining, .. }) => status.limit_remaining < *limit_remaining,
                        None => true,
                    };
                    if better {
                        headline = Some(i);
                    }
                    (result, status)
                }
            };
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
