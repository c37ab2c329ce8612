//! Builds the tonic server and runs it until a shutdown signal.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle, time::timeout};
use tonic::{server::NamedService, transport::Server, transport::server::TcpIncoming};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::{
    cache::{self, CacheApi, CacheStore},
    config::Config,
    error::StartError,
    health::{health_service, probe_redis},
    lock::{self, LockApi, LockSettings, LockStore, ReleaseNotices, listen_for_releases},
    pb::{
        self, cache::cache_service_server::CacheServiceServer, lock::lock_service_server::LockServiceServer,
        ratelimit::rate_limit_service_server::RateLimitServiceServer,
        session::session_service_server::SessionServiceServer,
    },
    ratelimit::{self, RateLimitApi, RateLimitSettings, RateLimitStore},
    redis::{Keys, Redis, embedded::EmbeddedRedis, redacted},
    request::Limits,
    session::{self, SessionApi, SessionSettings, SessionStore},
};

/// The smallest request size every service accepts (gRPC's usual 4 MiB).
const MIN_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Room for the protobuf framing around the largest key and value.
const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;
/// Idle time before TCP keepalive probes on client connections.
const CLIENT_KEEPALIVE: Duration = Duration::from_secs(60);
/// How often the server pings idle HTTP/2 connections, and how long it waits for
/// the answer: a Watch stream from a peer that vanished is closed instead of kept.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The health-checked gRPC service names, besides the whole server's `""`.
pub const SERVICE_NAMES: &[&str] = &[
    <CacheServiceServer<CacheApi> as NamedService>::NAME,
    <RateLimitServiceServer<RateLimitApi> as NamedService>::NAME,
    <LockServiceServer<LockApi> as NamedService>::NAME,
    <SessionServiceServer<SessionApi> as NamedService>::NAME,
];

/// Serves cachelock on `listener` until `shutdown` completes.
///
/// With no `redis_url` in `config`, it first starts a private development
/// redis-server and stops it again on the way out. On shutdown every health
/// name goes NOT_SERVING, open Watch streams end, and in-flight calls get
/// `config.shutdown_grace` to finish.
///
/// # Errors
/// A [`StartError`] when the development Redis, the Redis client or the gRPC
/// server cannot be set up, or the server fails.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    // rediss:// needs a rustls crypto provider; a second install is a harmless no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let (url, embedded) = match &config.redis_url {
        Some(url) => (url.clone(), None),
        None => {
            let redis = EmbeddedRedis::start().await?;
            warn!(
                port = redis.port(),
                "no REDIS_URL set: started a private, non-persistent redis-server for DEVELOPMENT ONLY; \
                 everything is lost when cachelock stops. Set REDIS_URL in production"
            );
            (redis.url(), Some(redis))
        }
    };
    let result = serve(listener, &config, &url, shutdown).await;
    if let Some(redis) = embedded {
        redis.stop().await;
        info!("stopped the development redis-server");
    }
    result
}

async fn serve(
    listener: TcpListener,
    config: &Config,
    url: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let local_addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(
        listen = %local_addr.map_or_else(|| "?".to_owned(), |addr| addr.to_string()),
        redis = %redacted(url),
        "cachelock starting"
    );
    let redis = Redis::connect_lazily(url, config)?;

    let (draining_tx, draining_rx) = watch::channel(false);
    let (health, health_server) = health_service(SERVICE_NAMES, draining_rx.clone()).await;
    let prober = tokio::spawn(probe_redis(
        redis.clone(),
        health.clone(),
        config.health_interval,
        config.operation_timeout,
        cache::scripts()
            .into_iter()
            .chain(ratelimit::scripts())
            .chain(lock::scripts())
            .chain(session::scripts())
            .collect(),
    ));
    let keys = Keys::new(&config.key_prefix);
    let release_notices = ReleaseNotices::default();
    let release_listener = tokio::spawn(listen_for_releases(
        redis.client().clone(),
        keys.lock_released_pattern(),
        release_notices.clone(),
        config.connect_timeout,
        config.reconnect_max_backoff,
    ));
    let mut background = Some((prober, release_listener));

    let message_limit = (config.max_value_bytes + config.max_key_bytes + MESSAGE_OVERHEAD_BYTES).max(MIN_MESSAGE_BYTES);
    let cache = CacheServiceServer::new(CacheApi::new(
        CacheStore::new(redis.clone(), keys.clone()),
        Limits::from(config),
        config.operation_timeout,
    ))
    .max_decoding_message_size(message_limit);
    let ratelimit = RateLimitServiceServer::new(RateLimitApi::new(
        RateLimitStore::new(redis.clone(), keys.clone()),
        Limits::from(config),
        RateLimitSettings::from(config),
    ));
    let lock = LockServiceServer::new(LockApi::new(
        LockStore::new(redis.clone(), keys.clone()),
        release_notices,
        Limits::from(config),
        LockSettings::from(config),
        draining_rx.clone(),
    ));
    let session = SessionServiceServer::new(SessionApi::new(
        SessionStore::new(redis.clone(), keys),
        Limits::from(config),
        SessionSettings::from(config),
    ));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
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

    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(CLIENT_KEEPALIVE));
    let mut drained = draining_rx;
    let server = Server::builder()
        .http2_keepalive_interval(Some(HTTP2_PING_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_PING_TIMEOUT))
        .add_service(health_server)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(cache)
        .add_service(ratelimit)
        .add_service(lock)
        .add_service(session)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = drained.wait_for(|draining| *draining).await;
        });
    tokio::pin!(server);
    tokio::pin!(shutdown);

    let result = tokio::select! {
        result = &mut server => result,
        () = &mut shutdown => {
            info!("shutdown requested: health is NOT_SERVING, draining in-flight calls");
            // Once the prober is gone, nothing can set a name back to SERVING.
            stop_background(&mut background).await;
            health.set_all(ServingStatus::NotServing).await;
            let _ = draining_tx.send(true);
            match timeout(config.shutdown_grace, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    warn!(
                        grace = %humantime::format_duration(config.shutdown_grace),
                        "in-flight calls did not finish within the shutdown grace; stopping without them"
                    );
                    Ok(())
                }
            }
        }
    };
    stop_background(&mut background).await;
    result.map_err(StartError::from)
}

/// Stops the health prober and the lock-release listener and waits until they
/// have. They are aborted rather than asked: either may be inside a Redis call
/// bounded only by a long timeout, and neither holds state worth finishing.
async fn stop_background(background: &mut Option<(JoinHandle<()>, JoinHandle<()>)>) {
    if let Some((prober, release_listener)) = background.take() {
        prober.abort();
        release_listener.abort();
        let _ = prober.await;
        let _ = release_listener.await;
    }
}
