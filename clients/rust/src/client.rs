//! The client: one channel, the bearer token, deadlines, and the retry policy
//! every unary call goes through.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::{
    Code, Request, Response, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{Error, Reason};

/// The deadline of a call unless the client or the call says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most attempts one call makes, the first included.
const MAX_ATTEMPTS: u32 = 5;

/// The longest delay between two attempts, before jitter.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// TLS for the channel: the CA that signed the service's certificate (the
/// system's roots when `None`), and a client certificate for mTLS.
#[derive(Clone, Default)]
pub struct Tls {
    /// PEM of the CA certificates to trust; `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of the client certificate and its key, for mTLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify the service's certificate against, when not the address's host.
    pub domain: Option<String>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "…"))
            .field("identity_pem", &self.identity_pem.as_ref().map(|_| "…"))
            .field("domain", &self.domain)
            .finish()
    }
}

/// One retry about to happen, for [`Options::on_retry`].
#[derive(Debug)]
pub struct Retry<'a> {
    /// The RPC, such as `cache.Get`.
    pub method: &'static str,
    /// The error the last attempt got.
    pub error: &'a Error,
    /// How long the library waits before the next attempt.
    pub delay: Duration,
}

/// A function told of every retry before it happens.
pub type RetryHook = Arc<dyn Fn(&Retry<'_>) + Send + Sync>;

/// How to reach the service.
#[derive(Clone, Default)]
pub struct Options {
    /// The bearer token of the auth file, sent on every call.
    pub token: Option<String>,
    /// TLS; `None`: plaintext (loopback, development).
    pub tls: Option<Tls>,
    /// The deadline of every call; `None`: [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// Told of every retry before it happens (also logged at DEBUG).
    pub on_retry: Option<RetryHook>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Whether a call may be repeated after a refusal with `RetryInfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idempotent {
    /// Repeating it changes nothing more than the first attempt would have.
    Yes,
    /// A repeat could apply it twice: the caller decides.
    No,
}

/// A connection to cachelock, cheap to clone: every clone shares one channel.
#[derive(Clone)]
pub struct Client {
    pub(crate) channel: Channel,
    authorization: Option<MetadataValue<Ascii>>,
    timeout: Duration,
    on_retry: Option<RetryHook>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("authorization", &self.authorization.as_ref().map(|_| "<secret>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the service at `address` (`host:port`, or a URL), plaintext
    /// and without a token. The connection is made at the first call and
    /// remade whenever it breaks.
    ///
    /// # Errors
    /// [`Reason::InvalidField`] when the address cannot be parsed.
    pub fn connect(address: &str) -> Result<Client, Error> {
        Client::connect_with(address, Options::default())
    }

    /// A client of the service at `address` with `options`.
    ///
    /// # Errors
    /// [`Reason::InvalidField`] when the address, the token or the TLS settings
    /// cannot be used.
    pub fn connect_with(address: &str, options: Options) -> Result<Client, Error> {
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let uri = if address.contains("://") {
            address.to_owned()
        } else {
            format!("{scheme}://{address}")
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|error| Error::invalid("address", format!("not an address: {error}")))?
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if let Some(tls) = options.tls {
            let mut config = ClientTlsConfig::new();
            config = match tls.ca_pem {
                Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
                None => config.with_native_roots(),
            };
            if let Some((cert, key)) = tls.identity_pem {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = tls.domain {
                config = config.domain_name(domain);
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|error| Error::invalid("tls", format!("unusable TLS settings: {error}")))?;
        }
        let authorization = options
            .token
            .map(|token| {
                format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| Error::invalid("token", "a token must be printable ASCII"))
            })
            .transpose()?;
        Ok(Client {
            channel: endpoint.connect_lazy(),
            authorization,
            timeout: options.timeout.unwrap_or(DEFAULT_TIMEOUT),
            on_retry: options.on_retry,
        })
    }

    /// A request carrying the token, and the deadline `until` when given.
    pub(crate) fn request<T>(&self, message: T, until: Option<Instant>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        if let Some(until) = until {
            request.set_timeout(until.saturating_duration_since(Instant::now()));
        }
        request
    }

    /// When a call started now, waiting `wait` in the server, must have ended.
    pub(crate) fn deadline(&self, wait: Duration) -> Instant {
        Instant::now() + self.timeout + wait
    }

    /// Runs one unary RPC under the retry policy: repeated only when the server
    /// sent `RetryInfo` and the call is idempotent, after the server's delay
    /// doubled on each further attempt (at most [`MAX_DELAY`]) and jittered
    /// upwards by up to half, at most [`MAX_ATTEMPTS`] times, never past the
    /// deadline of `wait` plus the client's timeout.
    pub(crate) async fn unary<M, T, F, Fut>(
        &self,
        method: &'static str,
        idempotent: Idempotent,
        wait: Duration,
        message: M,
        mut send: F,
    ) -> Result<T, Error>
    where
        M: Clone,
        F: FnMut(Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let until = self.deadline(wait);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = self.request(message.clone(), Some(until));
            // The gRPC deadline is sent to the server; this one holds even when the
            // connection stalls and no answer comes.
            let error = match tokio::time::timeout_at(until, send(request)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => Error::from(status),
                Err(_) => return Err(Error::deadline(method)),
            };
            let Some(advised) = error.retry_after() else {
                return Err(error);
            };
            if idempotent == Idempotent::No || attempt >= MAX_ATTEMPTS {
                return Err(error);
            }
            let delay = jittered(advised.saturating_mul(1 << (attempt - 1)).min(MAX_DELAY).max(advised));
            if Instant::now() + delay >= until {
                return Err(error);
            }
            tracing::debug!(method, reason = %error.reason(), ?delay, attempt, "retrying");
            if let Some(on_retry) = &self.on_retry {
                on_retry(&Retry {
                    method,
                    error: &error,
                    delay,
                });
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// `delay` made longer by a random part of up to half of it, so that callers
/// refused together do not all come back at once.
fn jittered(delay: Duration) -> Duration {
    delay + delay.mul_f64(random_fraction() / 2.0)
}

/// A random number in [0, 1).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    // Without randomness the delay is merely not jittered.
    if getrandom::fill(&mut bytes).is_err() {
        return 0.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// 128 random bits, URL-safe: a request id.
pub(crate) fn random_id() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|error| Error::local(Code::Internal, Reason::Internal, format!("no randomness: {error}")))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jittered_delay_is_never_shorter_and_at_most_half_longer() {
        for _ in 0..1000 {
            let delay = jittered(Duration::from_millis(200));
            assert!(
                delay >= Duration::from_millis(200) && delay <= Duration::from_millis(300),
                "{delay:?}"
            );
        }
    }
}
