//! `grpc.health.v1`, driven by a background prober that watches the Redis
//! connections and inspects the server.
//!
//! Every name (`""` and each service) starts NOT_SERVING, because tonic-health
//! would otherwise report `""` as SERVING before Redis was ever reached. The
//! prober sets all names SERVING while Redis is a writable primary that answers
//! — not loading, not BUSY with a script, and with `--require-noeviction` not
//! configured to evict — and NOT_SERVING otherwise; Check answers from that
//! cached state at once. It reacts the moment a connection drops or comes back,
//! and polls every `--health-interval` (every 100 ms while not serving).
//!
//! It is also the one place that logs what Redis is doing — connected, lost and
//! why (refused, authentication, TLS, DNS, timeout), replica, busy, full,
//! evicting — once per change, not once per failed request. On shutdown every
//! name goes NOT_SERVING and open Watch streams end, so that clients move
//! elsewhere before the listener closes.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{Stream, StreamExt, stream};
use tokio::{
    sync::{Semaphore, watch},
    time::{Instant, sleep},
};
use tonic::{Request, Response, Status};
use tonic_health::{
    ServingStatus,
    pb::{
        HealthCheckRequest, HealthCheckResponse, health_check_response,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService},
};
use tracing::{info, warn};

use crate::{
    error::{Error, Reason},
    redis::{Kind, Op, Patience, Redis, Request as RedisRequest, State, Topology},
    telemetry::ThrottledLog,
    telemetry::{HealthName, Meter},
};

/// How often the prober looks while Redis is not serving.
const FAST_INTERVAL: Duration = Duration::from_millis(100);

/// The serving status of every registered name, shared by the prober and shutdown.
#[derive(Clone)]
pub struct HealthStatus {
    reporter: HealthReporter,
    names: Arc<[&'static str]>,
    /// Set once shutdown begins; from then on nothing sets a name SERVING again.
    closed: Arc<tokio::sync::Mutex<bool>>,
    /// Whether the names are SERVING now, for `/readyz`.
    serving: Arc<AtomicBool>,
    meter: Meter,
}

impl HealthStatus {
    /// Sets every registered name to `status` (unless shutting down, for SERVING).
    pub async fn set_all(&self, status: ServingStatus) {
        let closed = self.closed.lock().await;
        if *closed && status == ServingStatus::Serving {
            return;
        }
        self.set(status).await;
    }

