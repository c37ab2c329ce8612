//! Sessions: a user's attributes under a secret id, with idle and absolute expiry.

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, SystemTime},
};

use crate::{
    Client, Error, Fence,
    client::Idempotent,
    pb::session::{self as pb, session_service_client::SessionServiceClient},
    time::{duration_from, time_from, to_proto},
};

/// A session. Its id is the user's secret: it shows in no `Debug` output.
#[derive(Clone)]
pub struct Session {
    id: String,
    /// The user it belongs to.
    pub user_id: String,
    /// Its attributes.
    pub attributes: HashMap<String, String>,
    /// A non-secret name of it, for listings and [`Sessions::delete_by_handle`].
    pub handle: String,
    /// Increases with every change; for [`Update::expected_version`].
    pub version: u64,
    /// When it was created.
    pub created_at: Option<SystemTime>,
    /// When it ends unless used (idle expiry).
    pub expires_at: Option<SystemTime>,
    /// When it ends whatever happens.
    pub absolute_expires_at: Option<SystemTime>,
    /// How long it lives unused.
    pub idle_timeout: Duration,
    /// The device label it was created with.
    pub device_label: String,
}

impl Session {
    /// The secret id: give it to the user (a cookie), never to a log.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn from_proto(session: Option<pb::Session>) -> Session {
        let session = session.unwrap_or_default();
        Session {
            id: session.id,
            user_id: session.user_id,
            attributes: session.attributes,
            handle: session.handle,
            version: session.version,
            created_at: time_from(session.created_at),
            expires_at: time_from(session.expires_at),
            absolute_expires_at: time_from(session.absolute_expires_at),
            idle_timeout: duration_from(session.idle_timeout),
            device_label: session.client.map(|client| client.device_label).unwrap_or_default(),
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &"<secret>")
            .field("user_id", &self.user_id)
            .field("handle", &self.handle)
            .field("version", &self.version)
            .field("attributes", &self.attributes)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A new session.
#[derive(Clone, Debug, Default)]
pub struct NewSession {
    /// The user it belongs to.
    pub user_id: String,
    /// Its first attributes.
    pub attributes: HashMap<String, String>,
    /// How long it lives unused; `None`: the service's default.
    pub idle_timeout: Option<Duration>,
    /// How long it lives at most; `None`: the service's default.
    pub absolute_timeout: Option<Duration>,
    /// The user's device, for listings.
    pub device_label: String,
    /// The user's address.
    pub ip: String,
    /// The user's browser or app.
    pub user_agent: String,
}

/// A change of a session's attributes.
#[derive(Clone, Debug, Default)]
pub struct Update {
    /// Attributes to set.
    pub set: HashMap<String, String>,
    /// Attributes to remove.
    pub remove: Vec<String>,
    /// Apply only if the session is still at this version
    /// ([`crate::Reason::VersionConflict`] otherwise).
    pub expected_version: Option<u64>,
}

/// The session calls. Get one from [`Client::sessions`].
#[derive(Clone, Debug)]
pub struct Sessions {
    client: Client,
    fence: Option<Fence>,
}

/// Sends one session RPC under the retry policy.
macro_rules! call {
    ($self:ident, $method:literal, $rpc:ident, $idempotent:expr, $request:expr) => {
        $self
            .client
            .unary(
                concat!("session.", $method),
                $idempotent,
                Duration::ZERO,
                $request,
                |r| {
                    let mut stub = SessionServiceClient::new($self.client.channel.clone());
                    async move { stub.$rpc(r).await }
                },
            )
            .await
    };
}

impl Client {
    /// Sessions.
    pub fn sessions(&self) -> Sessions {
        Sessions {
            client: self.clone(),
            fence: None,
        }
    }
}

impl Sessions {
    /// The same calls, with `update` and `delete` fenced by `fence`: applied
    /// only while no grant of its lock is newer, else refused with
    /// [`crate::Reason::FencedOut`] and nothing changed.
    #[must_use]
    pub fn fenced(&self, fence: Fence) -> Sessions {
        Sessions {
            client: self.client.clone(),
            fence: Some(fence),
        }
    }

