//! `cachelock-bench`: a closed-loop load generator for every hot RPC, with the
//! same Redis work done directly through redis-rs as a baseline, and a count of
//! the Redis commands each RPC sends.
//!
//! With no `--addr` it starts everything itself: a private redis-server and the
//! `cachelock` binary next to this one, as a separate process. With `--addr` and
//! `--redis-url` it measures a service that is already running.

#![forbid(unsafe_code)]

/// The allocator the service uses (see its `main.rs`), here too: for the bare
/// tonic server this binary starts, so that the floor is compared like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{ExitCode, Stdio},
    sync::Arc,
    time::Duration,
};

use cachelock::{
    DEFAULT_TENANT, EmbeddedRedis, KeySpace, Keys, ProbeArgs,
    direct::{Algorithm, Counting, LimitCheck, invocation},
    pb::{
        cache::{GetRequest, SetEntry, SetManyRequest, SetRequest, cache_service_client::CacheServiceClient},
        envoy::{
            extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor::Entry},
            service::ratelimit::v3::{
                RateLimitRequest, rate_limit_response::Code as EnvoyCode,
                rate_limit_service_client::RateLimitServiceClient as EnvoyClient,
            },
        },
        lock::{AcquireRequest, ReleaseRequest, lock_service_client::LockServiceClient},
        ratelimit::{self as rl, CheckRequest, rate_limit_service_client::RateLimitServiceClient},
        session::{CreateRequest, GetRequest as SessionGetRequest, session_service_client::SessionServiceClient},
    },
    probe,
};
use cachelock_testkit::TestCluster;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use tokio::{
    process::{Child, Command},
    time::{Instant, sleep},
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// Every scenario the tool knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// grpc.health.v1 Check on a bare tonic server (health only, the service's transport
    /// settings, in a process of its own): what gRPC costs without cachelock's layers.
    BareFloor,
    /// grpc.health.v1 Check: a gRPC round trip that never reaches Redis (the floor).
    GrpcFloor,
    /// Cache Get of keys that exist, over the key space.
    CacheGet,
    /// Cache Set over the key space.
    CacheSet,
    /// RateLimit Check, token bucket, over the key space.
    RatelimitTokenBucket,
    /// RateLimit Check, fixed window, over the key space.
    RatelimitFixedWindow,
    /// RateLimit Check, sliding window, over the key space.
    RatelimitSlidingWindow,
    /// Session Get with touch, over a set of live sessions.
    SessionGet,
    /// Lock Acquire then Release, uncontended, over a name space (one iteration = two RPCs).
    LockAcquireRelease,
    /// Envoy's ShouldRateLimit on one descriptor whose rule is the fixed window of
    /// ratelimit-fixed-window: the cost of the Envoy path over RateLimit.Check.
    EnvoyShouldRateLimit,
}

impl Scenario {
    const ALL: [Scenario; 10] = [
        Scenario::BareFloor,
        Scenario::GrpcFloor,
        Scenario::CacheGet,
        Scenario::CacheSet,
        Scenario::RatelimitTokenBucket,
        Scenario::RatelimitFixedWindow,
        Scenario::RatelimitSlidingWindow,
        Scenario::SessionGet,
        Scenario::LockAcquireRelease,
        Scenario::EnvoyShouldRateLimit,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::BareFloor => "bare-floor",
            Scenario::GrpcFloor => "grpc-floor",
            Scenario::CacheGet => "cache-get",
            Scenario::CacheSet => "cache-set",
            Scenario::RatelimitTokenBucket => "ratelimit-token-bucket",
            Scenario::RatelimitFixedWindow => "ratelimit-fixed-window",
            Scenario::RatelimitSlidingWindow => "ratelimit-sliding-window",
            Scenario::SessionGet => "session-get",
            Scenario::LockAcquireRelease => "lock-acquire-release",
            Scenario::EnvoyShouldRateLimit => "envoy-should-rate-limit",
        }
    }

    fn algorithm(self) -> Option<Algorithm> {
        match self {
            Scenario::RatelimitTokenBucket => Some(Algorithm::TokenBucket),
            Scenario::RatelimitFixedWindow => Some(Algorithm::FixedWindow),
            Scenario::RatelimitSlidingWindow => Some(Algorithm::SlidingWindow),
            _ => None,
        }
    }

    /// Whether the same Redis work can be done directly for a baseline.
    fn has_direct(self) -> bool {
        matches!(self, Scenario::CacheGet | Scenario::CacheSet) || self.algorithm().is_some()
    }
}

/// Load-tests a cachelock service and compares it with Redis itself.
#[derive(Debug, Parser)]
#[command(name = "cachelock-bench", version)]
struct Args {
    /// The service to measure; unset: start a private redis-server and cachelock.
    #[arg(long, requires = "redis_url")]
    addr: Option<String>,
    /// The Redis the service uses (for the direct baseline and the command count).
    #[arg(long)]
    redis_url: Option<String>,
    /// The key prefix the service uses.
    #[arg(long, default_value = "cachelock")]
    key_prefix: String,
    /// Scenarios to run, comma-separated; all when unset.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Requests in flight (closed loop), comma-separated for several runs.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    concurrency: Vec<usize>,
    /// HTTP/2 connections to the service.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Warm-up before each measurement.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Length of each measurement.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Keys (and session, lock names) the requests spread over.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Requests sent one at a time under MONITOR to count Redis commands per request.
    #[arg(long, default_value_t = 200)]
    count_requests: usize,
    /// Skip the direct redis-rs baseline.
    #[arg(long)]
    no_direct: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Also measure a second service with TLS and an auth file, in the same run: a directory
    /// holding ca.pem, server.pem and server.key for the name localhost (see BENCHMARKS.md).
    #[arg(long)]
    secure: Option<PathBuf>,
    /// Also measure a second service with --metrics-listen off (no metrics kept), in the
    /// same run: the cost of the metrics on the hot path.
    #[arg(long)]
    compare_metrics_off: bool,
    /// Run the service on a private Redis Cluster (3 primaries, 3 replicas; needs
    /// redis-server and redis-cli) instead of one redis-server. There is no direct
    /// baseline or command count then.
    #[arg(long, conflicts_with_all = ["addr", "secure", "compare_metrics_off", "batch_worst_case"])]
    cluster: bool,
    /// Instead of load: run every batch RPC once at the service's default limits and print
    /// how long Redis spent on it (from SLOWLOG), the worst a single request can cost Redis.
    #[arg(long)]
    batch_worst_case: bool,
    /// Instead of the scenarios: open this many Subscribe streams on one topic, publish to it
    /// from each --concurrency publishers in turn, and report messages delivered per second.
    #[arg(long, conflicts_with_all = ["batch_worst_case", "secure", "compare_metrics_off"])]
    pubsub_fanout: Option<usize>,
    /// Instead of the scenarios: this many callers at once on one key. First they Get one
    /// hot key for --duration (Redis reads per Get: what coalescing saves); then, in rounds,
    /// they find a missing key whose fill takes --fill-time, once with Get (each reads the
    /// source itself) and once with GetOrLease (one lease): source reads and time to value.
    #[arg(long, conflicts_with_all = ["batch_worst_case", "secure", "compare_metrics_off", "pubsub_fanout"])]
    stampede: Option<usize>,
    /// Instead of every scenario once: these two scenarios, interleaved A B A B for --rounds
    /// rounds at each concurrency (machine noise then hits both alike), then their totals
    /// and the ratio B / A (in B's total row, in the rps/dir and p50/dir columns; JSON:
    /// throughput_vs_direct, p50_vs_direct).
    #[arg(long, value_enum, value_delimiter = ',', num_args = 1, conflicts_with_all = ["stampede", "pubsub_fanout", "batch_worst_case"])]
    compare: Vec<Scenario>,
    /// Rounds of --compare.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// An extra flag for the service the tool starts, such as --service-arg=--worker-threads=1
    /// (repeatable): to measure a setting.
    #[arg(long, allow_hyphen_values = true)]
    service_arg: Vec<String>,
    /// Runs the bare tonic server of bare-floor on this address (the tool starts it itself).
    #[arg(long, hide = true)]
    serve_bare: Option<SocketAddr>,
    /// How long the source of truth takes to answer a fill in --stampede.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    fill_time: Duration,
}

