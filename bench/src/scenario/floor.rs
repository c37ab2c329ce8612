//! grpc-floor and bare-floor: a health Check, which never reaches Redis.

use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::Conn;

/// One health Check on `channel`.
pub(crate) async fn check(channel: Conn) -> Result<(), String> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|status| status.to_string())
}
