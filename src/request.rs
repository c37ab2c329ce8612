//! What every RPC does with its request before touching Redis: work out how long
//! it may wait, and check the fields every service shares (keys, ttls, batches).

use std::time::Duration;

use tonic::metadata::MetadataMap;

use crate::{config::Config, error::Error};

/// The time left for an RPC's Redis work: the configured operation timeout, or
/// the caller's gRPC deadline when that is sooner.
///
/// The caller's deadline is shortened by a margin so that the answer (say,
/// UNAVAILABLE) reaches the caller before its own timer fires: a quarter of it,
/// at most 250 ms, which covers the request's way in, the answer's way out and a
/// busy machine's scheduling delays.
///
/// # Errors
/// [`Error::DeadlineExceeded`] when the caller's deadline leaves no time at all.
pub fn budget(metadata: &MetadataMap, operation_timeout: Duration) -> Result<Duration, Error> {
    Ok(match caller_budget(metadata)? {
        Some(left) => left.min(operation_timeout),
        None => operation_timeout,
    })
}

/// The instant by which an RPC's Redis work must be done: [`budget`] from now.
///
/// # Errors
/// [`Error::DeadlineExceeded`] when the caller's deadline leaves no time at all.
pub fn deadline(metadata: &MetadataMap, operation_timeout: Duration) -> Result<tokio::time::Instant, Error> {
    Ok(tokio::time::Instant::now() + budget(metadata, operation_timeout)?)
}

/// The time left before the caller's gRPC deadline, less the margin; `None`
/// when the caller set no deadline.
///
/// # Errors
/// [`Error::DeadlineExceeded`] when the deadline leaves no time at all.
pub fn caller_budget(metadata: &MetadataMap) -> Result<Option<Duration>, Error> {
    let Some(caller) = caller_timeout(metadata) else {
        return Ok(None);
    };
    let margin = (caller / 4).min(Duration::from_millis(250));
    let left = caller.saturating_sub(margin);
    if left.is_zero() {
        return Err(Error::DeadlineExceeded);
    }
    Ok(Some(left))
}

/// The `grpc-timeout` header: up to eight ASCII digits and a unit letter.
fn caller_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The limits on request fields, taken from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most items in one batch.
    pub max_batch: usize,
    /// Largest response, in bytes.
    pub max_response_bytes: usize,
    /// The ttl of a write that gives none.
    pub default_ttl: Duration,
    /// The longest ttl a write may ask for.
    pub max_ttl: Duration,
}

impl From<&Config> for Limits {
    fn from(config: &Config) -> Limits {
        Limits {
            max_key_bytes: config.max_key_bytes,
            max_value_bytes: config.max_value_bytes,
            max_batch: config.max_batch,
            max_response_bytes: config.max_response_bytes,
            default_ttl: config.default_ttl,
            max_ttl: config.max_ttl,
        }
    }
}

impl Limits {
    /// Checks a user key: not empty, not longer than the limit.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `field`.
    pub fn key<'k>(&self, field: &str, key: &'k str) -> Result<&'k str, Error> {
        if key.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if key.len() > self.max_key_bytes {
            return Err(Error::invalid(
                field,
                format!("is {} bytes, above the limit of {}", key.len(), self.max_key_bytes),
            ));
        }
        Ok(key)
    }

    /// Checks a value's size.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `field`.
    pub fn value(&self, field: &str, value: &[u8]) -> Result<(), Error> {
        if value.len() > self.max_value_bytes {
            return Err(Error::invalid(
                field,
                format!("is {} bytes, above the limit of {}", value.len(), self.max_value_bytes),
            ));
        }
        Ok(())
    }

    /// Checks the number of items in a batch.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `field`.
    pub fn batch(&self, field: &str, len: usize) -> Result<(), Error> {
        if len > self.max_batch {
            return Err(Error::invalid(
                field,
                format!("has {len} items, above the limit of {}", self.max_batch),
            ));
        }
        Ok(())
    }

    /// A write's ttl: the one given (positive, at most the maximum) or the default.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `field`.
    pub fn ttl_or_default(&self, field: &str, ttl: Option<&prost_types::Duration>) -> Result<Ttl, Error> {
        match ttl {
            None => Ok(Ttl::from_duration(self.default_ttl)),
            Some(ttl) => self.ttl(field, ttl),
        }
    }

    /// A required ttl: present, positive, at most the maximum.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `field`.
    pub fn required_ttl(&self, field: &str, ttl: Option<&prost_types::Duration>) -> Result<Ttl, Error> {
        let ttl = ttl.ok_or_else(|| Error::invalid(field, "is required"))?;
        self.ttl(field, ttl)
    }

    fn ttl(&self, field: &str, ttl: &prost_types::Duration) -> Result<Ttl, Error> {
        let duration = positive_duration(field, ttl)?;
        if duration > self.max_ttl {
            return Err(Error::invalid(
                field,
                format!(
                    "{} is above the maximum ttl of {}",
                    humantime::format_duration(duration),
                    humantime::format_duration(self.max_ttl)
                ),
            ));
        }
        Ok(Ttl::from_duration(duration))
    }
}