/// A channel that sends a bearer token when it has one.
type Conn = InterceptedService<Channel, Token>;

/// Adds `authorization: Bearer <token>` to every request, or nothing.
#[derive(Clone, Default)]
struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// The clients of one run.
#[derive(Clone)]
struct Clients {
    channels: Vec<Conn>,
    /// Channels to the service with TLS and an auth file, with `--secure`.
    secure_channels: Vec<Conn>,
    /// Channels to the service without metrics, with `--compare-metrics-off`.
    unmetered_channels: Vec<Conn>,
    /// Channels to the bare tonic server of bare-floor.
    bare_channels: Vec<Conn>,
    /// The processes whose CPU time is reported: the service and the bare server.
    service_pid: Option<u32>,
    bare_pid: Option<u32>,
    redis: MultiplexedConnection,
    keys: KeySpace,
    sessions: Arc<Vec<String>>,
    key_space: usize,
}

/// What a run measured.
struct Measured {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// CPU time of the server that answered (the service, or the bare server) over the
    /// measured period, when the tool started it.
    server_cpu: Option<Duration>,
    /// Redis's CPU and script time over the measured period.
    redis_busy: Option<RedisBusy>,
}

impl Measured {
    fn empty() -> Measured {
        Measured {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: latency_histogram(),
            server_cpu: Some(Duration::ZERO),
            redis_busy: Some(RedisBusy {
                cpu: Duration::ZERO,
                scripts: Duration::ZERO,
            }),
        }
    }

    /// Adds another run of the same scenario (for --compare's totals).
    fn add(&mut self, other: &Measured) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        let _ = self.latency.add(&other.latency);
        self.server_cpu = self.server_cpu.zip(other.server_cpu).map(|(a, b)| a + b);
        self.redis_busy = self.redis_busy.zip(other.redis_busy).map(|(a, b)| RedisBusy {
            cpu: a.cpu + b.cpu,
            scripts: a.scripts + b.scripts,
        });
    }

    /// Microseconds of `time` per request.
    fn per_request(&self, time: Option<Duration>) -> Option<f64> {
        time.filter(|_| self.requests > 0)
            .map(|time| time.as_secs_f64() * 1e6 / self.requests as f64)
    }

    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn micros(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Service,
    /// The service with TLS and an auth file (`--secure`).
    Secure,
    /// The service without metrics (`--compare-metrics-off`).
    Unmetered,
    Direct,
}

const VALUE: [u8; 100] = [b'x'; 100];
/// High enough that no key is ever denied during a run (and at most one per microsecond of the period).
const RATE_LIMIT: u64 = 10_000_000;
/// The Envoy domain of envoy-should-rate-limit.
const BENCH_DOMAIN: &str = "cachelock_bench";
const RATE_PERIOD_MICROS: u64 = 60_000_000;

fn key_for(worker: usize, i: u64, space: usize) -> usize {
    // Spreads requests over the key space without a random number generator.
    ((worker as u64).wrapping_mul(7919).wrapping_add(i.wrapping_mul(104_729)) % space as u64) as usize
}

impl Clients {
    fn channel(&self, worker: usize) -> Conn {
        self.channels[worker % self.channels.len()].clone()
    }

    fn channel_to(&self, target: Target, worker: usize) -> Conn {
        match target {
            Target::Secure => self.secure_channels[worker % self.secure_channels.len()].clone(),
            Target::Unmetered => self.unmetered_channels[worker % self.unmetered_channels.len()].clone(),
            Target::Service | Target::Direct => self.channel(worker),
        }
    }

