//! Leased decisions: this instance takes a slice of a limit's capacity from
//! Redis in one atomic step and decides from it in memory until it runs out or
//! its life ends, giving back what it did not use with its next lease.
//!
//! The fleet never admits more than the limit: every unit admitted here was
//! counted in Redis's exact state before it was admitted. A token bucket's slice
//! is taken as if the bucket were smaller by what refills while the slice lives
//! (see `ratelimit.lua`), so units used up to a life later still never exceed the
//! bucket over any span of time; a fixed window's slice dies with its window.
//!
//! The slice follows the key's rate here: it is sized for one lease every
//! [`REFILL_EVERY`] at the rate this instance saw since its last lease, and never
//! more than a quarter of what Redis says is left outside every slice, so a quiet
//! key is leased one request at a time (exact to the unit) and, as a limit runs
//! out, instances share what is left in ever smaller slices. A denial is kept
//! for the requests of its cost or more until the sooner of its retry_after and
//! a slice's life, so that a key over its limit does not send every refused
//! request to Redis either.
//!
//! What it costs: a token bucket's burst is smaller by one life's refill (at most
//! 1% of the limit); units in the slice of an instance that stops asking are
//! unused until a bucket refills them or the window ends (at most one slice per
//! instance and key); `remaining` is what was left outside every slice at this
//! instance's last lease, plus its own slice.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use super::store::{Algorithm, Back, Decision, Leased, LimitCheck, RateLimitStore};
use crate::{error::Error, redis::KeySpace};

/// How often a hot key goes to Redis: its slice is sized to last this long.
const REFILL_EVERY: Duration = Duration::from_millis(10);
/// The longest a slice lives.
const MAX_LIFE: Duration = Duration::from_millis(100);
/// A token bucket's slice lives at most this part of the period: what its burst shrinks by.
const LIFE_PER_PERIOD: u32 = 100;
/// The most keys with slices held at once; beyond it a leased check is decided exactly.
const MAX_KEYS: usize = 65_536;

/// The slices this instance holds, by limiter.
#[derive(Default)]
pub struct Leases {
    keys: Mutex<HashMap<String, Arc<KeyLease>>>,
}

/// One limiter's slice, and the lock that lets one lease call at a time refill it.
#[derive(Default)]
struct KeyLease {
    slice: Mutex<Slice>,
    refill: tokio::sync::Mutex<()>,
}

/// What this instance holds of one limiter.
#[derive(Default)]
struct Slice {
    /// Units left to admit.
    left: u64,
    /// Until when they may be admitted; `None`: no slice.
    expires: Option<Instant>,
    /// What goes back with them (where they were counted).
    back: Back,
    /// Which lease they came from: one more with each.
    generation: u64,
    /// What Redis had left outside every slice at the last lease.
    outside: u64,
    /// When the limit is whole again, as of the last lease.
    whole_at: Option<Instant>,
    /// A denial kept for costs of at least `.0` until `.1`.
    denied: Option<(u64, Instant)>,
    /// Units admitted since the last lease, and when it was.
    used: u64,
    leased_at: Option<Instant>,
    /// Units a second this instance admits, smoothed.
    rate: f64,
}

/// One leased decision: the decision, and how to take it back (a CheckMany
/// refused by another of its limits).
pub struct Taken {
    /// The decision.
    pub decision: Decision,
    lease: Option<(Arc<KeyLease>, u64, u64)>,
    /// Until when the units taken may be admitted.
    usable_until: Option<Instant>,
}

impl Taken {
    /// Whether what it took may still be admitted now: a request deciding
    /// several limits admits only if every slice it took from is still alive
    /// at its end.
    pub fn usable(&self) -> bool {
        self.usable_until.is_none_or(|until| Instant::now() < until)
    }
}

