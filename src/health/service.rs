//! The `grpc.health.v1` service: every name's status as the prober last set
//! it, with Watch streams bounded and ended at shutdown.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use serde::Serialize;

use futures_util::{Stream, StreamExt, stream};
use tokio::sync::{Semaphore, watch};
use tonic::{Request, Response, Status};
use tonic_health::{
    ServingStatus,
    pb::{
        HealthCheckRequest, HealthCheckResponse, health_check_response,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService},
};

use crate::{
    error::{Error, Reason},
    telemetry::{HealthName, Meter, Refusal, ThrottledLog},
};

/// What the last probe found: why the service is not ready, and the Redis
/// behind it, for `/readyz` in JSON. Addresses and versions only: no secret.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Readiness {
    /// Why Redis cannot serve, while it cannot.
    pub reason: Option<String>,
    /// `standalone`, `sentinel` or `cluster`.
    pub topology: &'static str,
    /// The primaries serving (host:port).
    pub primaries: Vec<String>,
    /// Their replicas.
    pub replicas: Vec<String>,
    /// `redis_version` from INFO.
    pub redis_version: Option<String>,
    /// How long the last successful probe's INFO (on a Cluster, every primary's) took.
    pub round_trip_ms: Option<f64>,
    /// The names kept NOT_SERVING while the others serve (an evicting Redis).
    pub withheld: Vec<&'static str>,
    /// When the probe ran.
    #[serde(skip)]
    pub probed_at: Option<Instant>,
}

/// `/readyz`'s JSON: the status, how old the news is, and [`Readiness`].
#[derive(Serialize)]
struct ReadinessReport<'a> {
    status: &'static str,
    probed_seconds_ago: Option<f64>,
    #[serde(flatten)]
    readiness: &'a Readiness,
}

/// The serving status of every registered name, shared by the prober and shutdown.
#[derive(Clone)]
pub struct HealthStatus {
    reporter: HealthReporter,
    names: Arc<[&'static str]>,
    /// Set once shutdown begins; from then on nothing sets a name SERVING again.
    closed: Arc<tokio::sync::Mutex<bool>>,
    /// Whether shutdown began, for `/readyz`.
    closing: Arc<AtomicBool>,
    /// Whether the names are SERVING now, for `/readyz`.
    serving: Arc<AtomicBool>,
    /// What the last probe found.
    readiness: Arc<ArcSwap<Readiness>>,
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
        self.closing.store(true, Ordering::Release);
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

    /// Keeps what a probe found, for [`HealthStatus::readiness_json`].
    pub fn record_probe(&self, readiness: Readiness) {
        self.readiness.store(Arc::new(readiness));
    }

    /// The status and what the last probe found, as one JSON object.
    pub fn readiness_json(&self) -> String {
        let readiness = self.readiness.load();
        let status = if self.closing.load(Ordering::Acquire) {
            "SHUTTING_DOWN"
        } else if self.is_serving() {
            "SERVING"
        } else {
            "NOT_SERVING"
        };
        let report = ReadinessReport {
            status,
            probed_seconds_ago: readiness.probed_at.map(|at| at.elapsed().as_secs_f64()),
            readiness: &readiness,
        };
        // Strings, numbers and lists of strings: serializing cannot fail.
        serde_json::to_string(&report).unwrap_or_default() + "\n"
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
        closing: Arc::default(),
        serving: Arc::default(),
        readiness: Arc::default(),
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
            self.meter.record(|metrics| metrics.refuse(Refusal::WatchStreams));
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