    /// One request of `scenario`; `Err` on any failure.
    async fn once(&self, scenario: Scenario, target: Target, worker: usize, i: u64) -> Result<(), String> {
        let k = key_for(worker, i, self.key_space);
        let key = format!("bench:{k}");
        match (target, scenario) {
            (_, Scenario::BareFloor) => {
                HealthClient::new(self.bare_channels[worker % self.bare_channels.len()].clone())
                    .check(HealthCheckRequest::default())
                    .await
                    .map(|_| ())
                    .map_err(|status| status.to_string())
            }
            (Target::Service | Target::Secure | Target::Unmetered, Scenario::GrpcFloor) => {
                HealthClient::new(self.channel_to(target, worker))
                    .check(HealthCheckRequest::default())
                    .await
                    .map(|_| ())
                    .map_err(|status| status.to_string())
            }
            (Target::Service | Target::Secure | Target::Unmetered, Scenario::CacheGet) => {
                let found = CacheServiceClient::new(self.channel_to(target, worker))
                    .get(GetRequest { key })
                    .await
                    .map_err(|status| status.to_string())?
                    .into_inner()
                    .found;
                if found { Ok(()) } else { Err("cache miss".to_owned()) }
            }
            (Target::Service | Target::Secure | Target::Unmetered, Scenario::CacheSet) => {
                CacheServiceClient::new(self.channel_to(target, worker))
                    .set(SetRequest {
                        key,
                        value: VALUE.to_vec(),
                        ttl: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
                        condition: 0,
                        lease_token: String::new(),
                        stale_ttl: None,
                    })
                    .await
                    .map(|_| ())
                    .map_err(|status| status.to_string())
            }
            (Target::Service | Target::Secure | Target::Unmetered, Scenario::SessionGet) => {
                SessionServiceClient::new(self.channel_to(target, worker))
                    .get(SessionGetRequest {
                        id: self.sessions[k % self.sessions.len()].clone(),
                        touch: true,
                    })
                    .await
                    .map(|_| ())
                    .map_err(|status| status.to_string())
            }
            (Target::Service | Target::Secure | Target::Unmetered, Scenario::LockAcquireRelease) => {
                // Worker w only uses names w, w + W, …: uncontended.
                let name = format!("bench:{worker}:{}", i % 64);
                let mut client = LockServiceClient::new(self.channel_to(target, worker));
                let grant = client
                    .acquire(AcquireRequest {
                        name: name.clone(),
                        ttl: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
                        ..AcquireRequest::default()
                    })
                    .await
                    .map_err(|status| status.to_string())?
                    .into_inner();
                if !grant.acquired {
                    return Err("lock not acquired".to_owned());
                }
                client
                    .release(ReleaseRequest {
                        name,
                        token: grant.token,
                    })
                    .await
                    .map(|_| ())
                    .map_err(|status| status.to_string())
            }
            (Target::Service | Target::Secure | Target::Unmetered, Scenario::EnvoyShouldRateLimit) => {
                let response = EnvoyClient::new(self.channel_to(target, worker))
                    .should_rate_limit(RateLimitRequest {
                        domain: BENCH_DOMAIN.to_owned(),
                        descriptors: vec![RateLimitDescriptor {
                            entries: vec![Entry {
                                key: "bench".to_owned(),
                                value: key,
                            }],
                            ..RateLimitDescriptor::default()
                        }],
                        hits_addend: 1,
                    })
                    .await
                    .map_err(|status| status.to_string())?
                    .into_inner();
                if response.overall_code == EnvoyCode::Ok as i32
                    && response.statuses.first().is_some_and(|s| s.current_limit.is_some())
                {
                    Ok(())
                } else {
                    Err(format!("not decided by the bench rule: {response:?}"))
                }
            }
            (Target::Service | Target::Secure | Target::Unmetered, scenario) => {
                let algorithm = scenario.algorithm().ok_or("no such scenario")?;
                let algorithm = match algorithm {
                    Algorithm::TokenBucket => rl::Algorithm::TokenBucket,
                    Algorithm::FixedWindow => rl::Algorithm::FixedWindow,
                    Algorithm::SlidingWindow => rl::Algorithm::SlidingWindow,
                };
                let response = RateLimitServiceClient::new(self.channel_to(target, worker))
                    .check(CheckRequest {
                        key,
                        limit: RATE_LIMIT,
                        period: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                        cost: None,
                        algorithm: algorithm as i32,
                        on_unavailable: rl::OutagePolicy::FailClosed as i32,
                    })
                    .await
                    .map_err(|status| status.to_string())?
                    .into_inner();
                if response.decided_by_outage_policy {
                    Err("decided by the outage policy".to_owned())
                } else {
                    Ok(())
                }
            }
            (Target::Direct, Scenario::CacheGet) => {
                let mut conn = self.redis.clone();
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(self.keys.cache(&key))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                value.map(|_| ()).ok_or_else(|| "miss".to_owned())
            }
            (Target::Direct, Scenario::CacheSet) => {
                let mut conn = self.redis.clone();
                redis::cmd("SET")
                    .arg(self.keys.cache(&key))
                    .arg(&VALUE[..])
                    .arg("PX")
                    .arg(600_000)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            }
            (Target::Direct, scenario) => {
                let algorithm = scenario.algorithm().ok_or("no direct baseline")?;
                let mut conn = self.redis.clone();
                let check = LimitCheck {
                    key: &key,
                    algorithm,
                    limit: RATE_LIMIT,
                    period_micros: RATE_PERIOD_MICROS,
                    cost: 1,
                    counting: Counting::Together,
                };
                let invocation = invocation(&self.keys, std::slice::from_ref(&check));
                // The service loaded the script into this Redis when it connected.
                invocation
                    .evalsha()
                    .query_async::<Vec<(i64, i64, i64, i64)>>(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// A histogram of latencies in nanoseconds, from 1 ns to a minute, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    // Fixed, valid bounds: construction cannot fail.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid constant bounds")
}

/// Runs `concurrency` closed-loop workers for a warm-up and a measured period.
async fn run(
    clients: &Clients,
    scenario: Scenario,
    target: Target,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Measured {
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + duration;
    let pid = match (scenario, target) {
        (Scenario::BareFloor, _) => clients.bare_pid,
        (_, Target::Service) => clients.service_pid,
        _ => None,
    };
    let sampler = {
        let redis = clients.redis.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from).await;
            let before = (pid.and_then(process_cpu), redis_busy(&redis).await);
            tokio::time::sleep_until(stop_at).await;
            let after = (pid.and_then(process_cpu), redis_busy(&redis).await);
            (
                before
                    .0
                    .zip(after.0)
                    .map(|(before, after)| after.saturating_sub(before)),
                before.1.zip(after.1).map(|(before, after)| after.since(before)),
            )
        })
    };
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let clients = clients.clone();
            tokio::spawn(async move {
                let mut latency = latency_histogram();
                let (mut requests, mut errors) = (0u64, 0u64);
                let mut i = 0u64;
                loop {
                    let sent = Instant::now();
                    if sent >= stop_at {
                        break;
                    }
                    let result = clients.once(scenario, target, worker, i).await;
                    i += 1;
                    if sent >= measure_from {
                        requests += 1;
                        if result.is_err() {
                            errors += 1;
                        }
                        let _ = latency.record(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    }
                }
                (requests, errors, latency)
            })
        })
        .collect();
    let (server_cpu, redis_busy) = sampler.await.unwrap_or((None, None));
    let mut total = Measured {
        requests: 0,
        errors: 0,
        elapsed: duration,
        latency: latency_histogram(),
        server_cpu,
        redis_busy,
    };
    for worker in workers {
        if let Ok((requests, errors, latency)) = worker.await {
            total.requests += requests;
            total.errors += errors;
            let _ = total.latency.add(latency);
        }
    }
    total
}

/// CPU time (user and system, every thread) process `pid` has used so far, from
/// /proc/PID/stat, in clock ticks of 10 ms (USER_HZ is 100 on Linux).
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // the 14th and 15th of the line (utime, stime) are the 12th and 13th here.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Redis's CPU time so far (INFO cpu: user and system, its networking included),
/// and the time it has spent in script calls (INFO commandstats: EVALSHA's usec,
/// which every hot path but cache-set uses).
async fn redis_busy(redis: &MultiplexedConnection) -> Option<RedisBusy> {
    let mut conn = redis.clone();
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .ok()?;
    let field = |prefix: &str| info.lines().find_map(|line| line.strip_prefix(prefix)).map(str::trim);
    let seconds = |name: &str| field(name).and_then(|value| value.parse::<f64>().ok());
    let cpu = seconds("used_cpu_user:")? + seconds("used_cpu_sys:")?;
    let scripts = field("cmdstat_evalsha:")
        .and_then(|stats| stats.split("usec=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    Some(RedisBusy {
        cpu: Duration::from_secs_f64(cpu),
        scripts: Duration::from_micros(scripts),
    })
}

/// Redis's time, as [`redis_busy`] reads it.
#[derive(Debug, Clone, Copy)]
struct RedisBusy {
    cpu: Duration,
    scripts: Duration,
}

impl RedisBusy {
    fn since(self, before: RedisBusy) -> RedisBusy {
        RedisBusy {
            cpu: self.cpu.saturating_sub(before.cpu),
            scripts: self.scripts.saturating_sub(before.scripts),
        }
    }
}

/// Counts the top-level Redis commands `scenario` sends per request, by watching
/// MONITOR while sending requests one at a time. Commands that scripts run show
/// up under the `lua` client and are not counted; nor is the health prober's INFO.
async fn commands_per_request(clients: &Clients, redis: &redis::Client, scenario: Scenario, requests: usize) -> f64 {
    let Ok(monitor) = redis.get_async_monitor().await else {
        return f64::NAN;
    };
    let counter = tokio::spawn(async move {
        let mut lines = monitor.into_on_message::<String>();
        let mut counted = 0u64;
        while let Some(line) = lines.next().await {
            if line.contains("\"bench-count-end\"") {
                break;
            }
            let Some((client, command)) = line.split_once("] \"") else {
                continue;
            };
            let command = command.to_ascii_lowercase();
            let name = command.split('"').next().unwrap_or("");
            let internal = client.ends_with(" lua") || matches!(name, "ping" | "info" | "echo");
            if !internal {
                counted += 1;
            }
        }
        counted
    });
    sleep(Duration::from_millis(100)).await;
    for i in 0..requests {
        let _ = clients.once(scenario, Target::Service, 0, i as u64).await;
    }
    let mut conn = clients.redis.clone();
    let _: Result<String, _> = redis::cmd("ECHO").arg("bench-count-end").query_async(&mut conn).await;
    match tokio::time::timeout(Duration::from_secs(10), counter).await {
        Ok(Ok(counted)) => counted as f64 / requests as f64,
        _ => f64::NAN,
    }
}

/// Prepares the data a scenario reads.
async fn prepare(clients: &mut Clients, scenario: Scenario) -> Result<(), String> {
    match scenario {
        Scenario::CacheGet => {
            // One Set per key, 64 at a time: a SetMany would put them in one Cluster slot.
            let cache = CacheServiceClient::new(clients.channel(0));
            let results: Vec<Result<(), String>> = futures_util::stream::iter(0..clients.key_space)
                .map(|k| {
                    let mut cache = cache.clone();
                    async move {
                        cache
                            .set(SetRequest {
                                key: format!("bench:{k}"),
                                value: VALUE.to_vec(),
                                ttl: Some(prost_types::Duration {
                                    seconds: 3600,
                                    nanos: 0,
                                }),
                                condition: 0,
                                lease_token: String::new(),
                                stale_ttl: None,
                            })
                            .await
                            .map(|_| ())
                            .map_err(|status| status.to_string())
                    }
                })
                .buffer_unordered(64)
                .collect()
                .await;
            results.into_iter().collect::<Result<(), String>>()?;
        }
        Scenario::SessionGet if clients.sessions.is_empty() => {
            let mut sessions = SessionServiceClient::new(clients.channel(0));
            let mut ids = Vec::with_capacity(1000);
            for user in 0..1000 {
                let session = sessions
                    .create(CreateRequest {
                        user_id: format!("bench-user-{user}"),
                        ..CreateRequest::default()
                    })
                    .await
                    .map_err(|status| status.to_string())?
                    .into_inner()
                    .session
                    .ok_or("no session")?;
                ids.push(session.id);
            }
            clients.sessions = Arc::new(ids);
        }
        _ => {}
    }
    Ok(())
}

/// The service and Redis the run talks to, and what must be stopped afterwards.
struct Setup {
    addr: String,
    redis_url: String,
    _redis: Option<EmbeddedRedis>,
    _cluster: Option<TestCluster>,
    service: Option<Child>,
    /// With `--secure`: the second service's address, its token, and what to clean up.
    secure: Option<SecureService>,
    /// With `--compare-metrics-off`: the second service's address and process.
    unmetered: Option<(String, Child)>,
    /// The bare tonic server of bare-floor, when the tool starts its own service.
    bare: Option<(String, Child)>,
}

/// A second service on the same Redis, with TLS and an auth file.
struct SecureService {
    addr: String,
    token: String,
    ca: Vec<u8>,
    _process: Child,
    _auth_file: RemovedOnDrop,
}

/// A file or directory of this run's, removed when the run ends.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = if self.0.is_dir() {
            std::fs::remove_dir_all(&self.0)
        } else {
            std::fs::remove_file(&self.0)
        };
    }
}

