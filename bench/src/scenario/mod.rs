//! The scenarios: one request of each, to the service, to the TLS + auth one, to
//! a second service, or straight to Redis, and the state each needs first. Each
//! RPC's requests are in a file of their own; this one picks.

mod cache;
mod floor;
mod lock;
mod ratelimit;
mod session;

use std::sync::Arc;

use cachelock::{KeySpace, direct::Algorithm};
use clap::ValueEnum;
use redis::aio::MultiplexedConnection;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// Every scenario the tool knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
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
    /// RateLimit Reserve of an estimate then Commit of the actual cost, token bucket,
    /// over the key space (one iteration = two RPCs): a token budget's price over a Check.
    RatelimitReserveCommit,
    /// Session Get with touch, over a set of live sessions.
    SessionGet,
    /// Lock Acquire then Release, uncontended, over a name space (one iteration = two RPCs).
    LockAcquireRelease,
    /// Envoy's ShouldRateLimit on one descriptor whose rule is the fixed window of
    /// ratelimit-fixed-window: the cost of the Envoy path over RateLimit.Check.
    EnvoyShouldRateLimit,
    /// RateLimit Check, token bucket, every caller on a few hot keys, each decided
    /// in Redis.
    RatelimitHot,
    /// The same hot keys, decided from slices the service leases from Redis.
    RatelimitHotLeased,
}

impl Scenario {
    pub(crate) const ALL: [Scenario; 13] = [
        Scenario::BareFloor,
        Scenario::GrpcFloor,
        Scenario::CacheGet,
        Scenario::CacheSet,
        Scenario::RatelimitTokenBucket,
        Scenario::RatelimitFixedWindow,
        Scenario::RatelimitSlidingWindow,
        Scenario::RatelimitReserveCommit,
        Scenario::SessionGet,
        Scenario::LockAcquireRelease,
        Scenario::EnvoyShouldRateLimit,
        Scenario::RatelimitHot,
        Scenario::RatelimitHotLeased,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::BareFloor => "bare-floor",
            Scenario::GrpcFloor => "grpc-floor",
            Scenario::CacheGet => "cache-get",
            Scenario::CacheSet => "cache-set",
            Scenario::RatelimitTokenBucket => "ratelimit-token-bucket",
            Scenario::RatelimitFixedWindow => "ratelimit-fixed-window",
            Scenario::RatelimitSlidingWindow => "ratelimit-sliding-window",
            Scenario::RatelimitReserveCommit => "ratelimit-reserve-commit",
            Scenario::SessionGet => "session-get",
            Scenario::LockAcquireRelease => "lock-acquire-release",
            Scenario::EnvoyShouldRateLimit => "envoy-should-rate-limit",
            Scenario::RatelimitHot => "ratelimit-hot",
            Scenario::RatelimitHotLeased => "ratelimit-hot-leased",
        }
    }

    pub(crate) fn algorithm(self) -> Option<Algorithm> {
        match self {
            Scenario::RatelimitTokenBucket => Some(Algorithm::TokenBucket),
            Scenario::RatelimitFixedWindow => Some(Algorithm::FixedWindow),
            Scenario::RatelimitSlidingWindow => Some(Algorithm::SlidingWindow),
            _ => None,
        }
    }

    /// Whether the same Redis work can be done directly for a baseline.
    pub(crate) fn has_direct(self) -> bool {
        matches!(self, Scenario::CacheGet | Scenario::CacheSet) || self.algorithm().is_some()
    }
}

/// A channel that sends a bearer token when it has one.
pub(crate) type Conn = InterceptedService<Channel, Token>;

/// Adds `authorization: Bearer <token>` to every request, or nothing.
#[derive(Clone, Default)]
pub(crate) struct Token(pub(crate) Option<MetadataValue<Ascii>>);

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
pub(crate) struct Clients {
    pub(crate) channels: Vec<Conn>,
    /// Channels to the service with TLS and an auth file, with `--secure`.
    pub(crate) secure_channels: Vec<Conn>,
    /// Channels to the second service, with `--compare-metrics-off` or `--compare-binary`.
    pub(crate) other_channels: Vec<Conn>,
    /// Channels to the bare tonic server of bare-floor.
    pub(crate) bare_channels: Vec<Conn>,
    /// The processes whose CPU time is reported: the service and the bare server.
    pub(crate) service_pid: Option<u32>,
    pub(crate) bare_pid: Option<u32>,
    pub(crate) redis: MultiplexedConnection,
    pub(crate) keys: KeySpace,
    pub(crate) sessions: Arc<Vec<String>>,
    pub(crate) key_space: usize,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The service.
    Service,
    /// The service with TLS and an auth file (`--secure`).
    Secure,
    /// The second service: without metrics (`--compare-metrics-off`), or from
    /// another binary (`--compare-binary`).
    Other,
    /// Redis itself, through redis-rs: the same Redis work without the service.
    Direct,
}

