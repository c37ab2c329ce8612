//! The session service's Redis side. Create, Get, Touch, Update and Delete are
//! one command each; Rotate, ListUserSessions and DeleteUserSessions first read
//! (the user id, or the user's index) and then change things in one script.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::LazyLock,
    time::Duration,
};

use redis::Script;

use super::id::{SessionId, routing_tag};
use crate::{
    error::{Effect, Error},
    redis::{Keys, Redis, bounded},
};

static CREATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/session_create.lua")));
static READ: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/session_read.lua")));
static TOUCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/session_touch.lua")));
static UPDATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/session_update.lua")));
static ROTATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/session_rotate.lua")));
static INDEX: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/session_index.lua")));
static END: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/session_end.lua")));

/// How many times "log out everywhere" re-reads the index for sessions created
/// while it ran.
const DELETE_USER_ROUNDS: usize = 3;

/// The session service's scripts, for loading into Redis ahead of the first request.
pub fn scripts() -> [&'static Script; 7] {
    [&CREATE, &READ, &TOUCH, &UPDATE, &ROTATE, &INDEX, &END]
}

/// A session as stored (times in milliseconds since the epoch, by the Redis clock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSession {
    /// The user.
    pub user_id: String,
    /// The attributes.
    pub attributes: BTreeMap<String, String>,
    /// Device label.
    pub device_label: String,
    /// Client IP.
    pub ip: String,
    /// Client user agent.
    pub user_agent: String,
    /// Creation time.
    pub created_ms: i64,
    /// Last access time.
    pub accessed_ms: i64,
    /// Idle timeout.
    pub idle_ms: i64,
    /// Absolute expiry time.
    pub absolute_expiry_ms: i64,
    /// Version.
    pub version: u64,
}

impl StoredSession {
    /// When it expires unless touched.
    pub fn expiry_ms(&self) -> i64 {
        (self.accessed_ms + self.idle_ms).min(self.absolute_expiry_ms)
    }

    /// Reads a hash as HGETALL returns it; `None` for an empty (missing) one.
    fn from_fields(fields: impl IntoIterator<Item = (String, String)>) -> Option<StoredSession> {
        let mut session = StoredSession::default();
        let mut any = false;
        for (field, value) in fields {
            any = true;
            let number = || value.parse::<i64>().unwrap_or(0);
            match field.as_str() {
                "uid" => session.user_id = value,
                "dev" => session.device_label = value,
                "ip" => session.ip = value,
                "ua" => session.user_agent = value,
                "created" => session.created_ms = number(),
                "accessed" => session.accessed_ms = number(),
                "idle" => session.idle_ms = number(),
                "absexp" => session.absolute_expiry_ms = number(),
                "ver" => session.version = value.parse().unwrap_or(0),
                _ => {
                    if let Some(name) = field.strip_prefix("a:") {
                        session.attributes.insert(name.to_owned(), value);
                    }
                }
            }
        }
        any.then_some(session)
    }
}

fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    let mut values = flat.into_iter();
    let mut pairs = Vec::with_capacity(values.len() / 2);
    while let (Some(field), Some(value)) = (values.next(), values.next()) {
        pairs.push((field, value));
    }
    pairs
}

/// What a new session is made of.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    /// The user.
    pub user_id: &'a str,
    /// Idle timeout in milliseconds.
    pub idle_ms: u64,
    /// Absolute timeout in milliseconds.
    pub absolute_ms: u64,
    /// Device label.
    pub device_label: &'a str,
    /// Client IP.
    pub ip: &'a str,
    /// Client user agent.
    pub user_agent: &'a str,
    /// Initial attributes.
    pub attributes: &'a HashMap<String, String>,
}

/// The result of an Update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Applied; the session after it.
    Updated(StoredSession),
    /// No such session.
    Missing,
    /// The version was not the expected one; it is this one.
    Stale(u64),
    /// The session would hold this many attributes, above the limit.
    Full(u64),
}

/// Sessions in Redis, under keys from [`Keys::session`] and [`Keys::session_index`].
#[derive(Clone)]
pub struct SessionStore {
    redis: Redis,
    keys: Keys,
}