/// Starts `cachelock` with `args` and waits until it is SERVING at `addr`.
/// Where the services the benchmark starts read the Envoy rule of
/// envoy-should-rate-limit from (removed when the benchmark ends).
fn bench_rules_path() -> PathBuf {
    std::env::temp_dir().join(format!("cachelock-bench-{}-rls.yaml", std::process::id()))
}

/// The rule of envoy-should-rate-limit: ratelimit-fixed-window's limit and period.
fn bench_rules() -> String {
    format!(
        "domain: {BENCH_DOMAIN}\ndescriptors:\n  - key: bench\n    rate_limit:\n      unit: minute\n      \
         requests_per_unit: {RATE_LIMIT}\n"
    )
}

async fn start_service(addr: &str, args: &[String], probe_args: ProbeArgs) -> Result<Child, String> {
    let binary = sibling_binary("cachelock")?;
    let rules = bench_rules_path();
    std::fs::write(&rules, bench_rules()).map_err(|e| format!("cannot write {}: {e}", rules.display()))?;
    let service = Command::new(&binary)
        .args(args)
        .arg("--rls-config")
        .arg(&rules)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let give_up = Instant::now() + Duration::from_secs(20);
    while probe(&probe_args).await != Ok(ServingStatus::Serving) {
        if Instant::now() > give_up {
            return Err(format!("the service at {addr} did not become SERVING within 20 s"));
        }
        sleep(Duration::from_millis(50)).await;
    }
    Ok(service)
}

fn free_address() -> Result<String, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

fn plain_probe(addr: &str) -> ProbeArgs {
    ProbeArgs {
        addr: addr.to_owned(),
        service: String::new(),
        timeout: Duration::from_secs(1),
        tls: false,
        tls_ca: None,
        tls_server_name: None,
        tls_cert: None,
        tls_key: None,
    }
}

