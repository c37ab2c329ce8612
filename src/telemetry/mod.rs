//! What operators see: logs (and their filter).

use tracing_subscriber::EnvFilter;

/// The log filter for `directives` (RUST_LOG's syntax: `info`, `cachelock=debug,h2=trace`).
///
/// At every level, including the dependencies' `trace`, no line holds a bearer
/// token, a session id, a lock token or a cached value: cachelock logs none of
/// them, and the HTTP/2, gRPC and Redis libraries log frame and command shapes,
/// never their bytes (`tests/security.rs` captures a whole scenario at `trace`
/// and searches it).
pub fn log_filter(directives: &str) -> EnvFilter {
    EnvFilter::new(directives)
}
