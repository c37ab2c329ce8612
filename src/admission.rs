//! What the server lets in, so that one misbehaving caller cannot take the
//! service — or the Redis behind it — down for everyone.
//!
//! - [`AdmissionLayer`]: at most `--max-in-flight` requests are handled at once;
//!   beyond that a request is refused at once with RESOURCE_EXHAUSTED (load
//!   shedding), never queued. Health checks are exempt, so a load balancer still
//!   sees the instance while it sheds. It also gives an oversized request the
//!   code the README promises (tonic says OUT_OF_RANGE; it is RESOURCE_EXHAUSTED).
//! - [`limit_connections`]: at most `--max-connections` client connections;
//!   beyond that new ones wait in the listen backlog.
//! - [`CheckedCodec`]: a request that is not valid protobuf (invalid UTF-8 in a
//!   string, a truncated field) is the caller's error, INVALID_ARGUMENT, not
//!   INTERNAL.
//!
//! Each refusal is logged at most every few seconds, with how many there were.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::{Stream, StreamExt, future::BoxFuture, stream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    transport::server::Connected,
};
use tonic_prost::ProstCodec;
use tower::{Layer, Service};
use tracing::warn;

use crate::{
    error::{Error, Reason},
    telemetry::Meter,
};

/// How often a kind of refusal is logged, at most.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The delay suggested (`RetryInfo`) to a request shed at `--max-in-flight`.
const OVERLOAD_RETRY: Duration = Duration::from_millis(100);
/// Requests on these paths are never shed: load balancers must keep seeing the instance.
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";

/// Counts refusals of one kind and logs them at most once per interval, with their count.
pub struct RefusalLog {
    what: &'static str,
    since_logged: AtomicU64,
    last_logged: Mutex<Option<Instant>>,
}

impl RefusalLog {
    /// A log for refusals described by `what` ("requests shed: --max-in-flight reached").
    pub const fn new(what: &'static str) -> RefusalLog {
        RefusalLog {
            what,
            since_logged: AtomicU64::new(0),
            last_logged: Mutex::new(None),
        }
    }

    /// Records one refusal; logs if the last line is older than the interval.
    pub fn record(&self) {
        self.since_logged.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_logged.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|last| last.elapsed() < REFUSAL_LOG_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        let refused = self.since_logged.swap(0, Ordering::Relaxed);
        warn!(refused, "{}", self.what);
    }
}

static SHED: RefusalLog =
    RefusalLog::new("requests refused with RESOURCE_EXHAUSTED: --max-in-flight requests were already being handled");

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
                    self.meter.record(|metrics| metrics.refuse("in_flight"));
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
/// servers, and the README, say RESOURCE_EXHAUSTED. No handler here answers
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

/// The protobuf codec of every service, with decoding errors reported as the
/// caller's: INVALID_ARGUMENT. (gRPC's own libraries say INTERNAL, which here
/// means a fault of the service, logged for its operators.)
#[derive(Debug, Clone, Default)]
pub struct CheckedCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Codec for CheckedCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = CheckedDecoder<<ProstCodec<T, U> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder {
            inner: self.inner.decoder(),
        }
    }
}

/// A decoder whose errors are INVALID_ARGUMENT.
#[derive(Debug)]
pub struct CheckedDecoder<D> {
    inner: D,
}

impl<D> Decoder for CheckedDecoder<D>
where
    D: Decoder<Error = Status>,
{
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.inner
            .decode(buf)
            .map_err(|status| Error::Malformed(status.message().to_owned()).into())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
