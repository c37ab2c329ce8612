//! Envoy rate-limit rules in envoyproxy/ratelimit's YAML format: loading,
//! validation and matching.
//!
//! A file holds one `domain` and a tree of `descriptors`. A request descriptor,
//! a list of (key, value) entries, walks down the tree one entry per level; at
//! each level the most specific node wins: key and value, then a wildcard value
//! (`*` matching any run of characters, the first pattern in file order), then
//! the key alone (each value its own counter). The rule applies only when the
//! walk ends exactly at the request's last entry.

use std::{
    collections::{HashMap, HashSet},
    fmt::{self, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::ratelimit::{Algorithm, MAX_LIMIT};

/// A rule's unit of time, with Envoy's numbering (`RateLimitResponse.RateLimit.Unit`
/// and `envoy.type.v3.RateLimitUnit` agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A second.
    Second,
    /// A minute.
    Minute,
    /// An hour.
    Hour,
    /// A day of 24 hours.
    Day,
    /// Seven days.
    Week,
    /// 30 days, as envoyproxy/ratelimit counts it.
    Month,
    /// 365 days, as envoyproxy/ratelimit counts it.
    Year,
}

impl Unit {
    const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The unit's length.
    pub fn period(self) -> Duration {
        const DAY: u64 = 24 * 60 * 60;
        Duration::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 60 * 60,
            Unit::Day => DAY,
            Unit::Week => 7 * DAY,
            Unit::Month => 30 * DAY,
            Unit::Year => 365 * DAY,
        })
    }

    /// Envoy's enum number.
    pub fn number(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// The unit of Envoy's enum number, if it is one.
    pub fn from_number(number: i32) -> Option<Unit> {
        Unit::ALL.into_iter().find(|unit| unit.number() == number)
    }

    /// The name configuration files use.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// The unit named `name`, in any case, as envoyproxy/ratelimit reads it.
    fn from_name(name: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|unit| unit.name().eq_ignore_ascii_case(name))
    }
}

/// How many requests a rule lets through per unit, counted how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// 0 refuses every request that costs anything.
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub algorithm: Algorithm,
}

impl Limit {
    /// The period in microseconds.
    pub fn period_micros(self) -> u64 {
        u64::try_from(self.unit.period().as_micros()).unwrap_or(u64::MAX)
    }

    /// The most requests per unit the rate limiter can count exactly in `unit`.
    pub fn max_requests_per_unit(unit: Unit) -> u64 {
        let period = u64::try_from(unit.period().as_micros()).unwrap_or(u64::MAX);
        MAX_LIMIT.min(period)
    }
}

/// One `rate_limit` block and the flags of its descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Where it is: the domain and the keys (and values) leading to it, dotted.
    pub path: String,
    /// Its `name`, for `replaces` and the response's `current_limit.name`.
    pub name: String,
    /// `None` for `unlimited: true`.
    pub limit: Option<Limit>,
    /// Decided and counted, but never refuses.
    pub shadow_mode: bool,
    /// Refuses only when every quota-mode descriptor of the request is over.
    pub quota_mode: bool,
    /// The names of the rules this one replaces when both match.
    pub replaces: Vec<String>,
}

/// A request descriptor's match: the rule and, per entry, the value its counter
/// is kept under (the wildcard pattern itself where the thresholds are shared).
#[derive(Debug)]
pub struct Matched<'a> {
    pub rule: &'a Rule,
    pub shared: Vec<Option<&'a str>>,
}

/// Every domain's rules, and the files they came from.
#[derive(Debug, Default)]
pub struct Rules {
    domains: HashMap<String, Level>,
    files: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct Level {
    /// Key, then value: looked up with the request's borrowed strings.
    exact: HashMap<String, HashMap<String, Node>>,
    wildcards: Vec<Wildcard>,
    any: HashMap<String, Node>,
}

#[derive(Debug)]
struct Wildcard {
    key: String,
    pattern: String,
    node: Node,
}

#[derive(Debug)]
struct Node {
    rule: Option<Rule>,
    share_threshold: bool,
    children: Level,
}

/// A configuration that cannot be used: which file, where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct RulesError {
    pub file: PathBuf,
    /// The problem, with its line and column when the YAML parser knows them.
    pub message: String,
}