/// Converts a protobuf duration that must be above zero.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `field` for a zero, negative or malformed duration.
pub fn positive_duration(field: &str, duration: &prost_types::Duration) -> Result<Duration, Error> {
    if duration.seconds < 0 || duration.nanos < 0 || (duration.seconds == 0 && duration.nanos == 0) {
        return Err(Error::invalid(field, "must be greater than zero"));
    }
    if duration.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "has nanos outside 0..1e9"));
    }
    // Both parts are non-negative here, so the conversions cannot fail.
    let seconds = u64::try_from(duration.seconds).unwrap_or(0);
    let nanos = u32::try_from(duration.nanos).unwrap_or(0);
    Ok(Duration::new(seconds, nanos))
}

/// A server-side wait asked for in `field`: `unset` when the request gives none,
/// zero for an explicit zero (do not wait), at most `max` (its setting named as
/// `flag` in the refusal).
///
/// # Errors
/// [`Error::InvalidArgument`] naming `field` for a negative or malformed wait, or
/// one above `max`.
pub fn wait(
    field: &str,
    asked: Option<&prost_types::Duration>,
    unset: Duration,
    max: Duration,
    flag: &str,
) -> Result<Duration, Error> {
    let wait = match asked {
        None => unset,
        Some(wait) if wait.seconds == 0 && wait.nanos == 0 => Duration::ZERO,
        Some(wait) => positive_duration(field, wait)?,
    };
    if wait > max {
        return Err(Error::invalid(
            field,
            format!(
                "{} is above the maximum wait of {} (--{flag})",
                humantime::format_duration(wait),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(wait)
}

/// A validated time to live, in whole milliseconds (what Redis's PX takes), at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(u64);

impl Ttl {
    /// Rounds a positive duration up to whole milliseconds, so that a ttl never shrinks.
    pub(crate) fn from_duration(duration: Duration) -> Ttl {
        let millis = duration.as_nanos().div_ceil(1_000_000);
        Ttl(u64::try_from(millis).unwrap_or(u64::MAX).max(1))
    }

    /// The ttl in milliseconds.
    pub fn millis(self) -> u64 {
        self.0
    }
}

/// The INVALID_ARGUMENT for an all-or-none request whose keys `first` and
/// `other` (positions in the repeated `field`) live in different Redis Cluster
/// slots: one slot is the most that one atomic Redis operation can change.
pub fn cross_slot(field: &str, rpc: &str, keys: &[&str], first: usize, other: usize) -> Error {
    Error::invalid(
        field,
        format!(
            "{field}[{first}] {:?} and {field}[{other}] {:?} live in different Redis Cluster slots, and {rpc} \
             is all-or-none only within one slot: give every key the same hash tag, such as {{order:42}}:a and \
             {{order:42}}:b (a key with a {{…}} section hashes on that section alone)",
            keys.get(first).copied().unwrap_or_default(),
            keys.get(other).copied().unwrap_or_default(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::metadata::MetadataMap;

    use super::caller_budget;

    fn budget(timeout: &str) -> Duration {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", timeout.parse().unwrap());
        caller_budget(&metadata).unwrap().unwrap()
    }

    #[test]
    fn a_quarter_of_the_callers_time_is_kept_for_the_answers_way_back() {
        // With 50 ms, the answer leaves by 37.5 ms: a loaded machine's delays
        // fit in what is left (5 ms did not).
        assert_eq!(budget("50m"), Duration::from_micros(37_500));
        assert_eq!(budget("2S"), Duration::from_millis(1_750));
        assert_eq!(budget("1M"), Duration::from_secs(60) - Duration::from_millis(250));
    }
}
