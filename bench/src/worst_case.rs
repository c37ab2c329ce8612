//! `--batch-worst-case`: every batch RPC once at the service's default limits,
//! and the time Redis spent on it (from SLOWLOG): the worst a single request can
//! cost Redis, whom every other client waits for meanwhile.

use std::collections::HashMap;

use cachelock::{
    Config,
    pb::{
        cache::{DeleteRequest, GetManyRequest, SetEntry, SetManyRequest, cache_service_client::CacheServiceClient},
        ratelimit::{self as rl, CheckManyRequest, Limit, rate_limit_service_client::RateLimitServiceClient},
        session::{
            CreateRequest, DeleteUserSessionsRequest, ListUserSessionsRequest,
            session_service_client::SessionServiceClient,
        },
    },
};
use redis::aio::MultiplexedConnection;

use crate::scenario::Clients;

/// The user whose sessions are measured.
const USER: &str = "worst-user";

/// Redis's SLOWLOG, set to record every command: what each batch cost.
struct Slowlog {
    admin: MultiplexedConnection,
    /// Per RPC: its description, its longest command and all its commands, in µs.
    rows: Vec<(String, u64, u64)>,
}

impl Slowlog {
    /// Records every command from now on.
    async fn start(redis: &redis::Client) -> Result<Slowlog, String> {
        let mut admin = redis
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let mut config = redis::cmd("CONFIG");
        config
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(0)
            .arg("slowlog-max-len")
            .arg(100_000);
        let _: () = config.query_async(&mut admin).await.map_err(|e| e.to_string())?;
        let mut slowlog = Slowlog {
            admin,
            rows: Vec::new(),
        };
        slowlog.reset().await?;
        Ok(slowlog)
    }

    /// Forgets what was recorded.
    async fn reset(&mut self) -> Result<(), String> {
        redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async(&mut self.admin)
            .await
            .map_err(|e| e.to_string())
    }

    /// Takes what was recorded since the last reset as the row of `name`.
    async fn take(&mut self, name: String) -> Result<(), String> {
        // Each entry: id, time, duration in µs, arguments, client address, client name.
        let entries: Vec<Vec<redis::Value>> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query_async(&mut self.admin)
            .await
            .map_err(|e| e.to_string())?;
        let durations: Vec<u64> = entries
            .iter()
            .filter_map(|entry| match entry.get(2) {
                Some(redis::Value::Int(micros)) => u64::try_from(*micros).ok(),
                _ => None,
            })
            .collect();
        let longest = durations.iter().copied().max().unwrap_or(0);
        self.rows.push((name, longest, durations.iter().sum()));
        self.reset().await
    }

    /// Prints the rows. A MULTI/EXEC runs all its commands at once: its total is
    /// how long Redis was held.
    fn print(&self) {
        println!(
            "{:<64} {:>18} {:>16}",
            "batch RPC at the default limits", "longest command µs", "all commands µs"
        );
        for (name, longest, total) in &self.rows {
            println!("{name:<64} {longest:>18} {total:>16}");
        }
    }
}

/// Runs each batch RPC once at the service's default limits and prints what
/// Redis spent on it.
pub(crate) async fn batch_worst_case(clients: &Clients, redis: &redis::Client) -> Result<(), String> {
    // The limits of a service started with no settings: the one the tool starts,
    // in this environment.
    let limits = Config::from_args(["cachelock", "--redis-url", "redis://127.0.0.1"])
        .map_err(|error| format!("the service's default limits: {error}"))?;
    let mut slowlog = Slowlog::start(redis).await?;
    cache_batches(clients, &limits, &mut slowlog).await?;
    session_batches(clients, &limits, &mut slowlog).await?;
    slowlog.print();
    Ok(())
}

