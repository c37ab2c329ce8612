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

mod file;
mod identity;
mod tls;

use std::{
    collections::HashMap,
    future::Future,
    num::NonZeroU32,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tonic::Status;
use tower::{Layer, Service as TowerService};
use tracing::{info, warn};

pub use file::{Access, AuthFileError, Client, Clients, Credential, Service};
pub use tls::{ConnectionInfo, ReloadableTls, TlsFiles, over_tls, plaintext};

use crate::{
    error::{Error, Reason},
    redis::{DEFAULT_TENANT, KeySpace, Keys},
    telemetry::ThrottledLog,
    telemetry::{Meter, record_client},
};

/// How often the TLS files and the auth file are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

static REFUSED: ThrottledLog = ThrottledLog::new("requests refused as UNAUTHENTICATED or PERMISSION_DENIED");
static OVER_RATE: ThrottledLog =
    ThrottledLog::new("requests refused with RESOURCE_EXHAUSTED: a client went over its max_requests_per_second");
static OVER_WRITE_BUDGET: ThrottledLog =
    ThrottledLog::new("writes refused with RESOURCE_EXHAUSTED: a client went over its max_write_bytes_per_second");

/// What Redis spends on a key beyond its name and value (its entry, object and
/// expiry), and cachelock's prefix, tenant and tag: counted against write budgets.
pub const KEY_OVERHEAD: usize = 128;

/// How often a problem reading the auth file is logged again while it lasts.
const PROBLEM_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Who made a request, as its handler sees it (in the request's extensions).
#[derive(Clone)]
pub struct Caller {
    /// The client's name from the auth file; `None` without one.
    pub client: Option<Arc<str>>,
    /// The tenant's key space: every key the request touches is in it.
    pub space: KeySpace,
    /// What the client may do with the service it called (every method without an auth file).
    pub access: Access,
    /// What the auth file allowed this request, watched for revocation; `None` without one.
    standing: Option<Standing>,
    /// The client's budget of written bytes, if it has one.
    write_budget: Option<Arc<DefaultDirectRateLimiter>>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("client", &self.client)
            .field("space", &self.space)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// The caller of `request`.
    ///
    /// # Errors
    /// INTERNAL when the auth layer did not run (a wiring bug, never a caller's fault).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
        Caller::in_extensions(request.extensions())
    }

    /// The caller recorded in a request's `extensions`.
    ///
    /// # Errors
    /// INTERNAL when the auth layer did not run (a wiring bug, never a caller's fault).
    pub fn in_extensions(extensions: &tonic::Extensions) -> Result<&Caller, Status> {
        extensions
            .get::<Caller>()
            .ok_or_else(|| Error::Internal("the auth layer did not run".to_owned()).into())
    }

    /// The key space of a request that may store what it carries in up to
    /// `keys` keys (a cache write, session data, a lock or lease record,
    /// rate-limit state) or send it on (a publish: `keys` 0), once that is
    /// counted against the client's `max_write_bytes_per_second`: its encoded
    /// size, and [`KEY_OVERHEAD`] bytes per key.
    ///
    /// # Errors
    /// As [`Caller::of`] and [`Caller::charge_write`].
    pub fn writing<T: prost::Message>(request: &tonic::Request<T>, keys: usize) -> Result<KeySpace, Status> {
        let caller = Caller::of(request)?;
        caller.charge(request.get_ref(), keys)?;
        Ok(caller.space.clone())
    }

    /// Counts `message`, which may be stored in up to `keys` keys, against the
    /// client's `max_write_bytes_per_second` (see [`Caller::writing`]).
    ///
    /// # Errors
    /// As [`Caller::charge_write`].
    pub fn charge<T: prost::Message>(&self, message: &T, keys: usize) -> Result<(), Error> {
        self.charge_write(message.encoded_len() + keys * KEY_OVERHEAD)
    }

    /// Refuses a request whose effect is a write although its method may read
    /// (a Session Get that touches) when the client may only read.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] naming what the request would change.
    pub fn may_write(&self, what: &str) -> Result<(), Error> {
        match (self.access, &self.client) {
            (Access::Read, Some(client)) => Err(Error::PermissionDenied(format!(
                "client {client} may only read this service; {what} changes data"
            ))),
            _ => Ok(()),
        }
    }

    /// Counts `bytes` against the client's `max_write_bytes_per_second`.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED (reason WRITE_BUDGET_EXCEEDED) when they do not fit:
    /// with a `RetryInfo` when waiting helps, without when the one write is larger
    /// than a second's budget.
    pub fn charge_write(&self, bytes: usize) -> Result<(), Error> {
        let Some(budget) = &self.write_budget else {
            return Ok(());
        };
        let client = self.client.as_deref().unwrap_or_default();
        let Some(cells) = u32::try_from(bytes).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match budget.check_n(cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                OVER_WRITE_BUDGET.record();
                let wait = not_until
                    .wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()))
                    .max(Duration::from_millis(1));
                Err(Error::Exhausted {
                    reason: Reason::WriteBudgetExceeded,
                    message: format!(
                        "client {client} is over its max_write_bytes_per_second with this write of {bytes} bytes; \
                         retry after {} ms",
                        wait.as_millis()
                    ),
                    retry_after: Some(wait),
                })
            }
            Err(_) => Err(Error::Exhausted {
                reason: Reason::WriteBudgetExceeded,
                message: format!(
                    "this write of {bytes} bytes is more than client {client}'s max_write_bytes_per_second allows \
                     at once"
                ),
                retry_after: None,
            }),
        }
    }

    /// Completes when the auth file no longer allows what it allowed this
    /// request (its client removed, its credential or tenant changed, its
    /// permission taken back), with the status to end the request with. Never
    /// completes without an auth file. For calls that outlive a reload: streams
    /// and waits.
    pub fn revoked(&self) -> impl Future<Output = Status> + Send + 'static {
        let standing = self.standing.clone();
        async move {
            let Some(standing) = standing else {
                return std::future::pending().await;
            };
            let mut changes = standing.file.changes.subscribe();
            let expiry = async {
                match standing
                    .expires
                    .and_then(|expires| expires.duration_since(std::time::SystemTime::now()).ok())
                {
                    // A moment past it, so that the check below sees it expired.
                    Some(left) => tokio::time::sleep(left + Duration::from_millis(1)).await,
                    None => std::future::pending().await,
                }
            };
            let mut expiry = std::pin::pin!(expiry);
            loop {
                changes.borrow_and_update();
                if let Some(error) = standing.lost() {
                    return Status::from(error);
                }
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return std::future::pending().await;
                        }
                    }
                    () = &mut expiry => {}
                }
            }
        }
    }
}