/// The value every cache scenario writes.
pub(crate) const VALUE: [u8; 100] = [b'x'; 100];

/// High enough that no key is ever denied during a run (and at most one per microsecond of the period).
pub(crate) const RATE_LIMIT: u64 = 10_000_000;

/// How many keys the hot-key scenarios spread their callers over.
pub(crate) const HOT_KEYS: usize = 4;

/// The Envoy domain of envoy-should-rate-limit.
pub(crate) const BENCH_DOMAIN: &str = "cachelock_bench";

/// The rate-limit scenarios' period: a minute.
pub(crate) const RATE_PERIOD_MICROS: u64 = 60_000_000;

/// The key worker `worker` uses for its `i`-th request.
pub(crate) fn key_for(worker: usize, i: u64, space: usize) -> usize {
    // Spreads requests over the key space without a random number generator.
    ((worker as u64).wrapping_mul(7919).wrapping_add(i.wrapping_mul(104_729)) % space as u64) as usize
}

impl Clients {
    /// A channel to the service, for worker `worker`.
    pub(crate) fn channel(&self, worker: usize) -> Conn {
        self.channels[worker % self.channels.len()].clone()
    }

    /// A channel to `target`, for worker `worker`.
    pub(crate) fn channel_to(&self, target: Target, worker: usize) -> Conn {
        let spread = |channels: &[Conn]| channels[worker % channels.len()].clone();
        match target {
            Target::Secure => spread(&self.secure_channels),
            Target::Other => spread(&self.other_channels),
            Target::Service | Target::Direct => self.channel(worker),
        }
    }

    /// One request of `scenario`; `Err` on any failure.
    pub(crate) async fn once(&self, scenario: Scenario, target: Target, worker: usize, i: u64) -> Result<(), String> {
        let k = key_for(worker, i, self.key_space);
        let key = format!("bench:{k}");
        if scenario == Scenario::BareFloor {
            return floor::check(self.bare_channels[worker % self.bare_channels.len()].clone()).await;
        }
        if target == Target::Direct {
            return match scenario {
                Scenario::CacheGet => cache::get_direct(self, &key).await,
                Scenario::CacheSet => cache::set_direct(self, &key).await,
                scenario => ratelimit::check_direct(self, scenario, &key).await,
            };
        }
        let channel = self.channel_to(target, worker);
        match scenario {
            Scenario::BareFloor | Scenario::GrpcFloor => floor::check(channel).await,
            Scenario::CacheGet => cache::get(channel, key).await,
            Scenario::CacheSet => cache::set(channel, key).await,
            Scenario::SessionGet => session::get(channel, self.sessions[k % self.sessions.len()].clone()).await,
            Scenario::LockAcquireRelease => lock::acquire_release(channel, worker, i).await,
            Scenario::EnvoyShouldRateLimit => ratelimit::should_rate_limit(channel, key).await,
            Scenario::RatelimitReserveCommit => ratelimit::reserve_commit(channel, key).await,
            Scenario::RatelimitTokenBucket | Scenario::RatelimitFixedWindow | Scenario::RatelimitSlidingWindow => {
                ratelimit::check(channel, scenario, key).await
            }
            Scenario::RatelimitHot | Scenario::RatelimitHotLeased => {
                let hot = format!("hot:{}", k % HOT_KEYS);
                ratelimit::check_hot(channel, hot, scenario == Scenario::RatelimitHotLeased).await
            }
        }
    }
}

/// Prepares the data a scenario reads.
pub(crate) async fn prepare(clients: &mut Clients, scenario: Scenario) -> Result<(), String> {
    match scenario {
        Scenario::CacheGet => cache::fill(clients).await,
        Scenario::SessionGet if clients.sessions.is_empty() => {
            clients.sessions = Arc::new(session::create(clients.channel(0)).await?);
            Ok(())
        }
        _ => Ok(()),
    }
}
