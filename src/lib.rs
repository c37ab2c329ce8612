//! cachelock: a gRPC service that gives backends in any language a cache, rate
//! limits, sessions and distributed locks over one shared Redis connection.
//!
//! The binary (`src/main.rs`) only parses [`config::Config`], sets up tracing
//! and calls [`server::run`]; everything else lives in this library so that the
//! integration tests run exactly the code that production runs.

#![forbid(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod health;
pub mod ids;
pub mod lock;
pub mod notices;
pub mod probe;
pub mod pubsub;
pub mod ratelimit;
pub mod redis;
pub mod request;
pub mod rls;
pub mod server;
pub mod session;
pub mod telemetry;

/// Generated protobuf types and gRPC stubs, one module per package.
pub mod pb {
    /// `cachelock.cache.v1`
    pub mod cache {
        tonic::include_proto!("cachelock.cache.v1");
    }

    /// `cachelock.lock.v1`
    pub mod lock {
        tonic::include_proto!("cachelock.lock.v1");
    }

    /// `cachelock.ratelimit.v1`
    pub mod ratelimit {
        tonic::include_proto!("cachelock.ratelimit.v1");
    }

    /// `cachelock.session.v1`
    pub mod session {
        tonic::include_proto!("cachelock.session.v1");
    }

    /// `cachelock.pubsub.v1`
    pub mod pubsub {
        tonic::include_proto!("cachelock.pubsub.v1");
    }

    /// Envoy's rate limit service API, vendored from Envoy (see proto/envoy/README.md).
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod envoy {
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod extensions {
            pub mod common {
                pub mod ratelimit {
                    pub mod v3 {
                        tonic::include_proto!("envoy.extensions.common.ratelimit.v3");
                    }
                }
            }
        }
        pub mod service {
            pub mod ratelimit {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.ratelimit.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
    }

    /// The encoded descriptors of every package served, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cachelock_descriptor");
}
