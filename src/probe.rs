//! `cachelock probe`: asks a running server's `grpc.health.v1` service whether it
//! is SERVING, for container HEALTHCHECKs and people without grpcurl.

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::config::ProbeArgs;

/// Checks the server at `args.addr`; returns the status it reported.
///
/// # Errors
/// A message when the server cannot be reached or does not answer within the timeout.
pub async fn check(args: &ProbeArgs) -> Result<ServingStatus, String> {
    let scheme = if args.tls { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", args.addr))
        .map_err(|error| format!("invalid --addr {}: {error}", args.addr))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    if args.tls {
        endpoint = endpoint
            .tls_config(tls_config(args)?)
            .map_err(|error| format!("TLS: {error}"))?;
    }
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

fn tls_config(args: &ProbeArgs) -> Result<ClientTlsConfig, String> {
    let read = |path: &std::path::Path, flag: &str| {
        std::fs::read(path).map_err(|error| format!("cannot read {flag} {}: {error}", path.display()))
    };
    let mut config = ClientTlsConfig::new();
    config = match &args.tls_ca {
        Some(path) => config.ca_certificate(Certificate::from_pem(read(path, "--tls-ca")?)),
        None => config.with_native_roots(),
    };
    if let Some(name) = &args.tls_server_name {
        config = config.domain_name(name.clone());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config = config.identity(Identity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?));
    }
    Ok(config)
}
