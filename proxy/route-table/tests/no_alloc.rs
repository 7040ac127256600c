//! The match path does not allocate: a counting global allocator around
//! `RouteTable::select` for hits, misses on method / header / query, regex
//! paths and 404s. (Its own test binary: the counter sees only this test.)

// A global allocator is unsafe to implement; this one only counts and forwards.
#![allow(unsafe_code)]

use pier_route_table::{RequestInfo, RouteTable, Selection};
use pier_snapshot::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn entry(name: &str, path: PathMatch, method: Option<&str>, query: bool) -> HttpRouteEntry {
    HttpRouteEntry {
        source: RouteSource {
            kind: "HTTPRoute".into(),
            namespace: "default".into(),
            name: name.into(),
            rule: 0,
            rule_name: None,
            match_index: 0,
        },
        matcher: RequestMatch {
            path,
            method: method.map(Into::into),
            headers: vec![ValueMatch {
                name: "x-v".into(),
                kind: ValueMatchKind::Regex,
                value: "[0-9]+".into(),
            }],
            query_params: if query {
                vec![ValueMatch {
                    name: "q".into(),
                    kind: ValueMatchKind::Exact,
                    value: "1".into(),
                }]
            } else {
                vec![]
            },
        },
        filters: vec![],
        action: RouteAction::Respond {
            status: 200,
            reason: name.into(),
        },
        timeouts: Timeouts::default(),
        upstream: UpstreamProtocol::FromBackend,
    }
}

#[test]
fn selecting_a_route_does_not_allocate() {
    let mut s = Snapshot::empty();
    s.routes.data.listeners = vec![PortListener {
        port: 80,
        protocol: PortProtocol::Http,
        sources: vec![],
        tls: vec![],
        virtual_hosts: vec![VirtualHost {
            hostname: "a.test".into(),
            single_label_wildcard: false,
            routes: vec![
                entry(
                    "post",
                    PathMatch::Prefix("/api".into()),
                    Some("POST"),
                    false,
                ),
                entry("query", PathMatch::Prefix("/api/v1".into()), None, true),
                entry("re", PathMatch::Regex("/api/v[0-9]+/x".into()), None, false),
                entry("api", PathMatch::Prefix("/api".into()), None, false),
            ],
        }],
        l4: None,
    }];
    let table = RouteTable::build(&s).unwrap();
    let headers = vec![("X-V".to_string(), "42".to_string())];
    let mut counts = Vec::new();
    let cases = [
        ("a.test:80", "/api/v1/x", None, "re"),
        ("a.test", "/api/v1/y", Some("q=1"), "query"),
        ("a.test", "/api/v2", Some("q=2"), "api"),
        ("[::1]:80", "/api", None, "404"),
        ("a.test", "/other", None, "404"),
    ];
    // Twice: the first run lets the regex crate build its per-thread match
    // cache (once per thread, not per request); the second must not allocate.
    for (host, path, query, want) in cases.into_iter().chain(cases) {
        let req = RequestInfo {
            port: 80,
            sni: None,
            host,
            method: "GET",
            path,
            query,
            headers: &headers,
        };
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let got = match table.select(&req) {
            Selection::Route(e) => e.source.name.as_str(),
            Selection::NotFound => "404",
            other => panic!("{other:?}"),
        };
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(got, want, "{host} {path}");
        counts.push(allocations);
    }
    assert_eq!(counts[cases.len()..], [0; 5], "allocations per request");
}
