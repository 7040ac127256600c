use super::*;
use pier_snapshot::{BackendSet, Endpoint, L4Service, SessionAffinity};

fn ep(last: u8, node: &str, zone: &str, ready: bool, terminating: bool) -> Endpoint {
    Endpoint {
        address: IpAddr::from([10, 244, 0, last]),
        port: 8080,
        ready,
        serving: ready || terminating,
        terminating,
        zone: Some(zone.into()),
        node_name: Some(node.into()),
    }
}

fn service(name: &str, vip: [u8; 4]) -> L4Service {
    L4Service {
        namespace: "default".into(),
        name: name.into(),
        port_name: "http".into(),
        protocol: pier_snapshot::L4Protocol::Tcp,
        port: 80,
        cluster_ips: vec![IpAddr::from(vip), "fd00::1".parse().unwrap()],
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        session_affinity: None,
        external_traffic_local: false,
        internal_traffic_local: false,
        prefer_close: false,
        health_check_node_port: None,
        backends: format!("default/{name}:80"),
    }
}

fn snapshot(services: Vec<(L4Service, Vec<Endpoint>)>) -> Snapshot {
    let mut s = Snapshot::empty();
    for (svc, eps) in services {
        s.backends.data.insert(
            svc.backends.clone(),
            BackendSet {
                port: 80,
                endpoints: eps,
                ..Default::default()
            },
        );
        s.services
            .data
            .insert(format!("default/{}:80/TCP", svc.name), svc);
    }
    s
}

fn node() -> NodeInfo {
    NodeInfo {
        name: "node-a".into(),
        zone: Some("z1".into()),
        addresses: vec![Ipv4Addr::new(192, 168, 1, 10)],
        addresses6: vec!["fd00:1::10".parse().unwrap()],
        maglev_table_size: 251,
    }
}

fn backends_of(state: &MapState, key: &Lb4Key) -> Vec<[u8; 4]> {
    let svc = state.services[key];
    (1..=u32::from(svc.backend_count))
        .map(|slot| {
            state.backends[&state.slots[&LbSlotKey {
                service_id: svc.service_id,
                slot,
            }]]
                .address
        })
        .collect()
}

fn key(vip: [u8; 4], port: u16, scope: u8) -> Lb4Key {
    Lb4Key {
        address: vip,
        port_be: port.to_be(),
        proto: PROTO_TCP,
        scope,
    }
}

#[test]
fn a_dual_stack_cluster_ip_gets_the_ready_endpoints_of_each_family() {
    let mut v6 = ep(4, "node-b", "z2", true, false);
    v6.address = "fd00:244::4".parse().unwrap();
    let s = snapshot(vec![(
        service("web", [10, 96, 0, 1]),
        vec![
            ep(1, "node-a", "z1", true, false),
            ep(2, "node-b", "z2", true, false),
            ep(3, "node-b", "z2", false, true),
            v6,
        ],
    )]);
    let state = plan(&s, &node(), &mut Ids::default());
    assert_eq!(state.services.len(), 1, "one IPv4 VIP");
    // The IPv6 ClusterIP (fd00::1) has its own service id and only the IPv6 endpoint.
    assert_eq!(state.services6.len(), 1);
    let (key6, svc6) = state.services6.iter().next().unwrap();
    assert_eq!(
        std::net::Ipv6Addr::from(key6.address),
        "fd00::1".parse::<std::net::Ipv6Addr>().unwrap()
    );
    assert_eq!(svc6.backend_count, 1);
    let id6 = state.slots[&LbSlotKey {
        service_id: svc6.service_id,
        slot: 1,
    }];
    assert_eq!(
        std::net::Ipv6Addr::from(state.backends6[&id6].address),
        "fd00:244::4".parse::<std::net::Ipv6Addr>().unwrap()
    );
    assert!(
        !state.backends.contains_key(&id6),
        "backend ids are unique across families"
    );
    assert_ne!(
        svc6.service_id,
        state.services[&key([10, 96, 0, 1], 80, SCOPE_CLUSTER)].service_id
    );
    assert_eq!(
        backends_of(&state, &key([10, 96, 0, 1], 80, SCOPE_CLUSTER)),
        vec![[10, 244, 0, 1], [10, 244, 0, 2]]
    );
    consistent(&state).unwrap();
}

