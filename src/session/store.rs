//! The session service's Redis side. Get, Touch, Update and Delete are one
//! command each; Create is one, plus one more when it ends the user's least
//! recently used sessions beyond the limit; Rotate, ListUserSessions and
//! DeleteUserSessions first read (the user id, or the user's index) and then
//! act, in scripts that check again what they read.

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio::time::Instant;

use super::id::{SessionId, routing_tag};
use crate::{
    error::Error,
    fence::{self, FENCED_REMOVE, Fenced},
    redis::{KeySpace, LuaScript, Op, Redis},
};

static CREATE: LuaScript = LuaScript::new("session_create", include_str!("../scripts/session_create.lua"));
static EVICT: LuaScript = LuaScript::new("session_evict", include_str!("../scripts/session_evict.lua"));
static READ: LuaScript = LuaScript::new("session_read", include_str!("../scripts/session_read.lua"));
static TOUCH: LuaScript = LuaScript::new("session_touch", include_str!("../scripts/session_touch.lua"));
static UPDATE: LuaScript = LuaScript::new("session_update", include_str!("../scripts/session_update.lua"));
static ROTATE: LuaScript = LuaScript::new("session_rotate", include_str!("../scripts/session_rotate.lua"));
static INDEX: LuaScript = LuaScript::new("session_index", include_str!("../scripts/session_index.lua"));
static END: LuaScript = LuaScript::new("session_end", include_str!("../scripts/session_end.lua"));

/// How many times "log out everywhere" re-reads the index for sessions created
/// while it ran.
const DELETE_USER_ROUNDS: usize = 3;
/// Sessions ended per script call, so that no call holds Redis for long.
const END_CHUNK: usize = 256;
/// What ListUserSessions reads of each session: everything but the attributes.
const LISTED_FIELDS: [&str; 10] = [
    "uid", "created", "accessed", "idle", "absexp", "ver", "dev", "ip", "ua", "hd",
];

/// The session service's scripts, for loading into Redis ahead of the first request.
pub fn scripts() -> [&'static LuaScript; 8] {
    [&CREATE, &EVICT, &READ, &TOUCH, &UPDATE, &ROTATE, &INDEX, &END]
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
    /// The handle: a name for the session that is not a secret.
    pub handle: String,
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
                "hd" => session.handle = value,
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
    /// The session's handle.
    pub handle: &'a str,
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

/// A session just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The session.
    pub session: StoredSession,
    /// How many of the user's least recently used sessions were ended to stay
    /// within the limit of sessions per user.
    pub ended: u32,
}

/// Sessions in Redis, under keys from [`KeySpace::session`] and [`KeySpace::session_index`].
#[derive(Clone)]
pub struct SessionStore {
    redis: Redis,
}

impl SessionStore {
    /// A store on the shared connections.
    pub fn new(redis: Redis) -> SessionStore {
        SessionStore { redis }
    }

    /// Stores a new session under `id`, then ends the user's least recently used
    /// sessions beyond `max_per_user`.
    ///
    /// # Errors
    /// [`Error::Internal`] if the id is another user's (never, with 128 random
    /// bits); Redis failures and timeouts, as [`Error`]. Sent again after a lost
    /// connection: the fresh id makes a repeated Create find its own session.
    pub async fn create(
        &self,
        space: &KeySpace,
        id: &SessionId,
        new: &NewSession<'_>,
        max_per_user: usize,
        deadline: Instant,
    ) -> Result<Created, Error> {
        let index = space.session_index(id.tag(), new.user_id);
        let mut invocation = CREATE.prepare();
        invocation
            .key(space.session(id.tag(), id.member()))
            .key(&index)
            .arg(id.member())
            .arg(new.user_id)
            .arg(new.idle_ms)
            .arg(new.absolute_ms)
            .arg(new.device_label)
            .arg(new.ip)
            .arg(new.user_agent)
            .arg(new.handle);
        for (name, value) in new.attributes {
            invocation.arg(name).arg(value);
        }
        let (count, fields): (i64, Vec<(String, String)>) = self
            .redis
            .run(Op::replayable(CREATE.name()), deadline, &invocation)
            .await?;
        let session = StoredSession::from_fields(fields)
            .ok_or_else(|| Error::Internal("a freshly generated session id was taken".to_owned()))?;
        let mut ended = 0;
        if usize::try_from(count).unwrap_or(0) > max_per_user {
            ended = self.evict(space, id, &index, max_per_user, deadline).await?;
        }
        Ok(Created { session, ended })
    }

    /// Ends the least recently used sessions of the index beyond `max`, never `keep`.
    async fn evict(
        &self,
        space: &KeySpace,
        keep: &SessionId,
        index: &str,
        max: usize,
        deadline: Instant,
    ) -> Result<u32, Error> {
        let mut listing = INDEX.prepare();
        listing.key(index);
        let members: Vec<String> = self.redis.run(Op::idempotent(INDEX.name()), deadline, &listing).await?;
        let mut invocation = EVICT.prepare();
        invocation.key(index);
        for member in &members {
            invocation.key(space.session(keep.tag(), member));
        }
        invocation.arg(max).arg(keep.member());
        for member in &members {
            invocation.arg(member);
        }
        let ended: Vec<String> = self
            .redis
            .run(Op::idempotent(EVICT.name()), deadline, &invocation)
            .await?;
        Ok(u32::try_from(ended.len()).unwrap_or(u32::MAX))
    }

