//! lock-acquire-release: an uncontended Acquire, then its Release.

use cachelock::pb::lock::{AcquireRequest, ReleaseRequest, lock_service_client::LockServiceClient};

use super::Conn;

/// Worker `worker`'s `i`-th Acquire and Release: worker w only uses names w,
/// w + W, …, so no two workers contend.
pub(crate) async fn acquire_release(channel: Conn, worker: usize, i: u64) -> Result<(), String> {
    let name = format!("bench:{worker}:{}", i % 64);
    let mut client = LockServiceClient::new(channel);
    let grant = client
        .acquire(AcquireRequest {
            name: name.clone(),
            ttl: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
            ..AcquireRequest::default()
        })
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    if !grant.acquired {
        return Err("lock not acquired".to_owned());
    }
    client
        .release(ReleaseRequest {
            name,
            token: grant.token,
        })
        .await
        .map(|_| ())
        .map_err(|status| status.to_string())
}