/// Starts the TLS + auth file service of `--secure` on the Redis at `redis_url`.
async fn start_secure(dir: &std::path::Path, redis_url: &str) -> Result<SecureService, String> {
    let random = |_| getrandom::u64().map_err(|e| e.to_string());
    let token = format!("{:016x}{:016x}", random(0)?, random(1)?);
    let digest = cachelock_testkit::sha256_hex(&token);
    let auth = RemovedOnDrop(std::env::temp_dir().join(format!("cachelock-bench-{}-auth.toml", std::process::id())));
    std::fs::write(
        &auth.0,
        format!(
            "[[client]]\nname = \"bench\"\ntoken_sha256 = \"{digest}\"\ntenant = \"default\"\n\
             allow = [\"cache\", \"ratelimit\", \"lock\", \"session\"]\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let addr = free_address()?;
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let args = vec![
        "--listen".to_owned(),
        addr.clone(),
        "--metrics-listen".to_owned(),
        free_address()?,
        "--redis-url".to_owned(),
        redis_url.to_owned(),
        // The benchmark started this Redis, empty: no lease can be held from before.
        "--lock-trust-young-redis".to_owned(),
        "--tls-cert".to_owned(),
        path("server.pem"),
        "--tls-key".to_owned(),
        path("server.key"),
        "--auth-file".to_owned(),
        auth.0.to_string_lossy().into_owned(),
    ];
    let probe_args = ProbeArgs {
        tls: true,
        tls_ca: Some(dir.join("ca.pem")),
        tls_server_name: Some("localhost".to_owned()),
        ..plain_probe(&addr)
    };
    let process = start_service(&addr, &args, probe_args).await?;
    let ca = std::fs::read(dir.join("ca.pem")).map_err(|e| format!("--secure: {e}"))?;
    Ok(SecureService {
        addr,
        token,
        ca,
        _process: process,
        _auth_file: auth,
    })
}

async fn set_up(args: &Args) -> Result<Setup, String> {
    if let (Some(addr), Some(redis_url)) = (&args.addr, &args.redis_url) {
        let secure = match &args.secure {
            Some(dir) => Some(start_secure(dir, redis_url).await?),
            None => None,
        };
        return Ok(Setup {
            addr: addr.clone(),
            redis_url: redis_url.clone(),
            _redis: None,
            _cluster: None,
            service: None,
            secure,
            unmetered: None,
            bare: None,
        });
    }
    if args.cluster {
        // Node timeouts of 5 s: a loaded machine does not fail a node over mid-run.
        let cluster = tokio::task::spawn_blocking(|| TestCluster::start_with_node_timeout(5_000))
            .await
            .map_err(|e| format!("the Cluster did not start: {e}"))?;
        let addr = free_address()?;
        let service_args = vec![
            "--listen".to_owned(),
            addr.clone(),
            "--metrics-listen".to_owned(),
            free_address()?,
            "--redis-cluster-nodes".to_owned(),
            cluster.seeds(),
        ];
        let service = start_service(&addr, &service_args, plain_probe(&addr)).await?;
        return Ok(Setup {
            addr,
            redis_url: cluster.nodes.first().map(|node| node.url()).unwrap_or_default(),
            _redis: None,
            _cluster: Some(cluster),
            service: Some(service),
            secure: None,
            unmetered: None,
            bare: None,
        });
    }
    let redis = EmbeddedRedis::start().await.map_err(|e| e.to_string())?;
    let addr = free_address()?;
    // Each private service has metrics on a port of its own, so that runs side by side do not collide.
    let mut args_for_service = vec![
        "--listen".to_owned(),
        addr.clone(),
        "--metrics-listen".to_owned(),
        free_address()?,
        "--redis-url".to_owned(),
        redis.url(),
        // The benchmark started this Redis, empty: no lease can be held from before.
        "--lock-trust-young-redis".to_owned(),
    ];
    args_for_service.extend(args.service_arg.iter().cloned());
    let service = start_service(&addr, &args_for_service, plain_probe(&addr)).await?;
    let secure = match &args.secure {
        Some(dir) => Some(start_secure(dir, &redis.url()).await?),
        None => None,
    };
    let unmetered = if args.compare_metrics_off {
        let other = free_address()?;
        let other_args = vec![
            "--listen".to_owned(),
            other.clone(),
            "--redis-url".to_owned(),
            redis.url(),
            "--lock-trust-young-redis".to_owned(),
            "--metrics-listen".to_owned(),
            "off".to_owned(),
        ];
        let process = start_service(&other, &other_args, plain_probe(&other)).await?;
        Some((other, process))
    } else {
        None
    };
    let bare = free_address()?;
    let bare_process = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("--serve-bare")
        .arg(&bare)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the bare server: {e}"))?;
    let give_up = Instant::now() + Duration::from_secs(20);
    while probe(&plain_probe(&bare)).await != Ok(ServingStatus::Serving) {
        if Instant::now() > give_up {
            return Err(format!("the bare server at {bare} did not answer within 20 s"));
        }
        sleep(Duration::from_millis(50)).await;
    }
    Ok(Setup {
        addr,
        redis_url: redis.url(),
        _redis: Some(redis),
        _cluster: None,
        service: Some(service),
        secure,
        unmetered,
        bare: Some((bare, bare_process)),
    })
}

/// The bare server of bare-floor: tonic's health service alone, with the transport
/// settings of the service (TCP nodelay and keepalive, HTTP/2 pings, the stream
/// limit) on a default multi-threaded runtime, as the service's. Runs until killed.
async fn serve_bare(addr: SocketAddr) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| e.to_string())?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let (_reporter, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(512)
        .add_service(health)
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| e.to_string())
}

fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let binary = me.with_file_name(name);
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!(
            "{} not found: build it first (cargo build --release)",
            binary.display()
        ))
    }
}

fn print_row(
    args: &Args,
    scenario: Scenario,
    concurrency: usize,
    target: Target,
    measured: &Measured,
    extra: (f64, Option<f64>, Option<f64>),
) {
    let (commands, throughput_ratio, p50_ratio) = extra;
    let target_name = match target {
        Target::Service => "service",
        Target::Secure => "tls+auth",
        Target::Unmetered => "no-metric",
        Target::Direct => "direct",
    };
    if args.json {
        let line = serde_json::json!({
            "scenario": scenario.name(),
            "target": target_name,
            "concurrency": concurrency,
            "requests": measured.requests,
            "errors": measured.errors,
            "requests_per_second": measured.per_second().round(),
            "p50_us": measured.micros(0.5),
            "p90_us": measured.micros(0.9),
            "p99_us": measured.micros(0.99),
            "p999_us": measured.micros(0.999),
            "redis_commands_per_request": if commands.is_nan() { serde_json::Value::Null } else { commands.into() },
            "throughput_vs_direct": throughput_ratio,
            "p50_vs_direct": p50_ratio,
            "server_cpu_us_per_request": measured.per_request(measured.server_cpu),
            "redis_cpu_us_per_request": measured.per_request(measured.redis_busy.map(|busy| busy.cpu)),
            "redis_script_us_per_request": measured.per_request(measured.redis_busy.map(|busy| busy.scripts)),
        });
        println!("{line}");
    } else {
        let ratio = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"));
        let commands = if commands.is_nan() {
            "-".to_owned()
        } else {
            format!("{commands:.2}")
        };
        let micros = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<26} {:<8} {:>5} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8}",
            scenario.name(),
            target_name,
            concurrency,
            measured.per_second(),
            measured.micros(0.5),
            measured.micros(0.9),
            measured.micros(0.99),
            measured.micros(0.999),
            measured.errors,
            commands,
            ratio(throughput_ratio),
            ratio(p50_ratio),
            micros(measured.per_request(measured.server_cpu)),
            micros(measured.per_request(measured.redis_busy.map(|busy| busy.cpu))),
            micros(measured.per_request(measured.redis_busy.map(|busy| busy.scripts))),
        );
    }
}