#[test]
fn traffic_policies_zones_and_node_ports_shape_the_views() {
    let mut svc = service("web", [10, 96, 0, 1]);
    svc.node_port = Some(30080);
    svc.external_ips = vec![IpAddr::from([203, 0, 113, 7])];
    svc.external_traffic_local = true;
    svc.prefer_close = true;
    svc.session_affinity = Some(SessionAffinity {
        timeout_seconds: 600,
    });
    let eps = vec![
        ep(1, "node-a", "z1", true, false),
        ep(2, "node-b", "z2", true, false),
        ep(3, "node-c", "z1", true, false),
    ];
    let state = plan(&snapshot(vec![(svc, eps)]), &node(), &mut Ids::default());
    // Internal view: PreferClose keeps the same zone (z1): endpoints 1 and 3.
    assert_eq!(
        backends_of(&state, &key([10, 96, 0, 1], 80, SCOPE_CLUSTER)),
        vec![[10, 244, 0, 1], [10, 244, 0, 3]]
    );
    // NodePorts: ETP Local keeps this node's endpoint only.
    for k in [
        key([0, 0, 0, 0], 30080, SCOPE_NODEPORT),
        key([192, 168, 1, 10], 30080, SCOPE_NODEPORT),
    ] {
        assert_eq!(backends_of(&state, &k), vec![[10, 244, 0, 1]], "{k:?}");
        assert_ne!(state.services[&k].flags & SVC_LOCAL_EXTERNAL, 0);
    }
    // An externalIP reached from inside the cluster uses every (zone-preferred) endpoint.
    assert_eq!(
        backends_of(&state, &key([203, 0, 113, 7], 80, SCOPE_CLUSTER)),
        vec![[10, 244, 0, 1], [10, 244, 0, 3]]
    );
    // The same externalIP reached from outside (tc) follows ETP Local, and
    // picks by Maglev, like the NodePort.
    let outside = key([203, 0, 113, 7], 80, SCOPE_EXTERNAL);
    assert_eq!(backends_of(&state, &outside), vec![[10, 244, 0, 1]]);
    let external = state.services[&outside];
    assert_ne!(external.flags & SVC_MAGLEV, 0);
    assert_eq!(external.maglev_size, 251);
    let spec = &state.maglev[&external.service_id];
    assert_eq!(spec.backends.len(), 1);
    assert_eq!(spec.backends[0].0, "10.244.0.1:8080");
    let table = spec.table().unwrap();
    assert_eq!(table.len(), 251);
    assert!(table.iter().all(|id| *id == spec.backends[0].1));
    let internal = state.services[&key([10, 96, 0, 1], 80, SCOPE_CLUSTER)];
    assert_ne!(internal.flags & SVC_AFFINITY, 0);
    assert_eq!(internal.affinity_timeout_s, 600);
    assert_eq!(internal.flags & SVC_MAGLEV, 0, "socket LB picks at random");
    // The NodePort on the node's IPv6 address, for the tc path.
    let node6 = Lb6Key {
        address: "fd00:1::10".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        port_be: 30080u16.to_be(),
        proto: PROTO_TCP,
        scope: SCOPE_NODEPORT,
    };
    assert!(state.services6.contains_key(&node6));
    assert!(!state.maglev.contains_key(&internal.service_id));
}

#[test]
fn maglev_tables_name_backends_by_address_so_every_node_builds_the_same_one() {
    let mut svc = service("web", [10, 96, 0, 1]);
    svc.node_port = Some(30080);
    let eps: Vec<Endpoint> = (1..=5)
        .map(|i| ep(i, "node-b", "z2", true, false))
        .collect();
    let snap = snapshot(vec![(svc, eps)]);
    // Two nodes whose ids differ (one has seen other services first).
    let mut ids_a = Ids::default();
    let mut ids_b = Ids::default();
    let other = snapshot(vec![(
        service("other", [10, 96, 0, 2]),
        vec![ep(9, "x", "z", true, false)],
    )]);
    plan(&other, &node(), &mut ids_b);
    let a = plan(&snap, &node(), &mut ids_a);
    let b = plan(&snap, &node(), &mut ids_b);
    let by_address = |state: &MapState| -> Vec<[u8; 4]> {
        let k = key([0, 0, 0, 0], 30080, SCOPE_NODEPORT);
        let spec = &state.maglev[&state.services[&k].service_id];
        spec.table()
            .unwrap()
            .iter()
            .map(|id| state.backends[id].address)
            .collect()
    };
    assert_ne!(a.backends, b.backends, "the ids differ between the nodes");
    assert_eq!(by_address(&a), by_address(&b));
}

#[test]
fn prefer_close_never_picks_terminating_endpoints_over_ready_ones_elsewhere() {
    let mut svc = service("web", [10, 96, 0, 1]);
    svc.prefer_close = true;
    let eps = vec![
        ep(1, "node-a", "z1", false, true),
        ep(2, "node-b", "z2", true, false),
    ];
    let state = plan(&snapshot(vec![(svc, eps)]), &node(), &mut Ids::default());
    assert_eq!(
        backends_of(&state, &key([10, 96, 0, 1], 80, SCOPE_CLUSTER)),
        vec![[10, 244, 0, 2]]
    );
}

#[test]
fn terminating_endpoints_are_the_fallback_and_empty_services_have_no_slots() {
    let s = snapshot(vec![
        (
            service("draining", [10, 96, 0, 2]),
            vec![ep(5, "node-b", "z2", false, true)],
        ),
        (service("empty", [10, 96, 0, 3]), vec![]),
    ]);
    let state = plan(&s, &node(), &mut Ids::default());
    assert_eq!(
        backends_of(&state, &key([10, 96, 0, 2], 80, SCOPE_CLUSTER)),
        vec![[10, 244, 0, 5]]
    );
    let b = state.backends.values().next().unwrap();
    assert_ne!(b.flags & BACKEND_TERMINATING, 0);
    assert_eq!(
        state.services[&key([10, 96, 0, 3], 80, SCOPE_CLUSTER)].backend_count,
        0,
        "the connect is refused"
    );
}