/// The largest SetMany a request can carry (`max_batch` values filling
/// `max_request_bytes`), a GetMany of them, then (in between, as the rows have
/// always been ordered) the largest CheckMany, and the Delete.
async fn cache_batches(clients: &Clients, limits: &Config, slowlog: &mut Slowlog) -> Result<(), String> {
    let mut cache = CacheServiceClient::new(clients.channel(0))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let batch = limits.max_batch;
    let value_bytes = (limits.max_request_bytes / batch).saturating_sub(128);
    let size = format!("{} KiB", batch * value_bytes / 1024);
    let keys: Vec<String> = (0..batch).map(|i| format!("worst:{i}")).collect();
    let entries: Vec<SetEntry> = keys
        .iter()
        .map(|key| SetEntry {
            key: key.clone(),
            value: vec![b'x'; value_bytes],
            ttl: None,
        })
        .collect();
    let status = |status: tonic::Status| status.to_string();
    cache
        .set_many(SetManyRequest { entries, fence: None })
        .await
        .map_err(status)?;
    slowlog.take(format!("SetMany: {batch} entries, {size}")).await?;
    cache
        .get_many(GetManyRequest { keys: keys.clone() })
        .await
        .map_err(status)?;
    slowlog.take(format!("GetMany: {batch} keys, {size} of values")).await?;
    check_many(clients, limits, slowlog).await?;
    cache
        .delete(DeleteRequest { keys, fence: None })
        .await
        .map_err(status)?;
    slowlog
        .take(format!("Delete: {batch} keys of {value_bytes} bytes"))
        .await
}

/// The largest CheckMany, its limits spread over the three algorithms.
async fn check_many(clients: &Clients, limits: &Config, slowlog: &mut Slowlog) -> Result<(), String> {
    let algorithms = [
        rl::Algorithm::TokenBucket,
        rl::Algorithm::FixedWindow,
        rl::Algorithm::SlidingWindow,
    ];
    let batch = limits.ratelimit_max_batch;
    let checks: Vec<Limit> = (0..batch)
        .map(|i| Limit {
            key: format!("worst:{i}"),
            limit: 1_000_000,
            period: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            cost: None,
            algorithm: algorithms[i % 3] as i32,
            calendar: None,
            leased: false,
        })
        .collect();
    RateLimitServiceClient::new(clients.channel(0))
        .check_many(CheckManyRequest {
            limits: checks,
            on_unavailable: rl::OutagePolicy::FailClosed as i32,
        })
        .await
        .map_err(|status| status.to_string())?;
    slowlog.take(format!("CheckMany: {batch} limits")).await
}

/// A user at its session limit, each session with the most attributes of the
/// largest size: the Create that ends the least recently used one, the listing
/// and the log-out-everywhere.
async fn session_batches(clients: &Clients, limits: &Config, slowlog: &mut Slowlog) -> Result<(), String> {
    let mut sessions = SessionServiceClient::new(clients.channel(0));
    let attributes: HashMap<String, String> = (0..limits.session_max_attributes)
        .map(|i| (format!("attribute-{i}"), "v".repeat(limits.session_max_attribute_bytes)))
        .collect();
    let create = || CreateRequest {
        user_id: USER.to_owned(),
        attributes: attributes.clone(),
        ..CreateRequest::default()
    };
    let status = |status: tonic::Status| status.to_string();
    let per_user = limits.session_max_per_user;
    for _ in 0..per_user {
        sessions.create(create()).await.map_err(status)?;
    }
    slowlog.reset().await?;
    sessions.create(create()).await.map_err(status)?;
    slowlog
        .take(format!(
            "session Create: {} attributes of {} bytes, ending the LRU of {per_user}",
            limits.session_max_attributes, limits.session_max_attribute_bytes
        ))
        .await?;
    sessions
        .list_user_sessions(ListUserSessionsRequest {
            user_id: USER.to_owned(),
        })
        .await
        .map_err(status)?;
    slowlog.take(format!("ListUserSessions: {per_user} sessions")).await?;
    sessions
        .delete_user_sessions(DeleteUserSessionsRequest {
            user_id: USER.to_owned(),
            except_id: String::new(),
        })
        .await
        .map_err(status)?;
    slowlog.take(format!("DeleteUserSessions: {per_user} sessions")).await
}
