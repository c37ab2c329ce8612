//! `cachelock probe`: asks a running server's `grpc.health.v1` service whether it
//! is SERVING, for container HEALTHCHECKs and people without grpcurl.

use tonic::transport::Endpoint;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::config::ProbeArgs;

/// The status that makes `cachelock probe` exit 0.
pub const SERVING: ServingStatus = ServingStatus::Serving;

/// Checks the server at `args.addr`; returns the status it reported.
///
/// # Errors
/// A message when the server cannot be reached or does not answer within the timeout.
pub async fn check(args: &ProbeArgs) -> Result<ServingStatus, String> {
    let endpoint = Endpoint::from_shared(format!("http://{}", args.addr))
        .map_err(|error| format!("invalid --addr {}: {error}", args.addr))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| format!("cannot connect to {}: {error}", args.addr))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|status| format!("health check failed: {}: {}", status.code(), status.message()))?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}
