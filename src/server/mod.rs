//! Builds the tonic server and runs it until a shutdown signal.

mod background;
mod http;
mod services;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt, stream};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::watch,
};
use tonic::transport::{
    Server,
    server::{Connected, TcpIncoming},
};
use tracing::{info, warn};

use crate::{
    admission::{AdmissionLayer, limit_connections},
    auth::{AuthFile, AuthLayer, Authenticator, ReloadableTls, TlsFiles, over_tls, plaintext, reload_on_change},
    cache,
    config::{Config, RedisTarget},
    context::Context,
    error::StartError,
    health::{HealthStatus, ProbeSettings, health_service, probe_redis},
    lock,
    notices::Notices,
    pubsub::{Commands, Hub, HubLimits, Wakers, run_subscriber},
    redis::{
        Backoff, Cluster, ConnectSettings, EmbeddedRedis, Endpoint, Keys, Redis, RedisSettings, Sentinels, Topology,
        watch_failovers,
    },
    request::Limits,
    rls::RulesSource,
    telemetry::{Meter, Metrics, RpcLayer, traces_wanted},
};
use background::Background;
use services::{Parts, UNSAFE_WHEN_EVICTING, all_scripts, reflection};

pub use services::SERVICE_NAMES;

/// Idle time before TCP keepalive probes on client connections.
const CLIENT_KEEPALIVE: Duration = Duration::from_secs(60);

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
    let target = config
        .redis_target()
        .map_err(|error| StartError::RedisConfig(error.to_string()))?;
    let embedded = match target {
        RedisTarget::Development => {
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
    let result = match topology(&config, target, embedded.as_ref()) {
        Ok(topology) => serve(listeners, &config, topology, embedded.is_some(), signals).await,
        Err(error) => Err(error),
    };
    if let Some(redis) = embedded {
        redis.stop().await;
        info!("stopped the development redis-server");
    }
    result
}

/// Where Redis is: the configuration's target (`embedded`: the development
/// redis-server, when the target is [`RedisTarget::Development`]).
fn topology(config: &Config, target: RedisTarget, embedded: Option<&EmbeddedRedis>) -> Result<Topology, StartError> {
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
    Ok(match target {
        RedisTarget::Development => {
            let embedded = embedded
                .ok_or_else(|| StartError::EmbeddedRedis("the development redis-server is not running".to_owned()))?;
            Topology::Standalone(Endpoint::loopback(embedded.port(), &settings))
        }
        RedisTarget::Standalone(info) => Topology::Standalone(with_login(Endpoint::new(&info, &settings)?)),
        RedisTarget::Cluster(nodes) => {
            Topology::Cluster(Arc::new(Cluster::new(&nodes, &settings, username, password)?))
        }
        RedisTarget::Sentinel { nodes, master } => {
            let sentinels = nodes
                .iter()
                .map(|node| Endpoint::new(node, &settings))
                .collect::<Result<Vec<_>, _>>()?;
            let db = sentinels.first().map_or(0, Endpoint::db);
            Topology::Sentinel(Arc::new(Sentinels::new(sentinels, master, username, password, db)?))
        }
    })
}

/// Serves on `listeners` until `signals`; `own_redis`: Redis is the development
/// redis-server this process started, empty.
///
/// The one place the server is wired together, in the order things must
/// happen: what can fail, then Redis and health, then the background tasks,
/// then the gRPC server and its shutdown. It reads top to bottom, so it stays
/// one function (about 110 lines) rather than handing its parts around.
async fn serve(
    listeners: Listeners,
    config: &Config,
    topology: Topology,
    own_redis: bool,
    signals: impl Stream<Item = ()>,
) -> Result<(), StartError> {
    log_start(&listeners, &topology);
    // Everything that can fail comes first, so that nothing is left running on an early return.
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let keys = Keys::new(&config.key_prefix);
    // Metrics are kept only when someone can read them.
    let (meter, metrics) = match listeners.metrics {
        Some(metrics_listener) => {
            let metrics = Arc::new(Metrics::new());
            (Meter::new(metrics.clone()), Some((metrics_listener, metrics)))
        }
        None => (Meter::off(), None),
    };
    let Security {
        tls,
        auth_file,
        authenticator,
    } = security(config, &keys, &meter)?;
    let (parts, hub_commands) = parts(config, &meter, own_redis)?;

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
    let context = Context {
        redis,
        limits: Limits::from(config),
        meter: meter.clone(),
        draining: draining_rx.clone(),
    };
    let mut background = Background::default();
    if let Some((metrics_listener, metrics)) = metrics {
        background.spawn(http::serve(metrics_listener, metrics, health.clone()));
    }
    background.spawn(probe_redis(
        context.redis.clone(),
        health.clone(),
        probe_settings(config),
        meter.clone(),
    ));
    // The process's one Redis subscriber connection: Pub/Sub streams, lock releases and cache fills.
    background.spawn(run_subscriber(
        parts.hub.clone(),
        hub_commands,
        Wakers {
            routes: vec![
                (keys.lock_released_pattern(), parts.release_notices.clone()),
                (keys.cache_filled_pattern(), parts.fill_notices.clone()),
            ],
        },
        topology.clone(),
        backoff,
        context.redis.failovers().subscribe(),
    ));
    if let Topology::Sentinel(sentinels) = &topology {
        background.spawn(watch_failovers(sentinels.clone(), context.redis.failovers(), backoff));
    }
    if parts.rls_rules.has_files() {
        background.spawn(parts.rls_rules.clone().reload_on_change());
    }
    if tls.is_some() || auth_file.is_some() {
        background.spawn(reload_on_change(tls.clone(), auth_file));
    }
    let routes = services::routes(config, &context, parts);

    let mut drained = draining_rx;
    let mut builder = Server::builder()
        // A stream from a peer that vanished is closed instead of kept.
        .http2_keepalive_interval(Some(config.client_ping_interval))
        .http2_keepalive_timeout(Some(config.client_ping_timeout))
        .max_concurrent_streams(config.max_concurrent_streams);
    // Old connections are asked to go, so that clients reconnect to instances added since.
    if let Some(age) = config.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    if let Some(grace) = config.max_connection_age_grace {
        builder = builder.max_connection_age_grace(grace);
    }
    let server = builder
        // Outermost: every RPC is measured and spanned, refused ones included.
        .layer(RpcLayer::new(
            meter.clone(),
            config.slow_request,
            traces_wanted(config.otlp_endpoint.as_deref()),
        ))
        // Who calls is settled next: an unknown caller takes no in-flight place.
        .layer(AuthLayer::new(authenticator))
        .layer(AdmissionLayer::new(config.max_in_flight, meter))
        .add_routes(routes)
        .add_service(health_server)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming(listeners.grpc, config, tls), async move {
            let _ = drained.wait_for(|draining| *draining).await;
        });
    // The server is polled throughout: it keeps serving during the delay and drains after it.
    let result = tokio::select! {
        result = server => result,
        () = shut_down(signals, config, &health, &draining_tx) => Ok(()),
    };
    background.stop().await;
    result.map_err(StartError::from)
}

