use pier_snapshot::*;
use std::collections::BTreeMap;
use std::net::IpAddr;

fn sample() -> Snapshot {
    let mut s = Snapshot::empty();
    s.backends.data.insert(
        "default/web:80".into(),
        BackendSet {
            port: 80,
            endpoints: vec![Endpoint {
                address: IpAddr::from([10, 1, 0, 1]),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                zone: Some("a".into()),
                node_name: None,
            }],
            ..Default::default()
        },
    );
    let source = RouteSource {
        kind: "HTTPRoute".into(),
        namespace: "default".into(),
        name: "web".into(),
        rule: 0,
        rule_name: None,
        match_index: 0,
    };
    s.routes.data.listeners.push(PortListener {
        port: 8080,
        protocol: PortProtocol::Http,
        sources: vec!["Gateway default/gw listener=http".into()],
        tls: vec![],
        virtual_hosts: vec![VirtualHost {
            hostname: "*".into(),
            single_label_wildcard: false,
            routes: vec![HttpRouteEntry {
                source,
                matcher: RequestMatch::default(),
                filters: vec![],
                action: RouteAction::Forward(vec![WeightedBackend {
                    backend: BackendRef::Service("default/web:80".into()),
                    weight: 1,
                    filters: vec![],
                }]),
                timeouts: Timeouts::default(),
                upstream: UpstreamProtocol::FromBackend,
            }],
        }],
        l4: None,
    });
    s
}

#[test]
fn a_consistent_snapshot_validates() {
    sample().validate().unwrap();
}

#[test]
fn a_dangling_backend_reference_is_rejected() {
    let mut s = sample();
    s.backends.data.clear();
    let err = s.validate().unwrap_err();
    assert!(
        err.to_string()
            .contains("missing backend set default/web:80"),
        "{err}"
    );
}

#[test]
fn wire_round_trip_is_lossless_and_checks_schema() {
    let s = sample();
    let frame = encode(&Message::Full(s.clone()));
    assert_eq!(decode(&frame).unwrap(), Message::Full(s));
    let mut other = frame.clone();
    other[4] = 99;
    assert!(matches!(
        decode(&other),
        Err(WireError::Schema { found: 99, .. })
    ));
    assert!(matches!(decode(b"nope"), Err(WireError::Truncated)));
    assert!(matches!(
        decode(&frame[..frame.len() / 2]),
        Err(WireError::Decode(_))
    ));
}

#[test]
fn an_endpoint_change_moves_only_the_backends_part() {
    let mut current = sample();
    let mut next = sample();
    next.backends
        .data
        .get_mut("default/web:80")
        .unwrap()
        .endpoints[0]
        .ready = false;
    let before = (current.routes.version, current.backends.version);
    let diff = current.advance(next);
    assert!(!diff.routes_changed());
    assert_eq!(diff.backends.changed, vec!["default/web:80".to_string()]);
    assert_eq!(current.routes.version, before.0);
    assert_eq!(current.backends.version, before.1 + 1);
}

#[test]
fn deltas_apply_only_to_their_base() {
    let old = sample();
    let mut new = old.clone();
    new.advance({
        let mut n = old.clone();
        n.backends
            .data
            .insert("default/other:81".into(), BackendSet::default());
        n
    });
    let delta = make_delta(&old, &new);
    assert!(delta.routes.is_none());
    let applied = apply_delta(&old, delta.clone()).unwrap();
    assert_eq!(applied, new);
    let frame = encode(&Message::Delta(delta.clone()));
    assert_eq!(decode(&frame).unwrap(), Message::Delta(delta.clone()));
    assert!(matches!(
        apply_delta(&new, delta),
        Err(WireError::DeltaBase {
            part: "backends",
            ..
        })
    ));
}

#[test]
fn diff_reports_added_and_removed_keys() {
    let a: BTreeMap<String, u8> = [("x".into(), 1), ("y".into(), 2)].into();
    let b: BTreeMap<String, u8> = [("y".into(), 3), ("z".into(), 4)].into();
    let d = diff_maps(&a, &b);
    assert_eq!(d.added, vec!["z".to_string()]);
    assert_eq!(d.removed, vec!["x".to_string()]);
    assert_eq!(d.changed, vec!["y".to_string()]);
}
