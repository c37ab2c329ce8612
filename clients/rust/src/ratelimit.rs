//! Rate limits: decisions counted in Redis, shared by every caller of a key.

use std::time::Duration;

use crate::{
    Client, Error,
    client::Idempotent,
    pb::ratelimit::{self as pb, rate_limit_service_client::RateLimitServiceClient},
    time::{duration_from, to_proto},
};

/// How a limit counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// A token bucket (GCRA): `limit` a `period`, smoothly refilled.
    #[default]
    TokenBucket,
    /// A fixed window of `period`.
    FixedWindow,
    /// A sliding window of `period`.
    SlidingWindow,
}

impl Algorithm {
    fn to_proto(self) -> i32 {
        match self {
            Algorithm::TokenBucket => pb::Algorithm::TokenBucket,
            Algorithm::FixedWindow => pb::Algorithm::FixedWindow,
            Algorithm::SlidingWindow => pb::Algorithm::SlidingWindow,
        }
        .into()
    }
}

/// What to answer when Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutagePolicy {
    /// Allow.
    FailOpen,
    /// Deny.
    FailClosed,
}

fn outage_to_proto(policy: Option<OutagePolicy>) -> i32 {
    match policy {
        None => pb::OutagePolicy::Unspecified,
        Some(OutagePolicy::FailOpen) => pb::OutagePolicy::FailOpen,
        Some(OutagePolicy::FailClosed) => pb::OutagePolicy::FailClosed,
    }
    .into()
}

/// A limit: `limit` units a `period`.
#[derive(Clone, Debug)]
pub struct Limit {
    /// How many units a period.
    pub limit: u64,
    /// The period.
    pub period: Duration,
    /// What this call costs; `None`: 1.
    pub cost: Option<u64>,
    /// How it counts.
    pub algorithm: Algorithm,
}

impl Limit {
    /// `limit` units a `period`, by token bucket, each call costing 1.
    pub fn per(limit: u64, period: Duration) -> Limit {
        Limit {
            limit,
            period,
            cost: None,
            algorithm: Algorithm::TokenBucket,
        }
    }

    /// Each call costs `cost` units.
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Limit {
        self.cost = Some(cost);
        self
    }

    /// Counted by `algorithm`.
    #[must_use]
    pub fn algorithm(mut self, algorithm: Algorithm) -> Limit {
        self.algorithm = algorithm;
        self
    }
}

/// A decision.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Whether the call may go ahead.
    pub allowed: bool,
    /// The limit.
    pub limit: u64,
    /// The units left.
    pub remaining: u64,
    /// When the limit is whole again.
    pub reset_after: Duration,
    /// When denied: how long until this cost would be allowed.
    pub retry_after: Duration,
    /// Decided by the outage policy, Redis being unreachable.
    pub decided_by_outage_policy: bool,
}

/// The rate limit calls. Get one from [`Client::rate_limits`].
#[derive(Clone, Debug)]
pub struct RateLimits {
    client: Client,
}

impl Client {
    /// Rate limits.
    pub fn rate_limits(&self) -> RateLimits {
        RateLimits { client: self.clone() }
    }
}

impl RateLimits {
    fn stub(&self) -> RateLimitServiceClient<tonic::transport::Channel> {
        RateLimitServiceClient::new(self.client.channel.clone())
    }

    /// Counts a call against `limit` of `key` and decides it. Never repeated by
    /// the library: a repeat would count twice.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with (a denial is not one: `allowed` is false).
    pub async fn check(
        &self,
        key: &str,
        limit: &Limit,
        on_unavailable: Option<OutagePolicy>,
    ) -> Result<Decision, Error> {
        let request = pb::CheckRequest {
            key: key.to_owned(),
            limit: limit.limit,
            period: Some(to_proto(limit.period)),
            cost: limit.cost,
            algorithm: limit.algorithm.to_proto(),
            on_unavailable: outage_to_proto(on_unavailable),
        };
        let answer = self
            .client
            .unary("ratelimit.Check", Idempotent::No, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.check(r).await }
            })
            .await?;
        Ok(Decision {
            allowed: answer.allowed,
            limit: answer.limit,
            remaining: answer.remaining,
            reset_after: duration_from(answer.reset_after),
            retry_after: duration_from(answer.retry_after),
            decided_by_outage_policy: answer.decided_by_outage_policy,
        })
    }

    /// Counts a call against every `(key, limit)` at once: allowed only when
    /// every limit allows it, and then counted against all of them; a denial
    /// counts against none. The decisions come in the order asked. Never
    /// repeated by the library.
    ///
    /// # Errors
    /// As [`RateLimits::check`].
    pub async fn check_many(
        &self,
        limits: &[(&str, Limit)],
        on_unavailable: Option<OutagePolicy>,
    ) -> Result<(bool, Vec<Decision>), Error> {
        let request = pb::CheckManyRequest {
            limits: limits
                .iter()
                .map(|(key, limit)| pb::Limit {
                    key: (*key).to_owned(),
                    limit: limit.limit,
                    period: Some(to_proto(limit.period)),
                    cost: limit.cost,
                    algorithm: limit.algorithm.to_proto(),
                })
                .collect(),
            on_unavailable: outage_to_proto(on_unavailable),
        };
        let answer = self
            .client
            .unary("ratelimit.CheckMany", Idempotent::No, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.check_many(r).await }
            })
            .await?;
        let decisions = answer
            .decisions
            .into_iter()
            .map(|decision| Decision {
                allowed: decision.allowed,
                limit: decision.limit,
                remaining: decision.remaining,
                reset_after: duration_from(decision.reset_after),
                retry_after: duration_from(decision.retry_after),
                decided_by_outage_policy: answer.decided_by_outage_policy,
            })
            .collect();
        Ok((answer.allowed, decisions))
    }

    /// Forgets what `key` has counted under `limit`; whether anything was counted.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with, after the retries the policy allows.
    pub async fn reset(&self, key: &str, limit: &Limit) -> Result<bool, Error> {
        let request = pb::ResetRequest {
            key: key.to_owned(),
            algorithm: limit.algorithm.to_proto(),
            limit: limit.limit,
            period: Some(to_proto(limit.period)),
        };
        let answer = self
            .client
            .unary("ratelimit.Reset", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.reset(r).await }
            })
            .await?;
        Ok(answer.existed)
    }
}