    /// Sets every registered name SERVING but those in `withheld`, which stay
    /// NOT_SERVING (unless shutting down: then nothing changes).
    pub async fn serve(&self, withheld: &[&'static str]) {
        let closed = self.closed.lock().await;
        if *closed {
            return;
        }
        self.serving.store(true, Ordering::Release);
        for name in self.names.iter() {
            let status = if withheld.contains(name) {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            };
            self.report(name, status).await;
        }
    }

    /// Sets every name NOT_SERVING for good: the process is shutting down.
    pub async fn close(&self) {
        let mut closed = self.closed.lock().await;
        *closed = true;
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        self.serving.store(status == ServingStatus::Serving, Ordering::Release);
        for name in self.names.iter() {
            self.report(name, status).await;
        }
    }

    async fn report(&self, name: &'static str, status: ServingStatus) {
        self.reporter.set_service_status(name, status).await;
        self.meter.record(|metrics| {
            metrics
                .health_serving
                .get_or_create(&HealthName { service: name })
                .set(i64::from(status == ServingStatus::Serving));
        });
    }

    /// Whether the names are SERVING now.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }
}

/// Registers `""` and `services` as NOT_SERVING and builds the health service.
///
/// At most `max_watch_streams` Watch streams are open at once. They end (after a
/// last NOT_SERVING) once `draining` becomes true.
pub async fn health_service(
    services: &[&'static str],
    draining: watch::Receiver<bool>,
    max_watch_streams: usize,
    meter: Meter,
) -> (HealthStatus, HealthServer<DrainingHealth>) {
    let reporter = HealthReporter::new();
    let names: Arc<[&'static str]> = std::iter::once("").chain(services.iter().copied()).collect();
    let status = HealthStatus {
        reporter,
        names,
        closed: Arc::default(),
        serving: Arc::default(),
        meter: meter.clone(),
    };
    status.set_all(ServingStatus::NotServing).await;
    let service = DrainingHealth {
        inner: HealthService::from_health_reporter(status.reporter.clone()),
        draining,
        watchers: Arc::new(Semaphore::new(max_watch_streams)),
        max_watch_streams,
        meter,
    };
    (status, HealthServer::new(service))
}

/// tonic-health's service, with Watch streams that end when the server drains
/// (a plain Watch stream would hold the graceful shutdown open until its grace
/// ran out), and a cap on how many are open.
pub struct DrainingHealth {
    inner: HealthService,
    draining: watch::Receiver<bool>,
    watchers: Arc<Semaphore>,
    max_watch_streams: usize,
    meter: Meter,
}

/// The delay suggested (`RetryInfo`) to a Watch refused for too many streams.
const WATCHERS_RETRY: Duration = Duration::from_secs(5);

static WATCHES_FULL: ThrottledLog =
    ThrottledLog::new("health Watch streams refused with RESOURCE_EXHAUSTED: --max-watch-streams are open");

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        let Ok(permit) = self.watchers.clone().try_acquire_owned() else {
            WATCHES_FULL.record();
            self.meter.record(|metrics| metrics.refuse("watch_streams"));
            return Err(Error::Exhausted {
                reason: Reason::TooManyWatchers,
                message: format!(
                    "{} health Watch streams are open (--max-watch-streams); use Check, or retry later",
                    self.max_watch_streams
                ),
                retry_after: Some(WATCHERS_RETRY),
            }
            .into());
        };
        let statuses = self.inner.watch(request).await?.into_inner();
        let mut draining = self.draining.clone();
        let drained = async move {
            // An Err means the sender is gone, which only happens after draining too.
            let _ = draining.wait_for(|draining| *draining).await;
        };
        let last = HealthCheckResponse {
            status: health_check_response::ServingStatus::NotServing as i32,
        };
        let stream = statuses.take_until(drained).chain(stream::once(async move {
            // The place is given back when the stream ends or is dropped.
            drop(permit);
            Ok(last)
        }));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What the prober needs to know.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// Time between probes while serving.
    pub interval: Duration,
    /// Longest wait for one probe's answer.
    pub timeout: Duration,
    /// Whether an eviction policy other than `noeviction` makes the service NOT_SERVING.
    pub require_noeviction: bool,
    /// The names that are NOT_SERVING while Redis may evict keys (the lock and
    /// session services, unless `--allow-evicting-redis`).
    pub unsafe_when_evicting: Vec<&'static str>,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Assessment {
    /// A connection attempt is under way: no news yet.
    Connecting,
    /// Redis can serve.
    Ready(Facts),
    /// Redis cannot serve, and why, in words for the log.
    NotReady(String),
}

/// What INFO said, beyond readiness (summed over a Cluster's primaries).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Facts {
    version: String,
    observed: Observed,
    used_memory: i64,
    max_memory: i64,
    /// Primaries and replicas, for the log.
    shape: Shape,
}

/// The nodes serving, for the log when they change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Shape {
    primaries: Vec<String>,
    replicas: Vec<String>,
}

/// What the last INFO said, for logging changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Observed {
    policy: String,
    full: bool,
    /// A maxmemory is set and the policy is not `noeviction` (on any primary).
    evicts: bool,
}

