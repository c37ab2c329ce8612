//! Every Redis key the service uses is built here, and nowhere else.
//!
//! Format: `<prefix>:<service>:{<user key>}[:<part>]`. The user's part sits inside
//! a `{hash tag}`, so all keys derived from one user key (a lock's owner record and
//! its fencing counter, say) hash to the same Redis Cluster slot and can be used
//! together in one script. The prefix may not contain braces (checked in
//! [`crate::config`]), so the first `{` of a key is always the one written here.
//! A user key that itself contains `}` ends the tag early; keys stay distinct and
//! the parts of one user key still share a slot, because they share that text.

use std::sync::Arc;

/// Builds the Redis keys of every service under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    /// Keys under `prefix` (already validated by the configuration).
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.into() }
    }

    /// The key holding a cache entry: `<prefix>:cache:{<key>}`.
    pub fn cache(&self, key: &str) -> String {
        self.tagged("cache", key)
    }

    /// The key holding one rate limit's state: `<prefix>:ratelimit:{<key>}:<algorithm>`,
    /// where `algorithm` is a short fixed name (`tb`, `fw`, `sw`).
    pub fn ratelimit(&self, key: &str, algorithm: &str) -> String {
        let mut tagged = self.tagged("ratelimit", key);
        tagged.push(':');
        tagged.push_str(algorithm);
        tagged
    }

    /// The key holding a lock's holder record: `<prefix>:lock:{<name>}`.
    pub fn lock(&self, name: &str) -> String {
        self.tagged("lock", name)
    }

    /// The key holding a lock's last fencing token: `<prefix>:lock:{<name>}:fence`,
    /// in the same slot as [`Keys::lock`] so one script can use both.
    pub fn lock_fence(&self, name: &str) -> String {
        let mut key = self.tagged("lock", name);
        key.push_str(":fence");
        key
    }

    /// The pub/sub channel a lock's release is announced on:
    /// `<prefix>:lock-released:{<name>}`.
    pub fn lock_released(&self, name: &str) -> String {
        self.tagged("lock-released", name)
    }

    /// The pattern matching every lock's release channel, for the one subscriber.
    /// (The prefix holds no glob characters; see [`crate::config`].)
    pub fn lock_released_pattern(&self) -> String {
        format!("{}:lock-released:*", self.prefix)
    }

    /// The key holding a session: `<prefix>:session:{<tag>}:<member>`, where the
    /// tag is the session's routing tag (see [`crate::session`]).
    pub fn session(&self, tag: &str, member: &str) -> String {
        let mut key = self.tagged("session", tag);
        key.push(':');
        key.push_str(member);
        key
    }

    /// The key holding a user's session index: `<prefix>:session-user:{<tag>}:<user id>`,
    /// in the same slot as the user's sessions.
    pub fn session_index(&self, tag: &str, user_id: &str) -> String {
        let mut key = self.tagged("session-user", tag);
        key.push(':');
        key.push_str(user_id);
        key
    }

    fn tagged(&self, service: &str, user_key: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + service.len() + user_key.len() + 4);
        key.push_str(&self.prefix);
        key.push(':');
        key.push_str(service);
        key.push_str(":{");
        key.push_str(user_key);
        key.push('}');
        key
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn cache_keys_put_the_user_key_in_a_hash_tag() {
        let keys = Keys::new("cachelock");
        assert_eq!(keys.cache("user:42"), "cachelock:cache:{user:42}");
        assert_eq!(Keys::new("tenant-a").cache("x"), "tenant-a:cache:{x}");
    }

    #[test]
    fn rate_limit_keys_of_one_user_key_share_the_hash_tag() {
        let keys = Keys::new("cachelock");
        assert_eq!(keys.ratelimit("login:7", "tb"), "cachelock:ratelimit:{login:7}:tb");
        assert_eq!(keys.ratelimit("login:7", "sw"), "cachelock:ratelimit:{login:7}:sw");
    }

    #[test]
    fn a_lock_and_its_fencing_counter_share_the_hash_tag() {
        let keys = Keys::new("cachelock");
        assert_eq!(keys.lock("job:7"), "cachelock:lock:{job:7}");
        assert_eq!(keys.lock_fence("job:7"), "cachelock:lock:{job:7}:fence");
        assert_eq!(keys.lock_released("job:7"), "cachelock:lock-released:{job:7}");
        assert_eq!(keys.lock_released_pattern(), "cachelock:lock-released:*");
    }

    #[test]
    fn a_session_and_its_user_index_share_the_routing_tag() {
        let keys = Keys::new("cachelock");
        assert_eq!(keys.session("1a2b", "RANDOM"), "cachelock:session:{1a2b}:RANDOM");
        assert_eq!(
            keys.session_index("1a2b", "alice"),
            "cachelock:session-user:{1a2b}:alice"
        );
    }

    #[test]
    fn distinct_user_keys_give_distinct_redis_keys() {
        let keys = Keys::new("p");
        assert_ne!(keys.cache("a}b"), keys.cache("a"));
        assert_ne!(keys.cache("a}"), keys.cache("a"));
    }
}
