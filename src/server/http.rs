//! The operators' HTTP listener (`--metrics-listen`): `/metrics` in the
//! Prometheus text format, `/livez` (the process answers) and `/readyz` (200
//! while health is SERVING, 503 otherwise) for load balancers that only speak HTTP;
//! asked for JSON, `/readyz` also says why and what Redis the last probe saw.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use crate::{health::HealthStatus, telemetry::Metrics};

/// Serves the listener until its task is aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: HealthStatus) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let json = wants_json(&request);
                let response = answer(request.uri().path(), json, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "metrics connection ended");
            }
        });
    }
}

/// Whether the caller asked for JSON (`Accept: application/json`).
fn wants_json(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/json"))
}

fn answer(path: &str, json: bool, metrics: &Metrics, health: &HealthStatus) -> Response<Full<Bytes>> {
    let ready = if health.is_serving() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/livez" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        // What a person debugging wants: why not, the Redis behind, its round trip.
        "/readyz" if json => (ready, "application/json", health.readiness_json()),
        "/readyz" if health.is_serving() => (StatusCode::OK, "text/plain", "SERVING\n".to_owned()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "NOT_SERVING\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /livez, /readyz\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    response
}
