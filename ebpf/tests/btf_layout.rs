//! The Rust mirrors in `src/maps.rs` against the real thing: the BTF clang
//! wrote into the built BPF objects. For every map of every object, the key
//! and value types must have a mirror whose size, member names, offsets and
//! sizes are the C struct's, member by member. A field added, moved, resized
//! or renamed on one side only fails here instead of corrupting maps.
//!
//! The `.BTF` section is parsed here (aya 0.14 keeps its BTF types private):
//! the format is the kernel's `Documentation/bpf/btf.rst`.

use pier_agent::maps::*;
use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

/// What one Rust type says about its C counterpart.
#[derive(Debug)]
struct Mirror {
    rust: &'static str,
    /// The C struct it mirrors; `None` for a plain integer.
    c_struct: Option<&'static str>,
    size: usize,
    /// (name, offset, size) of each field, in declaration order.
    fields: Vec<(&'static str, usize, usize)>,
}

fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! mirror {
    ($t:ty as $c:literal { $($f:ident),* $(,)? }) => {
        Mirror {
            rust: stringify!($t),
            c_struct: Some($c),
            size: size_of::<$t>(),
            fields: vec![$((stringify!($f), offset_of!($t, $f), field_size::<$t, _>(|x| &x.$f))),*],
        }
    };
    ($t:ty) => {
        Mirror {
            rust: stringify!($t),
            c_struct: None,
            size: size_of::<$t>(),
            fields: Vec::new(),
        }
    };
}

/// How a map's value is checked.
enum Value {
    Mirrored(Mirror),
    /// Used by the BPF programs alone (scratch space): no Rust side.
    KernelOnly,
}

/// Every map the objects may define, with the Rust types the agent reads and
/// writes it with.
fn expected() -> BTreeMap<&'static str, (Mirror, Value)> {
    use Value::{KernelOnly, Mirrored};
    let lb4_key = || mirror!(Lb4Key as "pier_lb4_key" { address, port_be, proto, scope });
    let lb6_key = || mirror!(Lb6Key as "pier_lb6_key" { address, port_be, proto, scope });
    let service = || {
        mirror!(LbService as "pier_lb_service" {
            service_id, backend_count, flags, affinity_timeout_s, maglev_size
        })
    };
    let ct4_key =
        || mirror!(Ct4Key as "pier_ct4_key" { saddr, daddr, sport_be, dport_be, proto, pad });
    let ct6_key =
        || mirror!(Ct6Key as "pier_ct6_key" { saddr, daddr, sport_be, dport_be, proto, pad });
    let ct4_entry = mirror!(Ct4Entry as "pier_ct4_entry" {
        saddr, daddr, sport_be, dport_be, backend_id, last_seen_ns, flags, closing, pad
    });
    let ct6_entry = mirror!(Ct6Entry as "pier_ct6_entry" {
        saddr, daddr, sport_be, dport_be, backend_id, last_seen_ns, flags, closing, pad
    });
    BTreeMap::from([
        (MAP_LB4_SERVICES, (lb4_key(), Mirrored(service()))),
        (MAP_LB6_SERVICES, (lb6_key(), Mirrored(service()))),
        (
            MAP_LB_SLOTS,
            (
                mirror!(LbSlotKey as "pier_lb_slot_key" { service_id, slot }),
                Mirrored(mirror!(u32)),
            ),
        ),
        (
            MAP_LB4_BACKENDS,
            (
                mirror!(u32),
                Mirrored(
                    mirror!(Lb4Backend as "pier_lb4_backend" { address, port_be, proto, flags }),
                ),
            ),
        ),
        (
            MAP_LB6_BACKENDS,
            (
                mirror!(u32),
                Mirrored(
                    mirror!(Lb6Backend as "pier_lb6_backend" { address, port_be, proto, flags }),
                ),
            ),
        ),
        (
            MAP_LB4_REVNAT,
            (
                mirror!(Lb4RevNatKey as "pier_lb4_revnat_key" { cookie, address, port_be, pad }),
                Mirrored(mirror!(Lb4RevNat as "pier_lb4_revnat" { address, port_be, pad })),
            ),
        ),
        (
            MAP_LB6_REVNAT,
            (
                mirror!(Lb6RevNatKey as "pier_lb6_revnat_key" { cookie, address, port_be, pad }),
                Mirrored(mirror!(Lb6RevNat as "pier_lb6_revnat" { address, port_be, pad })),
            ),
        ),
        (
            MAP_LB_AFFINITY,
            (
                mirror!(LbAffinityKey as "pier_lb_affinity_key" { netns_cookie, service_id, pad }),
                Mirrored(
                    mirror!(LbAffinity as "pier_lb_affinity" { last_used_ns, backend_id, pad }),
                ),
            ),
        ),
        (
            MAP_LB_MAGLEV,
            (
                mirror!(u32),
                Mirrored(mirror!(LbMaglev as "pier_lb_maglev" { backend_ids })),
            ),
        ),
        (
            MAP_IDS,
            (
                mirror!(u32),
                Mirrored(mirror!(IdCounters as "pier_ids" { next_service, next_backend })),
            ),
        ),
        (MAP_CT4, (ct4_key(), Mirrored(ct4_entry))),
        (MAP_CT6, (ct6_key(), Mirrored(ct6_entry))),
        (
            MAP_CONFIG,
            (
                mirror!(u32),
                Mirrored(mirror!(Config as "pier_config" {
                    snat_address, snat_port_min, snat_port_max, tcp_timeout_s, udp_timeout_s,
                    closing_timeout_s, pad, snat_address6
                })),
            ),
        ),
        (MAP_COUNTERS, (mirror!(u32), Mirrored(mirror!(u64)))),
        // A program array: the values are program fds.
        (MAP_TC_PROGRAMS, (mirror!(u32), Mirrored(mirror!(u32)))),
        ("pier_nat_scratch4", (mirror!(u32), KernelOnly)),
        ("pier_nat_scratch6", (mirror!(u32), KernelOnly)),
    ])
}

