//! `cachelock.cache.v1.CacheService`: validates each request, runs it through
//! [`CacheStore`], and maps the answer.

mod flight;
mod store;

use std::time::Duration;

use tonic::{Request, Response, Status};

pub use store::{CacheStore, Condition, NewEntry, Stored, scripts};

use crate::{
    auth::Caller,
    error::{Error, Reason},
    pb::cache::{
        DeleteRequest, DeleteResponse, Entry, ExpireRequest, ExpireResponse, GetManyRequest, GetManyResponse,
        GetRequest, GetResponse, IncrementRequest, IncrementResponse, SetCondition, SetManyRequest, SetManyResponse,
        SetRequest, SetResponse, TakeRequest, TakeResponse, cache_service_server::CacheService,
    },
    redis::KeySpace,
    request::{Limits, cross_slot, deadline, ttl_from_millis},
    telemetry::{Meter, Metrics},
};

/// Protobuf framing of one GetMany entry besides its key and value: tags,
/// lengths, `found` and the ttl.
const ENTRY_FRAMING_BYTES: usize = 32;

/// The gRPC handlers of the cache.
pub struct CacheApi {
    store: CacheStore,
    flights: flight::Flights<Option<Stored>>,
    meter: Meter,
    limits: Limits,
    operation_timeout: Duration,
}

impl CacheApi {
    /// Handlers over `store`, checking requests against `limits`.
    pub fn new(store: CacheStore, limits: Limits, operation_timeout: Duration, meter: Meter) -> CacheApi {
        CacheApi {
            store,
            flights: flight::Flights::new(),
            meter,
            limits,
            operation_timeout,
        }
    }

    /// Ends the sharing of Gets in flight on `keys`, after a write of them (done,
    /// failed or maybe applied): no later Get may be answered from before it.
    fn written<'k>(&self, space: &KeySpace, keys: impl IntoIterator<Item = &'k str>) {
        for key in keys {
            self.flights.forget(&space.cache(key));
        }
    }

    /// Counts a read as a hit or a miss.
    fn read(&self, found: bool) {
        self.meter
            .record(|metrics| Metrics::count(&metrics.cache_reads, if found { "hit" } else { "miss" }));
    }

    fn keys<'a>(&self, field: &str, keys: &'a [String]) -> Result<&'a [String], Status> {
        self.limits.batch(field, keys.len())?;
        for (i, key) in keys.iter().enumerate() {
            self.limits.key(&format!("{field}[{i}]"), key)?;
        }
        Ok(keys)
    }
}

#[tonic::async_trait]
impl CacheService for CacheApi {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let deadline = deadline(request.metadata(), self.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let key = self.limits.key("key", &request.key)?;
        let redis_key = space.cache(key);
        let read = self.store.get(&redis_key, deadline);
        let response = match self.flights.read(&redis_key, deadline, read).await? {
            Some(Stored { value, ttl_millis }) => GetResponse {
                found: true,
                value,
                ttl: ttl_from_millis(ttl_millis),
            },
            None => GetResponse::default(),
        };
        self.read(response.found);
        Ok(Response::new(response))
    }

