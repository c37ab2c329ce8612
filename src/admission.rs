//! What the server lets in, so that one misbehaving caller cannot take the
//! service — or the Redis behind it — down for everyone.
//!
//! - [`AdmissionLayer`]: at most `--max-in-flight` requests are handled at once;
//!   beyond that a request is refused at once with RESOURCE_EXHAUSTED (load
//!   shedding), never queued. Health checks are exempt, so a load balancer still
//!   sees the instance while it sheds. It also gives an oversized request the
//!   code docs/behaviour.md promises (tonic says OUT_OF_RANGE; it is RESOURCE_EXHAUSTED).
//! - [`limit_connections`]: at most `--max-connections` client connections;
//!   beyond that new ones wait in the listen backlog.
//!
//! Each refusal is logged at most every few seconds, with how many there were.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt, future::BoxFuture, stream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::{Status, transport::server::Connected};
use tower::{Layer, Service};

use crate::{
    error::{Error, Reason},
    telemetry::{Meter, Refusal, ThrottledLog},
};

/// The delay suggested (`RetryInfo`) to a request shed at `--max-in-flight`.
const OVERLOAD_RETRY: Duration = Duration::from_millis(100);
/// Requests on these paths are never shed: load balancers must keep seeing the instance.
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";

static SHED: ThrottledLog =
    ThrottledLog::new("requests refused with RESOURCE_EXHAUSTED: --max-in-flight requests were already being handled");

/// Limits the requests handled at once; see the module documentation.
#[derive(Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    meter: Meter,
}

impl AdmissionLayer {
    /// Admits at most `limit` requests at once, counting refusals in `meter`.
    pub fn new(limit: usize, meter: Meter) -> AdmissionLayer {
        AdmissionLayer {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            meter,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            permits: self.permits.clone(),
            limit: self.limit,
            meter: self.meter.clone(),
        }
    }
}

/// The service [`AdmissionLayer`] builds.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
    meter: Meter,
}

impl<S, B, R> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let permit = if request.uri().path().starts_with(EXEMPT_PREFIX) {
            None
        } else {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    SHED.record();
                    self.meter.record(|metrics| metrics.refuse(Refusal::InFlight));
                    let status = Status::from(Error::Exhausted {
                        reason: Reason::Overloaded,
                        message: format!(
                            "the server is handling its limit of {} requests (--max-in-flight); retry with backoff",
                            self.limit
                        ),
                        retry_after: Some(OVERLOAD_RETRY),
                    });
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        };
        // The clone that was made ready goes into the future; a fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            drop(permit);
            oversized_is_resource_exhausted(&mut response);
            Ok(response)
        })
    }
}

/// tonic answers a message above the size limit with OUT_OF_RANGE; gRPC's own
/// servers, and docs/behaviour.md, say RESOURCE_EXHAUSTED. No handler here answers
/// OUT_OF_RANGE, so the rewrite cannot hide anything else.
fn oversized_is_resource_exhausted<R>(response: &mut http::Response<R>) {
    let out_of_range = http::HeaderValue::from_static("11");
    if response.headers().get(Status::GRPC_STATUS) == Some(&out_of_range) {
        response
            .headers_mut()
            .insert(Status::GRPC_STATUS, http::HeaderValue::from_static("8"));
    }
}

/// Wraps accepted connections so that at most `limit` are open at once: past
/// it, the next connection is not accepted until one closes.
pub fn limit_connections<S, IO, E>(incoming: S, limit: usize) -> impl Stream<Item = Result<Limited<IO>, E>>
where
    S: Stream<Item = Result<IO, E>> + Unpin,
{
    let permits = Arc::new(Semaphore::new(limit));
    stream::unfold((incoming, permits), |(mut incoming, permits)| async move {
        // The semaphore is never closed, so acquiring only waits.
        let permit = permits.clone().acquire_owned().await.ok()?;
        let next = incoming.next().await?;
        let item = next.map(|io| Limited { io, _permit: permit });
        Some((item, (incoming, permits)))
    })
}

/// A connection that holds one of the limited places while it is open.
pub struct Limited<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
