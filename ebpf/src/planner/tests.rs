use super::*;
use crate::maps::*;
use crate::plan::{consistent, plan};
use pier_snapshot::{BackendSet, Endpoint, L4Service};
use std::net::IpAddr;

fn ep(last: u8) -> Endpoint {
    Endpoint {
        address: IpAddr::from([10, 244, 0, last]),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        zone: None,
        node_name: Some("node-a".into()),
    }
}

fn service(name: &str, vip: u8, set: &str, node_port: Option<u16>) -> L4Service {
    L4Service {
        namespace: "default".into(),
        name: name.into(),
        port_name: "http".into(),
        protocol: pier_snapshot::L4Protocol::Tcp,
        port: 80,
        cluster_ips: vec![IpAddr::from([10, 96, 0, vip])],
        node_port,
        external_ips: vec![],
        load_balancer_ips: vec![],
        session_affinity: None,
        external_traffic_local: false,
        internal_traffic_local: false,
        prefer_close: false,
        health_check_node_port: None,
        backends: set.into(),
    }
}

/// Services (name, vip, backend set, nodePort) and backend sets (name, endpoints).
fn snapshot(services: &[(&str, u8, &str, Option<u16>)], sets: &[(&str, &[u8])]) -> Snapshot {
    let mut s = Snapshot::empty();
    for (name, eps) in sets {
        let set = BackendSet {
            port: 80,
            endpoints: eps.iter().map(|i| ep(*i)).collect(),
            ..Default::default()
        };
        s.backends.data.insert(name.to_string(), set);
    }
    for (name, vip, set, node_port) in services {
        s.services
            .data
            .insert(name.to_string(), service(name, *vip, set, *node_port));
    }
    s
}

/// What each service address resolves to, whatever the ids: backend
/// addresses in slot order and the Maglev table as addresses.
fn resolved(state: &MapState) -> BTreeMap<Lb4Key, (Vec<Lb4Backend>, Vec<[u8; 4]>)> {
    state
        .services
        .iter()
        .map(|(k, svc)| {
            let backends = (1..=u32::from(svc.backend_count))
                .map(|slot| {
                    let key = LbSlotKey {
                        service_id: svc.service_id,
                        slot,
                    };
                    state.backends[&state.slots[&key]]
                })
                .collect();
            let table = state
                .maglev
                .get(&svc.service_id)
                .map_or_else(Vec::new, |spec| {
                    spec.table()
                        .unwrap()
                        .iter()
                        .map(|id| state.backends[id].address)
                        .collect()
                });
            (*k, (backends, table))
        })
        .collect()
}

fn node() -> NodeInfo {
    NodeInfo {
        name: "node-a".into(),
        maglev_table_size: 13,
        ..Default::default()
    }
}

#[test]
fn incremental_updates_reach_the_same_maps_as_a_full_plan_without_a_broken_step() {
    let steps = [
        snapshot(
            &[("web", 1, "web", None), ("api", 2, "shared", Some(30080))],
            &[("web", &[1, 2]), ("shared", &[2, 3])],
        ),
        // An endpoint joins one set; a second service starts sharing a set.
        snapshot(
            &[
                ("web", 1, "web", None),
                ("api", 2, "shared", Some(30080)),
                ("api2", 3, "shared", None),
            ],
            &[("web", &[1, 2, 4]), ("shared", &[2, 3])],
        ),
        // An endpoint used by two sets leaves one of them; one service leaves.
        snapshot(
            &[("web", 1, "web", None), ("api2", 3, "shared", None)],
            &[("web", &[1, 4]), ("shared", &[2, 3])],
        ),
        // Everything empties, then comes back.
        snapshot(&[("web", 1, "web", None)], &[("web", &[])]),
        snapshot(
            &[("web", 1, "web", Some(30081)), ("api", 2, "shared", None)],
            &[("web", &[5]), ("shared", &[5, 6])],
        ),
    ];
    let mut planner = Planner::new(node(), MapState::default(), IdCounters::default());
    let mut kernel = MapState::default();
    let mut previous = Snapshot::empty();
    for (i, snap) in steps.iter().enumerate() {
        let changes = pier_snapshot::diff(&previous, snap);
        let services = changes
            .services
            .added
            .iter()
            .chain(&changes.services.changed)
            .chain(&changes.services.removed);
        let sets = changes
            .backends
            .added
            .iter()
            .chain(&changes.backends.changed)
            .chain(&changes.backends.removed);
        let touched = planner.touched(services, sets);
        let ops = if i == 0 {
            planner.full(snap)
        } else {
            planner.update(snap, &touched)
        };
        for op in &ops {
            apply(&mut kernel, op);
            consistent(&kernel).unwrap_or_else(|e| panic!("step {i}, after {op:?}: {e}"));
        }
        assert_eq!(
            &kernel,
            planner.state(),
            "step {i}: the planner's view is the kernel's"
        );
        let fresh = plan(snap, &node(), &mut Ids::default());
        assert_eq!(resolved(&kernel), resolved(&fresh), "step {i}");
        assert_eq!(
            kernel.backends.len(),
            fresh.backends.len(),
            "step {i}: no leftover backends"
        );
        previous = snap.clone();
    }
}

