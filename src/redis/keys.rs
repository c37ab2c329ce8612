//! Every Redis key and channel the service uses is built here, and nowhere else.
//!
//! Format: `<prefix>:<tenant>:<kind>:{<tag>}:<fixed fields>:<user key>`.
//!
//! - The tenant segment keeps tenants apart: no key of one tenant can be spelled
//!   by a request of another.
//! - The `{tag}` is a Redis Cluster hash tag: 4 hex digits of SHA-256 of the user
//!   key, so every key derived from one user key (a lock and its fencing counter)
//!   hashes to the same slot whatever characters the user key holds. When the
//!   user key itself carries a non-empty `{…}` section, only that section is
//!   hashed — Redis's own rule — so callers can co-locate related keys
//!   (`{user:42}:login` and `{user:42}:otp`) as they would on a plain Cluster.
//! - The user key comes last and whole, after fields of fixed form, so two
//!   different requests never build the same key.
//!
//! The prefix and tenant hold no braces, colons-only-as-separators or glob
//! characters (checked in [`crate::config`]), so the first `{` of a key is the tag.

use std::{fmt::Write as _, sync::Arc};

use sha2::{Digest, Sha256};

/// The tenant every request uses when no auth file assigns one.
pub const DEFAULT_TENANT: &str = "default";

/// Builds the keys of every tenant under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    /// Keys under `prefix` (already validated by the configuration).
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.into() }
    }

    /// The key space of `tenant` (already validated).
    pub fn space(&self, tenant: &str) -> KeySpace {
        KeySpace {
            base: format!("{}:{tenant}:", self.prefix).into(),
            prefix_len: self.prefix.len(),
        }
    }

    /// The pattern matching every tenant's lock-release channels, for the one subscriber.
    pub fn lock_released_pattern(&self) -> String {
        format!("{}:*:lock-released:*", self.prefix)
    }

    /// The pattern matching every tenant's cache-fill channels, for the one subscriber.
    pub fn cache_filled_pattern(&self) -> String {
        format!("{}:*:cache-filled:*", self.prefix)
    }
}

/// One tenant's keys. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct KeySpace {
    /// `<prefix>:<tenant>:`.
    base: Arc<str>,
    /// The length of `<prefix>` in `base`.
    prefix_len: usize,
}

impl KeySpace {
    /// `<prefix>:<tenant>:<kind>:{<tag>}:` with room for `rest` bytes more.
    fn start(&self, kind: &str, tag: &str, rest: usize) -> String {
        let mut key = String::with_capacity(self.base.len() + kind.len() + tag.len() + rest + 4);
        key.push_str(&self.base);
        key.push_str(kind);
        key.push_str(":{");
        key.push_str(tag);
        key.push_str("}:");
        key
    }

    fn tagged(&self, kind: &str, user_key: &str) -> String {
        let tag = slot_tag(user_key);
        let mut key = self.start(kind, &tag, user_key.len());
        key.push_str(user_key);
        key
    }

    /// The key holding a cache entry.
    pub fn cache(&self, key: &str) -> String {
        self.tagged("cache", key)
    }

    /// The key holding a cache entry's fill lease and stale copy (see
    /// `cache_get_or_lease.lua`), in the same slot as [`KeySpace::cache`].
    pub fn cache_fill(&self, key: &str) -> String {
        self.tagged("cache-fill", key)
    }

    /// The channel a cache entry's fill is announced on.
    pub fn cache_filled(&self, key: &str) -> String {
        self.tagged("cache-filled", key)
    }

    /// The key holding one rate limiter's state. The algorithm, the limit and the
    /// period are part of its identity: a 10-per-second and a 1000-per-day limit
    /// on one key are two limiters, never one shared bucket.
    pub fn ratelimit(&self, key: &str, algorithm: &str, limit: u64, period_micros: u64) -> String {
        let tag = slot_tag(key);
        let mut redis_key = self.start("ratelimit", &tag, algorithm.len() + key.len() + 42);
        // Writing into a String cannot fail.
        let _ = write!(redis_key, "{algorithm}:{limit}:{period_micros}:{key}");
        redis_key
    }

