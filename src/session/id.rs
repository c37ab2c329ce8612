//! Session ids: `<22 random characters>.<4 hex digits>`.
//!
//! The random part is 128 bits from the OS CSPRNG ([`crate::ids`]). The suffix
//! is a routing tag: 16 bits of SHA-256 of the user id. It goes into the hash tag
//! of both the session's key and its user's index key, so that on a Redis
//! Cluster one script can change both; it reveals nothing of the user id beyond
//! which of 65,536 buckets it falls in.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::{error::Error, ids::random_token};

/// A parsed session id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId {
    member: String,
    tag: String,
}

/// The length of the random part.
const MEMBER_CHARS: usize = 22;
/// The length of the routing tag.
const TAG_CHARS: usize = 4;

impl SessionId {
    /// A fresh id for a session of `user_id`.
    ///
    /// # Errors
    /// [`Error::Internal`] when the OS has no randomness to give.
    pub fn generate(user_id: &str) -> Result<SessionId, Error> {
        Ok(SessionId {
            member: random_token()?,
            tag: routing_tag(user_id),
        })
    }

    /// A fresh id with the same routing tag (the same user), for rotation.
    ///
    /// # Errors
    /// [`Error::Internal`] when the OS has no randomness to give.
    pub fn rotated(&self) -> Result<SessionId, Error> {
        Ok(SessionId {
            member: random_token()?,
            tag: self.tag.clone(),
        })
    }

    /// Reads an id given by a caller; `None` when it cannot be one of ours.
    pub fn parse(id: &str) -> Option<SessionId> {
        let (member, tag) = id.split_once('.')?;
        let member_ok = member.len() == MEMBER_CHARS
            && member
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let tag_ok = tag.len() == TAG_CHARS && tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        (member_ok && tag_ok).then(|| SessionId {
            member: member.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// The random part: the session's member in its user's index.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The routing tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether this id can belong to `user_id`.
    pub fn is_for_user(&self, user_id: &str) -> bool {
        self.tag == routing_tag(user_id)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.member, self.tag)
    }
}

/// The routing tag of a user: 16 bits of SHA-256 of the user id, as 4 hex digits.
pub fn routing_tag(user_id: &str) -> String {
    let digest = Sha256::digest(user_id.as_bytes());
    format!("{:02x}{:02x}", digest[0], digest[1])
}

#[cfg(test)]
mod tests {
    use super::{SessionId, routing_tag};

    #[test]
    fn ids_round_trip_and_carry_the_users_tag() {
        let id = SessionId::generate("user-42").unwrap();
        let text = id.to_string();
        assert_eq!(text.len(), 27);
        assert_eq!(SessionId::parse(&text), Some(id.clone()));
        assert!(id.is_for_user("user-42"));
        assert_eq!(id.tag(), routing_tag("user-42"));
        assert!(!text.contains("user-42"));
    }

    #[test]
    fn malformed_ids_are_not_parsed() {
        for bad in [
            "",
            "abc",
            "AAAAAAAAAAAAAAAAAAAAAA.zzzz",
            "AAAAAAAAAAAAAAAAAAAAAA",
            "AAAA.0000",
            "AAAAAAAAAAAAAAAAAAAAA*.0000",
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad}");
        }
    }
}
