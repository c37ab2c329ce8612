//! `cachelock.session.v1.SessionService`: server-side sessions with sliding
//! idle expiry under an absolute lifetime, a per-user index, optimistic
//! concurrency and rotation. Session ids and attribute values are never logged.

mod id;
mod store;

use std::{collections::HashMap, time::Duration};

use tonic::{Request, Response, Status};

pub use id::SessionId;
pub use store::{Created, NewSession, SessionStore, StoredSession, UpdateOutcome, scripts};

use crate::{
    auth::Caller,
    config::Config,
    context::Context,
    error::{Error, Reason},
    fence::{self, Fenced},
    ids::random_token,
    pb::session::{
        ClientMetadata, CreateRequest, CreateResponse, DeleteRequest, DeleteResponse, DeleteUserSessionRequest,
        DeleteUserSessionResponse, DeleteUserSessionsRequest, DeleteUserSessionsResponse, GetRequest, GetResponse,
        ListUserSessionsRequest, ListUserSessionsResponse, RotateRequest, RotateResponse, Session, TouchRequest,
        TouchResponse, UpdateRequest, UpdateResponse, session_service_server::SessionService,
    },
    request::{Limits, deadline, positive_duration},
    telemetry::{Meter, Metrics},
    time::{self, duration_to_proto, timestamp},
};

/// The idle timeout of a session created without one.
const DEFAULT_IDLE: Duration = Duration::from_secs(30 * 60);
/// The absolute lifetime of a session created without one (or the idle timeout, if longer).
const DEFAULT_ABSOLUTE: Duration = Duration::from_secs(24 * 3600);
/// Longest attribute name.
const MAX_ATTRIBUTE_NAME_BYTES: usize = 128;
/// Longest handle a caller can hand back (ours are 22 characters).
const MAX_HANDLE_BYTES: usize = 64;
/// Longest client metadata field.
const MAX_CLIENT_FIELD_BYTES: usize = 512;

/// The session service's settings, from the configuration.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Most attributes in one session.
    pub max_attributes: usize,
    /// Largest attribute value.
    pub max_attribute_bytes: usize,
    /// Longest idle or absolute timeout.
    pub max_lifetime: Duration,
    /// Most live sessions per user; Create ends the least recently used beyond it.
    pub max_per_user: usize,
    /// Longest wait for Redis in one RPC.
    pub operation_timeout: Duration,
}

impl From<&Config> for SessionSettings {
    fn from(config: &Config) -> SessionSettings {
        SessionSettings {
            max_attributes: config.session_max_attributes,
            max_attribute_bytes: config.session_max_attribute_bytes,
            max_lifetime: config.session_max_lifetime,
            max_per_user: config.session_max_per_user,
            operation_timeout: config.operation_timeout,
        }
    }
}

/// The gRPC handlers of the session service.
pub struct SessionApi {
    store: SessionStore,
    meter: Meter,
    limits: Limits,
    settings: SessionSettings,
}

fn not_found() -> Error {
    Error::NotFound(
        Reason::SessionNotFound,
        "no such session (unknown, expired or ended)".to_owned(),
    )
}

/// Reads a session id from a request; anything that is not one of ours is simply not found.
fn session_id(field: &str, id: &str) -> Result<SessionId, Error> {
    if id.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    SessionId::parse(id).ok_or_else(not_found)
}

/// A session for a response; `id` is `None` in listings, which never carry the secret.
fn to_proto(id: Option<&SessionId>, stored: StoredSession) -> Session {
    Session {
        id: id.map(ToString::to_string).unwrap_or_default(),
        expires_at: Some(timestamp(stored.expiry_ms())),
        absolute_expires_at: Some(timestamp(stored.absolute_expiry_ms)),
        created_at: Some(timestamp(stored.created_ms)),
        last_accessed_at: Some(timestamp(stored.accessed_ms)),
        idle_timeout: Some(duration_to_proto(time::from_millis(stored.idle_ms))),
        version: stored.version,
        handle: stored.handle,
        user_id: stored.user_id,
        attributes: stored.attributes.into_iter().collect(),
        client: Some(ClientMetadata {
            device_label: stored.device_label,
            ip: stored.ip,
            user_agent: stored.user_agent,
        }),
    }
}

impl SessionApi {
    /// Handlers over the context's Redis.
    pub fn new(context: &Context, settings: SessionSettings) -> SessionApi {
        SessionApi {
            store: SessionStore::new(context.redis.clone()),
            meter: context.meter.clone(),
            limits: context.limits.clone(),
            settings,
        }
    }

    fn timeout(
        &self,
        field: &str,
        timeout: Option<&prost_types::Duration>,
        default: Duration,
    ) -> Result<Duration, Error> {
        let timeout = match timeout {
            Some(timeout) => positive_duration(field, timeout)?,
            None => default,
        };
        if timeout > self.settings.max_lifetime {
            return Err(Error::invalid(
                field,
                format!(
                    "{} is above the maximum session lifetime of {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(self.settings.max_lifetime)
                ),
            ));
        }
        Ok(timeout)
    }

