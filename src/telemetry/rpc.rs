//! The outermost layer: every RPC gets a span (service, method, client),
//! go-grpc-prometheus metrics, and a line when it ends with its status code: a
//! WARN when it took longer than `--slow-request` beyond the time it waited by
//! design (a lock or a cache fill it queued for), with the time its Redis work
//! took — never its arguments.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;
use tower::{Layer, Service};
use tracing::{Instrument, Span, debug, field::Empty, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{
    Meter,
    methods::{Method, code_name, method},
    traces::caller_context,
};

/// Where the time of the RPC being handled went, besides computing: shared by
/// the task handling it and its [`Completion`], which may finish after the
/// task is gone (a caller that gave up).
#[derive(Default)]
struct Spent {
    /// Waiting for Redis's answers, in nanoseconds.
    redis: AtomicU64,
    /// Waiting by design (queued for a lock or a cache fill), in nanoseconds.
    waiting: AtomicU64,
}

impl Spent {
    fn add(counter: &AtomicU64, time: Duration) {
        counter.fetch_add(u64::try_from(time.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn read(counter: &AtomicU64) -> Duration {
        Duration::from_nanos(counter.load(Ordering::Relaxed))
    }
}

tokio::task_local! {
    /// Where the time of the RPC this task is handling went.
    static SPENT: Arc<Spent>;
}

/// Adds `took` to the Redis time of the RPC being handled, if any.
pub fn add_redis_time(took: Duration) {
    let _ = SPENT.try_with(|spent| Spent::add(&spent.redis, took));
}

/// Adds `waited` to the time the RPC being handled, if any, waited by design:
/// it does not count towards `--slow-request`.
pub fn add_wait_time(waited: Duration) {
    let _ = SPENT.try_with(|spent| Spent::add(&spent.waiting, waited));
}

/// Records the authenticated client's name in the current RPC's span.
pub fn record_client(name: &str) {
    Span::current().record("client", name);
}

/// Metrics, a span and slow-request logging for every RPC.
#[derive(Clone)]
pub struct RpcLayer {
    meter: Meter,
    slow: Duration,
    traces: bool,
}

impl RpcLayer {
    /// Records into `meter` and warns about RPCs slower than `slow`; with
    /// `traces`, each span continues the caller's trace and carries what
    /// OpenTelemetry's RPC conventions name.
    pub fn new(meter: Meter, slow: Duration, traces: bool) -> RpcLayer {
        RpcLayer { meter, slow, traces }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            meter: self.meter.clone(),
            slow: self.slow,
            traces: self.traces,
        }
    }
}

/// The service [`RpcLayer`] builds.
#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    meter: Meter,
    slow: Duration,
    traces: bool,
}

impl<S, B> Service<http::Request<B>> for Rpc<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let rpc = method(request.uri().path());
        let (service, method) = (rpc.labels.grpc_service, rpc.labels.grpc_method);
        // Displayed, not debugged: the text format then writes the names as they
        // are instead of escaping them character by character, on every RPC.
        let span = info_span!(
            "rpc",
            service = %service,
            method = %method,
            client = Empty,
            otel.name = Empty,
            otel.kind = Empty,
            rpc.system = Empty,
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
        );
        if self.traces {
            span.record("otel.name", format!("{service}/{method}"));
            span.record("otel.kind", "server");
            span.record("rpc.system", "grpc");
            if let Some(caller) = caller_context(request.headers()) {
                let _ = span.set_parent(caller);
            }
        }
        let spent = Arc::new(Spent::default());
        let mut completion = Completion {
            meter: self.meter.clone(),
            method: rpc,
            span: span.clone(),
            slow: self.slow,
            traces: self.traces,
            started,
            answered: None,
            spent: spent.clone(),
            done: false,
        };
        self.meter.record(|metrics| metrics.rpc_started(rpc));
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = async move {
            let response = SPENT.scope(spent, inner.call(request)).await?;
            completion.headers_sent(started.elapsed());
            let (parts, body) = response.into_parts();
            let body = match status_in(&parts.headers) {
                // A trailers-only response: the code is known now.
                Some(code) => {
                    completion.finish(code);
                    body
                }
                // The code comes in the trailers, once the body has been sent.
                None => tonic::body::Body::new(Observed {
                    inner: body,
                    completion: Some(completion),
                }),
            };
            Ok(http::Response::from_parts(parts, body))
        };
        Box::pin(call.instrument(span))
    }
}

/// Whether `code` marks a server span as failed, by OpenTelemetry's gRPC
/// conventions: the caller's mistakes (INVALID_ARGUMENT, NOT_FOUND…) do not.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The status code in a trailers-only response's headers, or in trailers.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get(Status::GRPC_STATUS)?;
    Some(tonic::Code::from_bytes(value.as_bytes()))
}

/// The bookkeeping of one RPC, finished exactly once: when its status is
/// known, or as CANCELLED when it is dropped before (the caller went away, its
/// deadline passed, the shutdown's grace ended).
struct Completion {
    meter: Meter,
    method: Method,
    span: Span,
    slow: Duration,
    traces: bool,
    started: Instant,
    /// How long it took until its response headers, once they were sent.
    answered: Option<Duration>,
    spent: Arc<Spent>,
    done: bool,
}

impl Completion {
    fn headers_sent(&mut self, took: Duration) {
        self.meter.record(|metrics| metrics.rpc_answered(self.method, took));
        self.answered = Some(took);
    }

    /// Counts the RPC as ended with `code`, and logs it: the line a person reads
    /// names the status it ended with, not only that one was sent.
    fn finish(mut self, code: tonic::Code) {
        self.end(code);
    }

    fn end(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.meter.record(|metrics| metrics.rpc_finished(self.method, code));
        if self.traces {
            self.span.record("rpc.grpc.status_code", code as i64);
            if is_server_error(code) {
                self.span.record("otel.status_code", "error");
            }
        }
        let took = self.answered.unwrap_or_else(|| self.started.elapsed());
        let waited = Spent::read(&self.spent.waiting);
        let redis = Spent::read(&self.spent.redis);
        let labels = self.method.labels;
        let code = code_name(code);
        let _entered = self.span.enter();
        if took.saturating_sub(waited) >= self.slow {
            warn!(
                service = labels.grpc_service,
                method = labels.grpc_method,
                duration_ms = took.as_millis() as u64,
                waited_ms = waited.as_millis() as u64,
                redis_ms = redis.as_millis() as u64,
                code,
                "slow request"
            );
        } else {
            debug!(
                duration_us = took.as_micros() as u64,
                waited_us = waited.as_micros() as u64,
                redis_us = redis.as_micros() as u64,
                code,
                "request"
            );
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.end(tonic::Code::Cancelled);
    }
}

/// A response body that finishes its RPC's bookkeeping when its trailers pass
/// (dropped before, its [`Completion`] counts the RPC as CANCELLED).
struct Observed {
    inner: tonic::body::Body,
    completion: Option<Completion>,
}

impl Body for Observed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(completion) = self.completion.take()
                {
                    completion.finish(status_in(trailers).unwrap_or(tonic::Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(completion) = self.completion.take() {
                    completion.finish(status.code());
                }
            }
            Poll::Ready(None) => {
                if let Some(completion) = self.completion.take() {
                    completion.finish(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
