//! The gRPC services, each built from the one [`Context`] the server makes, and
//! the names the health service reports them by.

use std::sync::Arc;

use tonic::{server::NamedService, service::Routes};

use crate::{
    cache::{self, CacheApi, CacheSettings},
    config::{Config, MESSAGE_OVERHEAD_BYTES},
    context::Context,
    error::StartError,
    fence,
    lock::{self, ElectionApi, GrantRules, LockApi, LockSettings},
    notices::Notices,
    pb::{
        self, cache::cache_service_server::CacheServiceServer,
        election::election_service_server::ElectionServiceServer,
        envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer as EnvoyRateLimitServiceServer,
        lock::lock_service_server::LockServiceServer, pubsub::pub_sub_service_server::PubSubServiceServer,
        ratelimit::rate_limit_service_server::RateLimitServiceServer,
        session::session_service_server::SessionServiceServer,
    },
    pubsub::{Hub, PubSubApi},
    ratelimit::{self, Limiter, RateLimitApi, RateLimitSettings},
    redis::LuaScript,
    rls::{RlsApi, RlsSettings, RulesSource},
    session::{self, SessionApi, SessionSettings},
};

/// The health-checked gRPC service names, besides the whole server's `""`.
pub const SERVICE_NAMES: &[&str] = &[
    <CacheServiceServer<CacheApi> as NamedService>::NAME,
    <RateLimitServiceServer<RateLimitApi> as NamedService>::NAME,
    <LockServiceServer<LockApi> as NamedService>::NAME,
    <SessionServiceServer<SessionApi> as NamedService>::NAME,
    <PubSubServiceServer<PubSubApi> as NamedService>::NAME,
    <EnvoyRateLimitServiceServer<RlsApi> as NamedService>::NAME,
    <ElectionServiceServer<ElectionApi> as NamedService>::NAME,
];

/// The services that must not answer from a Redis that may evict their keys:
/// a lock or a session that vanishes under memory pressure breaks its promise.
pub const UNSAFE_WHEN_EVICTING: &[&str] = &[
    <LockServiceServer<LockApi> as NamedService>::NAME,
    <SessionServiceServer<SessionApi> as NamedService>::NAME,
    <ElectionServiceServer<ElectionApi> as NamedService>::NAME,
];

/// Every Lua script the services run, loaded on each new Redis connection.
pub fn all_scripts() -> Vec<&'static LuaScript> {
    cache::scripts()
        .into_iter()
        .chain(ratelimit::scripts())
        .chain(lock::scripts())
        .chain(session::scripts())
        .chain(fence::scripts())
        .collect()
}

/// What some services need besides the [`Context`].
pub struct Parts {
    /// Wakes GetOrLease waiters when a fill lands.
    pub fill_notices: Notices,
    /// Wakes waiting Acquires when a lock is released.
    pub release_notices: Notices,
    /// The Pub/Sub subscriptions of this process.
    pub hub: Hub,
    /// The Envoy API's rules.
    pub rls_rules: Arc<RulesSource>,
    /// Redis is the development redis-server this process started, empty.
    pub own_redis: bool,
}

/// Every cachelock service, built and routed (health and reflection are added
/// by the server: they are made before anything starts).
pub fn routes(config: &Config, context: &Context, parts: Parts) -> Routes {
    // Every service reads requests up to the same size and writes responses up to
    // the same size (the response budget is enforced before Redis reads; this is the backstop).
    let (requests, responses) = (
        config.max_request_bytes,
        config.max_response_bytes + MESSAGE_OVERHEAD_BYTES,
    );
    macro_rules! sized {
        ($server:expr) => {
            $server
                .max_decoding_message_size(requests)
                .max_encoding_message_size(responses)
        };
    }
    let limiter = Arc::new(Limiter::new(context, RateLimitSettings::from(config)));
    let rls = RlsSettings {
        headers: config.rls_headers,
        max_descriptors: config.ratelimit_max_batch,
    };
    let grant_rules = GrantRules {
        fence_retention: config.lock_fence_retention,
        min_replicas: config.lock_min_replicas,
        max_ttl: config.lock_max_ttl,
        // The development Redis was started by this process, empty: it cannot
        // hold a lease from before.
        trust_young_redis: config.lock_trust_young_redis || parts.own_redis,
        allow_evicting: config.allow_evicting_redis,
        trust_persistence: config.lock_trust_persistence,
    };
    // Elections are locks: one set of handlers, waiters and notices for both.
    let locks = LockApi::new(context, grant_rules, LockSettings::from(config), parts.release_notices);
    let mut routes = Routes::builder();
    routes
        .add_service(sized!(CacheServiceServer::new(CacheApi::new(
            context,
            CacheSettings::from(config),
            parts.fill_notices,
        ))))
        .add_service(sized!(RateLimitServiceServer::new(RateLimitApi::new(limiter.clone()))))
        .add_service(sized!(EnvoyRateLimitServiceServer::new(RlsApi::new(
            parts.rls_rules,
            limiter,
            rls,
            context.meter.clone(),
        ))))
        .add_service(sized!(LockServiceServer::new(locks.clone())))
        .add_service(sized!(ElectionServiceServer::new(ElectionApi::new(locks))))
        .add_service(sized!(SessionServiceServer::new(SessionApi::new(
            context,
            SessionSettings::from(config),
        ))))
        .add_service(sized!(PubSubServiceServer::new(PubSubApi::new(
            context,
            parts.hub,
            config.pubsub_max_topics,
            config.operation_timeout,
        ))));
    routes.routes()
}

type Reflection<S> = tonic_reflection::server::v1::ServerReflectionServer<S>;
type ReflectionAlpha<S> = tonic_reflection::server::v1alpha::ServerReflectionServer<S>;

/// gRPC reflection, v1 and v1alpha (grpcurl 1.8 asks for v1alpha), describing
/// every service, health and the error details.
///
/// # Errors
/// [`StartError::Reflection`] when the embedded descriptors cannot be read.
pub fn reflection() -> Result<
    (
        Reflection<impl tonic_reflection::server::v1::ServerReflection>,
        ReflectionAlpha<impl tonic_reflection::server::v1alpha::ServerReflection>,
    ),
    StartError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The google.rpc error details, so grpcurl can decode them from reflection.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            // Each builder adds only its own protocol; list both on both.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder()
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let v1alpha = builder()
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    Ok((v1, v1alpha))
}