fn print_header() {
    println!(
        "{:<26} {:<8} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "scenario",
        "target",
        "conc",
        "req/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "errors",
        "cmds",
        "rps/dir",
        "p50/dir",
        "srv µs",
        "rds µs",
        "lua µs"
    );
}

/// `connections` plaintext HTTP/2 connections to `addr` (at least one).
async fn plain_channels(addr: &str, connections: usize) -> Result<Vec<Conn>, String> {
    let mut channels = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        channels.push(InterceptedService::new(channel, Token::default()));
    }
    Ok(channels)
}

async fn bench(args: Args) -> Result<(), String> {
    let setup = set_up(&args).await?;
    let redis_client = redis::Client::open(setup.redis_url.as_str()).map_err(|e| e.to_string())?;
    let redis = redis_client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let addr: SocketAddr = setup.addr.parse().map_err(|e| format!("--addr: {e}"))?;
    let channels = plain_channels(&addr.to_string(), args.connections).await?;
    let mut secure_channels = Vec::new();
    if let Some(secure) = &setup.secure {
        let token: MetadataValue<Ascii> = format!("Bearer {}", secure.token).parse().map_err(|_| "a bad token")?;
        for _ in 0..args.connections.max(1) {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&secure.ca))
                .domain_name("localhost");
            let channel = Endpoint::from_shared(format!("https://{}", secure.addr))
                .map_err(|e| e.to_string())?
                .tcp_nodelay(true)
                .tls_config(tls)
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", secure.addr))?;
            secure_channels.push(InterceptedService::new(channel, Token(Some(token.clone()))));
        }
    }
    let unmetered_channels = match &setup.unmetered {
        Some((other, _)) => plain_channels(other, args.connections).await?,
        None => Vec::new(),
    };
    let bare_channels = match &setup.bare {
        Some((bare, _)) => plain_channels(bare, args.connections).await?,
        None => Vec::new(),
    };
    let mut clients = Clients {
        channels,
        secure_channels,
        unmetered_channels,
        bare_channels,
        service_pid: setup.service.as_ref().and_then(Child::id),
        bare_pid: setup.bare.as_ref().and_then(|(_, process)| process.id()),
        redis,
        keys: Keys::new(&args.key_prefix).space(DEFAULT_TENANT),
        sessions: Arc::new(Vec::new()),
        key_space: args.keys.max(1),
    };
    if let Some(subscribers) = args.pubsub_fanout {
        let result = pubsub_fanout(&clients, subscribers, &args).await;
        if let Some(mut service) = setup.service {
            let _ = service.kill().await;
        }
        return result;
    }
    if let Some(callers) = args.stampede {
        let result = stampede(&clients, callers, &args).await;
        if let Some(mut service) = setup.service {
            let _ = service.kill().await;
        }
        return result;
    }
    if args.batch_worst_case {
        let result = batch_worst_case(&clients, &redis_client).await;
        if let Some(mut service) = setup.service {
            let _ = service.kill().await;
        }
        return result;
    }
    if !args.compare.is_empty() {
        let result = compare(&mut clients, &args).await;
        if let Some(mut service) = setup.service {
            let _ = service.kill().await;
        }
        return result;
    }
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    if !args.json {
        print_header();
    }
    for scenario in scenarios {
        if scenario == Scenario::BareFloor && clients.bare_channels.is_empty() {
            continue;
        }
        prepare(&mut clients, scenario).await?;
        // On a Cluster one node sees only part of the commands.
        let commands = if args.cluster {
            f64::NAN
        } else {
            commands_per_request(&clients, &redis_client, scenario, args.count_requests).await
        };
        for &concurrency in &args.concurrency {
            let concurrency = concurrency.max(1);
            let service = run(
                &clients,
                scenario,
                Target::Service,
                concurrency,
                args.warmup,
                args.duration,
            )
            .await;
            let secure = if clients.secure_channels.is_empty() {
                None
            } else {
                Some(
                    run(
                        &clients,
                        scenario,
                        Target::Secure,
                        concurrency,
                        args.warmup,
                        args.duration,
                    )
                    .await,
                )
            };
            let unmetered = if clients.unmetered_channels.is_empty() {
                None
            } else {
                Some(
                    run(
                        &clients,
                        scenario,
                        Target::Unmetered,
                        concurrency,
                        args.warmup,
                        args.duration,
                    )
                    .await,
                )
            };
            let direct = if scenario.has_direct() && !args.no_direct && !args.cluster {
                Some(
                    run(
                        &clients,
                        scenario,
                        Target::Direct,
                        concurrency,
                        args.warmup,
                        args.duration,
                    )
                    .await,
                )
            } else {
                None
            };
            let ratios = direct.as_ref().map(|direct| {
                (
                    service.per_second() / direct.per_second(),
                    service.micros(0.5) / direct.micros(0.5),
                )
            });
            print_row(
                &args,
                scenario,
                concurrency,
                Target::Service,
                &service,
                (commands, ratios.map(|r| r.0), ratios.map(|r| r.1)),
            );
            if let Some(secure) = &secure {
                let ratios = (
                    secure.per_second() / service.per_second(),
                    secure.micros(0.5) / service.micros(0.5),
                );
                print_row(
                    &args,
                    scenario,
                    concurrency,
                    Target::Secure,
                    secure,
                    (f64::NAN, Some(ratios.0), Some(ratios.1)),
                );
            }
            if let Some(unmetered) = &unmetered {
                let ratios = (
                    unmetered.per_second() / service.per_second(),
                    unmetered.micros(0.5) / service.micros(0.5),
                );
                print_row(
                    &args,
                    scenario,
                    concurrency,
                    Target::Unmetered,
                    unmetered,
                    (f64::NAN, Some(ratios.0), Some(ratios.1)),
                );
            }
            if let Some(direct) = &direct {
                print_row(
                    &args,
                    scenario,
                    concurrency,
                    Target::Direct,
                    direct,
                    (f64::NAN, None, None),
                );
            }
        }
    }
    if let Some(mut service) = setup.service {
        let _ = service.kill().await;
    }
    Ok(())
}

/// The default limits the worst cases are measured at (see `cachelock --help`).
const MAX_BATCH: usize = 1000;
const MAX_CHECK_BATCH: usize = 100;
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
const MAX_ATTRIBUTES: usize = 64;
const MAX_ATTRIBUTE_BYTES: usize = 4096;
const MAX_SESSIONS_PER_USER: usize = 100;

