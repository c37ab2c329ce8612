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
    admission::RefusalLog,
    error::Error,
    redis::{Op, Patience, Redis, Role, State, epoch::DataEpoch},
    telemetry::{Meter, metrics::HealthName},
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

    /// Sets every name NOT_SERVING for good: the process is shutting down.
    pub async fn close(&self) {
        let mut closed = self.closed.lock().await;
        *closed = true;
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        let serving = status == ServingStatus::Serving;
        self.serving.store(serving, Ordering::Release);
        for name in self.names.iter() {
            self.reporter.set_service_status(name, status).await;
            self.meter.record(|metrics| {
                metrics
                    .health_serving
                    .get_or_create(&HealthName { service: name })
                    .set(i64::from(serving));
            });
        }
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

static WATCHES_FULL: RefusalLog =
    RefusalLog::new("health Watch streams refused with RESOURCE_EXHAUSTED: --max-watch-streams are open");

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
            return Err(Status::resource_exhausted(format!(
                "{} health Watch streams are open (--max-watch-streams); use Check, or retry later",
                self.max_watch_streams
            )));
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

/// What INFO said, beyond readiness.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Facts {
    version: String,
    observed: Observed,
    used_memory: i64,
    max_memory: i64,
}

/// What the last INFO said, for logging changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Observed {
    policy: String,
    full: bool,
}

/// Watches Redis and sets every health name from what it sees; runs until its
/// task is aborted. `epoch` is checked at every probe while Redis is ready.
pub async fn probe_redis(redis: Redis, health: HealthStatus, epoch: DataEpoch, settings: ProbeSettings, meter: Meter) {
    let [mut reads, mut writes] = redis.watch();
    let mut serving = false;
    let mut ever_served = false;
    let mut last_reason: Option<String> = None;
    let mut observed = Observed::default();
    loop {
        let up = [Role::Reads, Role::Writes]
            .iter()
            .all(|role| matches!(redis.state(*role), State::Up { .. }));
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
                if !serving {
                    let event = if ever_served {
                        "Redis is serving again"
                    } else {
                        "connected to Redis"
                    };
                    info!(
                        redis = %redis.address(),
                        redis_version = %facts.version,
                        maxmemory_policy = %facts.observed.policy,
                        "{event}; health is SERVING"
                    );
                    health.set_all(ServingStatus::Serving).await;
                    serving = true;
                    ever_served = true;
                }
                last_reason = None;
                log_changes(&observed, &facts.observed);
                observed = facts.observed;
                let deadline = Instant::now() + settings.timeout;
                if let Err(error) = redis.check_epoch(&epoch, deadline).await {
                    tracing::debug!(%error, "could not check the data epoch");
                }
            }
            Assessment::NotReady(reason) => {
                // Once per change of cause, not once per probe.
                if last_reason.as_ref() != Some(&reason) {
                    warn!(redis = %redis.address(), %reason, "Redis cannot serve; health is NOT_SERVING");
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
        tokio::select! {
            () = sleep(pause) => {}
            _ = reads.changed() => {}
            _ = writes.changed() => {}
        }
    }
}

async fn assess(redis: &Redis, settings: &ProbeSettings) -> Assessment {
    for role in [Role::Writes, Role::Reads] {
        match redis.state(role) {
            State::Up { .. } => {}
            State::Connecting(_) => return Assessment::Connecting,
            State::Down { cause, .. } => return Assessment::NotReady(format!("cannot connect: {cause}")),
        }
    }
    let mut command = redis::cmd("INFO");
    command
        .arg("server")
        .arg("replication")
        .arg("memory")
        .arg("persistence");
    let deadline = Instant::now() + settings.timeout;
    let text: String = match redis
        .run_with(Op::read("health_info"), Patience::Current, deadline, (&command).into())
        .await
    {
        Ok(text) => text,
        Err(Error::Unavailable(cause)) => return Assessment::NotReady(cause.to_string()),
        Err(error) => return Assessment::NotReady(error.to_string()),
    };
    let info = parse_info(&text);
    let field = |name: &str| info.get(name).copied().unwrap_or_default();
    let number = |name: &str| field(name).parse::<u64>().unwrap_or(0);
    let observed = Observed {
        policy: field("maxmemory_policy").to_owned(),
        full: number("maxmemory") > 0 && number("used_memory") >= number("maxmemory"),
    };
    if field("role") != "master" {
        Assessment::NotReady(format!(
            "the node is a read-only replica (role:{}): writes would fail until a writable primary is reached",
            field("role")
        ))
    } else if field("loading") == "1" {
        Assessment::NotReady("Redis is loading its dataset".to_owned())
    } else if settings.require_noeviction && observed.policy != "noeviction" {
        Assessment::NotReady(format!(
            "maxmemory-policy is {}, and --require-noeviction is set: Redis could evict locks and sessions",
            observed.policy
        ))
    } else {
        Assessment::Ready(Facts {
            version: field("redis_version").to_owned(),
            observed,
            used_memory: i64::try_from(number("used_memory")).unwrap_or(i64::MAX),
            max_memory: i64::try_from(number("maxmemory")).unwrap_or(i64::MAX),
        })
    }
}

/// Logs what changed in Redis's configuration or memory since the last probe.
fn log_changes(before: &Observed, now: &Observed) {
    if now.policy != before.policy && now.policy != "noeviction" && !now.policy.is_empty() {
        warn!(
            maxmemory_policy = %now.policy,
            "Redis may evict keys under memory pressure: every key cachelock writes has a ttl, so any \
             volatile-* or allkeys-* policy can drop held locks, live sessions and rate-limit state. \
             Set maxmemory-policy to noeviction"
        );
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
