//! Who is calling: TLS on the listener, the auth file of clients, and the layer
//! that turns a credential — a bearer token, or a client certificate — into a
//! [`Caller`]: a client name, its tenant's key space, and what it may call.
//!
//! Without an auth file every request runs as the tenant `default` with every
//! permission (the development default, and a deployment whose network or mesh
//! already authenticates). With one, every RPC needs a credential the file
//! knows: none is UNAUTHENTICATED, a service (or a write) the client is not
//! allowed is PERMISSION_DENIED. Health stays open for probes; reflection too,
//! unless `--reflection-requires-auth`. Token digests are compared in constant
//! time; tokens never reach a log, a metric or an error message.

mod caller;
mod file;
mod identity;
mod reload;
mod tls;

use std::{
    num::NonZeroU32,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service as TowerService};

pub use caller::Caller;
pub use file::{Access, Client, Clients, Credential, Service};
pub use reload::{AuthFile, reload_on_change};
pub use tls::{ConnectionInfo, ReloadableTls, TlsFiles, over_tls, plaintext};

use caller::Standing;
use reload::Budget;

use crate::{
    error::{Error, Reason},
    redis::{DEFAULT_TENANT, Keys},
    telemetry::{Meter, Refusal, ThrottledLog, record_client},
};

static REFUSED: ThrottledLog = ThrottledLog::new("requests refused as UNAUTHENTICATED or PERMISSION_DENIED");
static OVER_RATE: ThrottledLog =
    ThrottledLog::new("requests refused with RESOURCE_EXHAUSTED: a client went over its max_requests_per_second");

/// How requests are authenticated.
#[derive(Clone)]
pub struct Authenticator {
    file: Option<Arc<AuthFile>>,
    default_caller: Caller,
    reflection_requires_auth: bool,
    meter: Meter,
}

/// What a request path is, for the authenticator.
enum Target {
    /// grpc.health.v1: always open.
    Health,
    /// Server reflection.
    Reflection,
    /// A cachelock method.
    Method(Service, bool),
    /// Anything else.
    Unknown,
}

/// The path of every method that does not change stored data, per service.
fn is_read(service: Service, method: &str) -> bool {
    match service {
        Service::Cache => matches!(method, "Get" | "GetMany"),
        Service::RateLimit => false,
        Service::Lock => method == "Describe",
        Service::Session => matches!(method, "Get" | "ListUserSessions"),
        Service::PubSub => method == "Subscribe",
        Service::Election => matches!(method, "Leader" | "Observe"),
    }
}

fn target(path: &str) -> Target {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Target::Unknown;
    };
    let service = match service {
        "grpc.health.v1.Health" => return Target::Health,
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            return Target::Reflection;
        }
        "cachelock.cache.v1.CacheService" => Service::Cache,
        // Envoy's rate limit API needs the same permission as cachelock's.
        "cachelock.ratelimit.v1.RateLimitService" | "envoy.service.ratelimit.v3.RateLimitService" => Service::RateLimit,
        "cachelock.lock.v1.LockService" => Service::Lock,
        "cachelock.session.v1.SessionService" => Service::Session,
        "cachelock.pubsub.v1.PubSubService" => Service::PubSub,
        "cachelock.election.v1.ElectionService" => Service::Election,
        _ => return Target::Unknown,
    };
    Target::Method(service, is_read(service, method))
}

impl Authenticator {
    /// Everyone is the tenant `default` with every permission.
    pub fn open(keys: &Keys) -> Authenticator {
        Authenticator {
            file: None,
            default_caller: Caller {
                client: None,
                space: keys.space(DEFAULT_TENANT),
                access: Access::Full,
                standing: None,
                write_budget: None,
            },
            reflection_requires_auth: false,
            meter: Meter::off(),
        }
    }

    /// Callers are the clients of `file`; refusals are counted in `meter`.
    pub fn with_file(keys: &Keys, file: Arc<AuthFile>, reflection_requires_auth: bool, meter: Meter) -> Authenticator {
        Authenticator {
            file: Some(file),
            reflection_requires_auth,
            meter,
            ..Authenticator::open(keys)
        }
    }

    /// The caller of a request to `path` with `headers` on connection `connection`.
    /// Takes one request from the client's `max_requests_per_second`.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED (CLIENT_RATE_LIMITED) with the wait when it is spent.
    fn within_rate(&self, client: &Client, budget: &Budget) -> Result<(), Error> {
        let Err(not_until) = budget.limiter.check() else {
            return Ok(());
        };
        OVER_RATE.record();
        self.meter.record(|metrics| metrics.refuse(Refusal::ClientRate));
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        Err(Error::Exhausted {
            reason: Reason::ClientRateLimited,
            message: format!(
                "client {} is over its max_requests_per_second ({}); retry after {} ms",
                client.name,
                client.max_requests_per_second.map_or(0, NonZeroU32::get),
                wait.as_millis().max(1)
            ),
            retry_after: Some(wait.max(Duration::from_millis(1))),
        })
    }

