//! The auth file: who may call, as which tenant, which services, how often.
//!
//! ```toml
//! [[client]]
//! name = "checkout"                 # appears in logs, never the token
//! token_sha256 = "<64 hex chars>"   # SHA-256 of the bearer token: the file holds no secret
//! tenant = "shop"                   # the key space this client lives in
//! allow = ["cache", "ratelimit", "lock", "session", "pubsub", "election"]   # or "cache:read"
//! max_requests_per_second = 500     # optional, per instance
//!
//! max_write_bytes_per_second = 1048576   # optional: bytes of cache writes, session data
//!                                   # and publishes, per instance
//!
//! [[client]]
//! name = "billing"
//! subject = "CN=billing,O=Acme"     # with mTLS: the client certificate's subject (RFC 4514) ...
//! # san = "dns:billing.internal"    # ... or one of its subject alternative names, typed
//! tenant = "shop"
//! allow = ["lock"]
//! ```
//!
//! Unknown fields are refused, so a typo cannot silently grant or deny. Subjects
//! and alternative names are compared as structures (see [`super::identity`]).

use std::{collections::HashSet, fmt, num::NonZeroU32, path::Path, sync::Arc};

use serde::Deserialize;

use super::identity::{DistinguishedName, SubjectAltName};
use crate::redis::{KeySpace, Keys};

/// A cachelock service a client may be allowed to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// `cachelock.cache.v1.CacheService`.
    Cache,
    /// `cachelock.ratelimit.v1.RateLimitService`.
    RateLimit,
    /// `cachelock.lock.v1.LockService`.
    Lock,
    /// `cachelock.session.v1.SessionService`.
    Session,
    /// `cachelock.pubsub.v1.PubSubService` (read: Subscribe; full: Publish too).
    PubSub,
    /// `cachelock.election.v1.ElectionService` (read: Leader, Observe; full:
    /// Campaign and Resign too).
    Election,
}

impl Service {
    /// Every service, for a client allowed everything.
    pub const ALL: [Service; 6] = [
        Service::Cache,
        Service::RateLimit,
        Service::Lock,
        Service::Session,
        Service::PubSub,
        Service::Election,
    ];

    /// The name used in the auth file's `allow` list.
    pub fn name(self) -> &'static str {
        match self {
            Service::Cache => "cache",
            Service::RateLimit => "ratelimit",
            Service::Lock => "lock",
            Service::Session => "session",
            Service::PubSub => "pubsub",
            Service::Election => "election",
        }
    }

    fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|service| service.name() == name)
    }
}

/// What a client may do with one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only the methods that do not change stored data.
    Read,
    /// Every method.
    Full,
}

/// How a client proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token, known by its SHA-256.
    Token([u8; 32]),
    /// A client certificate with this subject.
    Subject(DistinguishedName),
    /// A client certificate carrying this subject alternative name.
    San(SubjectAltName),
}

impl Credential {
    /// Whether both name the same identity (subjects match in either order).
    fn same_as(&self, other: &Credential) -> bool {
        match (self, other) {
            (Credential::Subject(one), Credential::Subject(other)) => one.matches(other),
            _ => self == other,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A digest is no secret, but there is no reason to print it either.
            Credential::Token(_) => f.write_str("Token(..)"),
            Credential::Subject(subject) => write!(f, "Subject({subject})"),
            Credential::San(san) => write!(f, "San({san})"),
        }
    }
}

/// One client of the auth file, validated.
#[derive(Debug)]
pub struct Client {
    /// Its name, for logs.
    pub name: Arc<str>,
    /// How it authenticates.
    pub credential: Credential,
    /// Its tenant's name.
    pub tenant: String,
    /// Its tenant's key space.
    pub space: KeySpace,
    /// What it may call.
    pub allow: Vec<(Service, Access)>,
    /// Its request budget per second on each instance, if any.
    pub max_requests_per_second: Option<NonZeroU32>,
    /// Its budget of written bytes per second on each instance, if any.
    pub max_write_bytes_per_second: Option<NonZeroU32>,
}

