//! Builds the tonic server and runs it until a shutdown signal.

mod http;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt, stream};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::{server::NamedService, transport::Server, transport::server::TcpIncoming};
use tracing::{info, warn};

use crate::{
    admission::{AdmissionLayer, limit_connections},
    auth::{AuthFile, AuthLayer, Authenticator, ReloadableTls, TlsFiles, over_tls, plaintext, reload_on_change},
    cache::{self, CacheApi, CacheSettings, CacheStore},
    config::{Config, MESSAGE_OVERHEAD_BYTES, RedisMode},
    error::StartError,
    health::{ProbeSettings, health_service, probe_redis},
    lock::{self, GrantRules, LockApi, LockSettings, LockStore},
    notices::Notices,
    pb::{
        self, cache::cache_service_server::CacheServiceServer,
        envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer as EnvoyRateLimitServiceServer,
        lock::lock_service_server::LockServiceServer, pubsub::pub_sub_service_server::PubSubServiceServer,
        ratelimit::rate_limit_service_server::RateLimitServiceServer,
        session::session_service_server::SessionServiceServer,
    },
    pubsub::{Hub, HubLimits, PubSubApi, Wakers, run_subscriber},
    ratelimit::{self, Limiter, RateLimitApi, RateLimitSettings, RateLimitStore},
    redis::{
        Backoff, Cluster, ConnectSettings, EmbeddedRedis, Endpoint, Keys, LuaScript, Redis, RedisSettings, Sentinels,
        Topology, watch_failovers,
    },
    request::Limits,
    rls::{RlsApi, RlsSettings, RulesSource},
    session::{self, SessionApi, SessionSettings, SessionStore},
    telemetry::{Meter, Metrics, RpcLayer},
};

/// Idle time before TCP keepalive probes on client connections.
const CLIENT_KEEPALIVE: Duration = Duration::from_secs(60);

/// The health-checked gRPC service names, besides the whole server's `""`.
pub const SERVICE_NAMES: &[&str] = &[
    <CacheServiceServer<CacheApi> as NamedService>::NAME,
    <RateLimitServiceServer<RateLimitApi> as NamedService>::NAME,
    <LockServiceServer<LockApi> as NamedService>::NAME,
    <SessionServiceServer<SessionApi> as NamedService>::NAME,
    <PubSubServiceServer<PubSubApi> as NamedService>::NAME,
    <EnvoyRateLimitServiceServer<RlsApi> as NamedService>::NAME,
];

/// Every Lua script the services run, loaded on each new Redis connection.
fn all_scripts() -> Vec<&'static LuaScript> {
    cache::scripts()
        .into_iter()
        .chain(ratelimit::scripts())
        .chain(lock::scripts())
        .chain(session::scripts())
        .collect()
}

/// The sockets the server listens on, bound before it starts (tests bind port 0
/// and learn the ports before the server runs).
pub struct Listeners {
    /// The gRPC listener.
    pub grpc: TcpListener,
    /// The operators' HTTP listener (`/metrics`, `/livez`, `/readyz`); `None`: off.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config`.
    ///
    /// # Errors
    /// [`StartError::Io`] naming the address that cannot be bound.
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let bind = async |addr: SocketAddr, setting: &str| {
            TcpListener::bind(addr).await.map_err(|source| StartError::Io {
                context: format!("cannot listen on {setting} {addr}"),
                source,
            })
        };
        let grpc = bind(config.listen, "--listen").await?;
        let metrics = match config.metrics_listen.0 {
            Some(addr) => Some(bind(addr, "--metrics-listen").await?),
            None => None,
        };
        Ok(Listeners { grpc, metrics })
    }
}

/// Serves cachelock on `listener` (and the metrics listener of `config`) until
/// `shutdown` completes.
///
/// # Errors
/// See [`run_until_signals`].
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let metrics = match config.metrics_listen.0 {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Io {
            context: format!("cannot listen on --metrics-listen {addr}"),
            source,
        })?),
        None => None,
    };
    let listeners = Listeners {
        grpc: listener,
        metrics,
    };
    run_until_signals(listeners, config, stream::once(shutdown)).await
}

