//! Every setting of the service, read from flags and environment variables and
//! validated once, before anything starts.
//!
//! Each setting has a flag `--kebab-name` and an environment variable
//! `CACHELOCK_SCREAMING_NAME` (the Redis URL is plain `REDIS_URL`, the name every
//! platform already uses). `cachelock --help` lists them with their defaults.

mod bounds;
mod cli;
mod redis;

use std::{ffi::OsString, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

pub use bounds::MESSAGE_OVERHEAD_BYTES;
use bounds::{
    BATCH_CEILING, CONCURRENCY_CEILING, DAY, HOUR, KEY_BYTES_CEILING, MESSAGE_BYTES_CEILING, MIN_REPLICAS_CEILING,
    MINUTE, PREFIX_BYTES_CEILING, SECOND, SESSIONS_PER_USER_CEILING, VALUE_BYTES_CEILING, YEAR, count_in, duration_in,
    ratio,
};
use cli::parse_metrics_listen;
pub use cli::{CheckRlsConfigArgs, Cli, Command, LogFormat, MetricsListen, OutagePolicy, ProbeArgs};
pub use redis::RedisTarget;

/// The server's settings. Build it with [`Config::from_args`] (or parse [`Cli`] and
/// call [`Config::validate`]) so that every rule below has been checked.
#[derive(Debug, Clone, Parser)]
#[command(name = "cachelock", args_override_self = true)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "CACHELOCK_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// PEM certificate chain for TLS on the gRPC listener (re-read when it changes); needs --tls-key.
    #[arg(long, env = "CACHELOCK_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (re-read when it changes).
    #[arg(long, env = "CACHELOCK_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CAs that sign client certificates: set, every client must present one (mTLS).
    #[arg(long, env = "CACHELOCK_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// TOML file of the clients that may call, their tenants and permissions (re-read when it
    /// changes). Unset: every caller is the tenant "default" with every permission.
    #[arg(long, env = "CACHELOCK_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// With an auth file, server reflection also needs a credential (health never does).
    #[arg(long, env = "CACHELOCK_REFLECTION_REQUIRES_AUTH")]
    pub reflection_requires_auth: bool,

    /// Allow a non-loopback --listen address that cannot tell clients apart: neither an auth
    /// file nor client certificates (--tls-client-ca). Everyone who reaches it is then the
    /// tenant default with every permission; only behind a mesh that authenticates for you.
    #[arg(long, env = "CACHELOCK_ALLOW_INSECURE_LISTEN")]
    pub allow_insecure_listen: bool,

    /// Address of the HTTP listener for /metrics (Prometheus), /livez and /readyz; "off": none,
    /// and no metrics are kept.
    #[arg(long, env = "CACHELOCK_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = parse_metrics_listen)]
    pub metrics_listen: MetricsListen,

    /// Export OpenTelemetry traces over OTLP/gRPC to this collector (`http://collector:4317`);
    /// unset: to where OTEL_EXPORTER_OTLP_ENDPOINT says, or nowhere. The other OTEL_* variables
    /// (headers, timeout, service name, resource attributes) apply as usual.
    #[arg(long, env = "CACHELOCK_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The share of traces that start here to export (0 to 1); a caller's sampled flag in its
    /// traceparent decides for the traces it started.
    #[arg(long, env = "CACHELOCK_OTLP_SAMPLE_RATIO", default_value_t = 1.0, value_parser = ratio)]
    pub otlp_sample_ratio: f64,

    /// RPCs slower than this, beyond the time they waited for a lock or a fill, are logged (WARN).
    #[arg(long, env = "CACHELOCK_SLOW_REQUEST", default_value = "100ms", value_parser = duration_in(Duration::from_millis(1), HOUR))]
    pub slow_request: Duration,

    /// Redis to use: redis://[user:password@]host:port[/db], rediss://… (TLS, certificates
    /// verified) or unix:///path/to/redis.sock. Unset: start a private development redis-server.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Redis Cluster seed nodes, comma-separated redis:// or rediss:// URLs; the rest of the
    /// Cluster is discovered from them. Instead of REDIS_URL.
    #[arg(
        long,
        env = "CACHELOCK_REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_cluster_nodes: Vec<String>,

    /// Redis Sentinels, comma-separated redis:// or rediss:// URLs (their password, if any, is
    /// the Sentinels'; a path /N selects database N on the data nodes). Instead of REDIS_URL;
    /// needs --redis-sentinel-master.
    #[arg(
        long,
        env = "CACHELOCK_REDIS_SENTINEL_NODES",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_sentinel_nodes: Vec<String>,

    /// The master name the Sentinels monitor (as in `sentinel monitor <name> …`).
    #[arg(long, env = "CACHELOCK_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// User name on the Redis data nodes, when not in the URL (behind Sentinel: always here).
    #[arg(long, env = "CACHELOCK_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// Password on the Redis data nodes, when not in the URL (behind Sentinel: always here).
    /// Prefer the environment variable to the flag, which other users may see in `ps`.
    #[arg(long, env = "CACHELOCK_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// PEM file of the certificate authorities that sign the Redis server's TLS certificate
    /// (rediss:// only); unset: the system's trust store.
    #[arg(long, env = "CACHELOCK_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// First segment of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "CACHELOCK_KEY_PREFIX", default_value = "cachelock")]
    pub key_prefix: String,

    /// Longest time one RPC waits for Redis (a shorter gRPC deadline from the caller wins).
    #[arg(long, env = "CACHELOCK_OPERATION_TIMEOUT", default_value = "1s", value_parser = duration_in(Duration::from_millis(1), MINUTE))]
    pub operation_timeout: Duration,

    /// Longest time one attempt to connect to Redis may take.
    #[arg(long, env = "CACHELOCK_CONNECT_TIMEOUT", default_value = "2s", value_parser = duration_in(Duration::from_millis(1), MINUTE))]
    pub connect_timeout: Duration,

    /// First delay before reconnecting to Redis after a failed attempt; it doubles on each
    /// further failure. Also the shortest delay while requests are waiting for Redis.
    #[arg(long, env = "CACHELOCK_RECONNECT_MIN_BACKOFF", default_value = "50ms", value_parser = duration_in(Duration::from_millis(1), MINUTE))]
    pub reconnect_min_backoff: Duration,

    /// Longest delay between two attempts to reconnect to Redis (attempts never stop).
    #[arg(long, env = "CACHELOCK_RECONNECT_MAX_BACKOFF", default_value = "1s", value_parser = duration_in(Duration::from_millis(1), MINUTE))]
    pub reconnect_max_backoff: Duration,

    /// Idle time before TCP keepalive probes on the Redis connection: below the idle
    /// timeout of any load balancer or NAT gateway between the service and Redis.
    #[arg(long, env = "CACHELOCK_REDIS_KEEPALIVE", default_value = "30s", value_parser = duration_in(SECOND, HOUR))]
    pub redis_keepalive: Duration,

    /// How often the health prober inspects Redis while it serves (every 100ms while it does not).
    #[arg(long, env = "CACHELOCK_HEALTH_INTERVAL", default_value = "1s", value_parser = duration_in(Duration::from_millis(1), MINUTE))]
    pub health_interval: Duration,

    /// Keep health NOT_SERVING while Redis's maxmemory-policy is not noeviction (any other
    /// policy may evict held locks and live sessions).
    #[arg(long, env = "CACHELOCK_REQUIRE_NOEVICTION")]
    pub require_noeviction: bool,

    /// Grant and extend locks, and report the lock and session services SERVING, even while
    /// Redis may evict keys (a maxmemory with any policy but noeviction). By default lock grants
    /// and extensions are then refused (EVICTION_POLICY): an evicted lease would be granted
    /// again while its holder still works, and an evicted session index hides sessions from
    /// log-out-everywhere. Set it only if you accept those risks.
    #[arg(long, env = "CACHELOCK_ALLOW_EVICTING_REDIS")]
    pub allow_evicting_redis: bool,

    /// After a shutdown signal, how long health says NOT_SERVING while calls are still served,
    /// so that load balancers stop sending before the listener closes. A second signal skips it.
    #[arg(long, env = "CACHELOCK_SHUTDOWN_DELAY", default_value = "5s", value_parser = duration_in(Duration::ZERO, 10 * MINUTE))]
    pub shutdown_delay: Duration,

    /// How long in-flight RPCs may run after the shutdown delay before they are cut off.
    #[arg(long, env = "CACHELOCK_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration_in(Duration::ZERO, HOUR))]
    pub shutdown_grace: Duration,

    /// Time to live of a cache write that gives none.
    #[arg(long, env = "CACHELOCK_DEFAULT_TTL", default_value = "1h", value_parser = duration_in(Duration::from_millis(1), 10 * YEAR))]
    pub default_ttl: Duration,

    /// Longest time to live a write may ask for; longer ones are refused.
    #[arg(long, env = "CACHELOCK_MAX_TTL", default_value = "30days", value_parser = duration_in(Duration::from_millis(1), 10 * YEAR))]
    pub max_ttl: Duration,

    /// Largest key, in bytes.
    #[arg(long, env = "CACHELOCK_MAX_KEY_BYTES", default_value_t = 1024, value_parser = count_in::<usize>(KEY_BYTES_CEILING))]
    pub max_key_bytes: usize,

    /// Largest cached value, in bytes.
    #[arg(long, env = "CACHELOCK_MAX_VALUE_BYTES", default_value_t = 1024 * 1024, value_parser = count_in::<usize>(VALUE_BYTES_CEILING))]
    pub max_value_bytes: usize,

    /// Most keys or entries in one GetMany, SetMany or Delete.
    #[arg(long, env = "CACHELOCK_MAX_BATCH", default_value_t = 1000, value_parser = count_in::<usize>(BATCH_CEILING))]
    pub max_batch: usize,

    /// Largest request message, in bytes; larger ones are refused (RESOURCE_EXHAUSTED) before
    /// they are read.
    #[arg(long, env = "CACHELOCK_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = count_in::<usize>(MESSAGE_BYTES_CEILING))]
    pub max_request_bytes: usize,

    /// Largest response message, in bytes (gRPC clients accept 4 MiB by default): a GetMany
    /// whose values would not fit is refused (RESOURCE_EXHAUSTED) before Redis reads them.
    #[arg(long, env = "CACHELOCK_MAX_RESPONSE_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = count_in::<usize>(MESSAGE_BYTES_CEILING))]
    pub max_response_bytes: usize,

    /// Most requests handled at once (health checks aside); beyond it requests are refused at
    /// once with RESOURCE_EXHAUSTED instead of queueing.
    #[arg(long, env = "CACHELOCK_MAX_IN_FLIGHT", default_value_t = 4096, value_parser = count_in::<usize>(CONCURRENCY_CEILING))]
    pub max_in_flight: usize,

    /// Most concurrent gRPC calls (HTTP/2 streams) one client connection may open.
    #[arg(long, env = "CACHELOCK_MAX_CONCURRENT_STREAMS", default_value_t = 512, value_parser = count_in::<u32>(CONCURRENCY_CEILING))]
    pub max_concurrent_streams: u32,

    /// Most GetOrLease calls waiting at once for another caller's fill.
    #[arg(long, env = "CACHELOCK_CACHE_MAX_FILL_WAITERS", default_value_t = 10_000, value_parser = count_in::<usize>(CONCURRENCY_CEILING))]
    pub cache_max_fill_waiters: usize,

    /// Longest a GetOrLease waits for another caller's fill (and the wait when none is given).
    #[arg(long, env = "CACHELOCK_CACHE_MAX_FILL_WAIT", default_value = "30s", value_parser = duration_in(Duration::ZERO, HOUR))]
    pub cache_max_fill_wait: Duration,

    /// How often an idle client connection is pinged (HTTP/2 PING). A client that vanished
    /// without closing (a killed machine, a dropped network) is found this way: its Watch,
    /// Subscribe and Hold streams are closed, and a Hold's lock released.
    #[arg(long, env = "CACHELOCK_CLIENT_PING_INTERVAL", default_value = "30s", value_parser = duration_in(Duration::from_millis(100), HOUR))]
    pub client_ping_interval: Duration,

    /// Close a client connection gracefully (HTTP/2 GOAWAY) once it is this old, so that clients
    /// reconnect and spread over instances added since (a scale-out behind a Kubernetes Service).
    /// Calls in flight go on; unset, connections live until the client closes them.
    #[arg(long, env = "CACHELOCK_MAX_CONNECTION_AGE", value_parser = duration_in(SECOND, DAY))]
    pub max_connection_age: Option<Duration>,

    /// How long calls still running on a connection past --max-connection-age (a Hold, a
    /// Subscribe) may go on before it is closed under them; unset, they run to their end.
    #[arg(long, env = "CACHELOCK_MAX_CONNECTION_AGE_GRACE", requires = "max_connection_age", value_parser = duration_in(Duration::ZERO, DAY))]
    pub max_connection_age_grace: Option<Duration>,

    /// How long a client has to answer a ping before its connection is closed.
    #[arg(long, env = "CACHELOCK_CLIENT_PING_TIMEOUT", default_value = "10s", value_parser = duration_in(Duration::from_millis(100), HOUR))]
    pub client_ping_timeout: Duration,

    /// Most client connections at once; beyond it new connections wait in the listen backlog.
    #[arg(long, env = "CACHELOCK_MAX_CONNECTIONS", default_value_t = 4096, value_parser = count_in::<usize>(CONCURRENCY_CEILING))]
    pub max_connections: usize,

    /// Most open health Watch streams.
    #[arg(long, env = "CACHELOCK_MAX_WATCH_STREAMS", default_value_t = 1024, value_parser = count_in::<usize>(CONCURRENCY_CEILING))]
    pub max_watch_streams: usize,

    /// Messages buffered per Pub/Sub Subscribe stream; beyond it a slow reader's messages are
    /// dropped for it alone and reported to it as a Discontinuity.
    #[arg(long, env = "CACHELOCK_PUBSUB_BUFFER", default_value_t = 1024, value_parser = count_in::<usize>(CONCURRENCY_CEILING))]
    pub pubsub_buffer: usize,

    /// Most open Pub/Sub Subscribe streams (per connection, --max-concurrent-streams applies).
    #[arg(long, env = "CACHELOCK_PUBSUB_MAX_STREAMS", default_value_t = 10_000, value_parser = count_in::<usize>(CONCURRENCY_CEILING))]
    pub pubsub_max_streams: usize,

    /// Most topics and patterns in one Subscribe.
    #[arg(long, env = "CACHELOCK_PUBSUB_MAX_TOPICS", default_value_t = 64, value_parser = count_in::<usize>(CONCURRENCY_CEILING))]
    pub pubsub_max_topics: usize,

    /// What a rate-limit check answers when Redis cannot decide in time (a request may override it).
    #[arg(
        long,
        env = "CACHELOCK_RATELIMIT_ON_UNAVAILABLE",
        value_enum,
        default_value = "fail-open"
    )]
    pub ratelimit_on_unavailable: OutagePolicy,

    /// Most limits in one CheckMany: each costs Redis about 7 µs of script time.
    #[arg(long, env = "CACHELOCK_RATELIMIT_MAX_BATCH", default_value_t = 100, value_parser = count_in::<usize>(BATCH_CEILING))]
    pub ratelimit_max_batch: usize,

    /// Longest time a rate-limit check waits for Redis before answering from the outage policy.
    #[arg(long, env = "CACHELOCK_RATELIMIT_TIMEOUT", default_value = "250ms", value_parser = duration_in(Duration::from_millis(1), MINUTE))]
    pub ratelimit_timeout: Duration,

    /// Longest rate-limit period a check may ask for.
    #[arg(long, env = "CACHELOCK_RATELIMIT_MAX_PERIOD", default_value = "31days", value_parser = duration_in(Duration::from_millis(1), YEAR))]
    pub ratelimit_max_period: Duration,

    /// Longest `wait` a rate-limit Check may ask for.
    #[arg(long, env = "CACHELOCK_RATELIMIT_MAX_WAIT", default_value = "60s", value_parser = duration_in(Duration::ZERO, HOUR))]
    pub ratelimit_max_wait: Duration,

    /// Most rate-limit Checks waiting for their turn at once; beyond it a Check
    /// is answered at once, as if it had not asked to wait.
    #[arg(long, env = "CACHELOCK_RATELIMIT_MAX_WAITERS", default_value_t = 1024, value_parser = count_in::<usize>(CONCURRENCY_CEILING))]
    pub ratelimit_max_waiters: usize,

    /// Envoy rate-limit rules (envoyproxy/ratelimit's YAML): a file, or a directory of files,
    /// one domain each; re-read when they change. Unset: every Envoy request is OK, no limit.
    #[arg(long, env = "CACHELOCK_RLS_CONFIG")]
    pub rls_config: Option<PathBuf>,

    /// Add RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset to Envoy's responses.
    #[arg(long, env = "CACHELOCK_RLS_HEADERS")]
    pub rls_headers: bool,

    /// Longest lease a lock may ask for. After Redis loses its data (or may have), lock grants
    /// pause this long.
    #[arg(long, env = "CACHELOCK_LOCK_MAX_TTL", default_value = "1h", value_parser = duration_in(Duration::from_millis(1), DAY))]
    pub lock_max_ttl: Duration,

    /// Grant locks at once on a Redis node that started less than --lock-max-ttl ago and holds
    /// no record of earlier grants. By default grants there wait until it has been up that long,
    /// because such a node may have restarted empty while leases it had granted are still held.
    /// Safe only for a Redis that has never held locks (a new deployment, a test); never as a
    /// standing setting where Redis runs without persistence. The development Redis needs none.
    #[arg(long, env = "CACHELOCK_LOCK_TRUST_YOUNG_REDIS")]
    pub lock_trust_young_redis: bool,

    /// Grant locks at once on a Redis node that restarted less than --lock-max-ttl ago with its
    /// data (from an RDB snapshot or an AOF). By default grants there wait until it has been up
    /// that long, because a snapshot, or an AOF fsynced every second, can miss the last grants.
    /// Set it only with appendfsync always. A replica promoted by a failover needs none.
    #[arg(long, env = "CACHELOCK_LOCK_TRUST_PERSISTENCE")]
    pub lock_trust_persistence: bool,

    /// Replicas that must acknowledge a lock grant or extension (Redis WAIT) before it is
    /// answered; when fewer do within the call's budget, it is released and the caller gets
    /// UNAVAILABLE. 0: grants are answered once the primary has them.
    #[arg(long, env = "CACHELOCK_LOCK_MIN_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(MIN_REPLICAS_CEILING)))]
    pub lock_min_replicas: u32,

    /// How long a lock's fencing counter is kept after its lease: fencing tokens stay
    /// increasing across a Redis clock step back of up to this much.
    #[arg(long, env = "CACHELOCK_LOCK_FENCE_RETENTION", default_value = "1h", value_parser = duration_in(SECOND, 30 * DAY))]
    pub lock_fence_retention: Duration,

    /// Most attributes one session may hold.
    #[arg(long, env = "CACHELOCK_SESSION_MAX_ATTRIBUTES", default_value_t = 64, value_parser = count_in::<usize>(BATCH_CEILING))]
    pub session_max_attributes: usize,

    /// Largest session attribute value, in bytes.
    #[arg(long, env = "CACHELOCK_SESSION_MAX_ATTRIBUTE_BYTES", default_value_t = 4096, value_parser = count_in::<usize>(VALUE_BYTES_CEILING))]
    pub session_max_attribute_bytes: usize,

    /// Most live sessions one user may have; Create ends the least recently used beyond it.
    #[arg(long, env = "CACHELOCK_SESSION_MAX_PER_USER", default_value_t = 100, value_parser = count_in::<usize>(SESSIONS_PER_USER_CEILING))]
    pub session_max_per_user: usize,

    /// Longest idle or absolute timeout a session may ask for.
    #[arg(long, env = "CACHELOCK_SESSION_MAX_LIFETIME", default_value = "30days", value_parser = duration_in(SECOND, 10 * YEAR))]
    pub session_max_lifetime: Duration,

    /// Longest time an Acquire may wait for a held lock.
    #[arg(long, env = "CACHELOCK_LOCK_MAX_WAIT", default_value = "60s", value_parser = duration_in(Duration::ZERO, HOUR))]
    pub lock_max_wait: Duration,

    /// Most Acquires waiting for held locks at once; beyond it: RESOURCE_EXHAUSTED.
    #[arg(long, env = "CACHELOCK_LOCK_MAX_WAITERS", default_value_t = 2048, value_parser = count_in::<usize>(CONCURRENCY_CEILING))]
    pub lock_max_waiters: usize,

    /// Most Acquires waiting for one lock name at once; beyond it: RESOURCE_EXHAUSTED.
    #[arg(long, env = "CACHELOCK_LOCK_MAX_WAITERS_PER_NAME", default_value_t = 256, value_parser = count_in::<usize>(CONCURRENCY_CEILING))]
    pub lock_max_waiters_per_name: usize,

    /// Threads serving requests; unset: one per CPU core.
    #[arg(long, env = "CACHELOCK_WORKER_THREADS", value_parser = count_in::<usize>(CONCURRENCY_CEILING))]
    pub worker_threads: Option<usize>,

    /// Log line format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "CACHELOCK_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// A setting that cannot be used, as one line that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl From<clap::Error> for ConfigError {
    fn from(error: clap::Error) -> Self {
        // clap renders a paragraph: its first line names the flag and the value,
        // and a "tip:" line the flag meant when one is close to what was typed.
        let rendered = error.render().to_string();
        let line = rendered.lines().next().unwrap_or("invalid arguments").trim();
        let mut message = line.strip_prefix("error: ").unwrap_or(line).to_owned();
        for tip in rendered.lines().filter_map(|line| line.trim().strip_prefix("tip: ")) {
            message.push_str(&format!(" ({tip})"));
        }
        ConfigError(message)
    }
}