impl Client {
    /// What it may do with `service`, if anything.
    pub fn access(&self, service: Service) -> Option<Access> {
        self.allow
            .iter()
            .filter(|(allowed, _)| *allowed == service)
            .map(|(_, access)| *access)
            .max_by_key(|access| *access == Access::Full)
    }
}

/// Every client of an auth file.
#[derive(Debug, Default)]
pub struct Clients {
    /// The clients, in file order.
    pub clients: Vec<Arc<Client>>,
}

impl Clients {
    /// The client called `name`, if there is one.
    pub fn find(&self, name: &str) -> Option<&Arc<Client>> {
        self.clients.iter().find(|client| &*client.name == name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDocument {
    #[serde(default)]
    client: Vec<FileClient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClient {
    name: String,
    token_sha256: Option<String>,
    subject: Option<String>,
    san: Option<String>,
    tenant: String,
    allow: Vec<String>,
    max_requests_per_second: Option<u32>,
    max_write_bytes_per_second: Option<u32>,
}

/// Why an auth file was refused: where, and what is wrong. Never a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFileError(pub String);

impl fmt::Display for AuthFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a tenant name is usable as a key segment: 1 to 64 letters, digits, `-`, `_`, `.`.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Clients {
    /// Reads and validates the auth file at `path`, building key spaces from `keys`.
    ///
    /// # Errors
    /// An [`AuthFileError`] naming the file and, where TOML tells, the line.
    pub fn load(path: &Path, keys: &Keys) -> Result<Clients, AuthFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| AuthFileError(format!("{}: cannot read: {error}", path.display())))?;
        Clients::parse(&text, keys)
            .map_err(|AuthFileError(reason)| AuthFileError(format!("{}: {reason}", path.display())))
    }

    /// Validates the text of an auth file.
    ///
    /// # Errors
    /// An [`AuthFileError`] saying what is wrong.
    pub fn parse(text: &str, keys: &Keys) -> Result<Clients, AuthFileError> {
        let document: FileDocument = toml::from_str(text).map_err(|error| {
            let line = error
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = error.message().to_owned();
            AuthFileError(match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            })
        })?;
        let mut names = HashSet::new();
        let mut credentials = Vec::new();
        let mut clients = Vec::with_capacity(document.client.len());
        for (index, client) in document.client.into_iter().enumerate() {
            let at = |reason: String| AuthFileError(format!("client {} ({:?}): {reason}", index + 1, client.name));
            if client.name.is_empty() {
                return Err(at("name must not be empty".to_owned()));
            }
            if !names.insert(client.name.clone()) {
                return Err(at("the name is used by an earlier client".to_owned()));
            }
            let credential = match (&client.token_sha256, &client.subject, &client.san) {
                (Some(digest), None, None) => Credential::Token(parse_digest(digest).ok_or_else(|| {
                    at("token_sha256 must be 64 hexadecimal digits (sha256sum of the token)".to_owned())
                })?),
                (None, Some(subject), None) => Credential::Subject(
                    DistinguishedName::parse(subject).map_err(|reason| at(format!("subject {reason}")))?,
                ),
                (None, None, Some(san)) => {
                    Credential::San(SubjectAltName::parse(san).map_err(|reason| at(format!("san {reason}")))?)
                }
                _ => return Err(at("give exactly one of token_sha256, subject or san".to_owned())),
            };
            if credentials.iter().any(|earlier| credential.same_as(earlier)) {
                return Err(at("the same credential is given to an earlier client".to_owned()));
            }
            credentials.push(credential.clone());
            if !valid_tenant(&client.tenant) {
                return Err(at("tenant must be 1 to 64 letters, digits, '-', '_' or '.'".to_owned()));
            }
            if client.allow.is_empty() {
                return Err(at("allow must name at least one service".to_owned()));
            }
            let mut allow = Vec::with_capacity(client.allow.len());
            for entry in &client.allow {
                let (service, access) = match entry.split_once(':') {
                    None => (entry.as_str(), Access::Full),
                    Some((service, "read")) => (service, Access::Read),
                    Some(_) => return Err(at(format!("allow entry {entry:?} is not SERVICE or SERVICE:read"))),
                };
                let service = Service::from_name(service).ok_or_else(|| {
                    at(format!(
                        "allow entry {entry:?}: the services are cache, ratelimit, lock, session and pubsub"
                    ))
                })?;
                allow.push((service, access));
            }
            let positive = |value: Option<u32>, field: &str| match value {
                None => Ok(None),
                Some(rate) => NonZeroU32::new(rate)
                    .map(Some)
                    .ok_or_else(|| at(format!("{field} must be at least 1"))),
            };
            let max_requests_per_second = positive(client.max_requests_per_second, "max_requests_per_second")?;
            let max_write_bytes_per_second = positive(client.max_write_bytes_per_second, "max_write_bytes_per_second")?;
            clients.push(Arc::new(Client {
                name: client.name.into(),
                credential,
                space: keys.space(&client.tenant),
                tenant: client.tenant,
                allow,
                max_requests_per_second,
                max_write_bytes_per_second,
            }));
        }
        Ok(Clients { clients })
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::{Access, Clients, Service};
    use crate::redis::Keys;

    const GOOD: &str = r#"
[[client]]
name = "checkout"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
tenant = "shop"
allow = ["cache", "ratelimit:read", "lock"]
max_requests_per_second = 5

[[client]]
name = "billing"
subject = "CN=billing, O=Acme"
tenant = "shop"
allow = ["session:read"]
"#;

    #[test]
    fn a_good_file_is_read() {
        let clients = Clients::parse(GOOD, &Keys::new("p")).unwrap().clients;
        assert_eq!(clients.len(), 2);
        assert_eq!(clients[0].access(Service::Cache), Some(Access::Full));
        assert_eq!(clients[0].access(Service::RateLimit), Some(Access::Read));
        assert_eq!(clients[0].access(Service::Session), None);
        assert_eq!(
            clients[1].credential,
            super::Credential::Subject(super::DistinguishedName::parse("CN=billing,O=Acme").unwrap())
        );
    }

    #[test]
    fn bad_files_are_refused_saying_where() {
        let keys = Keys::new("p");
        for (text, wanted) in [
            ("[[client]]\nname = \"a\"\n", "line"),
            (
                "[[client]]\nname=\"a\"\ntoken_sha256=\"00\"\ntenant=\"t\"\nallow=[\"cache\"]",
                "64 hexadecimal",
            ),
            ("[[client]]\nname=\"a\"\ntenant=\"t\"\nallow=[\"cache\"]", "exactly one"),
            (
                "[[client]]\nname=\"a\"\nsan=\"dns:x\"\ntenant=\"a:b\"\nallow=[\"cache\"]",
                "tenant",
            ),
            (
                "[[client]]\nname=\"a\"\nsan=\"x\"\ntenant=\"t\"\nallow=[\"cache\"]",
                "dns:x",
            ),
            (
                "[[client]]\nname=\"a\"\nsubject=\"CN=a;O=b\"\ntenant=\"t\"\nallow=[\"cache\"]",
                "subject",
            ),
            (
                "[[client]]\nname=\"a\"\nsan=\"dns:x\"\ntenant=\"t\"\nallow=[\"kache\"]",
                "services are",
            ),
            (
                "[[client]]\nname=\"a\"\nsan=\"dns:x\"\ntenant=\"t\"\nallow=[\"cache\"]\nalow=1",
                "line 6",
            ),
            (
                "[[client]]\nname=\"a\"\nsan=\"dns:x\"\ntenant=\"t\"\nallow=[\"cache\"]\n[[client]]\nname=\"a\"\nsan=\"dns:y\"\ntenant=\"t\"\nallow=[\"cache\"]",
                "earlier client",
            ),
        ] {
            let error = Clients::parse(text, &keys).unwrap_err().0;
            assert!(error.contains(wanted), "{text:?}: {error}");
        }
    }
}
