//! `grpc.health.v1`, driven by a background prober that watches the Redis
//! connections and inspects the server.
//!
//! Every name (`""` and each service) starts NOT_SERVING, because tonic-health
//! would otherwise report `""` as SERVING before Redis was ever reached. The
//! prober ([`probe_redis`]) sets all names SERVING while Redis is a writable
//! primary that answers — not loading, not BUSY with a script, and with
//! `--require-noeviction` not configured to evict — and NOT_SERVING otherwise;
//! Check answers from that cached state at once ([`health_service`]). It reacts
//! the moment a connection drops or comes back, and polls every
//! `--health-interval` (every 100 ms while not serving).
//!
//! It is also the one place that logs what Redis is doing — connected, lost and
//! why (refused, authentication, TLS, DNS, timeout), replica, busy, full,
//! evicting — once per change, not once per failed request. On shutdown every
//! name goes NOT_SERVING and open Watch streams end, so that clients move
//! elsewhere before the listener closes.

mod probe;
mod service;

pub use probe::{ProbeSettings, probe_redis};
pub use service::{HealthStatus, health_service};
