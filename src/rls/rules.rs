//! Envoy rate-limit rules: loaded from envoyproxy/ratelimit's YAML files
//! ([`format`]), and matched against request descriptors.
//!
//! A file holds one `domain` and a tree of `descriptors`. A request descriptor,
//! a list of (key, value) entries, walks down the tree one entry per level; at
//! each level the most specific node wins: key and value, then a wildcard value
//! (`*` matching any run of characters, the first pattern in file order), then
//! the key alone (each value its own counter). The rule applies only when the
//! walk ends exactly at the request's last entry.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use super::{
    format::{self, Descriptor},
    limit::Limit,
};

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
pub struct Found<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// Per entry: the wildcard pattern a counter shared by every matching value
    /// is kept under, or `None` for the entry's own value.
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
            let root = format::parse(&text).map_err(|message| error(&file, message))?;
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

    /// Whether no domain is configured.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The files the rules came from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The rule for `entries` in `domain`, if any.
    pub fn find<'a>(&'a self, domain: &str, entries: &[(&str, &str)]) -> Option<Found<'a>> {
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
                return node.rule.as_ref().map(|rule| Found { rule, shared });
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
                match &rule.limit {
                    Some(limit) => line.push_str(&limit.describe()),
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
}
