//! The errors that keep the service from starting, and their exit codes.

use std::io;

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No REDIS_URL was given and no `redis-server` is on PATH to start a development one.
    #[error(
        "no REDIS_URL is set and redis-server is not on PATH: install it (Debian/Ubuntu: \
         `apt-get install redis-server`, macOS: `brew install redis`) or set REDIS_URL"
    )]
    RedisServerMissing,
    /// The development redis-server did not come up.
    #[error("the development redis-server did not start: {0}")]
    EmbeddedRedis(String),
    /// The Redis client could not be set up from the configuration.
    #[error("cannot use the Redis configuration: {0}")]
    RedisConfig(String),
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The TLS files or the auth file cannot be used.
    #[error("{0}")]
    Security(String),
    /// The Envoy rate-limit rules (--rls-config) cannot be used; the text says where and why.
    #[error("--rls-config: {0}")]
    RlsConfig(String),
    /// The reflection service could not read the embedded descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl StartError {
    /// The process exit status: 2 for what the operator must fix in the setup, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::RedisServerMissing
            | StartError::RedisConfig(_)
            | StartError::Security(_)
            | StartError::RlsConfig(_) => 2,
            _ => 1,
        }
    }
}