    /// Creates a session. Never repeated by the library: a repeat would create two.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with.
    pub async fn create(&self, new: NewSession) -> Result<Session, Error> {
        let request = pb::CreateRequest {
            user_id: new.user_id,
            attributes: new.attributes,
            idle_timeout: new.idle_timeout.map(to_proto),
            absolute_timeout: new.absolute_timeout.map(to_proto),
            client: Some(pb::ClientMetadata {
                device_label: new.device_label,
                ip: new.ip,
                user_agent: new.user_agent,
            }),
        };
        let answer = call!(self, "Create", create, Idempotent::No, request)?;
        Ok(Session::from_proto(answer.session))
    }

    /// The session `id`; with `touch`, its idle expiry slides.
    ///
    /// # Errors
    /// [`crate::Reason::SessionNotFound`] when it is unknown, expired or ended.
    pub async fn get(&self, id: &str, touch: bool) -> Result<Session, Error> {
        let request = pb::GetRequest {
            id: id.to_owned(),
            touch,
        };
        let answer = call!(self, "Get", get, Idempotent::Yes, request)?;
        Ok(Session::from_proto(answer.session))
    }

    /// Changes the session's attributes. Never repeated by the library.
    ///
    /// # Errors
    /// As [`Sessions::get`]; [`crate::Reason::VersionConflict`].
    pub async fn update(&self, id: &str, update: Update) -> Result<Session, Error> {
        let request = pb::UpdateRequest {
            id: id.to_owned(),
            set: update.set,
            remove: update.remove,
            expected_version: update.expected_version,
            fence: self.fence.clone(),
        };
        let answer = call!(self, "Update", update, Idempotent::No, request)?;
        Ok(Session::from_proto(answer.session))
    }

    /// Slides the session's idle expiry; when it now ends.
    ///
    /// # Errors
    /// As [`Sessions::get`].
    pub async fn touch(&self, id: &str) -> Result<Option<SystemTime>, Error> {
        let answer = call!(
            self,
            "Touch",
            touch,
            Idempotent::Yes,
            pb::TouchRequest { id: id.to_owned() }
        )?;
        Ok(time_from(answer.expires_at))
    }

    /// Ends the session.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with, after the retries the policy allows.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let request = pb::DeleteRequest {
            id: id.to_owned(),
            fence: self.fence.clone(),
        };
        call!(self, "Delete", delete, Idempotent::Yes, request).map(|_| ())
    }

    /// The user's sessions (their ids left out: each has a handle).
    ///
    /// # Errors
    /// Any [`Error`] the call ends with, after the retries the policy allows.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Session>, Error> {
        let request = pb::ListUserSessionsRequest {
            user_id: user_id.to_owned(),
        };
        let answer = call!(self, "ListUserSessions", list_user_sessions, Idempotent::Yes, request)?;
        Ok(answer
            .sessions
            .into_iter()
            .map(|session| Session::from_proto(Some(session)))
            .collect())
    }

    /// Ends the user's session known by `handle` (from [`Sessions::list`]).
    ///
    /// # Errors
    /// Any [`Error`] the call ends with, after the retries the policy allows.
    pub async fn delete_by_handle(&self, user_id: &str, handle: &str) -> Result<(), Error> {
        let request = pb::DeleteUserSessionRequest {
            user_id: user_id.to_owned(),
            handle: handle.to_owned(),
        };
        call!(self, "DeleteUserSession", delete_user_session, Idempotent::Yes, request).map(|_| ())
    }

    /// Ends every session of the user but `except_id`; how many ended.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with, after the retries the policy allows.
    pub async fn delete_all(&self, user_id: &str, except_id: Option<&str>) -> Result<u32, Error> {
        let request = pb::DeleteUserSessionsRequest {
            user_id: user_id.to_owned(),
            except_id: except_id.unwrap_or_default().to_owned(),
        };
        Ok(call!(
            self,
            "DeleteUserSessions",
            delete_user_sessions,
            Idempotent::Yes,
            request
        )?
        .deleted)
    }

    /// Gives the session a new id (after a login or a privilege change); the
    /// old one stops working. Never repeated by the library.
    ///
    /// # Errors
    /// As [`Sessions::get`].
    pub async fn rotate(&self, id: &str) -> Result<Session, Error> {
        let answer = call!(
            self,
            "Rotate",
            rotate,
            Idempotent::No,
            pb::RotateRequest { id: id.to_owned() }
        )?;
        Ok(Session::from_proto(answer.session))
    }
}
