//! OpenTelemetry traces: spans exported over OTLP/gRPC when `--otlp-endpoint`
//! (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`) says where, sampled by
//! `--otlp-sample-ratio` unless the caller's `traceparent` already decided.
//!
//! Each RPC's span continues the caller's W3C trace context; each Redis round
//! trip is a child span. What a span carries is names and codes: the service,
//! the method, the status, the Redis operation's name — never a key, a value,
//! a token or anything else a caller sent.

use opentelemetry::{
    Context,
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider, Tracer},
};

/// The environment variables that name an OTLP endpoint without the flag.
const ENDPOINT_VARIABLES: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// The span exporter and the tracer that feeds it; flushed by [`Traces::shutdown`].
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

/// Whether spans are exported: `--otlp-endpoint` (`endpoint`) or the standard
/// `OTEL_EXPORTER_OTLP_*` variables name where to.
pub fn traces_wanted(endpoint: Option<&str>) -> bool {
    endpoint.is_some()
        || ENDPOINT_VARIABLES
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

impl Traces {
    /// Starts exporting to `endpoint`, or to the endpoint the standard
    /// `OTEL_EXPORTER_OTLP_*` variables name; `None` when neither says where.
    /// Must run inside the Tokio runtime: the exporter's gRPC channel lives there.
    ///
    /// # Errors
    /// A message when the exporter cannot be built (a malformed endpoint).
    pub fn start(endpoint: Option<&str>, sample_ratio: f64) -> Result<Option<Traces>, String> {
        if !traces_wanted(endpoint) {
            return Ok(None);
        }
        let mut exporter = SpanExporter::builder().with_tonic();
        if let Some(endpoint) = endpoint {
            exporter = exporter.with_endpoint(endpoint);
        }
        let exporter = exporter
            .build()
            .map_err(|error| format!("cannot export traces over OTLP: {error}"))?;
        // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win when set.
        let resource = if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
            Resource::builder().build()
        } else {
            Resource::builder().with_service_name("cachelock").build()
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            // A caller's sampling decision stands; a trace that starts here is sampled at the ratio.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(sample_ratio))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("cachelock");
        Ok(Some(Traces { provider, tracer }))
    }

    /// The tracer for `tracing_opentelemetry`'s layer.
    pub fn tracer(&self) -> Tracer {
        self.tracer.clone()
    }

    /// Sends what is buffered now (the batch exporter otherwise waits a few seconds).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    /// Sends what is buffered and stops the exporter.
    pub fn shutdown(self) {
        let _ = self.provider.shutdown();
    }
}

/// The caller's W3C trace context (`traceparent`, `tracestate`) in `headers`,
/// if it sent a valid one.
pub fn caller_context(headers: &http::HeaderMap) -> Option<Context> {
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    context.span().span_context().is_valid().then_some(context)
}