    async fn get_many(&self, request: Request<GetManyRequest>) -> Result<Response<GetManyResponse>, Status> {
        let deadline = deadline(request.metadata(), self.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let keys = self.keys("keys", &request.keys)?;
        if keys.is_empty() {
            return Ok(Response::new(GetManyResponse::default()));
        }
        // What the response holds besides the values: each key, and protobuf framing.
        let framing: usize = keys.iter().map(|key| key.len() + ENTRY_FRAMING_BYTES).sum::<usize>() + 64;
        let value_budget = self.limits.max_response_bytes.saturating_sub(framing);
        let found = match self
            .store
            .get_many(&space, keys, value_budget, self.limits.max_value_bytes, deadline)
            .await?
        {
            Ok(found) => found,
            Err(total) => {
                return Err(Error::Exhausted {
                    reason: Reason::ResponseTooLarge,
                    message: format!(
                        "the values of these {} keys total {total} bytes: with the keys, above the response \
                         limit of {} bytes (--max-response-bytes); ask for fewer keys at once",
                        keys.len(),
                        self.limits.max_response_bytes
                    ),
                    retry_after: None,
                }
                .into());
            }
        };
        let entries: Vec<Entry> = request
            .keys
            .into_iter()
            .zip(found)
            .map(|(key, stored)| match stored {
                Some(Stored { value, ttl_millis }) => Entry {
                    key,
                    found: true,
                    value,
                    ttl: ttl_from_millis(ttl_millis),
                },
                None => Entry {
                    key,
                    ..Entry::default()
                },
            })
            .collect();
        for entry in &entries {
            self.read(entry.found);
        }
        Ok(Response::new(GetManyResponse { entries }))
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let deadline = deadline(request.metadata(), self.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let key = self.limits.key("key", &request.key)?;
        self.limits.value("value", &request.value)?;
        let ttl = self.limits.ttl_or_default("ttl", request.ttl.as_ref())?;
        let condition = match SetCondition::try_from(request.condition) {
            Ok(SetCondition::Unspecified | SetCondition::Always) => Condition::Always,
            Ok(SetCondition::IfAbsent) => Condition::IfAbsent,
            Ok(SetCondition::IfPresent) => Condition::IfPresent,
            Err(_) => {
                let reason = format!("{} is not a SetCondition", request.condition);
                return Err(Error::invalid("condition", reason).into());
            }
        };
        let stored = self
            .store
            .set(&space, key, &request.value, ttl, condition, deadline)
            .await;
        self.written(&space, [key]);
        let stored = stored?;
        if stored {
            self.meter.record(|metrics| metrics.cache_writes.inc());
        }
        Ok(Response::new(SetResponse { stored }))
    }

    async fn set_many(&self, request: Request<SetManyRequest>) -> Result<Response<SetManyResponse>, Status> {
        let deadline = deadline(request.metadata(), self.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        self.limits.batch("entries", request.entries.len())?;
        let mut entries = Vec::with_capacity(request.entries.len());
        for (i, entry) in request.entries.iter().enumerate() {
            let key = self.limits.key(&format!("entries[{i}].key"), &entry.key)?;
            self.limits.value(&format!("entries[{i}].value"), &entry.value)?;
            let ttl = self
                .limits
                .ttl_or_default(&format!("entries[{i}].ttl"), entry.ttl.as_ref())?;
            entries.push(NewEntry {
                key,
                value: &entry.value,
                ttl,
            });
        }
        let keys: Vec<&str> = entries.iter().map(|entry| entry.key).collect();
        if let Some((first, other)) = self.store.cross_slot(&space, &keys) {
            return Err(cross_slot("entries", "SetMany", &keys, first, other).into());
        }
        if !entries.is_empty() {
            let written = self.store.set_many(&space, &entries, deadline).await;
            self.written(&space, keys);
            written?;
            self.meter
                .record(|metrics| metrics.cache_writes.inc_by(entries.len() as u64));
        }
        let stored = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        Ok(Response::new(SetManyResponse { stored }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let deadline = deadline(request.metadata(), self.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let keys = self.keys("keys", &request.keys)?;
        let deleted = if keys.is_empty() {
            0
        } else {
            let deleted = self.store.delete(&space, keys, deadline).await;
            self.written(&space, keys.iter().map(String::as_str));
            deleted?
        };
        Ok(Response::new(DeleteResponse {
            deleted: u32::try_from(deleted).unwrap_or(u32::MAX),
        }))
    }

    async fn take(&self, request: Request<TakeRequest>) -> Result<Response<TakeResponse>, Status> {
        let deadline = deadline(request.metadata(), self.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let key = self.limits.key("key", &request.key)?;
        let taken = self.store.take(&space, key, deadline).await;
        self.written(&space, [key]);
        let response = match taken? {
            Some(value) => TakeResponse { found: true, value },
            None => TakeResponse::default(),
        };
        self.read(response.found);
        Ok(Response::new(response))
    }

    async fn increment(&self, request: Request<IncrementRequest>) -> Result<Response<IncrementResponse>, Status> {
        let deadline = deadline(request.metadata(), self.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let key = self.limits.key("key", &request.key)?;
        let ttl = self.limits.ttl_or_default("ttl", request.ttl.as_ref())?;
        let value = self.store.increment(&space, key, request.delta, ttl, deadline).await;
        self.written(&space, [key]);
        let value = value?;
        Ok(Response::new(IncrementResponse { value }))
    }

    async fn expire(&self, request: Request<ExpireRequest>) -> Result<Response<ExpireResponse>, Status> {
        let deadline = deadline(request.metadata(), self.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let key = self.limits.key("key", &request.key)?;
        let ttl = self.limits.required_ttl("ttl", request.ttl.as_ref())?;
        let found = self.store.expire(&space, key, ttl, deadline).await;
        self.written(&space, [key]);
        let found = found?;
        Ok(Response::new(ExpireResponse { found }))
    }
}