/// Runs each batch RPC once at the default limits and prints the longest time
/// Redis spent on one command (script) of it, as SLOWLOG records it.
/// Fan-out: `subscribers` streams on one topic, publishers at each --concurrency,
/// and how many messages per second reach the streams in all.
async fn pubsub_fanout(clients: &Clients, subscribers: usize, args: &Args) -> Result<(), String> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use cachelock::pb::pubsub::{
        PublishRequest, SubscribeRequest, pub_sub_service_client::PubSubServiceClient, subscribe_response::Event,
    };
    let delivered = Arc::new(AtomicU64::new(0));
    let missed = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(subscribers);
    for index in 0..subscribers {
        let channel = clients.channels[index % clients.channels.len()].clone();
        let request = SubscribeRequest {
            topics: vec!["bench-fanout".to_owned()],
            patterns: Vec::new(),
        };
        let mut stream = PubSubServiceClient::new(channel)
            .subscribe(request)
            .await
            .map_err(|status| format!("Subscribe: {status}"))?
            .into_inner();
        // The first event says the stream is live.
        stream
            .message()
            .await
            .map_err(|status| format!("Subscribe: {status}"))?;
        let (delivered, missed) = (delivered.clone(), missed.clone());
        readers.push(tokio::spawn(async move {
            while let Ok(Some(answer)) = stream.message().await {
                match answer.event {
                    Some(Event::Message(_)) => delivered.fetch_add(1, Ordering::Relaxed),
                    Some(Event::Discontinuity(gap)) => missed.fetch_add(gap.missed, Ordering::Relaxed),
                    _ => 0,
                };
            }
        }));
    }
    println!(
        "{:<12} {:>11} {:>13} {:>15} {:>9}",
        "subscribers", "publishers", "published/s", "delivered/s", "missed"
    );
    for &publishers in &args.concurrency {
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..publishers)
            .map(|index| {
                let mut client = PubSubServiceClient::new(clients.channels[index % clients.channels.len()].clone());
                let (stop, published) = (stop.clone(), published.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let request = PublishRequest {
                            topic: "bench-fanout".to_owned(),
                            payload: VALUE.to_vec(),
                        };
                        if client.publish(request).await.is_ok() {
                            published.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let counts = || {
            (
                published.load(Ordering::Relaxed),
                delivered.load(Ordering::Relaxed),
                missed.load(Ordering::Relaxed),
            )
        };
        sleep(args.warmup).await;
        let (published_before, delivered_before, missed_before) = counts();
        let started = Instant::now();
        sleep(args.duration).await;
        let elapsed = started.elapsed().as_secs_f64();
        let (published_now, delivered_now, missed_now) = counts();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        println!(
            "{:<12} {:>11} {:>13.0} {:>15.0} {:>9}",
            subscribers,
            publishers,
            (published_now - published_before) as f64 / elapsed,
            (delivered_now - delivered_before) as f64 / elapsed,
            missed_now - missed_before
        );
        // Let the streams catch up before the next run.
        sleep(Duration::from_millis(500)).await;
    }
    for reader in readers {
        reader.abort();
    }
    Ok(())
}

/// --compare A,B: the two scenarios interleaved, A B A B…, then their totals and B / A.
async fn compare(clients: &mut Clients, args: &Args) -> Result<(), String> {
    let &[first, second] = args.compare.as_slice() else {
        return Err("--compare takes two scenarios, such as grpc-floor,cache-get".to_owned());
    };
    if args.compare.contains(&Scenario::BareFloor) && clients.bare_channels.is_empty() {
        return Err("bare-floor needs the tool to start its own service (no --addr, no --cluster)".to_owned());
    }
    prepare(clients, first).await?;
    prepare(clients, second).await?;
    if !args.json {
        print_header();
    }
    for &concurrency in &args.concurrency {
        let concurrency = concurrency.max(1);
        let mut totals = [Measured::empty(), Measured::empty()];
        for _ in 0..args.rounds.max(1) {
            for (total, scenario) in totals.iter_mut().zip([first, second]) {
                let measured = run(
                    clients,
                    scenario,
                    Target::Service,
                    concurrency,
                    args.warmup,
                    args.duration,
                )
                .await;
                print_row(
                    args,
                    scenario,
                    concurrency,
                    Target::Service,
                    &measured,
                    (f64::NAN, None, None),
                );
                total.add(&measured);
            }
        }
        if !args.json {
            println!(
                "totals of {} rounds; ratios are {} / {}:",
                args.rounds.max(1),
                second.name(),
                first.name()
            );
        }
        let [a, b] = &totals;
        print_row(args, first, concurrency, Target::Service, a, (f64::NAN, None, None));
        let ratios = (b.per_second() / a.per_second(), b.micros(0.5) / a.micros(0.5));
        print_row(
            args,
            second,
            concurrency,
            Target::Service,
            b,
            (f64::NAN, Some(ratios.0), Some(ratios.1)),
        );
    }
    Ok(())
}

/// Calls of EVALSHA so far, from INFO commandstats: every cache read is one.
async fn script_calls(redis: &MultiplexedConnection) -> Result<u64, String> {
    let mut conn = redis.clone();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0))
}

