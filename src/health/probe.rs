//! The prober: watches the Redis connections, inspects the server (INFO, and
//! on a Cluster every primary), sets the health names, and logs what Redis is
//! doing once per change.

use std::{collections::HashMap, time::Duration};

use tokio::time::{Instant, sleep};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use super::service::{HealthStatus, Readiness};
use crate::{
    error::Error,
    redis::{
        ClusterNode, Kind, Op, Patience, Redis, Request as RedisRequest, State, Topology, info_command,
        parse_cluster_nodes, parse_info, replicas,
    },
    telemetry::Meter,
};

/// How often the prober looks while Redis is not serving.
const FAST_INTERVAL: Duration = Duration::from_millis(100);

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
    pub unsafe_when_evicting: &'static [&'static str],
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
    /// A maxmemory is set and 90% of it is used (on any primary).
    near_full: bool,
    /// A maxmemory is set and the policy is not `noeviction` (on any primary).
    evicts: bool,
}

/// Watches Redis and sets every health name from what it sees; runs until its
/// task is aborted.
pub async fn probe_redis(redis: Redis, health: HealthStatus, settings: ProbeSettings, meter: Meter) {
    let mut changes = redis.watch();
    let mut prober = Prober {
        redis,
        health,
        settings,
        meter,
        serving: false,
        ever_served: false,
        withheld: &[],
        last_reason: None,
        observed: Observed::default(),
        shape: Shape::default(),
    };
    loop {
        prober.probe().await;
        let pause = if prober.serving {
            prober.settings.interval
        } else {
            prober.settings.interval.min(FAST_INTERVAL)
        };
        let changed = futures_util::future::select_all(changes.iter_mut().map(|change| Box::pin(change.changed())));
        tokio::select! {
            () = sleep(pause) => {}
            _ = changed => {}
        }
    }
}

/// The prober and what it last saw, to act and log only on changes.
struct Prober {
    redis: Redis,
    health: HealthStatus,
    settings: ProbeSettings,
    meter: Meter,
    serving: bool,
    ever_served: bool,
    /// The names kept NOT_SERVING while the others serve.
    withheld: &'static [&'static str],
    /// Why Redis could not serve at the last probe that found it so.
    last_reason: Option<String>,
    observed: Observed,
    shape: Shape,
}

impl Prober {
    /// Looks at Redis once and sets the health names from what it finds.
    async fn probe(&mut self) {
        let up = self
            .redis
            .roles()
            .into_iter()
            .all(|role| matches!(self.redis.state(role), State::Up { .. }));
        self.meter.record(|metrics| metrics.redis_up.set(i64::from(up)));
        let started = Instant::now();
        let assessment = assess(&self.redis, &self.settings).await;
        self.health.record_probe(self.readiness(&assessment, started.elapsed()));
        match assessment {
            Assessment::Connecting => {}
            Assessment::Ready(facts) => self.ready(facts).await,
            Assessment::NotReady(reason) => {
                self.redis.set_roomy(false);
                // Once per change of cause, not once per probe.
                if self.last_reason.as_ref() != Some(&reason) {
                    warn!(redis = %self.redis.describe(), %reason, "Redis cannot serve; health is NOT_SERVING");
                    self.last_reason = Some(reason);
                }
                if self.serving {
                    self.health.set_all(ServingStatus::NotServing).await;
                    self.serving = false;
                }
            }
        }
    }

    /// What `/readyz` says of this probe, which took `took`.
    fn readiness(&self, assessment: &Assessment, took: Duration) -> Readiness {
        let topology = match self.redis.kind() {
            Kind::Standalone => "standalone",
            Kind::Sentinel => "sentinel",
            Kind::Cluster => "cluster",
        };
        let mut readiness = Readiness {
            topology,
            probed_at: Some(Instant::now().into_std()),
            ..Readiness::default()
        };
        match assessment {
            Assessment::Connecting => readiness.reason = Some("connecting to Redis".to_owned()),
            Assessment::NotReady(reason) => readiness.reason = Some(reason.clone()),
            Assessment::Ready(facts) => {
                readiness.primaries = facts.shape.primaries.clone();
                readiness.replicas = facts.shape.replicas.clone();
                readiness.redis_version = Some(facts.version.clone());
                readiness.round_trip_ms = Some(took.as_secs_f64() * 1000.0);
                if facts.observed.evicts {
                    readiness.withheld = self.settings.unsafe_when_evicting.to_vec();
                }
            }
        }
        readiness
    }

    /// Redis can serve: every name but those unsafe with an evicting Redis is SERVING.
    async fn ready(&mut self, facts: Facts) {
        self.redis.set_roomy(!facts.observed.near_full);
        self.meter.record(|metrics| {
            metrics.redis_used_memory.set(facts.used_memory);
            metrics.redis_max_memory.set(facts.max_memory);
        });
        let withheld: &'static [&'static str] = if facts.observed.evicts {
            self.settings.unsafe_when_evicting
        } else {
            &[]
        };
        if !self.serving {
            let event = if self.ever_served {
                "Redis is serving again"
            } else {
                "connected to Redis"
            };
            info!(
                redis = %self.redis.describe(),
                redis_version = %facts.version,
                maxmemory_policy = %facts.observed.policy,
                "{event}; health is SERVING"
            );
        }
        if !self.serving || withheld != self.withheld {
            self.health.serve(withheld).await;
            self.serving = true;
            self.ever_served = true;
            self.withheld = withheld;
        }
        if facts.shape != self.shape {
            info!(
                primaries = %facts.shape.primaries.join(","),
                replicas = %facts.shape.replicas.join(","),
                "Redis topology"
            );
            self.shape = facts.shape;
        }
        self.last_reason = None;
        log_changes(&self.observed, &facts.observed, self.withheld);
        self.observed = facts.observed;
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
    Ok(Facts {
        shape: Shape {
            primaries: redis.topology().primary().into_iter().collect(),
            replicas: replicas(&info),
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
        total.observed.near_full |= facts.observed.near_full;
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
        near_full: number("maxmemory") > 0
            && number("used_memory").saturating_mul(10) >= number("maxmemory").saturating_mul(9),
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