    /// Reads a session; with `touch`, slides its idle expiry first.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn get(
        &self,
        space: &KeySpace,
        id: &SessionId,
        touch: bool,
        deadline: Instant,
    ) -> Result<Option<StoredSession>, Error> {
        let (script, op) = if touch {
            (&TOUCH, Op::idempotent(TOUCH.name()))
        } else {
            (&READ, Op::read(READ.name()))
        };
        let mut invocation = script.prepare();
        invocation.key(space.session(id.tag(), id.member()));
        let fields: Vec<(String, String)> = self.redis.run(op, deadline, &invocation).await?;
        Ok(StoredSession::from_fields(fields))
    }

    /// Sets and removes attributes, if the version is `expected` (when given).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        space: &KeySpace,
        id: &SessionId,
        set: &HashMap<String, String>,
        remove: &[String],
        expected: Option<u64>,
        max_attributes: usize,
        fenced: Option<&Fenced>,
        deadline: Instant,
    ) -> Result<UpdateOutcome, Error> {
        let mut invocation = UPDATE.prepare();
        invocation.key(space.session(id.tag(), id.member()));
        if let Some(fenced) = fenced {
            invocation.key(&fenced.state_key);
        }
        invocation
            .arg(expected.map(|version| version.to_string()).unwrap_or_default())
            .arg(max_attributes)
            .arg(set.len());
        for (name, value) in set {
            invocation.arg(name).arg(value);
        }
        for name in remove {
            invocation.arg(name);
        }
        if let Some(fenced) = fenced {
            invocation.arg(fenced.token);
        }
        let reply: Vec<String> = self.redis.run(Op::write(UPDATE.name()), deadline, &invocation).await?;
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
            "fenced" => return Err(fence::fenced_out(&reply.next().unwrap_or_default())),
            "permits" => return Err(fence::semaphore(&reply.next().unwrap_or_default())),
            _ => UpdateOutcome::Missing,
        })
    }

    /// Deletes a session; returns whether it existed. Its index entry is pruned
    /// when the index is next read.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn delete(
        &self,
        space: &KeySpace,
        id: &SessionId,
        fenced: Option<&Fenced>,
        deadline: Instant,
    ) -> Result<bool, Error> {
        let key = space.session(id.tag(), id.member());
        let Some(fenced) = fenced else {
            let mut command = redis::cmd("UNLINK");
            command.arg(key);
            let deleted: u64 = self.redis.run(Op::write("session_delete"), deadline, &command).await?;
            return Ok(deleted > 0);
        };
        let mut invocation = FENCED_REMOVE.prepare();
        invocation
            .key(&fenced.state_key)
            .key(key)
            .arg(fenced.token)
            .arg("delete")
            .arg(1);
        let (code, result, _): (i64, redis::Value, u64) = self
            .redis
            .run(Op::write(FENCED_REMOVE.name()), deadline, &invocation)
            .await?;
        let detail = redis::from_redis_value::<String>(result.clone()).unwrap_or_default();
        if let Some(refused) = fence::refusal(code, &detail) {
            return Err(refused);
        }
        Ok(redis::from_redis_value::<u64>(result).unwrap_or_default() > 0)
    }

    /// Refuses, on a Cluster, a fence whose lock is not in the slot of the session `id`.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `fence.lock`.
    pub fn fence_reaches(&self, space: &KeySpace, fenced: &Fenced, id: &SessionId) -> Result<(), Error> {
        fenced.co_located(&self.redis, &[space.session(id.tag(), id.member())], &["the session"])
    }

    /// Moves a session from `old` to `new`; `Ok(None)` when `old` is unknown.
    ///
    /// # Errors
    /// [`Error::Internal`] when `new` is taken (retry with another id); Redis
    /// failures and timeouts, as [`Error`].
    pub async fn rotate(
        &self,
        space: &KeySpace,
        old: &SessionId,
        new: &SessionId,
        deadline: Instant,
    ) -> Result<Option<StoredSession>, Error> {
        let old_key = space.session(old.tag(), old.member());
        let mut lookup = redis::cmd("HGET");
        lookup.arg(&old_key).arg("uid");
        let user_id: Option<String> = self.redis.run(Op::read("session_owner"), deadline, &lookup).await?;
        let Some(user_id) = user_id else {
            return Ok(None);
        };
        // The script checks the user id again, in case the session changed in between.
        let mut invocation = ROTATE.prepare();
        invocation
            .key(&old_key)
            .key(space.session(new.tag(), new.member()))
            .key(space.session_index(old.tag(), &user_id))
            .arg(old.member())
            .arg(new.member())
            .arg(&user_id);
        let reply: Vec<String> = self
            .redis
            .run(Op::replayable(ROTATE.name()), deadline, &invocation)
            .await?;
        if reply.first().is_some_and(|status| status == "taken") {
            return Err(Error::Internal("a freshly generated session id was taken".to_owned()));
        }
        Ok(StoredSession::from_fields(pairs(reply)))
    }

    /// Every live session of `user_id`, newest first, without attributes; prunes
    /// index entries of sessions that are gone.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn list(&self, space: &KeySpace, user_id: &str, deadline: Instant) -> Result<Vec<StoredSession>, Error> {
        let tag = routing_tag(user_id);
        let index = space.session_index(&tag, user_id);
        let mut listing = INDEX.prepare();
        listing.key(&index);
        let members: Vec<String> = self.redis.run(Op::idempotent(INDEX.name()), deadline, &listing).await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        // The listing carries what a "your devices" page shows, never the
        // attributes: its size stays bounded (about 2 KiB a session) whatever
        // the sessions hold, and it cannot leak what they hold.
        let mut reads = redis::pipe();
        for member in &members {
            reads
                .cmd("HMGET")
                .arg(space.session(&tag, member))
                .arg(&LISTED_FIELDS[..]);
        }
        let rows: Vec<Vec<Option<String>>> = self.redis.run(Op::read("session_list"), deadline, &reads).await?;
        let mut sessions = Vec::with_capacity(members.len());
        let mut gone = Vec::new();
        for (member, values) in members.into_iter().zip(rows) {
            let fields = LISTED_FIELDS
                .iter()
                .zip(values)
                .filter_map(|(name, value)| value.map(|value| ((*name).to_owned(), value)));
            match StoredSession::from_fields(fields) {
                Some(session) if session.user_id == user_id => sessions.push(session),
                _ => gone.push(member),
            }
        }
        if !gone.is_empty() {
            let mut prune = redis::cmd("ZREM");
            prune.arg(&index).arg(&gone);
            let _: u64 = self
                .redis
                .run(Op::idempotent("session_prune"), deadline, &prune)
                .await?;
        }
        sessions.sort_by_key(|session| std::cmp::Reverse(session.created_ms));
        Ok(sessions)
    }

    /// Ends the session of `user_id` whose handle is `handle`; returns whether there was one.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn delete_by_handle(
        &self,
        space: &KeySpace,
        user_id: &str,
        handle: &str,
        deadline: Instant,
    ) -> Result<bool, Error> {
        let tag = routing_tag(user_id);
        let index = space.session_index(&tag, user_id);
        let mut listing = INDEX.prepare();
        listing.key(&index);
        let members: Vec<String> = self.redis.run(Op::idempotent(INDEX.name()), deadline, &listing).await?;
        if members.is_empty() {
            return Ok(false);
        }
        let mut reads = redis::pipe();
        for member in &members {
            reads.cmd("HMGET").arg(space.session(&tag, member)).arg("hd").arg("uid");
        }
        let rows: Vec<(Option<String>, Option<String>)> =
            self.redis.run(Op::read("session_handles"), deadline, &reads).await?;
        let Some(member) = members.iter().zip(rows).find_map(|(member, (found, owner))| {
            (found.as_deref() == Some(handle) && owner.as_deref() == Some(user_id)).then_some(member)
        }) else {
            return Ok(false);
        };
        let mut invocation = END.prepare();
        invocation.key(&index).key(space.session(&tag, member)).arg(member);
        let ended: u64 = self.redis.run(Op::write(END.name()), deadline, &invocation).await?;
        Ok(ended > 0)
    }

    /// Ends every session of `user_id` but `except`; returns how many it ended.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]. Sessions are ended in chunks,
    /// each atomic with its index entries, so a failure part way leaves every
    /// session either ended and unlisted or alive and listed.
    pub async fn delete_user(
        &self,
        space: &KeySpace,
        user_id: &str,
        except: Option<&SessionId>,
        deadline: Instant,
    ) -> Result<u64, Error> {
        let tag = routing_tag(user_id);
        let index = space.session_index(&tag, user_id);
        let keep: HashSet<&str> = except.map(SessionId::member).into_iter().collect();
        let mut ended = 0;
        // A session created while this runs is caught by the next round.
        for _ in 0..DELETE_USER_ROUNDS {
            let mut listing = INDEX.prepare();
            listing.key(&index);
            let members: Vec<String> = self.redis.run(Op::idempotent(INDEX.name()), deadline, &listing).await?;
            let doomed: Vec<&String> = members
                .iter()
                .filter(|member| !keep.contains(member.as_str()))
                .collect();
            if doomed.is_empty() {
                break;
            }
            for chunk in doomed.chunks(END_CHUNK) {
                let mut invocation = END.prepare();
                invocation.key(&index);
                for member in chunk {
                    invocation.key(space.session(&tag, member));
                }
                for member in chunk {
                    invocation.arg(member.as_str());
                }
                let count: u64 = self.redis.run(Op::write(END.name()), deadline, &invocation).await?;
                ended += count;
            }
        }
        Ok(ended)
    }
}