    /// The record of a rate-limit reservation `id` on `key`, in the slot of the
    /// key's limiters (see `ratelimit.lua`).
    pub fn ratelimit_reservation(&self, key: &str, id: &str) -> String {
        let tag = slot_tag(key);
        let mut redis_key = self.start("ratelimit-reservation", &tag, id.len());
        redis_key.push_str(id);
        redis_key
    }

    /// Every key and the channel of the lock `name`, built together: one tag,
    /// so all of them share a slot (see `lock_grant.lua` for what each holds).
    pub fn lock(&self, name: &str) -> LockKeys {
        let tag = slot_tag(name);
        let key = |kind: &str| {
            let mut key = self.start(kind, &tag, name.len());
            key.push_str(name);
            key
        };
        let mut epoch = String::with_capacity(self.prefix_len + 18);
        epoch.push_str(&self.base[..self.prefix_len]);
        epoch.push_str(":lock-epoch:{");
        epoch.push_str(&tag);
        epoch.push('}');
        LockKeys {
            holders: key("lock"),
            state: key("lock-fence"),
            queue: key("lock-queue"),
            waiting: key("lock-waiting"),
            released: key("lock-released"),
            epoch,
            tag: u16::from_str_radix(&tag, 16).unwrap_or_default(),
        }
    }

    /// The channel a Pub/Sub topic is published on. Topics need no hash tag:
    /// a Redis Cluster carries every PUBLISH to every node.
    pub fn topic(&self, topic: &str) -> String {
        let mut channel = String::with_capacity(self.base.len() + 7 + topic.len());
        channel.push_str(&self.base);
        channel.push_str("pubsub:");
        channel.push_str(topic);
        channel
    }

    /// The Redis pattern for a caller's topic pattern: the key-space part is
    /// escaped, so the pattern can only ever match this space's topics.
    pub fn topic_pattern(&self, pattern: &str) -> String {
        let mut escaped = String::with_capacity(self.base.len() + 8 + pattern.len());
        for character in self.base.chars().chain("pubsub:".chars()) {
            if matches!(character, '*' | '?' | '[' | ']' | '\\') {
                escaped.push('\\');
            }
            escaped.push(character);
        }
        escaped.push_str(pattern);
        escaped
    }

    /// The key holding a session; `routing_tag` is the session's own (see [`crate::session`]).
    pub fn session(&self, routing_tag: &str, member: &str) -> String {
        let mut key = self.start("session", routing_tag, member.len());
        key.push_str(member);
        key
    }

    /// The key holding what an election knows of its current term (its
    /// candidate and since when), in the slot of the election's lock `name`.
    pub fn election(&self, name: &str) -> String {
        self.tagged("election", name)
    }

    /// The key holding a user's session index, in the same slot as the user's sessions.
    pub fn session_index(&self, routing_tag: &str, user_id: &str) -> String {
        let mut key = self.start("session-user", routing_tag, user_id.len());
        key.push_str(user_id);
        key
    }
}

/// The keys of one lock, all in one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKeys {
    /// The holders: grant tokens scored by when each lease ends.
    pub holders: String,
    /// The fencing counter, the holders' details and the queue numbers.
    pub state: String,
    /// The queue of waiters' tickets by arrival.
    pub queue: String,
    /// When each queued waiter's place lapses.
    pub waiting: String,
    /// The channel the lock's releases are announced on.
    pub released: String,
    /// The epoch marker of the lock's slot tag, shared by every tenant's locks
    /// with that tag: `<prefix>:lock-epoch:{<tag>}`.
    pub epoch: String,
    /// The slot tag as a number, for the instance's memory of epoch markers.
    pub tag: u16,
}

/// The rate-limit key of an Envoy descriptor: its domain and its entries, each
/// length-prefixed so that no two descriptors share a key. A `{…}` in the domain
/// or a value tags the slot like any user key's.
pub fn envoy_descriptor<'a>(domain: &str, entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut key = format!("envoy:{}:{domain}", domain.len());
    for (name, value) in entries {
        // Writing into a String cannot fail.
        let _ = write!(key, ":{}:{name}:{}:{value}", name.len(), value.len());
    }
    key
}