/// --stampede: what coalescing saves Redis, and what leases save the source of truth.
async fn stampede(clients: &Clients, callers: usize, args: &Args) -> Result<(), String> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use cachelock::pb::cache::{GetOrLeaseRequest, LeaseOutcome};
    const ROUNDS: usize = 20;
    let cache = |index: usize| CacheServiceClient::new(clients.channels[index % clients.channels.len()].clone());
    let set = |key: &str, lease_token: String| SetRequest {
        key: key.to_owned(),
        value: VALUE.to_vec(),
        ttl: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
        condition: 0,
        lease_token,
        stale_ttl: None,
    };

    // Coalescing: every caller Gets one hot key, again and again.
    cache(0)
        .set(set("stampede-hot", String::new()))
        .await
        .map_err(|status| format!("Set: {status}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let gets = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..callers)
        .map(|index| {
            let (mut client, stop, gets) = (cache(index), stop.clone(), gets.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = GetRequest {
                        key: "stampede-hot".to_owned(),
                    };
                    if client.get(request).await.is_ok_and(|answer| answer.into_inner().found) {
                        gets.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    sleep(args.warmup).await;
    let (gets_before, reads_before) = (gets.load(Ordering::Relaxed), script_calls(&clients.redis).await?);
    let started = Instant::now();
    sleep(args.duration).await;
    let (gets_after, reads_after) = (gets.load(Ordering::Relaxed), script_calls(&clients.redis).await?);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.await;
    }
    let (gets, reads) = (gets_after - gets_before, (reads_after - reads_before).max(1));
    println!(
        "coalescing: {callers} callers Get one key: {:.0} Gets/s, {:.0} Redis reads/s: {:.1} Gets per read, {:.1}% of reads saved",
        gets as f64 / elapsed,
        reads as f64 / elapsed,
        gets as f64 / reads as f64,
        100.0 * (1.0 - reads as f64 / gets.max(1) as f64)
    );

    // Stampede: a missing key, every caller at once; the fill takes --fill-time.
    println!(
        "{:<12} {:>8} {:>15} {:>15} {:>13} {:>13} {:>7}",
        "stampede", "callers", "source reads", "leases/round", "p50 ms", "max ms", "errors"
    );
    for leased in [false, true] {
        let source_reads = Arc::new(AtomicU64::new(0));
        let leases = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut times = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        for round in 0..ROUNDS {
            let key = format!("stampede-{leased}-{round}-{}", std::process::id());
            let tasks: Vec<_> = (0..callers)
                .map(|index| {
                    let mut client = cache(index);
                    let key = key.clone();
                    let (source_reads, leases, errors) = (source_reads.clone(), leases.clone(), errors.clone());
                    let fill_time = args.fill_time;
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let from_source = async || {
                            source_reads.fetch_add(1, Ordering::Relaxed);
                            sleep(fill_time).await;
                        };
                        let had_it = if leased {
                            let request = GetOrLeaseRequest {
                                key: key.clone(),
                                lease_ttl: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
                                wait: None,
                                refresh_ahead: 0.0,
                            };
                            match client.get_or_lease(request).await.map(tonic::Response::into_inner) {
                                Ok(answer) if answer.outcome() == LeaseOutcome::Lease => {
                                    leases.fetch_add(1, Ordering::Relaxed);
                                    from_source().await;
                                    client.set(set(&key, answer.lease_token)).await.is_ok()
                                }
                                Ok(answer) => answer.outcome() == LeaseOutcome::Hit,
                                Err(_) => false,
                            }
                        } else {
                            match client.get(GetRequest { key: key.clone() }).await {
                                Ok(answer) if answer.get_ref().found => true,
                                Ok(_) => {
                                    from_source().await;
                                    client.set(set(&key, String::new())).await.is_ok()
                                }
                                Err(_) => false,
                            }
                        };
                        if !had_it {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
                    })
                })
                .collect();
            for task in tasks {
                let micros = task.await.map_err(|e| e.to_string())?;
                let _ = times.record(micros);
            }
        }
        println!(
            "{:<12} {:>8} {:>15.1} {:>15.2} {:>13.1} {:>13.1} {:>7}",
            if leased { "GetOrLease" } else { "Get" },
            callers,
            source_reads.load(Ordering::Relaxed) as f64 / ROUNDS as f64,
            leases.load(Ordering::Relaxed) as f64 / ROUNDS as f64,
            times.value_at_quantile(0.5) as f64 / 1000.0,
            times.max() as f64 / 1000.0,
            errors.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

async fn batch_worst_case(clients: &Clients, redis: &redis::Client) -> Result<(), String> {
    use cachelock::pb::{
        cache::{DeleteRequest, GetManyRequest},
        ratelimit::{CheckManyRequest, Limit},
        session::{DeleteUserSessionsRequest, ListUserSessionsRequest},
    };
    let mut admin = redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let mut config = redis::cmd("CONFIG");
    config
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .arg("slowlog-max-len")
        .arg(100_000);
    let _: () = config.query_async(&mut admin).await.map_err(|e| e.to_string())?;
    let channel = clients.channel(0);
    let mut cache = CacheServiceClient::new(channel.clone())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let mut ratelimit = RateLimitServiceClient::new(channel.clone());
    let mut sessions = SessionServiceClient::new(channel);
    // The largest SetMany a request can carry: MAX_BATCH values filling MAX_REQUEST_BYTES.
    let value_bytes = MAX_REQUEST_BYTES / MAX_BATCH - 128;
    let keys: Vec<String> = (0..MAX_BATCH).map(|i| format!("worst:{i}")).collect();
    let entries: Vec<SetEntry> = keys
        .iter()
        .map(|key| SetEntry {
            key: key.clone(),
            value: vec![b'x'; value_bytes],
            ttl: None,
        })
        .collect();
    let algorithms = [
        rl::Algorithm::TokenBucket,
        rl::Algorithm::FixedWindow,
        rl::Algorithm::SlidingWindow,
    ];
    let limits: Vec<Limit> = (0..MAX_CHECK_BATCH)
        .map(|i| Limit {
            key: format!("worst:{i}"),
            limit: 1_000_000,
            period: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            cost: None,
            algorithm: algorithms[i % 3] as i32,
        })
        .collect();
    let attributes: std::collections::HashMap<String, String> = (0..MAX_ATTRIBUTES)
        .map(|i| (format!("attribute-{i}"), "v".repeat(MAX_ATTRIBUTE_BYTES)))
        .collect();
    let create = |attributes: &std::collections::HashMap<String, String>| CreateRequest {
        user_id: "worst-user".to_owned(),
        attributes: attributes.clone(),
        ..CreateRequest::default()
    };
    let status = |status: tonic::Status| status.to_string();

    let mut rows: Vec<(String, u64, u64)> = Vec::new();
    let mut measure = async |name: &str, admin: &mut MultiplexedConnection| -> Result<(), String> {
        // Each entry: id, time, duration in µs, arguments, client address, client name.
        let entries: Vec<Vec<redis::Value>> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query_async(admin)
            .await
            .map_err(|e| e.to_string())?;
        let durations: Vec<u64> = entries
            .iter()
            .filter_map(|entry| match entry.get(2) {
                Some(redis::Value::Int(micros)) => u64::try_from(*micros).ok(),
                _ => None,
            })
            .collect();
        let longest = durations.iter().copied().max().unwrap_or(0);
        rows.push((name.to_owned(), longest, durations.iter().sum()));
        let _: () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async(admin)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    cache.set_many(SetManyRequest { entries }).await.map_err(status)?;
    measure("SetMany: 1000 entries, 4 MiB", &mut admin).await?;
    cache
        .get_many(GetManyRequest { keys: keys.clone() })
        .await
        .map_err(status)?;
    measure("GetMany: 1000 keys, 4 MiB of values", &mut admin).await?;
    ratelimit
        .check_many(CheckManyRequest {
            limits,
            on_unavailable: rl::OutagePolicy::FailClosed as i32,
        })
        .await
        .map_err(status)?;
    measure("CheckMany: 100 limits", &mut admin).await?;
    cache.delete(DeleteRequest { keys }).await.map_err(status)?;
    measure("Delete: 1000 keys of 4 KiB", &mut admin).await?;
    for _ in 0..MAX_SESSIONS_PER_USER {
        sessions.create(create(&attributes)).await.map_err(status)?;
    }
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    sessions.create(create(&attributes)).await.map_err(status)?;
    measure(
        "session Create: 64 attributes of 4 KiB, ending the LRU of 100",
        &mut admin,
    )
    .await?;
    sessions
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "worst-user".to_owned(),
        })
        .await
        .map_err(status)?;
    measure("ListUserSessions: 100 sessions", &mut admin).await?;
    sessions
        .delete_user_sessions(DeleteUserSessionsRequest {
            user_id: "worst-user".to_owned(),
            except_id: String::new(),
        })
        .await
        .map_err(status)?;
    measure("DeleteUserSessions: 100 sessions", &mut admin).await?;

    // A MULTI/EXEC runs all its commands at once: its total is how long Redis was held.
    println!(
        "{:<64} {:>18} {:>16}",
        "batch RPC at the default limits", "longest command µs", "all commands µs"
    );
    for (name, longest, total) in rows {
        println!("{name:<64} {longest:>18} {total:>16}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _rules = RemovedOnDrop(bench_rules_path());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cachelock-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.serve_bare {
        return match runtime.block_on(serve_bare(addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cachelock-bench: the bare server: {error}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cachelock-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
