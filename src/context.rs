//! What every service is built from: the one Redis connection, the request
//! limits, the metrics and the drain signal, made once by the server.

use tokio::sync::watch;

use crate::{redis::Redis, request::Limits, telemetry::Meter};

/// The handles every service shares.
#[derive(Clone)]
pub struct Context {
    /// The shared, reconnecting Redis connection.
    pub redis: Redis,
    /// The request size and TTL limits of the configuration.
    pub limits: Limits,
    /// Where metrics are recorded (nowhere when they are off).
    pub meter: Meter,
    /// Turns true when the server starts draining: waits and streams end then.
    pub draining: watch::Receiver<bool>,
}
