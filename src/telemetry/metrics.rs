//! Every metric the service exports, in one registry per server.
//!
//! gRPC metrics follow go-grpc-prometheus's names and labels, so existing
//! dashboards work. No label ever carries user data — keys, user ids, lock names,
//! tokens, client-chosen paths: every label value comes from a fixed set (method
//! names from the service descriptors, Redis operation names, status codes), so
//! the number of series stays bounded whatever callers send.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicI64, AtomicU64},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry, Unit},
};

use super::methods::{HandledLabels, Method, MethodLabels, code_name, known_methods};

/// Latency buckets from 50 µs to about 6.5 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 18)
}

/// One label of a fixed set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Operation {
    /// A Redis operation's name, such as `cache_get` or `lock_acquire`.
    pub operation: &'static str,
}

/// Why Redis failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorKind {
    /// `timeout`, `connection`, `oom`, `busy` or `other`.
    pub kind: &'static str,
}

/// An outcome from a fixed set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Outcome {
    /// The outcome, such as `hit`, `denied` or `evicted`.
    pub result: &'static str,
}

/// A health name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HealthName {
    /// `""` for the whole server, or a service name.
    pub service: &'static str,
}

/// Why a call was refused: the `reason` label of `cachelock_requests_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-in-flight` calls were already being handled.
    InFlight,
    /// Too many Acquires and Holds were waiting for locks.
    LockWaiters,
    /// Too many GetOrLease calls were waiting for fills.
    CacheFillWaiters,
    /// Too many health Watch streams were open.
    WatchStreams,
    /// Too many Subscribe streams were open.
    PubsubStreams,
    /// The client was over its request budget.
    ClientRate,
    /// The caller proved no identity the auth file knows.
    Unauthenticated,
    /// The client may not call that service, or not that way.
    PermissionDenied,
}

impl Refusal {
    /// Every reason, for series that exist (at 0) before the first refusal.
    const ALL: [Refusal; 8] = [
        Refusal::InFlight,
        Refusal::LockWaiters,
        Refusal::CacheFillWaiters,
        Refusal::WatchStreams,
        Refusal::PubsubStreams,
        Refusal::ClientRate,
        Refusal::Unauthenticated,
        Refusal::PermissionDenied,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::InFlight => "in_flight",
            Refusal::LockWaiters => "lock_waiters",
            Refusal::CacheFillWaiters => "cache_fill_waiters",
            Refusal::WatchStreams => "watch_streams",
            Refusal::PubsubStreams => "pubsub_streams",
            Refusal::ClientRate => "client_rate",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::PermissionDenied => "permission_denied",
        }
    }
}

/// A refusal's reason, as a label set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalReason {
    /// [`Refusal::label`].
    pub reason: &'static str,
}

/// What waiting calls wait for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WaiterKind {
    /// `lock` (a release) or `cache_fill` (a GetOrLease fill).
    pub kind: &'static str,
}