    fn attribute(&self, field: &str, name: &str, value: Option<&str>) -> Result<(), Error> {
        if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME_BYTES {
            return Err(Error::invalid(
                field,
                format!("attribute names must be 1 to {MAX_ATTRIBUTE_NAME_BYTES} bytes"),
            ));
        }
        if let Some(value) = value
            && value.len() > self.settings.max_attribute_bytes
        {
            return Err(Error::invalid(
                field,
                format!(
                    "the value of {name:?} is {} bytes, above the limit of {}",
                    value.len(),
                    self.settings.max_attribute_bytes
                ),
            ));
        }
        Ok(())
    }

    fn attributes(&self, field: &str, attributes: &HashMap<String, String>) -> Result<(), Error> {
        if attributes.len() > self.settings.max_attributes {
            return Err(Error::invalid(
                field,
                format!(
                    "has {} attributes, above the limit of {}",
                    attributes.len(),
                    self.settings.max_attributes
                ),
            ));
        }
        for (name, value) in attributes {
            self.attribute(field, name, Some(value))?;
        }
        Ok(())
    }
}

fn client_field<'a>(field: &str, value: &'a str) -> Result<&'a str, Error> {
    if value.len() > MAX_CLIENT_FIELD_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {} bytes, above the limit of {MAX_CLIENT_FIELD_BYTES}", value.len()),
        ));
    }
    Ok(value)
}

