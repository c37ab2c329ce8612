//! The cache: byte values under string keys, and a fill that runs once in the
//! whole fleet when a key is missing.

use std::{collections::HashMap, future::Future, time::Duration};

use bytes::Bytes;

use crate::{
    Client, Error, Fence,
    client::Idempotent,
    pb::cache::{self as pb, cache_service_client::CacheServiceClient},
    time::to_proto,
};

/// When a [`Cache::set_with`] may store its value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Condition {
    /// Whether or not the key exists.
    #[default]
    Always,
    /// Only if the key does not exist yet.
    IfAbsent,
    /// Only if the key exists already.
    IfPresent,
}

/// How [`Cache::set_with`] stores a value.
#[derive(Clone, Debug, Default)]
pub struct SetOptions {
    /// How long to keep the value; `None`: the service's default.
    pub ttl: Option<Duration>,
    /// When to store it.
    pub condition: Condition,
    /// How long to keep a stale copy after `ttl`, for GetOrLease callers while
    /// one of them refills it.
    pub stale_ttl: Option<Duration>,
}

/// How [`Cache::get_or_fill`] reads and fills a key.
#[derive(Clone, Debug)]
pub struct FillOptions {
    /// How long the filled value lives.
    pub ttl: Duration,
    /// How long the filler may take before the lease passes to the next caller.
    pub lease_ttl: Duration,
    /// How long to wait for another caller's fill; `None`: `lease_ttl`, so that a
    /// filler that dies is replaced before the waiters give up.
    pub wait: Option<Duration>,
    /// How long to keep a stale copy after `ttl`.
    pub stale_ttl: Option<Duration>,
    /// Refill early when less than this fraction of `ttl` is left (0: never).
    pub refresh_ahead: f64,
}

impl FillOptions {
    /// A value filled to live `ttl`, with a 10 s fill lease.
    pub fn new(ttl: Duration) -> FillOptions {
        FillOptions {
            ttl,
            lease_ttl: Duration::from_secs(10),
            wait: None,
            stale_ttl: None,
            refresh_ahead: 0.0,
        }
    }
}

/// Why [`Cache::get_or_fill`] failed: the cache, or the fill.
#[derive(Debug)]
pub enum FillError<E> {
    /// cachelock refused or failed.
    Cache(Error),
    /// The fill function failed; nothing was stored.
    Fill(E),
}

impl<E: std::fmt::Display> std::fmt::Display for FillError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillError::Cache(error) => write!(f, "cache: {error}"),
            FillError::Fill(error) => write!(f, "fill: {error}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for FillError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FillError::Cache(error) => Some(error),
            FillError::Fill(error) => Some(error),
        }
    }
}

/// The cache's calls. Get one from [`Client::cache`].
#[derive(Clone, Debug)]
pub struct Cache {
    client: Client,
    fence: Option<Fence>,
}

impl Client {
    /// The cache.
    pub fn cache(&self) -> Cache {
        Cache {
            client: self.clone(),
            fence: None,
        }
    }
}

impl Cache {
    /// The same cache, with every write (set, set_many, delete, take,
    /// increment, expire) fenced by `fence`: applied only while no grant of its
    /// lock is newer, else refused with [`crate::Reason::FencedOut`] and nothing
    /// changed. Take the fence from [`crate::Lease::fence`] or [`crate::Grant::fence`].
    #[must_use]
    pub fn fenced(&self, fence: Fence) -> Cache {
        Cache {
            client: self.client.clone(),
            fence: Some(fence),
        }
    }

    fn stub(&self) -> CacheServiceClient<tonic::transport::Channel> {
        CacheServiceClient::new(self.client.channel.clone())
    }

