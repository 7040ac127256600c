//! `#[repr(C)]` mirrors of `bpf/include/pier_maps.h`. `tests/btf_layout.rs`
//! compares every key and value of every map, member by member (offset and
//! size), with the BTF clang wrote into the built objects: a layout change on
//! one side that is not made on the other fails the tests instead of
//! corrupting maps. The size asserts below catch the commonest slip (a
//! member added or resized in Rust) at compile time already.

use std::mem::size_of;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

pub const SCOPE_CLUSTER: u8 = 0;
pub const SCOPE_NODEPORT: u8 = 1;
pub const SCOPE_EXTERNAL: u8 = 2;

pub const SVC_AFFINITY: u16 = 1 << 0;
pub const SVC_LOCAL_EXTERNAL: u16 = 1 << 1;
pub const SVC_LOCAL_INTERNAL: u16 = 1 << 2;
pub const SVC_MAGLEV: u16 = 1 << 3;

/// `PIER_MAGLEV_MAX`: the largest Maglev table a service can have.
pub const MAGLEV_MAX: usize = 16_381;

pub const BACKEND_TERMINATING: u8 = 1 << 0;
pub const BACKEND_LOCAL: u8 = 1 << 1;

/// `struct pier_lb4_key`. Address and port in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lb4Key {
    pub address: [u8; 4],
    pub port_be: u16,
    pub proto: u8,
    pub scope: u8,
}

/// `struct pier_lb_service` (the value of both families' service maps).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbService {
    pub service_id: u32,
    pub backend_count: u16,
    pub flags: u16,
    pub affinity_timeout_s: u32,
    pub maglev_size: u32,
}

/// `struct pier_lb_slot_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LbSlotKey {
    pub service_id: u32,
    pub slot: u32,
}

/// `struct pier_lb4_backend`, keyed by a backend id (`u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lb4Backend {
    pub address: [u8; 4],
    pub port_be: u16,
    pub proto: u8,
    pub flags: u8,
}

/// `struct pier_lb6_key`. Address and port in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lb6Key {
    pub address: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub scope: u8,
}

/// `struct pier_lb6_backend`, keyed by a backend id (`u32`, unique across families).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lb6Backend {
    pub address: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub flags: u8,
}

/// `struct pier_lb4_revnat_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lb4RevNatKey {
    pub cookie: u64,
    pub address: [u8; 4],
    pub port_be: u16,
    pub pad: u16,
}

/// `struct pier_lb4_revnat`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lb4RevNat {
    pub address: [u8; 4],
    pub port_be: u16,
    pub pad: u16,
}

/// `struct pier_lb6_revnat_key` (written by socket LB only; mirrored so the
/// layout is checked with the others).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lb6RevNatKey {
    pub cookie: u64,
    pub address: [u8; 16],
    pub port_be: u16,
    pub pad: [u16; 3],
}

/// `struct pier_lb6_revnat`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lb6RevNat {
    pub address: [u8; 16],
    pub port_be: u16,
    pub pad: u16,
}

/// `struct pier_lb_affinity_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbAffinityKey {
    pub netns_cookie: u64,
    pub service_id: u32,
    pub pad: u32,
}

/// `struct pier_lb_affinity`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbAffinity {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub pad: u32,
}

/// `struct pier_lb_maglev`: a service's Maglev table as backend ids.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LbMaglev {
    pub backend_ids: [u32; MAGLEV_MAX],
}

/// `struct pier_ct4_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ct4Key {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// `struct pier_ct6_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ct6Key {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// `struct pier_ct6_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ct6Entry {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub backend_id: u32,
    pub last_seen_ns: u64,
    pub flags: u8,
    pub closing: u8,
    pub pad: [u8; 6],
}

pub const CT_REPLY: u8 = 1 << 0;
pub const CT_SNAT: u8 = 1 << 1;

/// `struct pier_ct4_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ct4Entry {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub backend_id: u32,
    pub last_seen_ns: u64,
    pub flags: u8,
    pub closing: u8,
    pub pad: [u8; 6],
}

/// `struct pier_ids`: the id counters, kept across agent restarts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdCounters {
    pub next_service: u32,
    pub next_backend: u32,
}