/// A duration in whole milliseconds, at least 1: what the session scripts take.
fn millis(duration: Duration) -> u64 {
    time::millis(duration).max(1)
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn create(&self, request: Request<CreateRequest>) -> Result<Response<CreateResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::writing(&request, 2)?;
        let request = request.into_inner();
        let user_id = self.limits.key("user_id", &request.user_id)?;
        self.attributes("attributes", &request.attributes)?;
        let idle = self.timeout("idle_timeout", request.idle_timeout.as_ref(), DEFAULT_IDLE)?;
        let absolute = self.timeout(
            "absolute_timeout",
            request.absolute_timeout.as_ref(),
            DEFAULT_ABSOLUTE.max(idle),
        )?;
        if absolute < idle {
            return Err(Error::invalid("absolute_timeout", "must not be below idle_timeout").into());
        }
        let client = request.client.unwrap_or_default();
        let new = NewSession {
            user_id,
            idle_ms: millis(idle),
            absolute_ms: millis(absolute),
            device_label: client_field("client.device_label", &client.device_label)?,
            ip: client_field("client.ip", &client.ip)?,
            user_agent: client_field("client.user_agent", &client.user_agent)?,
            handle: &random_token()?,
            attributes: &request.attributes,
        };
        let id = SessionId::generate(user_id)?;
        let Created { session, ended } = self
            .store
            .create(&space, &id, &new, self.settings.max_per_user, deadline)
            .await?;
        self.meter.record(|metrics| {
            Metrics::count(&metrics.sessions, "created");
            Metrics::count_by(&metrics.sessions, "evicted", u64::from(ended));
        });
        Ok(Response::new(CreateResponse {
            session: Some(to_proto(Some(&id), session)),
            ended_sessions: ended,
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let caller = Caller::of(&request)?;
        if request.get_ref().touch {
            // Sliding the idle expiry is a write, whatever the method's name.
            caller.may_write("Get with touch (it slides the session's expiry)")?;
        }
        let space = caller.space.clone();
        let request = request.into_inner();
        let id = session_id("id", &request.id)?;
        let stored = self
            .store
            .get(&space, &id, request.touch, deadline)
            .await?
            .ok_or_else(not_found)?;
        Ok(Response::new(GetResponse {
            session: Some(to_proto(Some(&id), stored)),
        }))
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<Response<UpdateResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::writing(&request, 1)?;
        let request = request.into_inner();
        let id = session_id("id", &request.id)?;
        self.attributes("set", &request.set)?;
        self.limits.batch("remove", request.remove.len())?;
        for (i, name) in request.remove.iter().enumerate() {
            let field = format!("remove[{i}]");
            self.attribute(&field, name, None)?;
            if request.set.contains_key(name) {
                return Err(Error::invalid(field, format!("{name:?} is also in set")).into());
            }
        }
        let fenced = Fenced::of(&self.limits, &space, request.fence.as_ref())?;
        if let Some(fenced) = &fenced {
            self.store.fence_reaches(&space, fenced, &id)?;
        }
        let outcome = self
            .store
            .update(
                &space,
                &id,
                &request.set,
                &request.remove,
                request.expected_version,
                self.settings.max_attributes,
                fenced.as_ref(),
                deadline,
            )
            .await;
        let outcome = match fenced {
            Some(_) => fence::counted(&self.meter, outcome)?,
            None => outcome?,
        };
        match outcome {
            UpdateOutcome::Updated(stored) => Ok(Response::new(UpdateResponse {
                session: Some(to_proto(Some(&id), stored)),
            })),
            UpdateOutcome::Missing => Err(not_found().into()),
            UpdateOutcome::Stale(version) => Err(Error::Aborted(
                Reason::VersionConflict,
                format!("the session is at version {version}, not the expected one: read it again and retry"),
            )
            .into()),
            UpdateOutcome::Full(count) => Err(Error::invalid(
                "set",
                format!(
                    "the session would hold {count} attributes, above the limit of {}",
                    self.settings.max_attributes
                ),
            )
            .into()),
        }
    }

    async fn touch(&self, request: Request<TouchRequest>) -> Result<Response<TouchResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let id = session_id("id", &request.into_inner().id)?;
        let stored = self
            .store
            .get(&space, &id, true, deadline)
            .await?
            .ok_or_else(not_found)?;
        Ok(Response::new(TouchResponse {
            expires_at: Some(timestamp(stored.expiry_ms())),
        }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let id = session_id("id", &request.id)?;
        let fenced = Fenced::of(&self.limits, &space, request.fence.as_ref())?;
        if let Some(fenced) = &fenced {
            self.store.fence_reaches(&space, fenced, &id)?;
        }
        let deleted = self.store.delete(&space, &id, fenced.as_ref(), deadline).await;
        let deleted = match fenced {
            Some(_) => fence::counted(&self.meter, deleted)?,
            None => deleted?,
        };
        if !deleted {
            return Err(not_found().into());
        }
        self.meter
            .record(|metrics| Metrics::count(&metrics.sessions, "deleted"));
        Ok(Response::new(DeleteResponse {}))
    }

    async fn list_user_sessions(
        &self,
        request: Request<ListUserSessionsRequest>,
    ) -> Result<Response<ListUserSessionsResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let user_id = self.limits.key("user_id", &request.user_id)?;
        let sessions = self
            .store
            .list(&space, user_id, deadline)
            .await?
            .into_iter()
            .map(|stored| to_proto(None, stored))
            .collect();
        Ok(Response::new(ListUserSessionsResponse { sessions }))
    }

    async fn delete_user_session(
        &self,
        request: Request<DeleteUserSessionRequest>,
    ) -> Result<Response<DeleteUserSessionResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let user_id = self.limits.key("user_id", &request.user_id)?;
        if request.handle.is_empty() || request.handle.len() > MAX_HANDLE_BYTES {
            return Err(Error::invalid("handle", "is not a session handle").into());
        }
        if !self
            .store
            .delete_by_handle(&space, user_id, &request.handle, deadline)
            .await?
        {
            return Err(Error::NotFound(
                Reason::SessionNotFound,
                "the user has no live session with this handle".to_owned(),
            )
            .into());
        }
        self.meter
            .record(|metrics| Metrics::count(&metrics.sessions, "logged_out"));
        Ok(Response::new(DeleteUserSessionResponse {}))
    }

    async fn delete_user_sessions(
        &self,
        request: Request<DeleteUserSessionsRequest>,
    ) -> Result<Response<DeleteUserSessionsResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let user_id = self.limits.key("user_id", &request.user_id)?;
        let except = if request.except_id.is_empty() {
            None
        } else {
            let except = SessionId::parse(&request.except_id)
                .filter(|id| id.is_for_user(user_id))
                .ok_or_else(|| Error::invalid("except_id", "is not a session id of this user"))?;
            Some(except)
        };
        let deleted = self
            .store
            .delete_user(&space, user_id, except.as_ref(), deadline)
            .await?;
        self.meter
            .record(|metrics| Metrics::count_by(&metrics.sessions, "logged_out", deleted));
        Ok(Response::new(DeleteUserSessionsResponse {
            deleted: u32::try_from(deleted).unwrap_or(u32::MAX),
        }))
    }

    async fn rotate(&self, request: Request<RotateRequest>) -> Result<Response<RotateResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        // A copy of the session under its new id, and the index entry.
        let space = Caller::writing(&request, 2)?;
        let old = session_id("id", &request.into_inner().id)?;
        // The new id keeps the routing tag: the user, and so the slot, are the same.
        let new = old.rotated()?;
        let stored = self
            .store
            .rotate(&space, &old, &new, deadline)
            .await?
            .ok_or_else(not_found)?;
        self.meter
            .record(|metrics| Metrics::count(&metrics.sessions, "rotated"));
        Ok(Response::new(RotateResponse {
            session: Some(to_proto(Some(&new), stored)),
        }))
    }
}