fn invalid(setting: &str, env: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError(format!("invalid --{setting} ({env}): {reason}"))
}

impl Config {
    /// Parses an argument list (the program name first) and the environment, then validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first setting that is malformed or out of range.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Config::try_parse_from(args)?.validate()
    }

    /// Checks every rule that a single flag's parser cannot.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first setting that breaks a rule.
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        // `REDIS_URL=` (set but empty, as env templates often leave it) means unset.
        if self.redis_url.as_deref().is_some_and(|url| url.trim().is_empty()) {
            self.redis_url = None;
        }
        for nodes in [&mut self.redis_cluster_nodes, &mut self.redis_sentinel_nodes] {
            nodes.retain(|node| !node.trim().is_empty());
        }
        if self
            .redis_sentinel_master
            .as_deref()
            .is_some_and(|name| name.trim().is_empty())
        {
            self.redis_sentinel_master = None;
        }
        if self.reconnect_max_backoff < self.reconnect_min_backoff {
            return Err(invalid(
                "reconnect-max-backoff",
                "CACHELOCK_RECONNECT_MAX_BACKOFF",
                format_args!(
                    "{} is below --reconnect-min-backoff {}",
                    humantime::format_duration(self.reconnect_max_backoff),
                    humantime::format_duration(self.reconnect_min_backoff)
                ),
            ));
        }
        if self.default_ttl > self.max_ttl {
            return Err(invalid(
                "default-ttl",
                "CACHELOCK_DEFAULT_TTL",
                format_args!(
                    "{} is above --max-ttl {}",
                    humantime::format_duration(self.default_ttl),
                    humantime::format_duration(self.max_ttl)
                ),
            ));
        }
        // Every single value must fit in a request (Set) and in a response (Get, Take).
        let largest_value = self.max_value_bytes + self.max_key_bytes + MESSAGE_OVERHEAD_BYTES;
        for (setting, env, limit) in [
            (
                "max-request-bytes",
                "CACHELOCK_MAX_REQUEST_BYTES",
                self.max_request_bytes,
            ),
            (
                "max-response-bytes",
                "CACHELOCK_MAX_RESPONSE_BYTES",
                self.max_response_bytes,
            ),
        ] {
            if limit < largest_value {
                return Err(invalid(
                    setting,
                    env,
                    format_args!(
                        "{limit} cannot carry the largest value: it must be at least --max-value-bytes plus \
                         --max-key-bytes plus {MESSAGE_OVERHEAD_BYTES} ({largest_value})"
                    ),
                ));
            }
        }
        self.validate_key_prefix()?;
        self.validate_listener()?;
        self.validate_redis()?;
        Ok(self)
    }

    fn validate_key_prefix(&self) -> Result<(), ConfigError> {
        let prefix = &self.key_prefix;
        let reason = if prefix.is_empty() || prefix.len() > PREFIX_BYTES_CEILING {
            format!("must be 1 to {PREFIX_BYTES_CEILING} bytes")
        } else if let Some(c) = prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            // A brace would move the Redis Cluster hash tag out of the user's part of
            // the key; glob characters would break the lock-release channel pattern.
            format!("may hold only letters, digits and - _ . : (found {c:?})")
        } else {
            return Ok(());
        };
        Err(invalid("key-prefix", "CACHELOCK_KEY_PREFIX", reason))
    }

    fn validate_listener(&self) -> Result<(), ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(invalid("tls-key", "CACHELOCK_TLS_KEY", "is needed with --tls-cert")),
            (None, Some(_)) => return Err(invalid("tls-cert", "CACHELOCK_TLS_CERT", "is needed with --tls-key")),
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(invalid(
                "tls-client-ca",
                "CACHELOCK_TLS_CLIENT_CA",
                "needs --tls-cert and --tls-key: client certificates are checked during the TLS handshake",
            ));
        }
        for (setting, env, path) in [
            ("tls-cert", "CACHELOCK_TLS_CERT", &self.tls_cert),
            ("tls-key", "CACHELOCK_TLS_KEY", &self.tls_key),
            ("tls-client-ca", "CACHELOCK_TLS_CLIENT_CA", &self.tls_client_ca),
            ("auth-file", "CACHELOCK_AUTH_FILE", &self.auth_file),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(invalid(
                    setting,
                    env,
                    format_args!("{} is not a readable file", path.display()),
                ));
            }
        }
        // TLS alone keeps eavesdroppers out, not callers: anyone who reaches the
        // port would be the tenant `default` with every permission.
        let tells_clients_apart = self.auth_file.is_some() || self.tls_client_ca.is_some();
        if !self.listen.ip().is_loopback() && !tells_clients_apart && !self.allow_insecure_listen {
            return Err(invalid(
                "listen",
                "CACHELOCK_LISTEN",
                format_args!(
                    "{} is reachable from other machines, and nothing tells its callers apart: give an auth file \
                     (--auth-file) or require client certificates (--tls-client-ca), or set --allow-insecure-listen \
                     if a mesh authenticates for it",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}