/// What the auth file allowed one request: its client as loaded then, the
/// service it called and the access it needed.
#[derive(Clone)]
struct Standing {
    file: Arc<AuthFile>,
    client: Arc<Client>,
    service: Service,
    needed: Access,
    /// When the client certificate it was identified by expires.
    expires: Option<std::time::SystemTime>,
}

impl Standing {
    /// Why the auth file as loaded now no longer allows it, if it does not.
    fn lost(&self) -> Option<Error> {
        let loaded = self.file.current.load();
        let name = &self.client.name;
        if self
            .expires
            .is_some_and(|expires| std::time::SystemTime::now() > expires)
        {
            return Some(Error::Unauthenticated(format!(
                "client {name}'s certificate has expired"
            )));
        }
        let Some(now) = loaded.clients.find(name) else {
            return Some(Error::Unauthenticated(format!(
                "client {name} was removed from the auth file"
            )));
        };
        if now.credential != self.client.credential || now.tenant != self.client.tenant {
            return Some(Error::Unauthenticated(format!(
                "client {name}'s credential or tenant changed in the auth file"
            )));
        }
        match (now.access(self.service), self.needed) {
            (None, _) => Some(Error::PermissionDenied(format!(
                "client {name} may no longer call the {} service",
                self.service.name()
            ))),
            (Some(Access::Read), Access::Full) => Some(Error::PermissionDenied(format!(
                "client {name} may now only read the {} service",
                self.service.name()
            ))),
            _ => None,
        }
    }
}