/// Serves cachelock on `listeners` until `signals` yields; a second item cuts the
/// remaining shutdown delay and grace short.
///
/// With no `redis_url` in `config`, it first starts a private development
/// redis-server and stops it again on the way out. On shutdown every health
/// name goes NOT_SERVING; calls are still served for `config.shutdown_delay` (so
/// that load balancers notice first); then open Watch streams and waiting
/// Acquires end, and in-flight calls get `config.shutdown_grace` to finish.
///
/// # Errors
/// A [`StartError`] when the development Redis, the Redis client or the gRPC
/// server cannot be set up, or the server fails.
pub async fn run_until_signals(
    listeners: Listeners,
    config: Config,
    signals: impl Stream<Item = ()>,
) -> Result<(), StartError> {
    let embedded = match config.redis_mode() {
        RedisMode::Development => {
            let redis = EmbeddedRedis::start().await?;
            warn!(
                port = redis.port(),
                "no REDIS_URL set: started a private, non-persistent redis-server for DEVELOPMENT ONLY; \
                 everything is lost when cachelock stops. Set REDIS_URL in production"
            );
            Some(redis)
        }
        _ => None,
    };
    let result = match topology(&config, embedded.as_ref()) {
        Ok(topology) => serve(listeners, &config, topology, embedded.is_some(), signals).await,
        Err(error) => Err(error),
    };
    if let Some(redis) = embedded {
        redis.stop().await;
        info!("stopped the development redis-server");
    }
    result
}

/// The server's background tasks: stopped and joined together by [`Background::stop`],
/// aborted if dropped on an early return.
#[derive(Default)]
struct Background {
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Aborts every task and waits until each has stopped. They are aborted rather
    /// than asked: each may be inside a Redis call bounded only by a timeout, and
    /// none holds state worth finishing.
    async fn stop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Where Redis is, from the configuration (`embedded`: the development redis-server).
fn topology(config: &Config, embedded: Option<&EmbeddedRedis>) -> Result<Topology, StartError> {
    let settings = ConnectSettings {
        ca_file: config.redis_ca_file.clone(),
        keepalive: config.redis_keepalive,
        connect_timeout: config.connect_timeout,
    };
    let username = config.redis_username.as_deref();
    let password = config.redis_password.as_deref();
    let with_login = |endpoint: Endpoint| match (username, password) {
        (None, None) => endpoint,
        _ => {
            let db = endpoint.db();
            endpoint.with_login(username, password, db)
        }
    };
    Ok(match config.redis_mode() {
        RedisMode::Development => {
            let url = embedded
                .map(EmbeddedRedis::url)
                .ok_or_else(|| StartError::EmbeddedRedis("the development redis-server is not running".to_owned()))?;
            Topology::Standalone(Endpoint::from_url(&url, &settings)?)
        }
        RedisMode::Standalone(url) => Topology::Standalone(with_login(Endpoint::from_url(url, &settings)?)),
        RedisMode::Cluster(nodes) => Topology::Cluster(Arc::new(Cluster::new(nodes, &settings, username, password)?)),
        RedisMode::Sentinel { nodes, master } => {
            let sentinels = nodes
                .iter()
                .map(|url| Endpoint::from_url(url, &settings))
                .collect::<Result<Vec<_>, _>>()?;
            let db = sentinels.first().map_or(0, Endpoint::db);
            Topology::Sentinel(Arc::new(Sentinels::new(
                sentinels,
                master.to_owned(),
                username,
                password,
                db,
            )?))
        }
    })
}

/// Serves on `listeners` until `signals`; `own_redis`: Redis is the development
/// redis-server this process started, empty.
async fn serve(
    listeners: Listeners,
    config: &Config,
    topology: Topology,
    own_redis: bool,
    signals: impl Stream<Item = ()>,
) -> Result<(), StartError> {
    let address = |listener: &TcpListener| {
        listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |addr| addr.to_string())
    };
    info!(
        listen = %address(&listeners.grpc),
        metrics = %listeners.metrics.as_ref().map_or_else(|| "off".to_owned(), address),
        redis = %topology.describe(),
        "cachelock starting"
    );