impl Rules {
    /// Loads `path`: one YAML file, or every `*.yaml` and `*.yml` file of a
    /// directory (hidden ones skipped, as Kubernetes ConfigMap mounts need), one
    /// domain per file.
    ///
    /// # Errors
    /// The first file that cannot be read or is not a valid configuration, or a
    /// domain defined twice.
    pub fn load(path: &Path) -> Result<Rules, RulesError> {
        let error = |file: &Path, message: String| RulesError {
            file: file.to_owned(),
            message,
        };
        let files = if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| error(path, e.to_string()))?;
            let mut files = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| error(path, e.to_string()))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let file = entry.path();
                if !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && file.is_file() {
                    files.push(file);
                }
            }
            files.sort();
            files
        } else {
            vec![path.to_owned()]
        };
        let mut rules = Rules::default();
        let mut origin: HashMap<String, PathBuf> = HashMap::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| error(&file, e.to_string()))?;
            let root = Rules::parse(&text).map_err(|message| error(&file, message))?;
            if let Some(first) = origin.get(&root.domain) {
                return Err(error(
                    &file,
                    format!("domain '{}' is already defined in {}", root.domain, first.display()),
                ));
            }
            origin.insert(root.domain.clone(), file.clone());
            let level = Level::build(&root.domain, root.descriptors.0);
            rules.domains.insert(root.domain, level);
            rules.files.push(file);
        }
        Ok(rules)
    }

    /// Parses and validates one file's text.
    fn parse(text: &str) -> Result<Root, String> {
        serde_yaml_ng::from_str::<Root>(text).map_err(|error| error.to_string())
    }

    /// Whether no domain is configured.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The files the rules came from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The rule for `entries` in `domain`, if any.
    pub fn find<'a>(&'a self, domain: &str, entries: &[(&str, &str)]) -> Option<Matched<'a>> {
        let mut level = self.domains.get(domain)?;
        let mut shared = Vec::with_capacity(entries.len());
        for (depth, (key, value)) in entries.iter().enumerate() {
            let node = if let Some(node) = level.exact.get(*key).and_then(|values| values.get(*value)) {
                shared.push(None);
                node
            } else if let Some(wildcard) = level
                .wildcards
                .iter()
                .find(|wildcard| wildcard.key == *key && wildcard_match(&wildcard.pattern, value))
            {
                shared.push(wildcard.node.share_threshold.then_some(wildcard.pattern.as_str()));
                &wildcard.node
            } else {
                shared.push(None);
                level.any.get(*key)?
            };
            if depth + 1 == entries.len() {
                return node.rule.as_ref().map(|rule| Matched { rule, shared });
            }
            level = &node.children;
        }
        None
    }

    /// Every rule, one line each, as `check-rls-config` prints them.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let mut domains: Vec<_> = self.domains.iter().collect();
        domains.sort_by(|a, b| a.0.cmp(b.0));
        for (_, level) in domains {
            level.describe(&mut out);
        }
        out
    }
}

impl Level {
    fn build(parent: &str, descriptors: Vec<Descriptor>) -> Level {
        let mut level = Level::default();
        for descriptor in descriptors {
            let path = match &descriptor.value {
                Some(value) => format!("{parent}.{}_{value}", descriptor.key),
                None => format!("{parent}.{}", descriptor.key),
            };
            let node = Node {
                rule: descriptor.rate_limit.map(|block| Rule {
                    path: path.clone(),
                    name: block.name,
                    limit: block.limit,
                    shadow_mode: descriptor.shadow_mode,
                    quota_mode: descriptor.quota_mode,
                    replaces: block.replaces,
                }),
                share_threshold: descriptor.share_threshold,
                children: Level::build(&path, descriptor.descriptors.0),
            };
            match descriptor.value {
                Some(pattern) if pattern.contains('*') => level.wildcards.push(Wildcard {
                    key: descriptor.key,
                    pattern,
                    node,
                }),
                Some(value) => {
                    level.exact.entry(descriptor.key).or_default().insert(value, node);
                }
                None => {
                    level.any.insert(descriptor.key, node);
                }
            }
        }
        level
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.exact
            .values()
            .flat_map(HashMap::values)
            .chain(self.wildcards.iter().map(|wildcard| &wildcard.node))
            .chain(self.any.values())
    }