/// Watches Redis and sets every health name from what it sees; runs until its
/// task is aborted.
pub async fn probe_redis(redis: Redis, health: HealthStatus, settings: ProbeSettings, meter: Meter) {
    let mut changes = redis.watch();
    let mut serving = false;
    let mut withheld: &[&'static str] = &[];
    let mut ever_served = false;
    let mut last_reason: Option<String> = None;
    let mut observed = Observed::default();
    let mut shape = Shape::default();
    loop {
        let up = redis
            .roles()
            .into_iter()
            .all(|role| matches!(redis.state(role), State::Up { .. }));
        meter.record(|metrics| {
            metrics.redis_up.set(i64::from(up));
        });
        match assess(&redis, &settings).await {
            Assessment::Connecting => {}
            Assessment::Ready(facts) => {
                meter.record(|metrics| {
                    metrics.redis_used_memory.set(facts.used_memory);
                    metrics.redis_max_memory.set(facts.max_memory);
                });
                let now_withheld: &[&'static str] = if facts.observed.evicts {
                    &settings.unsafe_when_evicting
                } else {
                    &[]
                };
                if !serving {
                    let event = if ever_served {
                        "Redis is serving again"
                    } else {
                        "connected to Redis"
                    };
                    info!(
                        redis = %redis.describe(),
                        redis_version = %facts.version,
                        maxmemory_policy = %facts.observed.policy,
                        "{event}; health is SERVING"
                    );
                }
                if !serving || now_withheld != withheld {
                    health.serve(now_withheld).await;
                    serving = true;
                    ever_served = true;
                    withheld = now_withheld;
                }
                if facts.shape != shape {
                    info!(
                        primaries = %facts.shape.primaries.join(","),
                        replicas = %facts.shape.replicas.join(","),
                        "Redis topology"
                    );
                    shape = facts.shape;
                }
                last_reason = None;
                log_changes(&observed, &facts.observed, withheld);
                observed = facts.observed;
            }
            Assessment::NotReady(reason) => {
                // Once per change of cause, not once per probe.
                if last_reason.as_ref() != Some(&reason) {
                    warn!(redis = %redis.describe(), %reason, "Redis cannot serve; health is NOT_SERVING");
                    last_reason = Some(reason);
                }
                if serving {
                    health.set_all(ServingStatus::NotServing).await;
                    serving = false;
                }
            }
        }
        let pause = if serving {
            settings.interval
        } else {
            settings.interval.min(FAST_INTERVAL)
        };
        let changed = futures_util::future::select_all(changes.iter_mut().map(|change| Box::pin(change.changed())));
        tokio::select! {
            () = sleep(pause) => {}
            _ = changed => {}
        }
    }
}

async fn assess(redis: &Redis, settings: &ProbeSettings) -> Assessment {
    for role in redis.roles() {
        match redis.state(role) {
            State::Up { .. } => {}
            State::Connecting => return Assessment::Connecting,
            State::Down { cause, .. } => return Assessment::NotReady(format!("cannot connect: {cause}")),
        }
    }
    let result = match redis.kind() {
        Kind::Standalone | Kind::Sentinel => assess_node(redis, settings).await,
        Kind::Cluster => assess_cluster(redis, settings).await,
    };
    match result {
        Ok(facts) => Assessment::Ready(facts),
        Err(reason) => Assessment::NotReady(reason),
    }
}

/// One command for the prober, on the read connection, answered or refused at once.
async fn ask<T: ::redis::FromRedisValue>(
    redis: &Redis,
    settings: &ProbeSettings,
    request: RedisRequest<'_>,
) -> Result<T, String> {
    let deadline = Instant::now() + settings.timeout;
    match redis
        .run_with(Op::read("health_info"), Patience::Current, deadline, request)
        .await
    {
        Ok(reply) => Ok(reply),
        Err(Error::Unavailable(cause)) => Err(cause.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

fn info_command() -> ::redis::Cmd {
    let mut command = ::redis::cmd("INFO");
    command
        .arg("server")
        .arg("replication")
        .arg("memory")
        .arg("persistence");
    command
}

/// A single Redis, or the primary a Sentinel named.
async fn assess_node(redis: &Redis, settings: &ProbeSettings) -> Result<Facts, String> {
    let command = info_command();
    let text: String = ask(redis, settings, (&command).into()).await?;
    let info = parse_info(&text);
    let facts = judge(&info, settings).inspect_err(|_| {
        if redis.kind() == Kind::Sentinel && info.get("role").is_some_and(|role| *role != "master") {
            // Demoted under us: look the primary up again.
            redis.reconnect();
        }
    })?;
    let replicas = (0..)
        .map_while(|index| info.get(format!("slave{index}").as_str()).copied())
        .filter_map(|replica| {
            let field = |name: &str| {
                replica
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            };
            Some(format!("{}:{}", field("ip")?, field("port")?))
        })
        .collect();
    Ok(Facts {
        shape: Shape {
            primaries: redis.topology().primary().into_iter().collect(),
            replicas,
        },
        ..facts
    })
}

/// Every primary of a Cluster must serve, and the Cluster must cover every slot.
async fn assess_cluster(redis: &Redis, settings: &ProbeSettings) -> Result<Facts, String> {
    let mut command = ::redis::cmd("CLUSTER");
    command.arg("INFO");
    let text: String = ask(redis, settings, (&command).into()).await?;
    let state = parse_info(&text)
        .get("cluster_state")
        .copied()
        .unwrap_or("unknown")
        .to_owned();
    if state != "ok" {
        return Err(format!(
            "cluster_state:{state}: the Cluster does not serve every slot (a primary is down with no replica \
             promoted yet, or slots are unassigned)"
        ));
    }
    let mut command = ::redis::cmd("CLUSTER");
    command.arg("NODES");
    let text: String = ask(redis, settings, (&command).into()).await?;
    let nodes = parse_cluster_nodes(&text);
    let primaries: Vec<&ClusterNode> = nodes.iter().filter(|node| node.primary && node.serves_slots).collect();
    if primaries.is_empty() {
        return Err("CLUSTER NODES lists no primary serving slots".to_owned());
    }
    if let Topology::Cluster(cluster) = redis.topology() {
        let addresses: Vec<(String, u16)> = nodes.iter().map(|node| (node.host.clone(), node.port)).collect();
        cluster.learn_nodes(&addresses);
    }
    let mut total = Facts::default();
    for primary in &primaries {
        let command = info_command();
        let request = RedisRequest::AtNode {
            command: &command,
            host: &primary.host,
            port: primary.port,
        };
        let text: String = ask(redis, settings, request)
            .await
            .map_err(|reason| format!("primary {}: {reason}", primary.address()))?;
        let facts =
            judge(&parse_info(&text), settings).map_err(|reason| format!("primary {}: {reason}", primary.address()))?;
        total.version = facts.version;
        total.observed.policy = facts.observed.policy;
        total.observed.full |= facts.observed.full;
        total.observed.evicts |= facts.observed.evicts;
        total.used_memory = total.used_memory.saturating_add(facts.used_memory);
        total.max_memory = total.max_memory.saturating_add(facts.max_memory);
    }
    let mut shape = Shape {
        primaries: primaries.iter().map(|node| node.address()).collect(),
        replicas: nodes
            .iter()
            .filter(|node| !node.primary && !node.failed)
            .map(ClusterNode::address)
            .collect(),
    };
    shape.primaries.sort();
    shape.replicas.sort();
    total.shape = shape;
    Ok(total)
}

/// Whether one node's INFO says it can serve.
fn judge(info: &HashMap<&str, &str>, settings: &ProbeSettings) -> Result<Facts, String> {
    let field = |name: &str| info.get(name).copied().unwrap_or_default();
    let number = |name: &str| field(name).parse::<u64>().unwrap_or(0);
    let observed = Observed {
        policy: field("maxmemory_policy").to_owned(),
        full: number("maxmemory") > 0 && number("used_memory") >= number("maxmemory"),
        evicts: number("maxmemory") > 0 && !matches!(field("maxmemory_policy"), "noeviction" | ""),
    };
    if field("role") != "master" {
        Err(format!(
            "the node is a read-only replica (role:{}): writes would fail until a writable primary is reached",
            field("role")
        ))
    } else if field("loading") == "1" {
        Err("Redis is loading its dataset".to_owned())
    } else if settings.require_noeviction && observed.policy != "noeviction" {
        Err(format!(
            "maxmemory-policy is {}, and --require-noeviction is set: Redis could evict locks and sessions",
            observed.policy
        ))
    } else {
        Ok(Facts {
            version: field("redis_version").to_owned(),
            observed,
            used_memory: i64::try_from(number("used_memory")).unwrap_or(i64::MAX),
            max_memory: i64::try_from(number("maxmemory")).unwrap_or(i64::MAX),
            shape: Shape::default(),
        })
    }
}

/// One line of CLUSTER NODES.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClusterNode {
    host: String,
    port: u16,
    primary: bool,
    failed: bool,
    serves_slots: bool,
}

impl ClusterNode {
    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slot>…`
fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            let flags = fields.get(2)?;
            let failed = flags
                .split(',')
                .any(|flag| matches!(flag, "fail" | "fail?" | "noaddr" | "handshake"));
            Some(ClusterNode {
                host: host.to_owned(),
                port: port.parse().ok()?,
                primary: flags.split(',').any(|flag| flag == "master"),
                failed,
                serves_slots: fields.len() > 8,
            })
        })
        .filter(|node| !node.host.is_empty() && node.port != 0)
        .collect()
}

/// Logs what changed in Redis's configuration or memory since the last probe;
/// `withheld` are the names kept NOT_SERVING because Redis may evict.
fn log_changes(before: &Observed, now: &Observed, withheld: &[&'static str]) {
    let policy_changed = now.policy != before.policy && now.policy != "noeviction" && !now.policy.is_empty();
    if policy_changed || (now.evicts && !before.evicts) {
        if withheld.is_empty() {
            warn!(
                maxmemory_policy = %now.policy,
                "Redis may evict keys under memory pressure: every key cachelock writes has a ttl, so any \
                 volatile-* or allkeys-* policy can drop held locks, live sessions and rate-limit state. \
                 Set maxmemory-policy to noeviction"
            );
        } else {
            warn!(
                maxmemory_policy = %now.policy,
                not_serving = %withheld.join(","),
                "Redis may evict keys under memory pressure: an evicted lease would be granted again while its \
                 holder still works, and an evicted session index hides sessions from log-out-everywhere, so lock \
                 grants and extensions are refused and these services' health is NOT_SERVING. Set \
                 maxmemory-policy to noeviction (or start cachelock with --allow-evicting-redis, accepting that risk)"
            );
        }
    }
    if now.full && !before.full {
        warn!("Redis is out of memory (used_memory >= maxmemory): writes are refused, reads and deletes still work");
    } else if !now.full && before.full {
        info!("Redis has memory again: writes are accepted");
    }
}

fn parse_info(info: &str) -> HashMap<&str, &str> {
    info.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.trim_end().split_once(':'))
        .collect()
}
