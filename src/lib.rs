//! cachelock: a gRPC service that gives backends in any language a cache, rate
//! limits, sessions and distributed locks over one shared Redis connection.
//!
//! The binary (`src/main.rs`) only parses [`Config`], sets up tracing and calls
//! [`run_until_signals`]; everything else lives in this library so that the
//! integration tests run exactly the code that production runs.
//!
//! # Layout
//!
//! Layers run one way, bottom to top: a module uses only the ones below it
//! (`.ci/module-graph` checks there is no circle).
//!
//! | layer | modules |
//! |---|---|
//! | the floor | `time` (durations in the units Redis and protobuf speak), `error` (every error and its gRPC status) |
//! | settings | `config` (every flag, validated once; the Redis target parsed once) |
//! | Redis | `redis` (the shared connections, keys, scripts, INFO, the development redis-server), `notices` (wake-ups heard from Redis, and the one server-side wait) |
//! | around every RPC | `telemetry` (metrics, spans, throttled logs), `codec` (the checked protobuf codec), `admission` (in-flight and connection limits), `auth` (TLS, the auth file, callers), `request` (deadlines, field checks), `fence` (fenced writes' checks and scripts), `context` (what every service is built from), `ids` |
//! | services | `cache`, `ratelimit` (its limiter core is what `rls`, Envoy's API, calls too), `rls`, `session`, `lock`, `pubsub`, `health` |
//! | the server | `server` (run, the services built from one context, the ops HTTP listener), `probe` |
//!
//! Modules are private; what the binary, the tests and the benchmark use is
//! re-exported here, once.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod admission;
mod auth;
mod cache;
mod codec;
mod config;
mod context;
mod error;
mod fence;
mod health;
mod ids;
mod lock;
mod notices;
mod probe;
mod pubsub;
mod ratelimit;
mod redis;
mod request;
mod rls;
mod server;
mod session;
mod telemetry;
mod time;

pub use config::{CheckRlsConfigArgs, Cli, Command, Config, ConfigError, LogFormat, ProbeArgs};
pub use error::{Reason, StartError};
pub use probe::check as probe;
pub use redis::{DEFAULT_TENANT, EmbeddedRedis, KeySpace, Keys, slot_tag};
pub use rls::{Rules, Unit};
pub use server::{Listeners, run, run_until_signals};
pub use telemetry::{Traces, log_filter, trace_filter};

/// What the benchmark sends straight to Redis, to compare the service with
/// Redis alone: a rate-limit check as the service's script takes it.
#[doc(hidden)]
pub mod direct {
    pub use crate::ratelimit::{Algorithm, Counting, LimitCheck, invocation};
}

/// Generated protobuf types and gRPC stubs, one module per package.
pub mod pb {
    /// The packages as protoc names them (`cachelock.cache.v1` is
    /// `cachelock::cache::v1`), so that a message of one may refer to another's
    /// (the cache and session writes take the lock package's `Fence`).
    pub mod cachelock {
        /// `cachelock.cache.v1`
        pub mod cache {
            /// `cachelock.cache.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.cache.v1");
            }
        }
        /// `cachelock.lock.v1`
        pub mod lock {
            /// `cachelock.lock.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.lock.v1");
            }
        }
        /// `cachelock.ratelimit.v1`
        pub mod ratelimit {
            /// `cachelock.ratelimit.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.ratelimit.v1");
            }
        }
        /// `cachelock.session.v1`
        pub mod session {
            /// `cachelock.session.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.session.v1");
            }
        }
        /// `cachelock.pubsub.v1`
        pub mod pubsub {
            /// `cachelock.pubsub.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.pubsub.v1");
            }
        }
        /// `cachelock.election.v1`
        pub mod election {
            /// `cachelock.election.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.election.v1");
            }
        }
    }
    pub use cachelock::{
        cache::v1 as cache, election::v1 as election, lock::v1 as lock, pubsub::v1 as pubsub,
        ratelimit::v1 as ratelimit, session::v1 as session,
    };

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