/// Applies every diff op by op and checks the maps are consistent after each one.
fn walk(states: &[MapState]) {
    let mut kernel = MapState::default();
    for next in states {
        for op in diff(&kernel, next) {
            apply(&mut kernel, &op);
            consistent(&kernel).unwrap_or_else(|e| panic!("after {op:?}: {e}"));
        }
        assert_eq!(&kernel, next);
    }
}

#[test]
fn updates_never_expose_a_missing_slot_or_backend() {
    let mut ids = Ids::default();
    let node = node();
    let mut states = Vec::new();
    // Grow, shrink, replace, remove and re-add endpoints and services.
    let shapes: [&[u8]; 7] = [
        &[1, 2, 3],
        &[1, 2, 3, 4, 5],
        &[2],
        &[6, 7],
        &[],
        &[7, 8, 9],
        &[1],
    ];
    for (round, shape) in shapes.iter().enumerate() {
        let eps: Vec<Endpoint> = shape
            .iter()
            .map(|i| ep(*i, "node-b", "z2", true, false))
            .collect();
        let mut web = service("web", [10, 96, 0, 1]);
        web.node_port = Some(30080);
        let mut services = vec![(web, eps.clone())];
        if round % 2 == 0 {
            services.push((service("api", [10, 96, 0, 9]), eps));
        }
        states.push(plan(&snapshot(services), &node, &mut ids));
    }
    walk(&states);
}

#[test]
fn an_endpoint_change_touches_only_its_service() {
    let mut ids = Ids::default();
    let a = vec![ep(1, "n", "z", true, false)];
    let before = plan(
        &snapshot(vec![
            (service("web", [10, 96, 0, 1]), a.clone()),
            (
                service("api", [10, 96, 0, 2]),
                vec![ep(9, "n", "z", true, false)],
            ),
        ]),
        &node(),
        &mut ids,
    );
    let after = plan(
        &snapshot(vec![
            (service("web", [10, 96, 0, 1]), a),
            (
                service("api", [10, 96, 0, 2]),
                vec![ep(9, "n", "z", true, false), ep(10, "n", "z", true, false)],
            ),
        ]),
        &node(),
        &mut ids,
    );
    let ops = diff(&before, &after);
    assert_eq!(
        ops.len(),
        3,
        "new backend, new slot, service count: {ops:?}"
    );
    let web_id = before.services[&key([10, 96, 0, 1], 80, SCOPE_CLUSTER)].service_id;
    assert!(ops
        .iter()
        .all(|op| !matches!(op, MapOp::PutService(_, s) if s.service_id == web_id)));
}

#[test]
fn ids_of_services_and_endpoints_that_left_are_forgotten_but_never_reused() {
    let web = || {
        (
            service("web", [10, 96, 0, 1]),
            vec![ep(1, "n", "z", true, false)],
        )
    };
    let old = || {
        (
            service("old", [10, 96, 0, 2]),
            vec![ep(2, "n", "z", true, false)],
        )
    };
    let mut ids = Ids::default();
    let first = plan(&snapshot(vec![web(), old()]), &node(), &mut ids);
    let old_id = first.services[&key([10, 96, 0, 2], 80, SCOPE_CLUSTER)].service_id;
    plan(&snapshot(vec![web()]), &node(), &mut ids);
    assert_eq!(ids.services.len(), 2, "web's IPv4 and IPv6 ClusterIPs");
    assert_eq!(ids.backends.len(), 1);
    let again = plan(&snapshot(vec![web(), old()]), &node(), &mut ids);
    assert!(
        again.services[&key([10, 96, 0, 2], 80, SCOPE_CLUSTER)].service_id > old_id,
        "a returning service gets a fresh id"
    );
}

#[test]
fn an_ipv6_node_port_gets_its_own_maglev_table_over_ipv6_backends() {
    let mut svc = service("web", [10, 96, 0, 1]);
    svc.node_port = Some(30080);
    let mut v6 = ep(7, "node-b", "z2", true, false);
    v6.address = "fd00:244::7".parse().unwrap();
    let state = plan(
        &snapshot(vec![(svc, vec![ep(1, "node-a", "z1", true, false), v6])]),
        &node(),
        &mut Ids::default(),
    );
    let key = Lb6Key {
        address: "fd00:1::10".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        port_be: 30080u16.to_be(),
        proto: PROTO_TCP,
        scope: SCOPE_NODEPORT,
    };
    let value = state.services6[&key];
    assert_ne!(value.flags & SVC_MAGLEV, 0);
    let spec = &state.maglev[&value.service_id];
    assert_eq!(spec.backends.len(), 1);
    assert!(state.backends6.contains_key(&spec.backends[0].1));
    consistent(&state).unwrap();
}