/// The build, as a constant 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version.
    pub version: &'static str,
    /// The git commit it was built from (`unknown` outside a git checkout).
    pub commit: &'static str,
}

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    /// RPCs started.
    rpc_started: Family<MethodLabels, Counter>,
    /// RPCs finished, by code.
    rpc_handled: Family<HandledLabels, Counter>,
    /// Time from request to response headers.
    rpc_seconds: Family<MethodLabels, Histogram>,
    /// Each known method's series of the three families above, by [`Method`] index.
    rpc_series: Box<[RpcSeries]>,
    /// The series of the "unknown" method.
    rpc_unknown: RpcSeries,
    /// RPCs being handled now.
    pub rpc_in_flight: Gauge,
    /// Time of each Redis round trip, by operation.
    pub redis_seconds: Family<Operation, Histogram>,
    /// Redis failures, by kind.
    pub redis_errors: Family<ErrorKind, Counter>,
    /// 1 while both Redis connections are up.
    pub redis_up: Gauge,
    /// New connections after the first.
    pub redis_reconnects: Counter,
    /// Redis's used_memory, from INFO.
    pub redis_used_memory: Gauge<i64, AtomicI64>,
    /// Redis's maxmemory (0: none), from INFO.
    pub redis_max_memory: Gauge<i64, AtomicI64>,
    /// 1 while a health name is SERVING.
    pub health_serving: Family<HealthName, Gauge>,
    /// Cache reads by result (hit, miss).
    pub cache_reads: Family<Outcome, Counter>,
    /// Cache entries written.
    pub cache_writes: Counter,
    /// Gets that joined a read of their key already in flight (single-flight).
    pub cache_shared_reads: Counter,
    /// GetOrLease answers by outcome (hit, refresh, stale, lease, miss, waited).
    pub cache_lease_answers: Family<Outcome, Counter>,
    /// Fenced writes (cache and session) by result (applied, fenced_out).
    pub fenced_writes: Family<Outcome, Counter>,
    /// Terms of leadership begun by campaigns on this instance.
    pub election_terms: Counter,
    /// Rate-limit decisions by result (allowed, denied, waited, policy_allowed, policy_denied).
    pub ratelimit_decisions: Family<Outcome, Counter>,
    /// Token-budget operations by result (reserved, reserve_denied, committed,
    /// cancelled, unknown, reported).
    pub ratelimit_budget: Family<Outcome, Counter>,
    /// Rate-limit script calls, and the requests they decided (group commit).
    pub ratelimit_batches: Counter,
    pub ratelimit_batched_requests: Counter,
    /// Envoy ShouldRateLimit descriptors by result (ok, over_limit, shadow_over_limit,
    /// unlimited, no_rule, policy_ok, policy_over_limit).
    pub rls_descriptors: Family<Outcome, Counter>,
    /// Envoy rule reloads by result (loaded, refused).
    pub rls_reloads: Family<Outcome, Counter>,
    /// Lock grants.
    pub lock_grants: Counter,
    /// Acquires that waited for a held lock.
    pub lock_waits: Counter,
    /// How long waiting Acquires waited, granted or not.
    pub lock_wait_seconds: Histogram,
    /// Release or Extend with a token that had lost its lease.
    pub lock_leases_lost: Counter,
    /// Sessions by event (created, rotated, deleted, evicted, logged_out).
    pub sessions: Family<Outcome, Counter>,
    /// Messages published through this instance.
    pub pubsub_published: Counter,
    /// Messages handed to Subscribe streams (one per stream).
    pub pubsub_delivered: Counter,
    /// Messages dropped for a Subscribe stream whose buffer was full.
    pub pubsub_dropped: Counter,
    /// Open Subscribe streams.
    pub pubsub_streams: Gauge,
    /// Requests refused to protect the service, by reason.
    pub refused: Family<RefusalReason, Counter>,
    /// Calls waiting in this instance, by what they wait for.
    waiters: Family<WaiterKind, Gauge>,
    /// The build.
    pub build_info: Family<BuildLabels, Gauge>,
    /// Seconds since the process started, as of the last scrape.
    pub uptime_seconds: Gauge<f64, AtomicU64>,
    started: std::time::Instant,
}

/// One method's RPC series, each found in its family on first use and kept: a
/// family lookup hashes every label under a lock, and every RPC makes three.
#[derive(Default)]
struct RpcSeries {
    started: OnceLock<Counter>,
    seconds: OnceLock<Histogram>,
    /// By status code number (0 to 16).
    handled: [OnceLock<Counter>; 17],
}

/// Registers each metric as it is made, so that each is named once.
struct Registrar<'a>(&'a mut Registry);

