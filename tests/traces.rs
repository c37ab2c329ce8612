//! OpenTelemetry traces, received by an OTLP collector this test starts: a call
//! continues its caller's trace, its Redis round trips are child spans, its
//! status is recorded, a caller's "not sampled" stands, and no span carries
//! what the caller sent. A binary of its own: it sets the process's subscriber.

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use cachelock::{Traces, trace_filter};
use common::{eventually, redis_and_service, requests};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status, metadata::MetadataValue};
use tracing_subscriber::{Layer, layer::SubscriberExt};

/// An OTLP/gRPC trace collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    fn of_trace(&self, trace_id: &[u8]) -> Vec<Span> {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|span| span.trace_id == trace_id).cloned().collect()
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
}

fn with_traceparent<T>(message: T, traceparent: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", MetadataValue::try_from(traceparent).unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_continues_its_callers_trace_with_its_redis_round_trips_under_it() {
    let (collector, addr) = Collector::start().await;
    let endpoint = format!("http://{addr}");
    let traces = Traces::start(Some(&endpoint), 1.0)
        .unwrap()
        .expect("an endpoint is given");
    let spans = tracing_opentelemetry::layer()
        .with_tracer(traces.tracer())
        .with_filter(trace_filter());
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans)).unwrap();
    let (_redis, service) = redis_and_service(&["--otlp-endpoint", &endpoint]).await;
    let mut cache = service.cache();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let sampled = format!("00-{trace_id}-{caller_span}-01");
    cache
        .set(with_traceparent(
            requests::set("trace-secret-key", b"trace-secret-value"),
            &sampled,
        ))
        .await
        .unwrap();
    let refused = cache
        .get(with_traceparent(requests::get(""), &sampled))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    // The caller decided not to sample this one: nothing is exported for it.
    let unsampled_id = "0af7651916cd43dd8448eb211c80319c";
    cache
        .get(with_traceparent(
            requests::get("trace-secret-key"),
            &format!("00-{unsampled_id}-b7ad6b7169203331-00"),
        ))
        .await
        .unwrap();

    let trace_bytes = hex(trace_id);
    let flush = Arc::new(traces);
    eventually("the call's spans at the collector", async || {
        let flush = flush.clone();
        tokio::task::spawn_blocking(move || flush.flush()).await.unwrap();
        collector.of_trace(&trace_bytes).len() >= 3
    })
    .await;
    let spans = collector.of_trace(&trace_bytes);
    let set = spans
        .iter()
        .find(|span| span.name == "cachelock.cache.v1.CacheService/Set")
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(set.parent_span_id, hex(caller_span), "a child of the caller's span");
    assert_eq!(set.kind, SpanKind::Server as i32);
    assert_eq!(attribute(set, "rpc.grpc.status_code"), Some(&Value::IntValue(0)));
    let redis: Vec<&Span> = spans.iter().filter(|span| span.parent_span_id == set.span_id).collect();
    assert!(!redis.is_empty(), "the Set's Redis round trip under it: {spans:#?}");
    for span in &redis {
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(
            attribute(span, "db.system.name"),
            Some(&Value::StringValue("redis".to_owned()))
        );
    }
    let get = spans
        .iter()
        .find(|span| span.name == "cachelock.cache.v1.CacheService/Get")
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(attribute(get, "rpc.grpc.status_code"), Some(&Value::IntValue(3)));
    // The caller's mistake is not the server's error.
    assert_ne!(
        get.status.as_ref().map(|status| status.code),
        Some(StatusCode::Error as i32)
    );

    assert!(
        collector.of_trace(&hex(unsampled_id)).is_empty(),
        "the caller's decision stands"
    );
    let everything = format!("{:?}", collector.spans.lock().unwrap());
    assert!(
        !everything.contains("trace-secret"),
        "no span carries what the caller sent"
    );
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
        .collect()
}
