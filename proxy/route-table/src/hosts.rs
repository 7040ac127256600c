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

/// Why a `host[:port]` authority does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("an IPv6 literal without its closing bracket")]
    UnclosedBracket,
    #[error("something other than a port after the host")]
    InvalidPort,
}

/// Splits a Host header or URL authority, `host[:port]`, into the host and
/// the port. IPv6 literals come in brackets (`[::1]:8080`); the host is
/// returned without them. An empty port (`host:`) is no port (RFC 3986).
/// A bare IPv6 address (several colons, no brackets) is all host.
pub fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), AuthorityError> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or(AuthorityError::UnclosedBracket)?;
        match after {
            "" => return Ok((host, None)),
            _ => (
                host,
                after.strip_prefix(':').ok_or(AuthorityError::InvalidPort)?,
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, port),
            _ => return Ok((authority, None)),
        }
    };
    if port.is_empty() {
        return Ok((host, None));
    }
    // `u16::from_str` takes a leading `+`; a port is digits only.
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::InvalidPort);
    }
    let port = port.parse().map_err(|_| AuthorityError::InvalidPort)?;
    Ok((host, Some(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        fn ok(a: &str) -> (&str, Option<u16>) {
            split_host_port(a).unwrap()
        }
        assert_eq!(ok("example.com"), ("example.com", None));
        assert_eq!(ok("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(ok("example.com:"), ("example.com", None));
        assert_eq!(ok("10.0.0.1:80"), ("10.0.0.1", Some(80)));
        // IPv6 literals: the brackets go, the colons inside stay.
        assert_eq!(ok("[::1]"), ("::1", None));
        assert_eq!(ok("[::1]:8443"), ("::1", Some(8443)));
        assert_eq!(ok("[2001:db8::7]:"), ("2001:db8::7", None));
        assert_eq!(ok("::1"), ("::1", None), "a bare IPv6 address is all host");
        assert_eq!(ok(""), ("", None));
        let err = |a: &str| split_host_port(a).unwrap_err();
        assert_eq!(err("[::1"), AuthorityError::UnclosedBracket);
        assert_eq!(err("[::1]x"), AuthorityError::InvalidPort);
        assert_eq!(err("[::1]:x"), AuthorityError::InvalidPort);
        assert_eq!(err("a:99999"), AuthorityError::InvalidPort);
        assert_eq!(err("a:+80"), AuthorityError::InvalidPort);
        assert_eq!(err("a:http"), AuthorityError::InvalidPort);
    }
}
