//! Hostname patterns as Gateway API defines them: `*.example.com` matches one
//! or more labels in front of `example.com`, never `example.com` itself.

/// Whether `pattern` (exact or `*.` wildcard) covers `host`, which may itself be a wildcard.
pub(crate) fn covers(pattern: &str, host: &str) -> bool {
    if pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        // `*.a.com` covers `b.a.com`, `c.b.a.com` and `*.b.a.com`.
        Some(suffix) => {
            host.len() > suffix.len()
                && host.ends_with(suffix)
                && !host[..host.len() - suffix.len()].is_empty()
        }
        None => false,
    }
}

/// The hostnames a route serves through a listener (Gateway API hostname
/// intersection). `None` in, `["*"]`-like "any" out is spelled `"*"`.
pub(crate) fn intersect(listener: Option<&str>, route: &[String]) -> Vec<String> {
    let listener = listener.filter(|l| !l.is_empty());
    match (listener, route.is_empty()) {
        (None, true) => vec!["*".into()],
        (None, false) => route.to_vec(),
        (Some(l), true) => vec![l.into()],
        (Some(l), false) => {
            let mut out: Vec<String> = route
                .iter()
                .filter_map(|r| {
                    if covers(l, r) {
                        Some(r.clone())
                    } else if covers(r, l) {
                        Some(l.into())
                    } else {
                        None
                    }
                })
                .collect();
            out.sort();
            out.dedup();
            out
        }
    }
}

/// Validates a hostname as Gateway API and Ingress accept it: a DNS name,
/// optionally with a leading `*.` label, no IP addresses, no port.
pub(crate) fn valid(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Most specific first: exact names, then wildcards by length, then `*`.
pub(crate) fn specificity_order(a: &str, b: &str) -> std::cmp::Ordering {
    let rank = |h: &str| match h {
        "*" => (2, 0),
        h if h.starts_with('*') => (1, usize::MAX - h.len()),
        _ => (0, 0),
    };
    rank(a).cmp(&rank(b)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_or_more_labels() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*.example.com", "a.b.example.com"));
        assert!(covers("*.example.com", "*.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("a.example.com", "*.example.com"));
    }

    #[test]
    fn intersection_follows_the_spec() {
        assert_eq!(
            intersect(
                Some("*.example.com"),
                &["foo.example.com".into(), "other.org".into()]
            ),
            vec!["foo.example.com"]
        );
        assert_eq!(
            intersect(Some("foo.example.com"), &["*.example.com".into()]),
            vec!["foo.example.com"]
        );
        assert_eq!(intersect(None, &[]), vec!["*"]);
        assert_eq!(intersect(Some("a.com"), &[]), vec!["a.com"]);
        assert!(intersect(Some("a.com"), &["b.com".into()]).is_empty());
    }

    #[test]
    fn hostnames_are_validated() {
        assert!(valid("foo.example.com"));
        assert!(valid("*.example.com"));
        assert!(!valid("10.0.0.1"));
        assert!(!valid("Foo.com"));
        assert!(!valid("a.*.com"));
        assert!(!valid("foo.com:80"));
    }
}