impl Slice {
    /// The decision from what is held, if it can be made without Redis.
    fn decide(&mut self, cost: u64, now: Instant) -> Option<Decision> {
        if let Some((denied_cost, until)) = self.denied
            && now < until
            && cost >= denied_cost
        {
            return Some(Decision {
                allowed: false,
                remaining: self.remaining(now),
                reset_after: self.reset_after(now),
                retry_after: Some(until - now),
            });
        }
        match self.expires {
            Some(expires) if now < expires && self.left >= cost => {
                self.left -= cost;
                self.used += cost;
                Some(Decision {
                    allowed: true,
                    remaining: self.remaining(now),
                    reset_after: self.reset_after(now),
                    retry_after: Some(Duration::ZERO),
                })
            }
            _ => None,
        }
    }

    fn remaining(&self, now: Instant) -> u64 {
        let held = match self.expires {
            Some(expires) if now < expires => self.left,
            _ => 0,
        };
        self.outside.saturating_add(held)
    }

    fn reset_after(&self, now: Instant) -> Duration {
        self.whole_at
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }

    /// The units beyond `cost` to ask for: a slice for [`REFILL_EVERY`] at the
    /// rate seen, at most a quarter of what was left outside the slices (the
    /// script holds every lease to a quarter of what is free, too).
    fn more_wanted(&mut self, cost: u64, now: Instant) -> u64 {
        if let Some(leased_at) = self.leased_at {
            // Over at least a millisecond: callers queued behind a lease use its
            // slice at once, which is no rate.
            let elapsed = now.saturating_duration_since(leased_at).as_secs_f64().max(1e-3);
            #[allow(clippy::cast_precision_loss)]
            let seen = self.used as f64 / elapsed;
            self.rate = if self.rate == 0.0 {
                seen
            } else {
                0.5 * self.rate + 0.5 * seen
            };
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let wanted = (self.rate * REFILL_EVERY.as_secs_f64()).ceil() as u64;
        wanted.saturating_sub(cost).min(self.outside / 4)
    }
}

impl Leases {
    /// Decides `check` (a token bucket or fixed window, cost at least 1) from
    /// this instance's slice, taking a new one from Redis when it is spent or
    /// over. `None` when no more keys can hold slices: decide it exactly.
    ///
    /// # Errors
    /// What the lease call ends with.
    pub async fn decide(
        &self,
        store: &RateLimitStore,
        space: &KeySpace,
        check: &LimitCheck<'_>,
        deadline: Instant,
    ) -> Result<Option<Taken>, Error> {
        let cost = check.cost;
        if cost > check.limit {
            // No wait lets it pass: answered without Redis or the slice.
            return Ok(Some(Taken {
                decision: Decision {
                    allowed: false,
                    remaining: 0,
                    reset_after: Duration::ZERO,
                    retry_after: None,
                },
                lease: None,
                usable_until: None,
            }));
        }
        let Some(lease) = self.key(RateLimitStore::state_key(space, check)) else {
            return Ok(None);
        };
        let local = {
            let mut slice = lock(&lease.slice);
            slice
                .decide(cost, Instant::now())
                .map(|decision| (decision, slice.generation, slice.expires))
        };
        if let Some((decision, generation, expires)) = local {
            return Ok(Some(taken(decision, &lease, cost, generation, expires)));
        }
        // One lease call at a time per key; the others wait for it (within their
        // deadline) and decide from what it brought.
        let Ok(_refill) = tokio::time::timeout_at(deadline, lease.refill.lock()).await else {
            return Err(Error::DeadlineExceeded);
        };
        let now = Instant::now();
        let (back, more) = {
            let mut slice = lock(&lease.slice);
            if let Some(decision) = slice.decide(cost, now) {
                let (generation, expires) = (slice.generation, slice.expires);
                drop(slice);
                return Ok(Some(taken(decision, &lease, cost, generation, expires)));
            }
            let back = Back {
                units: std::mem::take(&mut slice.left),
                ..slice.back
            };
            // What is given back is gone from here whatever the call's fate.
            slice.expires = None;
            (back, slice.more_wanted(cost, now))
        };
        let life = life(check);
        let call = store.lease(space, check, more, life, back);
        // The call runs to its end and its slice is kept even if this request
        // goes first (a cancelled caller, a timeout): its units are counted in
        // Redis either way. Its life counts from before it was sent.
        let sent = Instant::now();
        let installer = lease.clone();
        let leased = tokio::spawn(async move {
            let leased = call.run(deadline).await?;
            install(&installer, &leased, cost, sent);
            Ok::<Leased, Error>(leased)
        })
        .await
        .map_err(|error| Error::Internal(format!("a lease call ended abnormally: {error}")))??;
        let slice = lock(&lease.slice);
        let outcome = if leased.decision.allowed {
            let decision = Decision {
                remaining: slice.remaining(Instant::now()),
                ..leased.decision
            };
            taken(decision, &lease, cost, slice.generation, slice.expires)
        } else {
            Taken {
                decision: leased.decision,
                lease: None,
                usable_until: None,
            }
        };
        drop(slice);
        Ok(Some(outcome))
    }