#[test]
fn every_map_key_and_value_matches_its_c_layout_member_by_member() {
    let expected = expected();
    let mut seen = std::collections::BTreeSet::new();
    for (object, bytes) in [
        ("sock.o", pier_agent::SOCK_OBJECT),
        ("sock_compat.o", pier_agent::SOCK_COMPAT_OBJECT),
        ("tc_nodeport.o", pier_agent::NODEPORT_OBJECT),
    ] {
        let btf = Btf::parse(elf_section(bytes, ".BTF").expect("a .BTF section"));
        let maps = btf.maps();
        assert!(!maps.is_empty(), "{object}: no maps found in its BTF");
        for (map, key, value) in maps {
            let what = format!("{object}: {map}");
            let (want_key, want_value) = expected.get(map.as_str()).unwrap_or_else(|| {
                panic!("{what}: no Rust mirror listed for this map (add it to src/maps.rs and to this test)")
            });
            btf.check(key, want_key, &format!("{what} key"));
            match want_value {
                Value::Mirrored(m) => btf.check(value, m, &format!("{what} value")),
                Value::KernelOnly => {}
            }
            seen.insert(map);
        }
    }
    let stale: Vec<_> = expected.keys().filter(|m| !seen.contains(**m)).collect();
    assert!(
        stale.is_empty(),
        "maps listed here but in no object: {stale:?}"
    );
}

#[test]
fn a_mismatch_is_reported_with_the_member_that_differs() {
    // The checker itself: a Rust type that swaps two C members must fail.
    let btf = Btf::parse(elf_section(pier_agent::NODEPORT_OBJECT, ".BTF").unwrap());
    let (_, key, _) = btf
        .maps()
        .into_iter()
        .find(|(m, _, _)| m == MAP_CT4)
        .unwrap();
    let mut swapped =
        mirror!(Ct4Key as "pier_ct4_key" { saddr, daddr, sport_be, dport_be, proto, pad });
    swapped.fields.swap(0, 1);
    let failure = std::panic::catch_unwind(|| btf.check(key, &swapped, "swapped"))
        .expect_err("a swapped member must be found");
    let message = failure
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("member 0"), "{message}");
}

/// The bytes of the ELF64 section `name`.
fn elf_section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "a little-endian ELF64 object"
    );
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 24);
    (0..shnum).find_map(|i| {
        let h = header(i);
        let at = strtab + u32_at(h);
        let end = at + elf[at..].iter().position(|b| *b == 0)?;
        (&elf[at..end] == name.as_bytes()).then(|| {
            let (offset, size) = (u64_at(h + 24), u64_at(h + 32));
            &elf[offset..offset + size]
        })
    })
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Type {
    name: String,
    kind: u32,
    kind_flag: bool,
    /// `size` or `type`, by kind.
    size_or_type: u32,
    /// ARRAY: (element type, element count).
    array: Option<(u32, u32)>,
    /// STRUCT / UNION: (name, type, bit offset); DATASEC: ("", type, byte offset).
    members: Vec<(String, u32, u32)>,
}

struct Btf {
    /// By type id; id 0 is `void`.
    types: Vec<Type>,
}

