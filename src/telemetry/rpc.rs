//! The outermost layer: every RPC gets a span (service, method, client),
//! go-grpc-prometheus metrics, and a WARN when it is slower than
//! `--slow-request`, with the time its Redis work took — never its arguments.

use std::{
    cell::Cell,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;
use tower::{Layer, Service};
use tracing::{Instrument, Span, debug, field::Empty, info_span, warn};

use super::{
    Meter,
    methods::{Method, code_name, method},
};

tokio::task_local! {
    /// The Redis time of the RPC this task is handling.
    static REDIS_TIME: Cell<Duration>;
}

/// Adds `took` to the Redis time of the RPC being handled, if any.
pub fn add_redis_time(took: Duration) {
    let _ = REDIS_TIME.try_with(|time| time.set(time.get() + took));
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
}

impl RpcLayer {
    /// Records into `meter` and warns about RPCs slower than `slow`.
    pub fn new(meter: Meter, slow: Duration) -> RpcLayer {
        RpcLayer { meter, slow }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            meter: self.meter.clone(),
            slow: self.slow,
        }
    }
}

/// The service [`RpcLayer`] builds.
#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    meter: Meter,
    slow: Duration,
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
        let span = info_span!("rpc", service = %service, method = %method, client = Empty);
        let completion = Completion::start(self.meter.clone(), rpc);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let slow = self.slow;
        let call = async move {
            let response = REDIS_TIME
                .scope(Cell::new(Duration::ZERO), async move {
                    let response = inner.call(request).await;
                    (response, REDIS_TIME.with(Cell::get))
                })
                .await;
            let (response, redis_time) = response;
            let response = response?;
            let took = started.elapsed();
            completion.headers_sent(took);
            let (parts, body) = response.into_parts();
            let code = status_in(&parts.headers);
            let body = match code {
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
            let code_label = code.map_or("(in trailers)", code_name);
            if took >= slow {
                warn!(
                    service,
                    method,
                    duration_ms = took.as_millis() as u64,
                    redis_ms = redis_time.as_millis() as u64,
                    code = code_label,
                    "slow request"
                );
            } else {
                debug!(
                    duration_us = took.as_micros() as u64,
                    redis_us = redis_time.as_micros() as u64,
                    code = code_label,
                    "request"
                );
            }
            Ok(http::Response::from_parts(parts, body))
        };
        Box::pin(call.instrument(span))
    }
}

/// The status code in a trailers-only response's headers, or in trailers.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get(Status::GRPC_STATUS)?;
    Some(tonic::Code::from_bytes(value.as_bytes()))
}

/// The bookkeeping of one RPC, finished exactly once.
struct Completion {
    meter: Meter,
    method: Method,
}

impl Completion {
    fn start(meter: Meter, method: Method) -> Completion {
        meter.record(|metrics| metrics.rpc_started(method));
        Completion { meter, method }
    }

    fn headers_sent(&self, took: Duration) {
        self.meter.record(|metrics| metrics.rpc_answered(self.method, took));
    }

    fn finish(self, code: tonic::Code) {
        self.meter.record(|metrics| metrics.rpc_finished(self.method, code));
    }
}

/// A response body that finishes its RPC's bookkeeping when its trailers pass,
/// or as CANCELLED when it is dropped before (the client went away).
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

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(completion) = self.completion.take() {
            completion.finish(tonic::Code::Cancelled);
        }
    }
}