    fn authenticate(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        connection: Option<&ConnectionInfo>,
    ) -> Result<Caller, Status> {
        let Some(file) = &self.file else {
            return Ok(self.default_caller.clone());
        };
        let target = target(path);
        let needs_credential = match target {
            Target::Health => false,
            Target::Reflection => self.reflection_requires_auth,
            Target::Method(..) | Target::Unknown => true,
        };
        if !needs_credential {
            return Ok(self.default_caller.clone());
        }
        let loaded = file.loaded();
        let client = identify(&loaded.clients, headers, connection)?;
        let (access, standing) = match target {
            Target::Method(service, read) => {
                let (access, standing) = permitted(file, &client, service, read, path, headers, connection)?;
                (access, Some(standing))
            }
            Target::Unknown => return Err(Error::PermissionDenied(format!("no such method: {path}")).into()),
            Target::Health | Target::Reflection => (Access::Full, None),
        };
        record_client(&client.name);
        if let Some(budget) = loaded.budgets.get(&client.name) {
            self.within_rate(&client, budget)?;
        }
        Ok(Caller {
            client: Some(client.name.clone()),
            space: client.space.clone(),
            access,
            standing,
            write_budget: loaded
                .write_budgets
                .get(&client.name)
                .map(|budget| budget.limiter.clone()),
        })
    }
}

/// What the auth file allows `client` calling a method of `service` (`read`:
/// one that only reads): its access, and the standing watched for revocation
/// while the call lasts.
///
/// # Errors
/// PERMISSION_DENIED when the client may not call the service, or only read it
/// and the method writes.
fn permitted(
    file: &Arc<AuthFile>,
    client: &Arc<Client>,
    service: Service,
    read: bool,
    path: &str,
    headers: &http::HeaderMap,
    connection: Option<&ConnectionInfo>,
) -> Result<(Access, Standing), Error> {
    match client.access(service) {
        Some(granted) if granted == Access::Full || read => {
            let by_certificate = !headers.contains_key(http::header::AUTHORIZATION);
            let standing = Standing {
                file: file.clone(),
                client: client.clone(),
                service,
                needed: if read { Access::Read } else { Access::Full },
                expires: connection
                    .and_then(|connection| connection.peer.as_ref())
                    .filter(|_| by_certificate)
                    .and_then(|peer| peer.not_after),
            };
            Ok((granted, standing))
        }
        Some(_) => Err(Error::PermissionDenied(format!(
            "client {} may only read {} ({}:read); {path} changes data",
            client.name,
            service.name(),
            service.name()
        ))),
        None => Err(Error::PermissionDenied(format!(
            "client {} may not call the {} service",
            client.name,
            service.name()
        ))),
    }
}

/// The client whose credential the request carries.
fn identify(
    clients: &Clients,
    headers: &http::HeaderMap,
    connection: Option<&ConnectionInfo>,
) -> Result<Arc<Client>, Status> {
    let mut authorizations = headers.get_all(http::header::AUTHORIZATION).iter();
    if let Some(value) = authorizations.next() {
        if authorizations.next().is_some() {
            return Err(Error::Unauthenticated("send one authorization header, not several".to_owned()).into());
        }
        // RFC 6750 (after RFC 9110): the scheme is matched without regard to case.
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                Status::from(Error::Unauthenticated(
                    "the authorization header must be 'Bearer <token>'".to_owned(),
                ))
            })?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every digest is compared, in constant time, whichever matches.
        let mut found = None;
        for client in &clients.clients {
            if let Credential::Token(known) = &client.credential
                && bool::from(known.ct_eq(&digest))
            {
                found = Some(client.clone());
            }
        }
        return found.ok_or_else(|| Error::Unauthenticated("the bearer token is not known".to_owned()).into());
    }
    if let Some(peer) = connection.and_then(|connection| connection.peer.as_ref()) {
        if peer.expired() {
            return Err(Error::Unauthenticated("the client certificate has expired".to_owned()).into());
        }
        let mut named = clients.clients.iter().filter(|client| match &client.credential {
            Credential::Subject(subject) => peer.subject.as_ref().is_some_and(|peer| subject.matches(peer)),
            Credential::San(san) => peer.sans.contains(san),
            Credential::Token(_) => false,
        });
        let client = named.next().ok_or_else(|| {
            Status::from(Error::Unauthenticated(
                "the client certificate names no client of the auth file".to_owned(),
            ))
        })?;
        // Who a certificate is must not depend on the order of the file.
        if let Some(other) = named.next() {
            return Err(Error::Unauthenticated(format!(
                "the client certificate names two clients of the auth file, {} and {}: give each a rule only \
                 its own certificate matches",
                client.name, other.name
            ))
            .into());
        }
        return Ok(client.clone());
    }
    Err(Error::Unauthenticated(
        "no credential: send 'authorization: Bearer <token>' (or a client certificate the auth file names)".to_owned(),
    )
    .into())
}

/// Authenticates every request and puts its [`Caller`] in its extensions.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Authenticator,
}

impl AuthLayer {
    /// A layer applying `authenticator`.
    pub fn new(authenticator: Authenticator) -> AuthLayer {
        AuthLayer { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service [`AuthLayer`] builds.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    authenticator: Authenticator,
}

impl<S, B, R> TowerService<http::Request<B>> for Authenticated<S>
where
    S: TowerService<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let caller = self.authenticator.authenticate(
            request.uri().path(),
            request.headers(),
            request.extensions().get::<ConnectionInfo>(),
        );
        match caller {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(request).await })
            }
            Err(status) => {
                let reason = match status.code() {
                    tonic::Code::Unauthenticated => Some(Refusal::Unauthenticated),
                    tonic::Code::PermissionDenied => Some(Refusal::PermissionDenied),
                    _ => None,
                };
                if let Some(reason) = reason {
                    REFUSED.record();
                    self.authenticator.meter.record(|metrics| metrics.refuse(reason));
                }
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
