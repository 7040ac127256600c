//! Upgrading over the pins of an older pier-agent: the maps both families
//! share used to be named after IPv4 (`pier_lb4_slots`, ...) or conntrack
//! (`pier_ct4_config`, ...). The agent renames them in place, keeping their
//! content; when old and new names are both there it refuses, naming
//! `pier-agent uninstall`.

mod common;
use aya::maps::MapData;
use common::*;
use pier_agent::loader::{
    read_id_counters, read_pinned, read_stats, uninstall, AgentError, LbMaps, MapSizes, NodePortLb,
};
use pier_agent::maps::*;
use pier_agent::plan::MapOp;

fn config() -> Config {
    Config {
        snat_address: [203, 0, 113, 1],
        snat_port_min: 61000,
        snat_port_max: 65535,
        tcp_timeout_s: 3600,
        udp_timeout_s: 60,
        closing_timeout_s: 10,
        pad: 0,
        snat_address6: [0; 16],
    }
}

#[test]
fn maps_pinned_under_their_former_names_are_taken_over_with_their_content() {
    if !privileged() {
        return;
    }
    let sandbox = Sandbox::new("upgrade");
    let pins = sandbox.bpffs.join("pier");
    let sizes = MapSizes::default();
    // What an older agent leaves: ids handed out, a service's slot, its
    // counters, all under the former names.
    {
        let _programs = NodePortLb::load(&pins, &sizes, &config()).unwrap();
        let mut maps = LbMaps::open(&pins).unwrap();
        maps.save_ids(IdCounters {
            next_service: 7,
            next_backend: 9,
        })
        .unwrap();
        let slot = LbSlotKey {
            service_id: 3,
            slot: 1,
        };
        maps.apply(&[MapOp::PutSlot(slot, 8)]).unwrap();
    }
    for (old, new) in LEGACY_MAP_NAMES {
        std::fs::rename(pins.join(new), pins.join(old)).unwrap();
    }
    std::fs::rename(pins.join(MAP_COUNTERS), pins.join(LEGACY_COUNTERS)).unwrap();

    // `status` does not guess: it names the way out.
    let refused = read_pinned(&pins).unwrap_err();
    assert!(
        matches!(refused, AgentError::LegacyPins { .. }),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("pier-agent uninstall"),
        "{refused}"
    );

    // The agent of this version takes them over.
    let _programs = NodePortLb::load(&pins, &sizes, &config()).unwrap();
    for (old, new) in LEGACY_MAP_NAMES {
        assert!(!pins.join(old).exists(), "{old} is left");
        assert!(pins.join(new).exists(), "{new} is missing");
    }
    assert!(!pins.join(LEGACY_COUNTERS).exists());
    assert_eq!(
        read_id_counters(&pins),
        IdCounters {
            next_service: 7,
            next_backend: 9
        },
        "ids are never handed out twice, across the upgrade too"
    );
    let state = read_pinned(&pins).unwrap();
    assert_eq!(
        state.slots.get(&LbSlotKey {
            service_id: 3,
            slot: 1
        }),
        Some(&8)
    );
    let stats = read_stats(&pins).unwrap();
    assert_eq!(stats.counters.len(), COUNTERS.len(), "a fresh counters map");
}

#[test]
fn old_and_new_names_side_by_side_are_refused_naming_uninstall() {
    if !privileged() {
        return;
    }
    let sandbox = Sandbox::new("upgrade-both");
    let pins = sandbox.bpffs.join("pier");
    let sizes = MapSizes::default();
    drop(NodePortLb::load(&pins, &sizes, &config()).unwrap());
    // An older agent ran after this one and pinned its own ids map.
    MapData::from_pin(pins.join(MAP_IDS))
        .unwrap()
        .pin(pins.join("pier_lb4_ids"))
        .unwrap();
    let Err(refused) = NodePortLb::load(&pins, &sizes, &config()) else {
        panic!("loaded over two id maps");
    };
    let message = refused.to_string();
    assert!(
        matches!(refused, AgentError::LegacyPins { .. }),
        "{refused:?}"
    );
    assert!(
        message.contains("pier_lb4_ids next to pier_lb_ids")
            && message.contains("pier-agent uninstall"),
        "{message}"
    );
    // And uninstall clears the lot.
    uninstall(&pins).unwrap();
    assert!(!pins.exists());
}