/// How Redis is watched for the health service.
fn probe_settings(config: &Config) -> ProbeSettings {
    ProbeSettings {
        interval: config.health_interval,
        timeout: config.operation_timeout,
        require_noeviction: config.require_noeviction,
        unsafe_when_evicting: if config.allow_evicting_redis {
            &[]
        } else {
            UNSAFE_WHEN_EVICTING
        },
    }
}

/// Logs where the server listens and which Redis it uses.
fn log_start(listeners: &Listeners, topology: &Topology) {
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
}

/// What the services need besides the [`Context`], and the Pub/Sub hub's
/// commands for the subscriber task.
///
/// # Errors
/// [`StartError::RlsConfig`] when the Envoy API's rules cannot be used.
fn parts(config: &Config, meter: &Meter, own_redis: bool) -> Result<(Parts, Commands), StartError> {
    let rls_rules = Arc::new(match &config.rls_config {
        Some(path) => {
            RulesSource::load(path, meter.clone()).map_err(|error| StartError::RlsConfig(error.to_string()))?
        }
        None => RulesSource::none(),
    });
    let (hub, hub_commands) = Hub::new(
        HubLimits {
            buffer: config.pubsub_buffer,
            max_streams: config.pubsub_max_streams,
        },
        meter.clone(),
    );
    let parts = Parts {
        fill_notices: Notices::new(
            config.cache_max_fill_waiters,
            config.cache_max_fill_waiters,
            meter.clone(),
            &cache::WAITING,
        ),
        release_notices: Notices::new(
            config.lock_max_waiters,
            config.lock_max_waiters_per_name,
            meter.clone(),
            &lock::WAITING,
        ),
        hub,
        rls_rules,
        own_redis,
    };
    Ok((parts, hub_commands))
}

/// Who may call, and over what.
struct Security {
    /// The server's certificate (and client CA), reloaded when the files change.
    tls: Option<Arc<ReloadableTls>>,
    /// The clients, reloaded when the file changes.
    auth_file: Option<Arc<AuthFile>>,
    /// Tells each request's caller.
    authenticator: Authenticator,
}

/// The TLS files and the auth file, loaded.
///
/// # Errors
/// [`StartError::Security`] when a file cannot be used.
fn security(config: &Config, keys: &Keys, meter: &Meter) -> Result<Security, StartError> {
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
    let authenticator = match &auth_file {
        Some(file) => Authenticator::with_file(keys, file.clone(), config.reflection_requires_auth, meter.clone()),
        None => Authenticator::open(keys),
    };
    Ok(Security {
        tls,
        auth_file,
        authenticator,
    })
}

/// The client connections `listener` accepts: at most `--max-connections`,
/// over TLS when it is configured.
fn incoming(
    listener: TcpListener,
    config: &Config,
    tls: Option<Arc<ReloadableTls>>,
) -> impl Stream<Item = Result<impl Connected + AsyncRead + AsyncWrite + Send + Unpin + 'static, std::io::Error>> {
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(CLIENT_KEEPALIVE));
    let incoming = limit_connections(incoming, config.max_connections);
    match tls {
        Some(tls) => over_tls(incoming, tls).boxed(),
        None => plaintext(incoming)
            .map(|accepted| accepted.map_err(std::io::Error::other))
            .boxed(),
    }
}

/// Completes when the server should stop serving: health goes NOT_SERVING at
/// the first signal, calls are still served for the shutdown delay, then the
/// server drains for up to the grace. A second signal cuts either short.
async fn shut_down(
    signals: impl Stream<Item = ()>,
    config: &Config,
    health: &HealthStatus,
    draining: &watch::Sender<bool>,
) {
    let mut signals = std::pin::pin!(signals);
    // The next signal; a stream that ends sends no more.
    let mut next_signal = async || {
        if signals.next().await.is_none() {
            std::future::pending::<()>().await;
        }
    };
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
    let _ = draining.send(true);
    tokio::select! {
        () = tokio::time::sleep(config.shutdown_grace) => warn!(
            grace = %humantime::format_duration(config.shutdown_grace),
            "in-flight calls did not finish within the shutdown grace; stopping without them"
        ),
        () = next_signal() => warn!("another signal: stopping without waiting for in-flight calls"),
    }
}
