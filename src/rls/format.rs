//! envoyproxy/ratelimit's YAML file format. Every check happens while
//! deserialising, so that the parser reports it with the line and column of the
//! offending node; files of envoyproxy/ratelimit load unchanged.

use std::collections::HashSet;

use serde::Deserialize;

use super::limit::{Limit, Unit};
use crate::ratelimit::{Algorithm, Calendar};

/// Parses and validates one file's text.
pub fn parse(text: &str) -> Result<Root, String> {
    serde_yaml_ng::from_str::<Root>(text).map_err(|error| error.to_string())
}

/// One file: a domain and its tree of descriptors.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawRoot")]
pub struct Root {
    /// Never empty.
    pub domain: String,
    /// The top level of the tree.
    pub descriptors: Descriptors,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoot {
    domain: Option<String>,
    descriptors: Option<Descriptors>,
}

impl TryFrom<RawRoot> for Root {
    type Error = String;

    fn try_from(raw: RawRoot) -> Result<Root, String> {
        let domain = raw.domain.unwrap_or_default();
        if domain.is_empty() {
            return Err("config file cannot have empty domain".to_owned());
        }
        Ok(Root {
            domain,
            descriptors: raw.descriptors.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(try_from = "Vec<Descriptor>")]
/// One level of the tree: no two descriptors with the same key and value.
pub struct Descriptors(pub Vec<Descriptor>);

impl TryFrom<Vec<Descriptor>> for Descriptors {
    type Error = String;

    fn try_from(descriptors: Vec<Descriptor>) -> Result<Descriptors, String> {
        let mut seen = HashSet::new();
        for descriptor in &descriptors {
            let composite = match &descriptor.value {
                Some(value) => format!("{}_{value}", descriptor.key),
                None => descriptor.key.clone(),
            };
            if !seen.insert((descriptor.key.clone(), descriptor.value.clone())) {
                return Err(format!("duplicate descriptor composite key '{composite}'"));
            }
        }
        Ok(Descriptors(descriptors))
    }
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "RawDescriptor")]
/// One node of the tree, checked.
pub struct Descriptor {
    /// Never empty.
    pub key: String,
    /// `None` for a missing or empty value: the key alone.
    pub value: Option<String>,
    /// The limit at this node, if any.
    pub rate_limit: Option<RateLimitBlock>,
    /// The level below.
    pub descriptors: Descriptors,
    /// Decided and counted, but never refuses.
    pub shadow_mode: bool,
    /// Refuses only when every quota-mode limit of the request is over.
    pub quota_mode: bool,
    /// A wildcard value's matches share one counter (only with a `*` value).
    pub share_threshold: bool,
}

/// A descriptor as written. `detailed_metric`, `value_to_metric` and `metadata`
/// shape envoyproxy/ratelimit's per-descriptor statistics and response metadata;
/// they are accepted so that its files load unchanged, and have no effect here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: Option<String>,
    value: Option<ScalarString>,
    rate_limit: Option<RateLimitBlock>,
    descriptors: Option<Descriptors>,
    shadow_mode: Option<bool>,
    quota_mode: Option<bool>,
    share_threshold: Option<bool>,
    #[serde(rename = "detailed_metric")]
    _detailed_metric: Option<bool>,
    #[serde(rename = "value_to_metric")]
    _value_to_metric: Option<bool>,
    #[serde(rename = "metadata")]
    _metadata: Option<serde_yaml_ng::Value>,
}

impl TryFrom<RawDescriptor> for Descriptor {
    type Error = String;