    // Everything that can fail comes first, so that nothing is left running on an early return.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The google.rpc error details, so grpcurl can decode them from reflection.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            // Each builder adds only its own protocol; list both on both.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let keys = Keys::new(&config.key_prefix);
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            ReloadableTls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            })
            .map_err(StartError::Security)?,
        )),
        _ => None,
    };
    let auth_file = match &config.auth_file {
        Some(path) => Some(Arc::new(
            AuthFile::load(path.clone(), keys.clone()).map_err(|error| StartError::Security(error.to_string()))?,
        )),
        None => None,
    };
    if config.tls_client_ca.is_some() && auth_file.is_none() {
        warn!(
            "--tls-client-ca without --auth-file: every client with a certificate from that CA is the tenant \
             default with every permission; give an auth file to tell them apart"
        );
    }
    // Metrics are kept only when someone can read them.
    let (meter, metrics) = match listeners.metrics {
        Some(metrics_listener) => {
            let metrics = Arc::new(Metrics::new());
            (Meter::new(metrics.clone()), Some((metrics_listener, metrics)))
        }
        None => (Meter::off(), None),
    };
    let rls_rules = Arc::new(match &config.rls_config {
        Some(path) => {
            RulesSource::load(path, meter.clone()).map_err(|error| StartError::RlsConfig(error.to_string()))?
        }
        None => RulesSource::none(),
    });
    let authenticator = match &auth_file {
        Some(file) => Authenticator::with_file(&keys, file.clone(), config.reflection_requires_auth, meter.clone()),
        None => Authenticator::open(&keys),
    };

    let backoff = Backoff {
        min: config.reconnect_min_backoff,
        max: config.reconnect_max_backoff,
    };
    let redis = Redis::start(
        RedisSettings {
            topology: topology.clone(),
            scripts: all_scripts(),
            backoff,
            blocking: config.lock_min_replicas > 0,
        },
        meter.clone(),
    );
    let (draining_tx, draining_rx) = watch::channel(false);
    let (health, health_server) = health_service(
        SERVICE_NAMES,
        draining_rx.clone(),
        config.max_watch_streams,
        meter.clone(),
    )
    .await;
    let release_notices = Notices::new(
        config.lock_max_waiters,
        config.lock_max_waiters_per_name,
        meter.clone(),
        &lock::WAITING,
    );
    let fill_notices = Notices::new(
        config.cache_max_fill_waiters,
        config.cache_max_fill_waiters,
        meter.clone(),
        &cache::WAITING,
    );
    let mut background = Background::default();
    if let Some((metrics_listener, metrics)) = metrics {
        background.spawn(http::serve(metrics_listener, metrics, health.clone()));
    }
    let unsafe_when_evicting = if config.allow_evicting_redis {
        Vec::new()
    } else {
        vec![
            <LockServiceServer<LockApi> as NamedService>::NAME,
            <SessionServiceServer<SessionApi> as NamedService>::NAME,
        ]
    };
    background.spawn(probe_redis(
        redis.clone(),
        health.clone(),
        ProbeSettings {
            interval: config.health_interval,
            timeout: config.operation_timeout,
            require_noeviction: config.require_noeviction,
            unsafe_when_evicting,
        },
        meter.clone(),
    ));
    let (hub, hub_commands) = Hub::new(
        HubLimits {
            buffer: config.pubsub_buffer,
            max_streams: config.pubsub_max_streams,
        },
        meter.clone(),
    );
    // The process's one Redis subscriber connection: Pub/Sub streams and lock releases.
    background.spawn(run_subscriber(
        hub.clone(),
        hub_commands,
        Wakers {
            routes: vec![
                (keys.lock_released_pattern(), release_notices.clone()),
                (keys.cache_filled_pattern(), fill_notices.clone()),
            ],
        },
        topology.clone(),
        backoff,
        redis.failovers().subscribe(),
    ));
    if let Topology::Sentinel(sentinels) = &topology {
        background.spawn(watch_failovers(sentinels.clone(), redis.failovers(), backoff));
    }
    if rls_rules.has_files() {
        background.spawn(rls_rules.clone().reload_on_change());
    }
    if tls.is_some() || auth_file.is_some() {
        background.spawn(reload_on_change(tls.clone(), auth_file));
    }

    // Every service reads requests up to the same size and writes responses up to
    // the same size (the response budget is enforced before Redis reads; this is the backstop).
    let (requests, responses) = (
        config.max_request_bytes,
        config.max_response_bytes + MESSAGE_OVERHEAD_BYTES,
    );
    let cache = CacheServiceServer::new(CacheApi::new(
        CacheStore::new(redis.clone()),
        Limits::from(config),
        CacheSettings {
            operation_timeout: config.operation_timeout,
            max_fill_wait: config.cache_max_fill_wait,
        },
        fill_notices,
        meter.clone(),
        draining_rx.clone(),
    ))
    .max_decoding_message_size(requests)
    .max_encoding_message_size(responses);
    let limiter = Arc::new(Limiter::new(
        RateLimitStore::new(redis.clone(), meter.clone()),
        Limits::from(config),
        RateLimitSettings::from(config),
        meter.clone(),
    ));
    let ratelimit = RateLimitServiceServer::new(RateLimitApi::new(limiter.clone()))
        .max_decoding_message_size(requests)
        .max_encoding_message_size(responses);
    let envoy_ratelimit = EnvoyRateLimitServiceServer::new(RlsApi::new(
        rls_rules,
        limiter,
        RlsSettings {
            headers: config.rls_headers,
            max_descriptors: config.ratelimit_max_batch,
        },
        meter.clone(),
    ))
    .max_decoding_message_size(requests)
    .max_encoding_message_size(responses);
    let lock = LockServiceServer::new(LockApi::new(
        LockStore::new(
            redis.clone(),
            GrantRules {
                fence_retention: config.lock_fence_retention,
                min_replicas: config.lock_min_replicas,
                max_ttl: config.lock_max_ttl,
                // The development Redis was started by this process, empty: it cannot
                // hold a lease from before.
                trust_young_redis: config.lock_trust_young_redis || own_redis,
                allow_evicting: config.allow_evicting_redis,
                trust_persistence: config.lock_trust_persistence,
            },
        ),
        meter.clone(),
        release_notices,
        Limits::from(config),
        LockSettings::from(config),
        draining_rx.clone(),
    ))
    .max_decoding_message_size(requests)
    .max_encoding_message_size(responses);
    let pubsub = PubSubServiceServer::new(PubSubApi::new(
        redis.clone(),
        hub,
        Limits::from(config),
        config.pubsub_max_topics,
        config.operation_timeout,
        draining_rx.clone(),
        meter.clone(),
    ))
    .max_decoding_message_size(requests)
    .max_encoding_message_size(responses);
    let session = SessionServiceServer::new(SessionApi::new(
        SessionStore::new(redis),
        Limits::from(config),
        SessionSettings::from(config),
        meter.clone(),
    ))
    .max_decoding_message_size(requests)
    .max_encoding_message_size(responses);

    let incoming = TcpIncoming::from(listeners.grpc)
        .with_nodelay(Some(true))
        .with_keepalive(Some(CLIENT_KEEPALIVE));
    let incoming = limit_connections(incoming, config.max_connections);
    let incoming = match tls {
        Some(tls) => over_tls(incoming, tls).boxed(),
        None => plaintext(incoming)
            .map(|accepted| accepted.map_err(std::io::Error::other))
            .boxed(),
    };
    let mut drained = draining_rx;
    let server = Server::builder()
        // A stream from a peer that vanished is closed instead of kept.
        .http2_keepalive_interval(Some(config.client_ping_interval))
        .http2_keepalive_timeout(Some(config.client_ping_timeout))
        .max_concurrent_streams(config.max_concurrent_streams)
        // Outermost: every RPC is measured and spanned, refused ones included.
        .layer(RpcLayer::new(meter.clone(), config.slow_request))
        // Who calls is settled next: an unknown caller takes no in-flight place.
        .layer(AuthLayer::new(authenticator))
        .layer(AdmissionLayer::new(config.max_in_flight, meter))
        .add_service(health_server)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(cache)
        .add_service(ratelimit)
        .add_service(envoy_ratelimit)
        .add_service(lock)
        .add_service(session)
        .add_service(pubsub)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = drained.wait_for(|draining| *draining).await;
        });
    let mut signals = std::pin::pin!(signals);
    // The next signal; a stream that ends sends no more.
    let mut next_signal = async || {
        if signals.next().await.is_none() {
            std::future::pending::<()>().await;
        }
    };
    // The server is polled throughout: it keeps serving during the delay and drains after it.
    let shutdown = async {
        next_signal().await;
        health.close().await;
        if !config.shutdown_delay.is_zero() {
            info!(
                delay = %humantime::format_duration(config.shutdown_delay),
                "shutdown requested: health is NOT_SERVING; still serving calls while load balancers \
                 notice (signal again to stop now)"
            );
            tokio::select! {
                () = tokio::time::sleep(config.shutdown_delay) => {}
                () = next_signal() => info!("second signal: skipping the rest of the delay"),
            }
        }
        info!("draining in-flight calls");
        let _ = draining_tx.send(true);
        tokio::select! {
            () = tokio::time::sleep(config.shutdown_grace) => warn!(
                grace = %humantime::format_duration(config.shutdown_grace),
                "in-flight calls did not finish within the shutdown grace; stopping without them"
            ),
            () = next_signal() => warn!("another signal: stopping without waiting for in-flight calls"),
        }
    };
    let result = tokio::select! {
        result = server => result,
        () = shutdown => Ok(()),
    };
    background.stop().await;
    result.map_err(StartError::from)
}