impl Btf {
    fn parse(data: &[u8]) -> Btf {
        let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
        assert_eq!(u16::from_le_bytes([data[0], data[1]]), 0xeb9f, "BTF magic");
        let hdr_len = u32_at(4) as usize;
        let (type_off, type_len) = (u32_at(8) as usize, u32_at(12) as usize);
        let str_off = u32_at(16) as usize;
        let strings = &data[hdr_len + str_off..];
        let string = |off: u32| {
            let s = &strings[off as usize..];
            String::from_utf8_lossy(&s[..s.iter().position(|b| *b == 0).unwrap()]).into_owned()
        };
        let void = Type {
            name: "void".into(),
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            array: None,
            members: Vec::new(),
        };
        let mut types = vec![void];
        let (mut at, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        while at < end {
            let info = u32_at(at + 4);
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let mut t = Type {
                name: string(u32_at(at)),
                kind,
                kind_flag: info >> 31 == 1,
                size_or_type: u32_at(at + 8),
                array: None,
                members: Vec::new(),
            };
            at += 12;
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => {
                    t.array = Some((u32_at(at), u32_at(at + 8)));
                    at += 12;
                }
                KIND_STRUCT | KIND_UNION | KIND_DATASEC => {
                    for _ in 0..vlen {
                        let name = if kind == KIND_DATASEC {
                            String::new()
                        } else {
                            string(u32_at(at))
                        };
                        let (ty, offset) = if kind == KIND_DATASEC {
                            (u32_at(at), u32_at(at + 4))
                        } else {
                            (u32_at(at + 4), u32_at(at + 8))
                        };
                        t.members.push((name, ty, offset));
                        at += 12;
                    }
                }
                KIND_ENUM | KIND_FUNC_PROTO => at += 8 * vlen,
                KIND_ENUM64 => at += 12 * vlen,
                _ => {}
            }
            types.push(t);
        }
        Btf { types }
    }

    /// Through typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> &Type {
        loop {
            let t = &self.types[id as usize];
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return t,
            }
        }
    }

    fn size(&self, id: u32) -> usize {
        let t = self.resolve(id);
        match t.kind {
            KIND_PTR => 8,
            KIND_ARRAY => {
                let (element, count) = t.array.unwrap();
                self.size(element) * count as usize
            }
            _ => t.size_or_type as usize,
        }
    }

    /// (map name, key type id, value type id) of every map in `.maps`.
    fn maps(&self) -> Vec<(String, u32, u32)> {
        let Some(section) = self
            .types
            .iter()
            .find(|t| t.kind == KIND_DATASEC && t.name == ".maps")
        else {
            return Vec::new();
        };
        section
            .members
            .iter()
            .map(|(_, var, _)| {
                let var = &self.types[*var as usize];
                let def = self.resolve(var.size_or_type);
                // `__type(key, T)` is a member `T *key`.
                let pointee = |member: &str| {
                    let (_, ty, _) = def
                        .members
                        .iter()
                        .find(|(n, _, _)| n == member)
                        .unwrap_or_else(|| panic!("map {} has no {member}", var.name));
                    let ptr = self.resolve(*ty);
                    assert_eq!(ptr.kind, KIND_PTR, "map {} {member}", var.name);
                    ptr.size_or_type
                };
                (var.name.clone(), pointee("key"), pointee("value"))
            })
            .collect()
    }

    /// Panics, naming `what` and the member, when `id` is not laid out as `want`.
    fn check(&self, id: u32, want: &Mirror, what: &str) {
        let t = self.resolve(id);
        assert_eq!(
            self.size(id),
            want.size,
            "{what}: C {} is {} bytes, Rust {} is {}",
            t.name,
            self.size(id),
            want.rust,
            want.size
        );
        let Some(c_struct) = want.c_struct else {
            assert!(
                t.kind == KIND_INT || t.kind == KIND_ENUM,
                "{what}: C has struct {} where Rust has the integer {}",
                t.name,
                want.rust
            );
            return;
        };
        assert_eq!(t.kind, KIND_STRUCT, "{what}: C {} is not a struct", t.name);
        assert_eq!(t.name, c_struct, "{what}: C type");
        assert_eq!(
            t.members.len(),
            want.fields.len(),
            "{what}: struct {} has {} members, {} has {}",
            t.name,
            t.members.len(),
            want.rust,
            want.fields.len()
        );
        for (i, ((c_name, ty, bits), (r_name, r_offset, r_size))) in
            t.members.iter().zip(&want.fields).enumerate()
        {
            let bit_offset = if t.kind_flag { bits & 0xff_ffff } else { *bits };
            let c = (c_name.as_str(), bit_offset as usize / 8, self.size(*ty));
            // Rust names say when a field is in network order: `port_be` is `port`.
            let r = (r_name.trim_end_matches("_be"), *r_offset, *r_size);
            assert!(
                bit_offset % 8 == 0 && c == r,
                "{what}: member {i} of struct {}: C (name, offset, size) {c:?}, Rust {} {:?}",
                t.name,
                want.rust,
                (r_name, r_offset, r_size)
            );
        }
    }
}