impl Registrar<'_> {
    fn metric<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }

    fn with_unit<M: Metric + Clone>(&mut self, name: &str, help: &str, unit: Unit, metric: M) -> M {
        self.0.register_with_unit(name, help, unit, metric.clone());
        metric
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered at zero.
    ///
    /// A table, one entry per metric: its field, name, help and unit side by
    /// side, so it is long (about 150 lines) by design, not by tangle.
    pub fn new() -> Metrics {
        let histogram = || Histogram::new(latency_buckets());
        let mut registry = Registry::default();
        let mut add = Registrar(&mut registry);
        let mut metrics = Metrics {
            registry: Registry::default(),
            rpc_started: add.metric("grpc_server_started", "RPCs started on the server", Family::default()),
            rpc_handled: add.metric(
                "grpc_server_handled",
                "RPCs completed on the server, whatever their status code",
                Family::default(),
            ),
            rpc_seconds: add.with_unit(
                "grpc_server_handling",
                "Time from an RPC's arrival to its response headers",
                Unit::Seconds,
                Family::new_with_constructor(histogram),
            ),
            rpc_series: (0..known_methods()).map(|_| RpcSeries::default()).collect(),
            rpc_unknown: RpcSeries::default(),
            rpc_in_flight: add.metric("grpc_server_in_flight", "RPCs being handled now", Gauge::default()),
            redis_seconds: add.with_unit(
                "cachelock_redis_command_duration",
                "Time of one Redis round trip (command, script, pipeline or transaction), by operation",
                Unit::Seconds,
                Family::new_with_constructor(histogram),
            ),
            redis_errors: add.metric(
                "cachelock_redis_errors",
                "Redis failures by kind: timeout, connection, oom, busy, other",
                Family::default(),
            ),
            redis_up: add.metric(
                "cachelock_redis_up",
                "1 while both Redis connections are up",
                Gauge::default(),
            ),
            redis_reconnects: add.metric(
                "cachelock_redis_reconnects",
                "Redis connections made after the first (each follows a loss)",
                Counter::default(),
            ),
            redis_used_memory: add.with_unit(
                "cachelock_redis_used_memory",
                "Redis used_memory, from INFO at each health probe",
                Unit::Bytes,
                Gauge::default(),
            ),
            redis_max_memory: add.with_unit(
                "cachelock_redis_max_memory",
                "Redis maxmemory (0: unlimited), from INFO at each health probe",
                Unit::Bytes,
                Gauge::default(),
            ),
            health_serving: add.metric(
                "cachelock_health_serving",
                "1 while a grpc.health.v1 name is SERVING",
                Family::default(),
            ),
            cache_reads: add.metric(
                "cachelock_cache_reads",
                "Cache entries read, by result: hit, miss",
                Family::default(),
            ),
            cache_writes: add.metric("cachelock_cache_writes", "Cache entries written", Counter::default()),
            cache_shared_reads: add.metric(
                "cachelock_cache_shared_reads",
                "Gets that joined a read of their key already in flight on this instance instead of sending their own",
                Counter::default(),
            ),
            cache_lease_answers: add.metric(
                "cachelock_cache_lease_answers",
                "GetOrLease answers by outcome: hit, refresh (a hit with a refresh lease), stale, lease, miss \
             (the wait ended); waited counts those that waited for another caller's fill",
                Family::default(),
            ),
            fenced_writes: add.metric(
                "cachelock_fenced_writes",
                "Cache and session writes made under a fence, by result: applied, fenced_out (refused: the \
                 fence's lock was granted again since)",
                Family::default(),
            ),
            election_terms: add.metric(
                "cachelock_election_terms",
                "Terms of leadership begun by campaigns on this instance (a fast rise: leaders flapping)",
                Counter::default(),
            ),
            ratelimit_budget: add.metric(
                "cachelock_ratelimit_budget_operations",
                "Token-budget operations by result: reserved, reserve_denied, committed, cancelled, \
                 already_settled (a Commit or Cancel of a reservation settled before), unknown (a Commit or \
                 Cancel of a reservation that expired or never was), reported",
                Family::default(),
            ),
            ratelimit_decisions: add.metric(
                "cachelock_ratelimit_decisions",
                "Rate-limit decisions by result: allowed, denied, waited (allowed after waiting its turn), policy_allowed, policy_denied (the outage policy)",
                Family::default(),
            ),
            ratelimit_batches: add.metric(
                "cachelock_ratelimit_batches",
                "Rate-limit script calls sent to Redis; each decides one or more requests (group commit)",
                Counter::default(),
            ),
            ratelimit_batched_requests: add.metric(
                "cachelock_ratelimit_batched_requests",
                "Rate-limit requests decided by those calls: divided by the calls, the mean batch size",
                Counter::default(),
            ),
            rls_descriptors: add.metric(
                "cachelock_rls_descriptors",
                "Envoy ShouldRateLimit descriptors by result: ok, over_limit, shadow_over_limit (answered OK), \
             unlimited, no_rule, policy_ok, policy_over_limit (the outage policy)",
                Family::default(),
            ),
            rls_reloads: add.metric(
                "cachelock_rls_reloads",
                "Envoy rate-limit rule loads by result: loaded, refused (the previous rules stay in force)",
                Family::default(),
            ),
            lock_grants: add.metric("cachelock_lock_grants", "Locks granted", Counter::default()),
            lock_waits: add.metric(
                "cachelock_lock_waits",
                "Acquires that waited for a held lock",
                Counter::default(),
            ),
            lock_wait_seconds: add.with_unit(
                "cachelock_lock_wait",
                "How long waiting Acquires waited, granted or not",
                Unit::Seconds,
                Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            ),
            lock_leases_lost: add.metric(
                "cachelock_lock_leases_lost",
                "Release or Extend by a token whose lease was lost",
                Counter::default(),
            ),
            sessions: add.metric(
                "cachelock_sessions",
                "Session events: created, rotated, deleted, evicted (over the per-user limit), logged_out",
                Family::default(),
            ),
            pubsub_published: add.metric(
                "cachelock_pubsub_published",
                "Messages published through this instance",
                Counter::default(),
            ),
            pubsub_delivered: add.metric(
                "cachelock_pubsub_delivered",
                "Messages handed to Subscribe streams, one per stream",
                Counter::default(),
            ),
            pubsub_dropped: add.metric(
                "cachelock_pubsub_dropped",
                "Messages dropped for a Subscribe stream whose buffer was full",
                Counter::default(),
            ),
            pubsub_streams: add.metric("cachelock_pubsub_streams", "Open Subscribe streams", Gauge::default()),
            refused: add.metric(
                "cachelock_requests_refused",
                "Requests refused to protect the service or by authentication, by reason",
                Family::default(),
            ),
            waiters: add.metric(
                "cachelock_waiters",
                "Calls waiting in this instance, by what for: lock (a release), cache_fill (a GetOrLease fill)",
                Family::default(),
            ),
            build_info: add.metric("cachelock_build_info", "The build, as a constant 1", Family::default()),
            uptime_seconds: add.with_unit(
                "cachelock_uptime",
                "Time since the process started",
                Unit::Seconds,
                Gauge::default(),
            ),
            started: std::time::Instant::now(),
        };
        metrics
            .build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: option_env!("CACHELOCK_GIT_COMMIT").unwrap_or("unknown"),
            })
            .set(1);
        // A series of each kind and reason from the start: a dashboard shows 0, not "no data".
        for kind in ["lock", "cache_fill"] {
            let _ = metrics.waiters.get_or_create(&WaiterKind { kind });
        }
        for result in ["applied", "fenced_out"] {
            let _ = metrics.fenced_writes.get_or_create(&Outcome { result });
        }
        for refusal in Refusal::ALL {
            let _ = metrics.refused.get_or_create(&RefusalReason {
                reason: refusal.label(),
            });
        }
        metrics.registry = registry;
        metrics
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        self.uptime_seconds.set(self.started.elapsed().as_secs_f64());
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Records the start of an RPC of `method`.
    pub fn rpc_started(&self, method: Method) {
        self.rpc_in_flight.inc();
        self.series(method)
            .started
            .get_or_init(|| self.rpc_started.get_or_create(method.labels).clone())
            .inc();
    }

    /// Records that an RPC of `method` sent its response headers `took` after it started.
    pub fn rpc_answered(&self, method: Method, took: Duration) {
        self.series(method)
            .seconds
            .get_or_init(|| self.rpc_seconds.get_or_create(method.labels).clone())
            .observe(took.as_secs_f64());
    }

    /// Records the end of an RPC of `method` with `code`.
    pub fn rpc_finished(&self, method: Method, code: tonic::Code) {
        self.rpc_in_flight.dec();
        let labels = HandledLabels {
            grpc_type: method.labels.grpc_type,
            grpc_service: method.labels.grpc_service,
            grpc_method: method.labels.grpc_method,
            grpc_code: code_name(code),
        };
        match self.series(method).handled.get(code as usize) {
            Some(handled) => handled
                .get_or_init(|| self.rpc_handled.get_or_create(&labels).clone())
                .inc(),
            None => self.rpc_handled.get_or_create(&labels).inc(),
        };
    }

    fn series(&self, method: Method) -> &RpcSeries {
        self.rpc_series.get(method.index).unwrap_or(&self.rpc_unknown)
    }

    /// Records one Redis round trip of `operation`.
    pub fn redis_call(&self, operation: &'static str, took: Duration) {
        self.redis_seconds
            .get_or_create(&Operation { operation })
            .observe(took.as_secs_f64());
    }

    /// Records a Redis failure of `kind`.
    pub fn redis_error(&self, kind: &'static str) {
        self.redis_errors.get_or_create(&ErrorKind { kind }).inc();
    }

    /// Records an outcome in `family`.
    pub fn count(family: &Family<Outcome, Counter>, result: &'static str) {
        Metrics::count_by(family, result, 1);
    }

    /// Records `n` outcomes in `family`.
    pub fn count_by(family: &Family<Outcome, Counter>, result: &'static str, n: u64) {
        if n > 0 {
            family.get_or_create(&Outcome { result }).inc_by(n);
        }
    }

    /// Counts `change` (1 or -1) calls of `kind` waiting.
    pub fn waiting(&self, kind: &'static str, change: i64) {
        self.waiters.get_or_create(&WaiterKind { kind }).inc_by(change);
    }

    /// Records a refused request.
    pub fn refuse(&self, refusal: Refusal) {
        self.refused
            .get_or_create(&RefusalReason {
                reason: refusal.label(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::{super::methods::method, *};

    /// The value of the series `name{labels}` in `text`.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn kept_series_count_into_their_families() {
        let metrics = Metrics::new();
        let get = method("/grpc.health.v1.Health/Check");
        let made_up = method("/no.such.Service/Method");
        for _ in 0..3 {
            metrics.rpc_started(get);
            metrics.rpc_answered(get, Duration::from_millis(1));
            metrics.rpc_finished(get, tonic::Code::Ok);
        }
        metrics.rpc_started(get);
        metrics.rpc_finished(get, tonic::Code::Unavailable);
        metrics.rpc_started(made_up);
        metrics.rpc_finished(made_up, tonic::Code::Unimplemented);

        let text = metrics.render();
        let health = "grpc_type=\"unary\",grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\"";
        let unknown = "grpc_type=\"unknown\",grpc_service=\"unknown\",grpc_method=\"unknown\"";
        assert_eq!(
            value(&text, &format!("grpc_server_started_total{{{health}}}")),
            Some(4.0)
        );
        assert_eq!(
            value(&text, &format!("grpc_server_handling_seconds_count{{{health}}}")),
            Some(3.0)
        );
        assert_eq!(
            value(
                &text,
                &format!("grpc_server_handled_total{{{health},grpc_code=\"OK\"}}")
            ),
            Some(3.0)
        );
        assert_eq!(
            value(
                &text,
                &format!("grpc_server_handled_total{{{health},grpc_code=\"Unavailable\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, &format!("grpc_server_started_total{{{unknown}}}")),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                &format!("grpc_server_handled_total{{{unknown},grpc_code=\"Unimplemented\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(value(&text, "grpc_server_in_flight"), Some(0.0));
    }
}
