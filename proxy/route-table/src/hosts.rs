//! Hostname lookup: exact names in a hash map, wildcards by suffix (longest
//! first), then the catch-all `*`.

use std::collections::HashMap;

pub struct HostMap<T> {
    exact: HashMap<String, T>,
    /// (suffix including the leading dot, single-label only, pattern, value), longest suffix first.
    wildcards: Vec<(String, bool, String, T)>,
    any: Option<T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        HostMap {
            exact: HashMap::new(),
            wildcards: Vec::new(),
            any: None,
        }
    }
}

impl<T> HostMap<T> {
    /// Adds a pattern; the first value for a pattern wins.
    pub fn insert(&mut self, pattern: &str, single_label: bool, value: T) {
        let pattern = pattern.to_ascii_lowercase();
        if pattern == "*" {
            self.any.get_or_insert(value);
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            if !self
                .wildcards
                .iter()
                .any(|w| w.2 == pattern && w.1 == single_label)
            {
                self.wildcards
                    .push((suffix.to_string(), single_label, pattern.clone(), value));
                // Longest suffix first; Gateway-style before single-label on ties
                // keeps the order stable.
                self.wildcards
                    .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
            }
        } else {
            self.exact.entry(pattern).or_insert(value);
        }
    }

    /// The most specific pattern covering `host` (already lower-case, no port).
    pub fn lookup(&self, host: &str) -> Option<(&str, &T)> {
        if let Some((k, v)) = self.exact.get_key_value(host) {
            return Some((k.as_str(), v));
        }
        for (suffix, single_label, pattern, value) in &self.wildcards {
            if let Some(head) = host.strip_suffix(suffix.as_str()) {
                if !head.is_empty() && (!single_label || !head.contains('.')) {
                    return Some((pattern.as_str(), value));
                }
            }
        }
        self.any.as_ref().map(|v| ("*", v))
    }
}

/// Whether a listener hostname pattern covers a request host (Gateway rules).
pub fn pattern_covers(pattern: &str, host: &str) -> bool {
    match pattern {
        "*" => true,
        p if p.starts_with("*.") => host.strip_suffix(&p[1..]).is_some_and(|h| !h.is_empty()),
        p => p.eq_ignore_ascii_case(host),
    }
}