    fn describe(&self, out: &mut String) {
        let mut lines = Vec::new();
        self.collect(&mut lines);
        lines.sort();
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }

    fn collect(&self, lines: &mut Vec<String>) {
        for node in self.nodes() {
            if let Some(rule) = &node.rule {
                let mut line = format!("{}: ", rule.path);
                match rule.limit {
                    Some(limit) => {
                        let _ = write!(
                            line,
                            "{} per {} ({})",
                            limit.requests_per_unit,
                            limit.unit.name(),
                            algorithm_name(limit.algorithm)
                        );
                    }
                    None => line.push_str("unlimited"),
                }
                if !rule.name.is_empty() {
                    let _ = write!(line, ", name {}", rule.name);
                }
                if !rule.replaces.is_empty() {
                    let _ = write!(line, ", replaces {}", rule.replaces.join(" "));
                }
                if rule.shadow_mode {
                    line.push_str(", shadow mode");
                }
                if rule.quota_mode {
                    line.push_str(", quota mode");
                }
                if node.share_threshold {
                    line.push_str(", shared threshold");
                }
                lines.push(line);
            }
            node.children.collect(lines);
        }
    }
}

/// The name an `algorithm:` field gives the algorithm.
pub fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::TokenBucket => "token_bucket",
        Algorithm::FixedWindow => "fixed_window",
        Algorithm::SlidingWindow => "sliding_window",
    }
}

/// Whether `value` matches `pattern`, each `*` of which matches any run of
/// characters (none included).
fn wildcard_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        return rest.is_empty();
    };
    let Some(before_last) = rest.strip_suffix(last) else {
        return false;
    };
    rest = before_last;
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

// The file format. Every check happens while deserialising, so that the parser
// reports it with the line and column of the offending node.

#[derive(Debug, Deserialize)]
#[serde(try_from = "RawRoot")]
struct Root {
    domain: String,
    descriptors: Descriptors,
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
struct Descriptors(Vec<Descriptor>);

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
struct Descriptor {
    key: String,
    /// `None` for a missing or empty value: the key alone.
    value: Option<String>,
    rate_limit: Option<RateLimitBlock>,
    descriptors: Descriptors,
    shadow_mode: bool,
    quota_mode: bool,
    share_threshold: bool,
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
struct RateLimitBlock {
    name: String,
    limit: Option<Limit>,
    replaces: Vec<String>,
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
            let limit = Limit {
                requests_per_unit,
                unit,
                algorithm,
            };
            let cap = Limit::max_requests_per_unit(unit);
            if u64::from(requests_per_unit) > cap {
                return Err(format!(
                    "requests_per_unit {requests_per_unit} is above {cap}, the most a {} can count",
                    unit.name()
                ));
            }
            Some(limit)
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

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_runs_of_characters_in_order() {
        assert!(wildcard_match("value*", "value1"));
        assert!(wildcard_match("value*", "value"));
        assert!(!wildcard_match("value*", "valu"));
        assert!(wildcard_match("/api/*/action", "/api/123/action"));
        assert!(!wildcard_match("/api/*/action", "/api/123/other"));
        assert!(wildcard_match(
            "/api/*/resource/*/action",
            "/api/v1/resource/123/action"
        ));
        assert!(!wildcard_match("/api/*/resource/*/action", "/api/v1/other/123/action"));
        assert!(!wildcard_match("a*a", "a"));
        assert!(wildcard_match("a*a", "aa"));
    }

    #[test]
    fn problems_name_their_line() {
        let text =
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n";
        let Err(message) = Rules::parse(text) else {
            panic!("a fortnight is not a unit");
        };
        assert!(message.contains("invalid rate limit unit 'fortnight'"), "{message}");
        // The descriptor holding the bad block.
        assert!(
            message.contains("descriptors[0]") && message.contains("line 3"),
            "{message}"
        );
    }
}