    /// Puts back what `taken` admitted, when the request it was for is refused
    /// after all: into the slice it came from, if that is still the one held
    /// (admitted no later than its life allows, or given back to Redis with the
    /// next lease); otherwise it stays unused until it refills or its window ends.
    pub fn give_back(&self, taken: Taken) {
        let Some((lease, cost, generation)) = taken.lease else {
            return;
        };
        let mut slice = lock(&lease.slice);
        if slice.generation == generation {
            slice.left = slice.left.saturating_add(cost);
            slice.used = slice.used.saturating_sub(cost);
        }
    }

    /// The slice of the limiter whose state is under `state_key`, made when new;
    /// `None` when too many keys hold slices and none has ended.
    fn key(&self, state_key: String) -> Option<Arc<KeyLease>> {
        let mut keys = lock(&self.keys);
        if let Some(lease) = keys.get(&state_key) {
            return Some(lease.clone());
        }
        if keys.len() >= MAX_KEYS {
            let now = Instant::now();
            keys.retain(|_, lease| {
                Arc::strong_count(lease) > 1 || lock(&lease.slice).expires.is_some_and(|expires| now < expires)
            });
            if keys.len() >= MAX_KEYS {
                return None;
            }
        }
        let lease = Arc::new(KeyLease::default());
        keys.insert(state_key, lease.clone());
        Some(lease)
    }
}

/// Keeps what a lease call brought: the slice (less the cost of the request
/// that asked for it, admitted by the call itself), or the denial.
fn install(lease: &KeyLease, leased: &Leased, cost: u64, sent: Instant) {
    let now = Instant::now();
    let mut slice = lock(&lease.slice);
    slice.outside = leased.decision.remaining;
    slice.whole_at = Some(sent + leased.decision.reset_after);
    slice.used = 0;
    slice.leased_at = Some(now);
    slice.generation += 1;
    slice.back = leased.back;
    if leased.decision.allowed {
        slice.left = leased.granted.saturating_sub(cost);
        slice.expires = Some(sent + leased.life);
        slice.denied = None;
        slice.used = cost;
    } else {
        slice.left = 0;
        slice.expires = None;
        slice.denied = leased
            .decision
            .retry_after
            .map(|retry| (cost, sent + retry.min(MAX_LIFE)));
    }
}

/// How long a slice of `check` may live.
fn life(check: &LimitCheck<'_>) -> Duration {
    match check.algorithm {
        Algorithm::TokenBucket => MAX_LIFE.min(Duration::from_micros(check.period_micros) / LIFE_PER_PERIOD),
        Algorithm::FixedWindow | Algorithm::SlidingWindow => MAX_LIFE,
    }
}

fn taken(decision: Decision, lease: &Arc<KeyLease>, cost: u64, generation: u64, expires: Option<Instant>) -> Taken {
    Taken {
        lease: decision.allowed.then(|| (lease.clone(), cost, generation)),
        usable_until: decision.allowed.then_some(expires).flatten(),
        decision,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