#[test]
fn an_endpoint_change_re_plans_only_the_services_using_that_set() {
    let names: Vec<String> = (0..200).map(|i| format!("svc{i}")).collect();
    let services: Vec<(&str, u8, &str, Option<u16>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u8, n.as_str(), None))
        .collect();
    let sets: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &[1u8, 2][..])).collect();
    let before = snapshot(&services, &sets);
    let mut after = before.clone();
    after
        .backends
        .data
        .get_mut("svc7")
        .unwrap()
        .endpoints
        .push(ep(9));
    let mut planner = Planner::new(node(), MapState::default(), IdCounters::default());
    planner.full(&before);
    let touched = planner.touched([], [&"svc7".to_string()]);
    assert_eq!(touched, BTreeSet::from(["svc7".to_string()]));
    let ops = planner.update(&after, &touched);
    // The new backend, its slot, and the service's new backend count.
    assert_eq!(ops.len(), 3, "{ops:?}");
}

#[test]
fn an_address_moving_to_another_service_in_one_delta_stays_programmed() {
    // kube-dns is replaced by coredns with the same ClusterIP in one apply;
    // coredns sorts first, so its put comes before kube-dns' delete.
    let before = snapshot(&[("kube-dns", 10, "dns", None)], &[("dns", &[1, 2])]);
    let after = snapshot(&[("coredns", 10, "dns", None)], &[("dns", &[1, 2])]);
    let mut planner = Planner::new(node(), MapState::default(), IdCounters::default());
    let mut kernel = MapState::default();
    for op in planner.full(&before) {
        apply(&mut kernel, &op);
    }
    let touched = planner.touched([&"kube-dns".to_string(), &"coredns".to_string()], []);
    for op in planner.update(&after, &touched) {
        apply(&mut kernel, &op);
        consistent(&kernel).unwrap_or_else(|e| panic!("after {op:?}: {e}"));
    }
    let fresh = plan(&after, &node(), &mut Ids::default());
    assert_eq!(resolved(&kernel), resolved(&fresh));
    assert_eq!(kernel.services.len(), 1, "10.96.0.10:80 is still there");
}

#[test]
fn a_restarted_planner_never_reuses_an_id_even_if_the_highest_left() {
    let first = snapshot(&[("web", 1, "web", None)], &[("web", &[1, 2, 3])]);
    let mut planner = Planner::new(node(), MapState::default(), IdCounters::default());
    let mut kernel = MapState::default();
    for op in planner.full(&first) {
        apply(&mut kernel, &op);
    }
    // The endpoint with the highest id leaves, then the agent restarts.
    let highest = *kernel.backends.keys().max().unwrap();
    let shrunk = snapshot(&[("web", 1, "web", None)], &[("web", &[1, 2])]);
    let touched = planner.touched([], [&"web".to_string()]);
    for op in planner.update(&shrunk, &touched) {
        apply(&mut kernel, &op);
    }
    assert!(!kernel.backends.contains_key(&highest));
    let saved = planner.id_counters();
    let mut restarted = Planner::new(node(), kernel.clone(), saved);
    // A new endpoint arrives: its id is above every id ever given.
    let grown = snapshot(&[("web", 1, "web", None)], &[("web", &[1, 2, 9])]);
    restarted.full(&grown);
    let newest = *restarted.state().backends.keys().max().unwrap();
    assert!(
        newest > highest,
        "{newest} reuses an id (highest ever {highest})"
    );
}

#[test]
fn an_address_two_services_claimed_goes_back_to_the_one_that_stays() {
    // coredns is added with kube-dns' ClusterIP while kube-dns still exists,
    // then coredns is removed: the address must point at kube-dns again.
    let one = snapshot(&[("kube-dns", 10, "dns", None)], &[("dns", &[1, 2])]);
    let both = snapshot(
        &[("kube-dns", 10, "dns", None), ("coredns", 10, "dns2", None)],
        &[("dns", &[1, 2]), ("dns2", &[3])],
    );
    let mut planner = Planner::new(node(), MapState::default(), IdCounters::default());
    let mut kernel = MapState::default();
    for op in planner.full(&one) {
        apply(&mut kernel, &op);
    }
    let touched = planner.touched([&"coredns".to_string()], []);
    for op in planner.update(&both, &touched) {
        apply(&mut kernel, &op);
    }
    for op in planner.update(&one, &touched) {
        apply(&mut kernel, &op);
        consistent(&kernel).unwrap_or_else(|e| panic!("after {op:?}: {e}"));
    }
    let fresh = plan(&one, &node(), &mut Ids::default());
    assert_eq!(resolved(&kernel), resolved(&fresh));
}
