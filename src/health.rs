//! `grpc.health.v1`, driven by a background prober that PINGs Redis.
//!
//! Every name (`""` and each service) starts NOT_SERVING, because tonic-health
//! would otherwise report `""` as SERVING before Redis was ever reached. The
//! prober PINGs every interval and sets all names SERVING or NOT_SERVING; Check
//! answers from that cached state at once. It is also the one place that logs
//! Redis connection changes (connected, lost, reconnected), so an outage is one
//! log line, not one per failed request. On shutdown every name goes
//! NOT_SERVING and open Watch streams end, so that clients move elsewhere
//! before the listener closes.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt, stream};
use redis::Script;
use tokio::{
    sync::watch,
    time::{Instant, sleep, timeout},
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

use crate::redis::Redis;

/// The serving status of every registered name, shared by the prober and shutdown.
#[derive(Clone)]
pub struct HealthStatus {
    reporter: HealthReporter,
    names: Arc<[&'static str]>,
}

impl HealthStatus {
    /// Sets every registered name to `status`.
    pub async fn set_all(&self, status: ServingStatus) {
        for name in self.names.iter() {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// Registers `""` and `services` as NOT_SERVING and builds the health service.
///
/// Watch streams opened on it end (after a last NOT_SERVING) once `draining`
/// becomes true.
pub async fn health_service(
    services: &[&'static str],
    draining: watch::Receiver<bool>,
) -> (HealthStatus, HealthServer<DrainingHealth>) {
    let reporter = HealthReporter::new();
    let names: Arc<[&'static str]> = std::iter::once("").chain(services.iter().copied()).collect();
    let status = HealthStatus { reporter, names };
    status.set_all(ServingStatus::NotServing).await;
    let service = DrainingHealth {
        inner: HealthService::from_health_reporter(status.reporter.clone()),
        draining,
    };
    (status, HealthServer::new(service))
}

/// tonic-health's service, with Watch streams that end when the server drains
/// (a plain Watch stream would hold the graceful shutdown open until its grace ran out).
pub struct DrainingHealth {
    inner: HealthService,
    draining: watch::Receiver<bool>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        let mut draining = self.draining.clone();
        let drained = async move {
            // An Err means the sender is gone, which only happens after draining too.
            let _ = draining.wait_for(|draining| *draining).await;
        };
        let last = HealthCheckResponse {
            status: health_check_response::ServingStatus::NotServing as i32,
        };
        let stream = statuses
            .take_until(drained)
            .chain(stream::once(async move { Ok(last) }));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What the prober last saw of Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    NeverReached,
    Up,
    Down,
}

/// PINGs Redis every `interval` (each PING bounded by `ping_timeout`) and sets
/// every health name from the answer; runs until its task is aborted.
///
/// On each (re)connection it logs the Redis version and ping latency, warns
/// about an eviction policy that could drop keys without a ttl, and loads
/// `scripts` so that the first requests need no extra round trip.
pub async fn probe_redis(
    redis: Redis,
    health: HealthStatus,
    interval: Duration,
    ping_timeout: Duration,
    scripts: Vec<&'static Script>,
) {
    let mut link = Link::NeverReached;
    let mut connected_before = false;
    loop {
        let started = Instant::now();
        let mut conn = redis.connection();
        let ping = match timeout(ping_timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => Ok(started.elapsed()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {}", humantime::format_duration(ping_timeout))),
        };
        link = match (ping, link) {
            (Ok(_), Link::Up) => Link::Up,
            (Ok(latency), _) => {
                let event = if connected_before {
                    "reconnected to Redis"
                } else {
                    "connected to Redis"
                };
                connected_before = true;
                describe_server(&redis, latency, ping_timeout, event).await;
                load_scripts(&redis, &scripts, ping_timeout).await;
                redis.set_reachable(true);
                health.set_all(ServingStatus::Serving).await;
                Link::Up
            }
            (Err(error), Link::Up) => {
                warn!(%error, "lost the connection to Redis; health is NOT_SERVING until it is back");
                redis.set_reachable(false);
                health.set_all(ServingStatus::NotServing).await;
                Link::Down
            }
            (Err(error), Link::NeverReached) => {
                warn!(%error, "Redis is not reachable yet; health stays NOT_SERVING until it is");
                redis.set_reachable(false);
                Link::Down
            }
            (Err(_), Link::Down) => Link::Down,
        };
        sleep(interval).await;
    }
}

/// Logs what the service is talking to, and warns about a risky eviction policy.
async fn describe_server(redis: &Redis, latency: Duration, budget: Duration, event: &str) {
    let mut conn = redis.connection();
    let text = match timeout(budget, redis::cmd("INFO").query_async::<String>(&mut conn)).await {
        Ok(Ok(text)) => text,
        _ => String::new(),
    };
    let info = parse_info(&text);
    let field = |name: &str| info.get(name).copied().unwrap_or("unknown").to_owned();
    let policy = field("maxmemory_policy");
    info!(
        redis_version = %field("redis_version"),
        ping_micros = latency.as_micros() as u64,
        maxmemory_policy = %policy,
        "{event}"
    );
    if policy.starts_with("allkeys-") {
        warn!(
            maxmemory_policy = %policy,
            "Redis may evict keys that carry no ttl under memory pressure; \
             set maxmemory-policy to noeviction or a volatile-* policy"
        );
    }
}

fn parse_info(info: &str) -> HashMap<&str, &str> {
    info.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.trim_end().split_once(':'))
        .collect()
}

async fn load_scripts(redis: &Redis, scripts: &[&'static Script], budget: Duration) {
    let mut conn = redis.connection();
    for script in scripts {
        // A failure here only costs the first request a NOSCRIPT round trip.
        if let Err(error) = timeout(budget, script.load_async(&mut conn))
            .await
            .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "script load timed out"))))
        {
            warn!(error = %error, "could not preload a Lua script");
        }
    }
}