/// The hash tag of a user key: 4 hex digits of SHA-256 of the part Redis
/// Cluster would hash (the first non-empty `{…}` section, or the whole key).
pub fn slot_tag(user_key: &str) -> String {
    let digest = Sha256::digest(hashed_part(user_key).as_bytes());
    format!("{:02x}{:02x}", digest[0], digest[1])
}

/// The Redis Cluster slot of a Redis key (CRC16 of its hashed part, modulo 16384).
pub fn slot(redis_key: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hashed_part(redis_key).as_bytes()) % 16384
}

/// Redis Cluster's rule: the text between the first `{` and the first `}` after
/// it, when that is not empty; otherwise the whole key.
fn hashed_part(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(length) = key[open + 1..].find('}')
        && length > 0
    {
        return &key[open + 1..open + 1 + length];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::{Keys, hashed_part, slot, slot_tag};

    fn tag_of(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    #[test]
    fn keys_carry_prefix_tenant_kind_tag_and_the_whole_user_key() {
        let space = Keys::new("cachelock").space("default");
        let tag = slot_tag("user:42");
        assert_eq!(
            space.cache("user:42"),
            format!("cachelock:default:cache:{{{tag}}}:user:42")
        );
        assert_eq!(
            space.ratelimit("login", "tb", 10, 1_000_000),
            format!(
                "cachelock:default:ratelimit:{{{}}}:tb:10:1000000:login",
                slot_tag("login")
            )
        );
    }

    #[test]
    fn every_key_of_one_lock_shares_a_well_formed_tag_whatever_its_name() {
        let space = Keys::new("p").space("t");
        for name in ["job:7", "}", "{", "a}b{c", "{}", "x{y}z", "é{}"] {
            let keys = space.lock(name);
            let lock = &keys.holders;
            for other in [&keys.state, &keys.queue, &keys.waiting, &keys.released, &keys.epoch] {
                assert_eq!(tag_of(lock), tag_of(other), "{name}");
            }
            assert_eq!(tag_of(lock).len(), 4, "{name}");
            assert_eq!(u16::from_str_radix(tag_of(lock), 16).unwrap(), keys.tag, "{name}");
            assert!(lock.ends_with(name));
            assert!(
                keys.epoch.starts_with("p:lock-epoch:{"),
                "the marker is the deployment's, not the tenant's"
            );
        }
    }

    #[test]
    fn a_user_hash_tag_co_locates_keys_as_on_a_plain_cluster() {
        assert_eq!(hashed_part("{user:42}:login"), "user:42");
        assert_eq!(hashed_part("{}:x"), "{}:x");
        assert_eq!(hashed_part("a}b{c"), "a}b{c");
        assert_eq!(slot_tag("{user:42}:login"), slot_tag("{user:42}:otp"));
    }

    #[test]
    fn slots_follow_redis_cluster_hashing() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("123456789"), 12739);
        let space = Keys::new("p").space("t");
        let job = space.lock("job");
        assert_eq!(slot(&job.holders), slot(&job.state));
        assert_eq!(slot(&job.holders), slot(&job.epoch));
    }

    #[test]
    fn tenants_and_limits_never_share_a_key() {
        let keys = Keys::new("p");
        assert_ne!(keys.space("a").cache("k"), keys.space("b").cache("k"));
        let space = keys.space("a");
        assert_ne!(
            space.ratelimit("k", "tb", 10, 1_000_000),
            space.ratelimit("k", "tb", 1000, 86_400_000_000)
        );
        assert_ne!(space.cache("a}b"), space.cache("a"));
    }

    #[test]
    fn the_release_pattern_matches_every_tenants_channels() {
        let keys = Keys::new("p");
        assert_eq!(keys.lock_released_pattern(), "p:*:lock-released:*");
        assert_eq!(keys.cache_filled_pattern(), "p:*:cache-filled:*");
        let space = keys.space("t");
        assert_eq!(tag_of(&space.cache("k")), tag_of(&space.cache_fill("k")));
        assert_eq!(tag_of(&space.cache("k")), tag_of(&space.cache_filled("k")));
        assert!(keys.space("t").lock("x").released.starts_with("p:t:lock-released:{"));
    }
}