/// The clients of the auth file as last loaded, with their request and write
/// budgets (each with the rate it was made for).
struct Loaded {
    clients: Clients,
    budgets: HashMap<Arc<str>, Budget>,
    write_budgets: HashMap<Arc<str>, Budget>,
}

/// A client's budget, and the rate per second it allows.
#[derive(Clone)]
struct Budget {
    per_second: NonZeroU32,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl Loaded {
    /// The clients of a file just read; a client whose budget did not change
    /// since `before` keeps what it had used of it (a reload is no refill).
    fn new(clients: Clients, before: Option<&Loaded>) -> Loaded {
        let budgets_of = |rate: fn(&Client) -> Option<NonZeroU32>, kept: Option<&HashMap<Arc<str>, Budget>>| {
            clients
                .clients
                .iter()
                .filter_map(|client| {
                    let per_second = rate(client)?;
                    let budget = kept
                        .and_then(|kept| kept.get(&client.name))
                        .filter(|budget| budget.per_second == per_second)
                        .cloned()
                        .unwrap_or_else(|| Budget {
                            per_second,
                            limiter: Arc::new(RateLimiter::direct(Quota::per_second(per_second))),
                        });
                    Some((client.name.clone(), budget))
                })
                .collect::<HashMap<_, _>>()
        };
        let budgets = budgets_of(
            |client| client.max_requests_per_second,
            before.map(|before| &before.budgets),
        );
        let write_budgets = budgets_of(
            |client| client.max_write_bytes_per_second,
            before.map(|before| &before.write_budgets),
        );
        Loaded {
            clients,
            budgets,
            write_budgets,
        }
    }
}

/// The auth file, reloaded when it changes.
pub struct AuthFile {
    path: PathBuf,
    keys: Keys,
    current: ArcSwap<Loaded>,
    last_text: Mutex<Vec<u8>>,
    /// Bumped at every reload that took effect, for [`Caller::revoked`].
    changes: watch::Sender<u64>,
    /// The last problem reading the file, and when it was logged.
    problem: Mutex<Option<(String, Instant)>>,
}

impl AuthFile {
    /// Reads the auth file at `path`.
    ///
    /// # Errors
    /// An [`AuthFileError`] naming the file, the line and the problem.
    pub fn load(path: PathBuf, keys: Keys) -> Result<AuthFile, AuthFileError> {
        let text = std::fs::read(&path).unwrap_or_default();
        let clients = Clients::load(&path, &keys)?;
        info!(path = %path.display(), clients = clients.clients.len(), "auth file loaded");
        Ok(AuthFile {
            path,
            keys,
            current: ArcSwap::from_pointee(Loaded::new(clients, None)),
            last_text: Mutex::new(text),
            changes: watch::Sender::new(0),
            problem: Mutex::new(None),
        })
    }