/// `struct pier_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub snat_address: [u8; 4],
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub tcp_timeout_s: u32,
    pub udp_timeout_s: u32,
    pub closing_timeout_s: u32,
    pub pad: u32,
    pub snat_address6: [u8; 16],
}

/// Indexes of `pier_nat_counters` (drops and passes by reason, per CPU;
/// `PIER_DROP_*` / `PIER_PASS_*` in `bpf/lib/nat.h`).
pub const COUNTERS: [(u32, &str); 9] = [
    (0, "no_backend"),
    (1, "snat_ports_exhausted"),
    (2, "no_route"),
    (3, "fragment_passed"),
    (4, "malformed_passed"),
    (5, "frag_needed_dropped"),
    (6, "frag_needed_answered"),
    (7, "ipv6_program_missing"),
    (8, "conntrack_insert_failed"),
];

const _: () = assert!(size_of::<Lb6Key>() == 20);
const _: () = assert!(size_of::<Lb6Backend>() == 20);
const _: () = assert!(size_of::<LbMaglev>() == 4 * MAGLEV_MAX);
const _: () = assert!(size_of::<Ct4Key>() == 16);
const _: () = assert!(size_of::<Ct4Entry>() == 32);
const _: () = assert!(size_of::<Config>() == 40);
const _: () = assert!(size_of::<Ct6Key>() == 40);
const _: () = assert!(size_of::<Ct6Entry>() == 56);
const _: () = assert!(size_of::<IdCounters>() == 8);
const _: () = assert!(size_of::<LbAffinityKey>() == 16);
const _: () = assert!(size_of::<LbAffinity>() == 16);
const _: () = assert!(size_of::<Lb4Key>() == 8);
const _: () = assert!(size_of::<LbService>() == 16);
const _: () = assert!(size_of::<LbSlotKey>() == 8);
const _: () = assert!(size_of::<Lb4Backend>() == 8);
const _: () = assert!(size_of::<Lb4RevNatKey>() == 16);
const _: () = assert!(size_of::<Lb4RevNat>() == 8);
const _: () = assert!(size_of::<Lb6RevNatKey>() == 32);
const _: () = assert!(size_of::<Lb6RevNat>() == 20);

/// Map names, as pinned under `/sys/fs/bpf/pier/`: `pier_<area>_<noun>`,
/// the area `lb4` / `lb6` / `ct4` / `ct6` for one address family, `lb` and
/// `nat` for what both share.
pub const MAP_LB4_SERVICES: &str = "pier_lb4_services";
pub const MAP_LB_SLOTS: &str = "pier_lb_slots";
pub const MAP_LB4_BACKENDS: &str = "pier_lb4_backends";
pub const MAP_LB4_REVNAT: &str = "pier_lb4_revnat";
pub const MAP_LB_AFFINITY: &str = "pier_lb_affinity";
pub const MAP_LB_MAGLEV: &str = "pier_lb_maglev";
pub const MAP_LB6_SERVICES: &str = "pier_lb6_services";
pub const MAP_LB6_BACKENDS: &str = "pier_lb6_backends";
pub const MAP_LB6_REVNAT: &str = "pier_lb6_revnat";
pub const MAP_CT4: &str = "pier_ct4_flows";
pub const MAP_CT6: &str = "pier_ct6_flows";
pub const MAP_CONFIG: &str = "pier_nat_config";
pub const MAP_IDS: &str = "pier_lb_ids";
pub const MAP_TC_PROGRAMS: &str = "pier_tc_programs";
pub const MAP_COUNTERS: &str = "pier_nat_counters";

/// Names an older pier-agent pinned maps under, with today's name: the
/// maps both families share were named after IPv4 (`pier_lb4_*`) or after
/// conntrack (`pier_ct4_*`). Same layouts: the agent renames the pins.
pub const LEGACY_MAP_NAMES: [(&str, &str); 5] = [
    ("pier_lb4_slots", MAP_LB_SLOTS),
    ("pier_lb4_affinity", MAP_LB_AFFINITY),
    ("pier_lb4_maglev", MAP_LB_MAGLEV),
    ("pier_lb4_ids", MAP_IDS),
    ("pier_ct4_config", MAP_CONFIG),
];

/// The older name of [`MAP_COUNTERS`]: statistics only, and one counter
/// short of today's, so the agent unpins it and starts a fresh one.
pub const LEGACY_COUNTERS: &str = "pier_ct4_counters";