impl SessionStore {
    /// A store on the shared connection.
    pub fn new(redis: Redis, keys: Keys) -> SessionStore {
        SessionStore { redis, keys }
    }

    fn key(&self, id: &SessionId) -> String {
        self.keys.session(id.tag(), id.member())
    }

    /// Stores a new session under `id`; `None` if the id is taken (retry with another).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn create(
        &self,
        id: &SessionId,
        new: &NewSession<'_>,
        budget: Duration,
    ) -> Result<Option<StoredSession>, Error> {
        let mut invocation = CREATE.prepare_invoke();
        invocation
            .key(self.key(id))
            .key(self.keys.session_index(id.tag(), new.user_id))
            .arg(id.member())
            .arg(new.user_id)
            .arg(new.idle_ms)
            .arg(new.absolute_ms)
            .arg(new.device_label)
            .arg(new.ip)
            .arg(new.user_agent);
        for (name, value) in new.attributes {
            invocation.arg(name).arg(value);
        }
        let mut conn = self.redis.connection();
        let fields: Vec<(String, String)> =
            bounded(budget, Effect::NotIdempotent, invocation.invoke_async(&mut conn)).await?;
        Ok(StoredSession::from_fields(fields))
    }

    /// Reads a session; with `touch`, slides its idle expiry first.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn get(&self, id: &SessionId, touch: bool, budget: Duration) -> Result<Option<StoredSession>, Error> {
        let script: &Script = if touch { &TOUCH } else { &READ };
        let mut conn = self.redis.connection();
        let fields: Vec<(String, String)> = bounded(
            budget,
            Effect::Idempotent,
            script.key(self.key(id)).invoke_async(&mut conn),
        )
        .await?;
        Ok(StoredSession::from_fields(fields))
    }

    /// Sets and removes attributes, if the version is `expected` (when given).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn update(
        &self,
        id: &SessionId,
        set: &HashMap<String, String>,
        remove: &[String],
        expected: Option<u64>,
        max_attributes: usize,
        budget: Duration,
    ) -> Result<UpdateOutcome, Error> {
        let mut invocation = UPDATE.prepare_invoke();
        invocation
            .key(self.key(id))
            .arg(expected.map(|version| version.to_string()).unwrap_or_default())
            .arg(max_attributes)
            .arg(set.len());
        for (name, value) in set {
            invocation.arg(name).arg(value);
        }
        for name in remove {
            invocation.arg(name);
        }
        let mut conn = self.redis.connection();
        let reply: Vec<String> = bounded(budget, Effect::NotIdempotent, invocation.invoke_async(&mut conn)).await?;
        let mut reply = reply.into_iter();
        let status = reply.next().unwrap_or_default();
        let number = |value: Option<String>| value.and_then(|value| value.parse().ok()).unwrap_or(0);
        Ok(match status.as_str() {
            "ok" => match StoredSession::from_fields(pairs(reply.collect())) {
                Some(session) => UpdateOutcome::Updated(session),
                None => UpdateOutcome::Missing,
            },
            "stale" => UpdateOutcome::Stale(number(reply.next())),
            "full" => UpdateOutcome::Full(number(reply.next())),
            _ => UpdateOutcome::Missing,
        })
    }

    /// Deletes a session; returns whether it existed. Its index entry is pruned
    /// when the index is next read.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn delete(&self, id: &SessionId, budget: Duration) -> Result<bool, Error> {
        let mut conn = self.redis.connection();
        let mut command = redis::cmd("UNLINK");
        command.arg(self.key(id));
        let deleted: u64 = bounded(budget, Effect::Idempotent, command.query_async(&mut conn)).await?;
        Ok(deleted > 0)
    }

    /// Moves a session from `old` to `new`; `Ok(None)` when `old` is unknown.
    ///
    /// # Errors
    /// [`Error::Internal`] when `new` is taken (retry with another id); Redis
    /// failures and timeouts, as [`Error`].
    pub async fn rotate(
        &self,
        old: &SessionId,
        new: &SessionId,
        budget: Duration,
    ) -> Result<Option<StoredSession>, Error> {
        let mut conn = self.redis.connection();
        let rotation = async {
            let user_id: Option<String> = redis::cmd("HGET")
                .arg(self.key(old))
                .arg("uid")
                .query_async(&mut conn)
                .await?;
            let Some(user_id) = user_id else {
                return Ok(None);
            };
            // The script checks the user id again, in case the session changed in between.
            let reply: Vec<String> = ROTATE
                .key(self.key(old))
                .key(self.key(new))
                .key(self.keys.session_index(old.tag(), &user_id))
                .arg(old.member())
                .arg(new.member())
                .arg(&user_id)
                .invoke_async(&mut conn)
                .await?;
            Ok(Some(reply))
        };
        match bounded(budget, Effect::NotIdempotent, rotation).await? {
            None => Ok(None),
            Some(reply) if reply.first().is_some_and(|status| status == "taken") => {
                Err(Error::Internal("a freshly generated session id was taken".to_owned()))
            }
            Some(reply) => Ok(StoredSession::from_fields(pairs(reply))),
        }
    }

    /// Every live session of `user_id`, newest first; prunes index entries of
    /// sessions that are gone.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn list(&self, user_id: &str, budget: Duration) -> Result<Vec<(SessionId, StoredSession)>, Error> {
        let tag = routing_tag(user_id);
        let index = self.keys.session_index(&tag, user_id);
        let mut conn = self.redis.connection();
        let listing = async {
            let members: Vec<String> = INDEX.key(&index).invoke_async(&mut conn).await?;
            if members.is_empty() {
                return Ok(Vec::new());
            }
            let mut reads = redis::pipe();
            for member in &members {
                reads.cmd("HGETALL").arg(self.keys.session(&tag, member));
            }
            let hashes: Vec<Vec<(String, String)>> = reads.query_async(&mut conn).await?;
            let mut live = Vec::with_capacity(members.len());
            let mut gone = Vec::new();
            for (member, fields) in members.into_iter().zip(hashes) {
                match StoredSession::from_fields(fields) {
                    Some(session) if session.user_id == user_id => live.push((member, session)),
                    _ => gone.push(member),
                }
            }
            if !gone.is_empty() {
                let _: u64 = redis::cmd("ZREM").arg(&index).arg(&gone).query_async(&mut conn).await?;
            }
            Ok(live)
        };
        let live = bounded(budget, Effect::Idempotent, listing).await?;
        let mut sessions: Vec<(SessionId, StoredSession)> = live
            .into_iter()
            .map(|(member, session)| {
                let id = SessionId::from_parts(&tag, member);
                (id, session)
            })
            .collect();
        sessions.sort_by_key(|(_, session)| std::cmp::Reverse(session.created_ms));
        Ok(sessions)
    }

    /// Ends every session of `user_id` but `except`; returns how many it ended.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn delete_user(&self, user_id: &str, except: Option<&SessionId>, budget: Duration) -> Result<u64, Error> {
        let tag = routing_tag(user_id);
        let index = self.keys.session_index(&tag, user_id);
        let keep: HashSet<&str> = except.map(SessionId::member).into_iter().collect();
        let mut conn = self.redis.connection();
        let ending = async {
            let mut ended = 0;
            // A session created while this runs is caught by the next round.
            for _ in 0..DELETE_USER_ROUNDS {
                let members: Vec<String> = INDEX.key(&index).invoke_async(&mut conn).await?;
                let doomed: Vec<&String> = members
                    .iter()
                    .filter(|member| !keep.contains(member.as_str()))
                    .collect();
                if doomed.is_empty() {
                    break;
                }
                let mut invocation = END.prepare_invoke();
                invocation.key(&index);
                for member in &doomed {
                    invocation.key(self.keys.session(&tag, member));
                }
                for member in &doomed {
                    invocation.arg(member.as_str());
                }
                let count: u64 = invocation.invoke_async(&mut conn).await?;
                ended += count;
            }
            Ok(ended)
        };
        bounded(budget, Effect::Idempotent, ending).await
    }
}