    /// Reads the file again; when it changed and is good, it takes effect for the
    /// next request, and every open stream or wait of a client it removed, or
    /// whose credential, tenant or permission it changed, ends. A file that
    /// cannot be read, is missing or is empty (a writer truncating it in place)
    /// says nothing: the previous clients stay, and a warning is logged until it
    /// is fixed, as for a broken edit. Replace the file atomically (write another
    /// and rename it over this one), as Kubernetes does with a mounted Secret.
    pub fn reload_if_changed(&self) {
        let text = match std::fs::read(&self.path) {
            Ok(text) if text.iter().all(u8::is_ascii_whitespace) => {
                return self.problem("the auth file is empty (a writer truncating it?)".to_owned());
            }
            Ok(text) => text,
            Err(error) => return self.problem(format!("the auth file cannot be read: {error}")),
        };
        let mut last = self.last_text.lock().unwrap_or_else(PoisonError::into_inner);
        if *last == text {
            drop(last);
            *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = None;
            return;
        }
        let parsed = std::str::from_utf8(&text)
            .map_err(|_| AuthFileError(format!("{}: is not UTF-8", self.path.display())))
            .and_then(|text| {
                Clients::parse(text, &self.keys)
                    .map_err(|AuthFileError(reason)| AuthFileError(format!("{}: {reason}", self.path.display())))
            });
        match parsed {
            Ok(clients) => {
                *last = text;
                drop(last);
                *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = None;
                info!(path = %self.path.display(), clients = clients.clients.len(), "auth file reloaded");
                let loaded = Loaded::new(clients, Some(&self.current.load()));
                self.current.store(Arc::new(loaded));
                self.changes.send_modify(|count| *count += 1);
            }
            Err(error) => {
                drop(last);
                self.problem(format!("refused the changed auth file: {error}"));
            }
        }
    }

    /// Logs why the file says nothing new, once per change of reason and then
    /// every [`PROBLEM_LOG_INTERVAL`] while it lasts.
    fn problem(&self, reason: String) {
        let mut problem = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        let due = match problem.as_ref() {
            Some((last, logged)) => *last != reason || logged.elapsed() >= PROBLEM_LOG_INTERVAL,
            None => true,
        };
        if due {
            warn!(
                path = %self.path.display(),
                "{reason}; the clients loaded before stay in force until it is fixed"
            );
            *problem = Some((reason, Instant::now()));
        }
    }
}

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
        let loaded = file.current.load();
        let client = identify(&loaded.clients, headers, connection)?;
        let mut access = Access::Full;
        let mut standing = None;
        match target {
            Target::Method(service, read) => match client.access(service) {
                Some(granted) if granted == Access::Full || read => {
                    access = granted;
                    let by_certificate = !headers.contains_key(http::header::AUTHORIZATION);
                    standing = Some(Standing {
                        file: file.clone(),
                        client: client.clone(),
                        service,
                        needed: if read { Access::Read } else { Access::Full },
                        expires: connection
                            .and_then(|connection| connection.peer.as_ref())
                            .filter(|_| by_certificate)
                            .and_then(|peer| peer.not_after),
                    });
                }
                Some(_) => {
                    return Err(Error::PermissionDenied(format!(
                        "client {} may only read {} ({}:read); {path} changes data",
                        client.name,
                        service.name(),
                        service.name()
                    ))
                    .into());
                }
                None => {
                    return Err(Error::PermissionDenied(format!(
                        "client {} may not call the {} service",
                        client.name,
                        service.name()
                    ))
                    .into());
                }
            },
            Target::Unknown => return Err(Error::PermissionDenied(format!("no such method: {path}")).into()),
            Target::Health | Target::Reflection => {}
        }
        record_client(&client.name);
        if let Some(budget) = loaded.budgets.get(&client.name)
            && let Err(not_until) = budget.limiter.check()
        {
            OVER_RATE.record();
            self.meter.record(|metrics| metrics.refuse("client_rate"));
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            return Err(Error::Exhausted {
                reason: Reason::ClientRateLimited,
                message: format!(
                    "client {} is over its max_requests_per_second ({}); retry after {} ms",
                    client.name,
                    client.max_requests_per_second.map_or(0, NonZeroU32::get),
                    wait.as_millis().max(1)
                ),
                retry_after: Some(wait.max(Duration::from_millis(1))),
            }
            .into());
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
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) {
                    REFUSED.record();
                }
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Re-reads the TLS files and the auth file every [`RELOAD_INTERVAL`]; runs
/// until its task is aborted.
pub async fn reload_on_change(tls: Option<Arc<ReloadableTls>>, auth: Option<Arc<AuthFile>>) {
    let mut interval = tokio::time::interval(RELOAD_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Some(tls) = &tls {
            tls.reload_if_changed();
        }
        if let Some(auth) = &auth {
            auth.reload_if_changed();
        }
    }
}