    fn try_from(raw: RawDescriptor) -> Result<Descriptor, String> {
        let key = raw.key.unwrap_or_default();
        if key.is_empty() {
            return Err("descriptor has empty key".to_owned());
        }
        let value = raw.value.map(|value| value.0).filter(|value| !value.is_empty());
        let share_threshold = raw.share_threshold.unwrap_or(false);
        if share_threshold && !value.as_deref().is_some_and(|value| value.contains('*')) {
            return Err(format!(
                "share_threshold can only be used with wildcard values (containing '*'), but found key '{key}'"
            ));
        }
        Ok(Descriptor {
            key,
            value,
            rate_limit: raw.rate_limit,
            descriptors: raw.descriptors.unwrap_or_default(),
            shadow_mode: raw.shadow_mode.unwrap_or(false),
            quota_mode: raw.quota_mode.unwrap_or(false),
            share_threshold,
        })
    }
}

/// A scalar read as text, as Go's YAML reads `value: 2061234567` into a string.
struct ScalarString(String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ScalarString, D::Error> {
        use serde::de::Error as _;
        match serde_yaml_ng::Value::deserialize(deserializer)? {
            serde_yaml_ng::Value::String(text) => Ok(ScalarString(text)),
            serde_yaml_ng::Value::Number(number) => Ok(ScalarString(number.to_string())),
            serde_yaml_ng::Value::Bool(flag) => Ok(ScalarString(flag.to_string())),
            serde_yaml_ng::Value::Null => Ok(ScalarString(String::new())),
            _ => Err(D::Error::custom("value must be a string")),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "RawRateLimit")]
/// A `rate_limit` block, checked.
pub struct RateLimitBlock {
    /// For `replaces` and the response's `current_limit.name`; may be empty.
    pub name: String,
    /// `None` for `unlimited: true`.
    pub limit: Option<Limit>,
    /// The names of the rules this one replaces.
    pub replaces: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests_per_unit: Option<u32>,
    unit: Option<String>,
    unlimited: Option<bool>,
    name: Option<String>,
    replaces: Option<Vec<Replaces>>,
    /// cachelock's own field: envoyproxy/ratelimit always counts fixed windows.
    algorithm: Option<String>,
    /// How many units one window holds, as envoyproxy/ratelimit reads it.
    unit_multiplier: Option<u32>,
    /// cachelock's own field: fixed windows aligned to the calendar of this IANA
    /// time zone ("UTC", "Europe/Berlin").
    calendar: Option<String>,
    /// cachelock's own field: decided from slices leased from Redis.
    leased: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replaces {
    name: Option<String>,
}

impl TryFrom<RawRateLimit> for RateLimitBlock {
    type Error = String;

    fn try_from(raw: RawRateLimit) -> Result<RateLimitBlock, String> {
        let name = raw.name.unwrap_or_default();
        let unit_name = raw.unit.unwrap_or_default();
        let unit = Unit::from_name(&unit_name);
        let limit = if raw.unlimited.unwrap_or(false) {
            if unit.is_some() {
                return Err("should not specify rate limit unit when unlimited".to_owned());
            }
            if raw.unit_multiplier.is_some() || raw.calendar.is_some() || raw.leased.is_some() {
                return Err("should not specify unit_multiplier, calendar or leased when unlimited".to_owned());
            }
            None
        } else {
            let unit = unit.ok_or_else(|| {
                format!("invalid rate limit unit '{unit_name}' (second, minute, hour, day, week, month or year)")
            })?;
            let algorithm = match raw.algorithm.as_deref() {
                None | Some("fixed_window") => Algorithm::FixedWindow,
                Some("token_bucket") => Algorithm::TokenBucket,
                Some("sliding_window") => Algorithm::SlidingWindow,
                Some(other) => {
                    return Err(format!(
                        "invalid algorithm '{other}' (fixed_window, token_bucket or sliding_window)"
                    ));
                }
            };
            let requests_per_unit = raw.requests_per_unit.unwrap_or(0);
            let unit_multiplier = raw.unit_multiplier.unwrap_or(1);
            if unit_multiplier == 0 {
                return Err("unit_multiplier must be at least 1".to_owned());
            }
            let calendar = match raw.calendar {
                None => None,
                Some(_) if algorithm != Algorithm::FixedWindow => {
                    return Err(
                        "a calendar window counts as fixed_window: leave algorithm unset or give that".to_owned(),
                    );
                }
                Some(zone) => Some(
                    Calendar::new(unit.calendar_unit(), unit_multiplier, &zone)
                        .map_err(|error| format!("calendar {zone} with {unit_multiplier} {unit}: {error}"))?,
                ),
            };
            let leased = raw.leased.unwrap_or(false);
            if leased && algorithm == Algorithm::SlidingWindow {
                return Err("leased is for token_bucket and fixed_window".to_owned());
            }
            let cap = Limit::max_requests_per_unit(unit, unit_multiplier);
            if u64::from(requests_per_unit) > cap {
                return Err(format!(
                    "requests_per_unit {requests_per_unit} is above {cap}, the most {unit_multiplier} {} can count",
                    unit.name()
                ));
            }
            Some(Limit {
                requests_per_unit,
                unit,
                unit_multiplier,
                algorithm,
                calendar,
                leased,
            })
        };
        let mut replaces = Vec::new();
        for entry in raw.replaces.unwrap_or_default() {
            let replaced = entry.name.unwrap_or_default();
            if replaced.is_empty() {
                return Err("should not have an empty replaces entry".to_owned());
            }
            if replaced == name {
                return Err("replaces should not contain name of same descriptor".to_owned());
            }
            replaces.push(replaced);
        }
        Ok(RateLimitBlock { name, limit, replaces })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_their_line() {
        let text =
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n";
        let Err(message) = parse(text) else {
            panic!("a fortnight is not a unit");
        };
        assert!(message.contains("invalid rate limit unit 'fortnight'"), "{message}");
        // The descriptor holding the bad block.
        assert!(
            message.contains("descriptors[0]") && message.contains("line 3"),
            "{message}"
        );
    }

    #[test]
    fn windows_of_several_units_and_calendars_are_checked() {
        let rule = |fields: &str| format!("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{{fields}}}\n");
        let Ok(root) = parse(&rule(
            "unit: minute, unit_multiplier: 15, requests_per_unit: 5, calendar: Europe/Berlin",
        )) else {
            panic!("a quarter hour in Berlin is a window");
        };
        let limit = root.descriptors.0[0]
            .rate_limit
            .as_ref()
            .and_then(|block| block.limit.clone())
            .expect("a limit");
        assert_eq!(
            limit.describe(),
            "5 per 15 minute (fixed_window, calendar Europe/Berlin)"
        );
        assert_eq!(limit.period_micros(), 0);
        let Ok(root) = parse(&rule("unit: hour, unit_multiplier: 3, requests_per_unit: 5")) else {
            panic!("three hours is a window");
        };
        let limit = root.descriptors.0[0]
            .rate_limit
            .as_ref()
            .and_then(|block| block.limit.clone())
            .expect("a limit");
        assert_eq!(limit.period_micros(), 3 * 3600 * 1_000_000);
        for (fields, problem) in [
            (
                "unit: minute, unit_multiplier: 0, requests_per_unit: 5",
                "unit_multiplier must be at least 1",
            ),
            (
                "unit: minute, unit_multiplier: 7, requests_per_unit: 5, calendar: UTC",
                "must divide 60",
            ),
            (
                "unit: day, requests_per_unit: 5, calendar: Mars/Olympus",
                "Mars/Olympus",
            ),
            (
                "unit: day, requests_per_unit: 5, calendar: UTC, algorithm: token_bucket",
                "counts as fixed_window",
            ),
            ("unlimited: true, calendar: UTC", "when unlimited"),
            (
                "unit: second, requests_per_unit: 5, algorithm: sliding_window, leased: true",
                "leased is for",
            ),
        ] {
            let Err(message) = parse(&rule(fields)) else {
                panic!("{fields} is refused");
            };
            assert!(message.contains(problem), "{fields}: {message}");
        }
    }
}
