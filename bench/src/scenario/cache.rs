//! cache-get and cache-set: through the service, and the same commands sent to
//! Redis directly.

use cachelock::pb::cache::{GetRequest, SetRequest, cache_service_client::CacheServiceClient};
use futures_util::StreamExt;

use super::{Clients, Conn, VALUE};

/// A Set of `key` with a ttl of `seconds`.
fn set_request(key: String, seconds: i64) -> SetRequest {
    SetRequest {
        key,
        value: VALUE.to_vec(),
        ttl: Some(prost_types::Duration { seconds, nanos: 0 }),
        condition: 0,
        lease_token: String::new(),
        stale_ttl: None,
        fence: None,
    }
}

/// A Get of `key`, which must be found.
pub(crate) async fn get(channel: Conn, key: String) -> Result<(), String> {
    let found = CacheServiceClient::new(channel)
        .get(GetRequest { key })
        .await
        .map_err(|status| status.to_string())?
        .into_inner()
        .found;
    if found { Ok(()) } else { Err("cache miss".to_owned()) }
}

/// A Set of `key`.
pub(crate) async fn set(channel: Conn, key: String) -> Result<(), String> {
    CacheServiceClient::new(channel)
        .set(set_request(key, 600))
        .await
        .map(|_| ())
        .map_err(|status| status.to_string())
}

/// The Redis GET a Get sends.
pub(crate) async fn get_direct(clients: &Clients, key: &str) -> Result<(), String> {
    let mut conn = clients.redis.clone();
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(clients.keys.cache(key))
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    value.map(|_| ()).ok_or_else(|| "miss".to_owned())
}

/// The Redis SET a Set sends.
pub(crate) async fn set_direct(clients: &Clients, key: &str) -> Result<(), String> {
    let mut conn = clients.redis.clone();
    redis::cmd("SET")
        .arg(clients.keys.cache(key))
        .arg(&VALUE[..])
        .arg("PX")
        .arg(600_000)
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

/// Sets every key of the key space, for cache-get. One Set per key, 64 at a
/// time: a SetMany would put them in one Cluster slot.
pub(crate) async fn fill(clients: &Clients) -> Result<(), String> {
    let cache = CacheServiceClient::new(clients.channel(0));
    let results: Vec<Result<(), String>> = futures_util::stream::iter(0..clients.key_space)
        .map(|k| {
            let mut cache = cache.clone();
            async move {
                cache
                    .set(set_request(format!("bench:{k}"), 3600))
                    .await
                    .map(|_| ())
                    .map_err(|status| status.to_string())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect()
}
