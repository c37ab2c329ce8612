//! What operators see: Prometheus metrics and the HTTP listener that serves
//! them (with `/livez` and `/readyz`), a span per RPC with slow-request
//! warnings, OpenTelemetry traces, and the log filter.

mod methods;
mod metrics;
mod rpc;
mod throttled;
mod traces;

use tracing::Metadata;
use tracing_subscriber::{EnvFilter, filter::FilterFn};

pub use metrics::{HealthName, Metrics, Refusal};
pub use rpc::{RpcLayer, add_redis_time, add_wait_time, record_client};
pub use throttled::ThrottledLog;
pub use traces::{Traces, traces_wanted};

use std::sync::Arc;

/// This server's metrics, or nothing when `--metrics-listen off`: every
/// component records through it, and records nothing at all when off.
#[derive(Clone, Default)]
pub struct Meter(Option<Arc<Metrics>>);

impl Meter {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Meter {
        Meter(Some(metrics))
    }

    /// Records nothing.
    pub fn off() -> Meter {
        Meter(None)
    }

    /// Runs `record` on the metrics, if there are any.
    #[inline]
    pub fn record<R>(&self, record: impl FnOnce(&Metrics) -> R) {
        if let Some(metrics) = &self.0 {
            record(metrics);
        }
    }
}

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

/// What goes to the OTLP exporter: cachelock's spans (each RPC, each Redis round
/// trip), not its log lines.
pub fn trace_filter() -> FilterFn {
    tracing_subscriber::filter::filter_fn(is_cachelock_span as fn(&Metadata<'_>) -> bool)
}

fn is_cachelock_span(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && metadata.target().starts_with("cachelock")
}