    /// The value of `key`, or `None` when it is missing.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with, after the retries the policy allows.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let request = pb::GetRequest { key: key.to_owned() };
        let answer = self
            .client
            .unary("cache.Get", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.get(r).await }
            })
            .await?;
        Ok(answer.found.then_some(answer.value))
    }

    /// The values of `keys` that exist, read in one round trip.
    ///
    /// # Errors
    /// As [`Cache::get`].
    pub async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Bytes>, Error> {
        let request = pb::GetManyRequest {
            keys: keys.iter().map(|key| (*key).to_owned()).collect(),
        };
        let answer = self
            .client
            .unary("cache.GetMany", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.get_many(r).await }
            })
            .await?;
        Ok(answer
            .entries
            .into_iter()
            .filter(|entry| entry.found)
            .map(|entry| (entry.key, entry.value))
            .collect())
    }

    /// Stores `value` under `key` for `ttl` (`None`: the service's default).
    ///
    /// # Errors
    /// As [`Cache::get`].
    pub async fn set(&self, key: &str, value: impl Into<Bytes>, ttl: Option<Duration>) -> Result<(), Error> {
        let options = SetOptions {
            ttl,
            ..SetOptions::default()
        };
        self.set_with(key, value, &options).await.map(|_| ())
    }

    /// Stores `value` under `key` as `options` say; whether it was stored.
    ///
    /// # Errors
    /// As [`Cache::get`].
    pub async fn set_with(&self, key: &str, value: impl Into<Bytes>, options: &SetOptions) -> Result<bool, Error> {
        let condition = match options.condition {
            Condition::Always => pb::SetCondition::Always,
            Condition::IfAbsent => pb::SetCondition::IfAbsent,
            Condition::IfPresent => pb::SetCondition::IfPresent,
        };
        let request = pb::SetRequest {
            key: key.to_owned(),
            value: value.into(),
            ttl: options.ttl.map(to_proto),
            condition: condition.into(),
            lease_token: String::new(),
            stale_ttl: options.stale_ttl.map(to_proto),
            fence: self.fence.clone(),
        };
        self.send_set(request).await
    }

    async fn send_set(&self, request: pb::SetRequest) -> Result<bool, Error> {
        let answer = self
            .client
            .unary("cache.Set", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.set(r).await }
            })
            .await?;
        Ok(answer.stored)
    }

    /// Stores every `(key, value)` for `ttl`, all or none; how many were stored.
    ///
    /// # Errors
    /// As [`Cache::get`].
    pub async fn set_many(&self, entries: &[(&str, Bytes)], ttl: Option<Duration>) -> Result<u32, Error> {
        let request = pb::SetManyRequest {
            entries: entries
                .iter()
                .map(|(key, value)| pb::SetEntry {
                    key: (*key).to_owned(),
                    value: value.clone(),
                    ttl: ttl.map(to_proto),
                })
                .collect(),
            fence: self.fence.clone(),
        };
        let answer = self
            .client
            .unary("cache.SetMany", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.set_many(r).await }
            })
            .await?;
        Ok(answer.stored)
    }

    /// Removes `keys`; how many of them existed.
    ///
    /// # Errors
    /// As [`Cache::get`].
    pub async fn delete(&self, keys: &[&str]) -> Result<u32, Error> {
        let request = pb::DeleteRequest {
            keys: keys.iter().map(|key| (*key).to_owned()).collect(),
            fence: self.fence.clone(),
        };
        let answer = self
            .client
            .unary("cache.Delete", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.delete(r).await }
            })
            .await?;
        Ok(answer.deleted)
    }

    /// Reads and deletes `key` in one step: exactly one caller receives a value.
    /// Never repeated by the library: a repeat could lose the value.
    ///
    /// # Errors
    /// As [`Cache::get`], without retries.
    pub async fn take(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let request = pb::TakeRequest {
            key: key.to_owned(),
            fence: self.fence.clone(),
        };
        let answer = self
            .client
            .unary("cache.Take", Idempotent::No, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.take(r).await }
            })
            .await?;
        Ok(answer.found.then_some(answer.value))
    }

    /// Adds `delta` to the counter `key` (created at 0 to live `ttl`); the new
    /// value. Never repeated by the library: a repeat could count twice.
    ///
    /// # Errors
    /// As [`Cache::get`], without retries; [`crate::Reason::NotAnInteger`],
    /// [`crate::Reason::IntegerOverflow`].
    pub async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, Error> {
        let request = pb::IncrementRequest {
            key: key.to_owned(),
            delta,
            ttl: ttl.map(to_proto),
            fence: self.fence.clone(),
        };
        let answer = self
            .client
            .unary("cache.Increment", Idempotent::No, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.increment(r).await }
            })
            .await?;
        Ok(answer.value)
    }

    /// Gives `key` a new time to live; whether it existed.
    ///
    /// # Errors
    /// As [`Cache::get`].
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, Error> {
        let request = pb::ExpireRequest {
            key: key.to_owned(),
            ttl: Some(to_proto(ttl)),
            fence: self.fence.clone(),
        };
        let answer = self
            .client
            .unary("cache.Expire", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.expire(r).await }
            })
            .await?;
        Ok(answer.found)
    }

    /// The value of `key`; when it is missing, exactly one caller in the fleet
    /// runs `fill` and stores its result while every other caller waits in the
    /// server for that value. When the wait ends with no fill, this caller runs
    /// `fill` itself and stores nothing.
    ///
    /// # Errors
    /// [`FillError::Fill`] when `fill` fails (nothing is stored, and the next
    /// caller gets the lease); [`FillError::Cache`] when cachelock fails.
    pub async fn get_or_fill<F, Fut, E>(&self, key: &str, options: &FillOptions, fill: F) -> Result<Bytes, FillError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let wait = options.wait.unwrap_or(options.lease_ttl);
        let request = pb::GetOrLeaseRequest {
            key: key.to_owned(),
            lease_ttl: Some(to_proto(options.lease_ttl)),
            wait: Some(to_proto(wait)),
            refresh_ahead: options.refresh_ahead,
        };
        let answer = self
            .client
            .unary("cache.GetOrLease", Idempotent::No, wait, request, |r| {
                let mut stub = self.stub();
                async move { stub.get_or_lease(r).await }
            })
            .await
            .map_err(FillError::Cache)?;
        let outcome = pb::LeaseOutcome::try_from(answer.outcome).unwrap_or(pb::LeaseOutcome::Unspecified);
        match outcome {
            // A lease on a hit asks this caller to refresh ahead; the value serves meanwhile.
            pb::LeaseOutcome::Hit | pb::LeaseOutcome::Stale if answer.lease_token.is_empty() => Ok(answer.value),
            pb::LeaseOutcome::Hit | pb::LeaseOutcome::Lease => {
                let value = fill().await.map_err(FillError::Fill)?;
                let request = pb::SetRequest {
                    key: key.to_owned(),
                    value: value.clone(),
                    ttl: Some(to_proto(options.ttl)),
                    condition: pb::SetCondition::Always.into(),
                    lease_token: answer.lease_token,
                    stale_ttl: options.stale_ttl.map(to_proto),
                    fence: None,
                };
                self.send_set(request).await.map_err(FillError::Cache)?;
                Ok(value)
            }
            pb::LeaseOutcome::Stale | pb::LeaseOutcome::Miss | pb::LeaseOutcome::Unspecified => {
                fill().await.map_err(FillError::Fill)
            }
        }
    }
}
