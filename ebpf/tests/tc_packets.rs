//! The tc programs run by the kernel on crafted packets (`BPF_PROG_TEST_RUN`):
//! verdicts, rewritten addresses, ports and checksums, and packets that must
//! be left exactly as they came (fragments, truncated or odd headers).

mod common;
use aya::maps::{HashMap as BpfHashMap, MapData};
use common::*;
use pier_agent::loader::{read_stats, test_run, LbMaps, MapSizes, NodePortLb};
use pier_agent::maps::*;
use pier_agent::plan::{diff, MapState};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const CLIENT: [u8; 4] = [203, 0, 113, 2];
const NODE: [u8; 4] = [203, 0, 113, 1];
const POD_A: [u8; 4] = [198, 51, 100, 2];
const POD_B: [u8; 4] = [198, 51, 100, 3];
/// A backend on another node: its flows are SNATed to the node.
const POD_REMOTE: [u8; 4] = [198, 51, 100, 9];

/// The Internet checksum of `data` (one's complement sum), folded.
fn sum16(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What to put on the wire.
#[derive(Clone)]
struct Spec {
    proto: u8,
    src: Endpoint,
    dst: Endpoint,
    ip_options: Vec<u8>,
    frag_off: u16,
    udp_checksum: bool,
}

fn tcp(src: Endpoint, dst: Endpoint) -> Spec {
    Spec {
        proto: PROTO_TCP,
        src,
        dst,
        ip_options: Vec::new(),
        frag_off: 0,
        udp_checksum: true,
    }
}

fn udp(src: Endpoint, dst: Endpoint) -> Spec {
    Spec {
        proto: PROTO_UDP,
        ..tcp(src, dst)
    }
}

/// Ethernet + IPv4 (+ options) + TCP (SYN) or UDP + 6 bytes of payload, all
/// checksums right.
fn packet(s: &Spec) -> Vec<u8> {
    let payload = b"hello!";
    let mut l4 = Vec::new();
    l4.extend(s.src.1.to_be_bytes());
    l4.extend(s.dst.1.to_be_bytes());
    if s.proto == PROTO_TCP {
        l4.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend(((8 + payload.len()) as u16).to_be_bytes());
        l4.extend([0, 0]);
    }
    l4.extend(payload);
    let csum_at = if s.proto == PROTO_TCP { 16 } else { 6 };
    if s.proto == PROTO_TCP || s.udp_checksum {
        let c = l4_checksum(s.src.0, s.dst.0, s.proto, &l4);
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let ihl = 5 + s.ip_options.len() / 4;
    let mut ip = vec![0x40 | ihl as u8, 0];
    ip.extend(((ihl * 4 + l4.len()) as u16).to_be_bytes());
    ip.extend([0, 1]);
    ip.extend(s.frag_off.to_be_bytes());
    ip.extend([64, s.proto, 0, 0]);
    ip.extend(s.src.0);
    ip.extend(s.dst.0);
    ip.extend(&s.ip_options);
    let c = sum16(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend(ip);
    frame.extend(l4);
    frame
}

fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend(src);
    pseudo.extend(dst);
    pseudo.extend([0, proto]);
    pseudo.extend((l4.len() as u16).to_be_bytes());
    pseudo.extend(l4);
    sum16(&pseudo, 0)
}

/// An IPv4 address and port.
type Endpoint = ([u8; 4], u16);

/// Source, destination and transport checksum of a frame, after checking both checksums.
fn read(frame: &[u8]) -> (Endpoint, Endpoint, u16) {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    assert_eq!(sum16(&ip[..ihl], 0), 0, "IP header checksum");
    let src: [u8; 4] = ip[12..16].try_into().unwrap();
    let dst: [u8; 4] = ip[16..20].try_into().unwrap();
    let l4 = &ip[ihl..usize::from(u16::from_be_bytes([ip[2], ip[3]]))];
    let csum = if ip[9] == PROTO_TCP {
        u16::from_be_bytes([l4[16], l4[17]])
    } else {
        u16::from_be_bytes([l4[6], l4[7]])
    };
    if csum != 0 || ip[9] == PROTO_TCP {
        assert_eq!(l4_checksum(src, dst, ip[9], l4), 0, "transport checksum");
    }
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    ((src, port(0)), (dst, port(2)), csum)
}

fn backend(address: [u8; 4], port: u16, proto: u8) -> Lb4Backend {
    Lb4Backend {
        address,
        port_be: port.to_be(),
        proto,
        flags: BACKEND_LOCAL,
    }
}

/// Adds service `id` on the node address's `port` with `backends` (ids).
fn add_service(s: &mut MapState, id: u32, port: u16, proto: u8, backends: &[u32], flags: u16) {
    for (i, b) in backends.iter().enumerate() {
        s.slots.insert(
            LbSlotKey {
                service_id: id,
                slot: i as u32 + 1,
            },
            *b,
        );
    }
    let key = Lb4Key {
        address: NODE,
        port_be: port.to_be(),
        proto,
        scope: SCOPE_NODEPORT,
    };
    let value = LbService {
        service_id: id,
        backend_count: backends.len() as u16,
        flags,
        affinity_timeout_s: 60,
        maglev_size: 0,
    };
    s.services.insert(key, value);
}

/// Services on the node address: TCP 30080 → pod A, UDP 30053 → pod A,
/// TCP 30099 with no endpoints, TCP 30090 → pods A and B (random), TCP
/// 30070 → a pod on another node (SNAT).
fn services() -> MapState {
    let mut s = MapState::default();
    s.backends.insert(1, backend(POD_A, 8080, PROTO_TCP));
    s.backends.insert(2, backend(POD_A, 5353, PROTO_UDP));
    s.backends.insert(3, backend(POD_B, 8080, PROTO_TCP));
    let remote = Lb4Backend {
        flags: 0,
        ..backend(POD_REMOTE, 8080, PROTO_TCP)
    };
    s.backends.insert(4, remote);
    add_service(&mut s, 1, 30080, PROTO_TCP, &[1], 0);
    add_service(&mut s, 2, 30053, PROTO_UDP, &[2], 0);
    add_service(&mut s, 3, 30099, PROTO_TCP, &[], 0);
    add_service(&mut s, 4, 30090, PROTO_TCP, &[1, 3], 0);
    add_service(&mut s, 6, 30070, PROTO_TCP, &[4], 0);
    s
}

struct Loaded {
    programs: NodePortLb,
    maps: LbMaps,
    pins: std::path::PathBuf,
    _sandbox: Sandbox,
}

fn config() -> Config {
    Config {
        snat_address: NODE,
        snat_port_min: 61000,
        snat_port_max: 65535,
        tcp_timeout_s: 3600,
        udp_timeout_s: 60,
        closing_timeout_s: 0,
        pad: 0,
        snat_address6: [0; 16],
    }
}

fn load() -> Loaded {
    load_with(&config(), |_| {})
}

/// Loads the programs with `config`, after `prepare` had the pin directory
/// (to pin maps of its own making first).
fn load_with(config: &Config, prepare: impl FnOnce(&std::path::Path)) -> Loaded {
    let sandbox = Sandbox::new("tc");
    let pins = sandbox.bpffs.join("pier");
    std::fs::create_dir_all(&pins).unwrap();
    prepare(&pins);
    let programs = NodePortLb::load(&pins, &MapSizes::default(), config).unwrap();
    let mut maps = LbMaps::open(&pins).unwrap();
    maps.apply(&diff(&MapState::default(), &services()))
        .unwrap();
    Loaded {
        programs,
        maps,
        pins,
        _sandbox: sandbox,
    }
}

impl Loaded {
    fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        test_run(self.programs.program_fd(program).unwrap(), frame).unwrap()
    }
    fn ingress(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run("pier_nodeport_ingress", frame)
    }
    fn counter(&self, reason: &str) -> u64 {
        let stats = read_stats(&self.pins).unwrap();
        stats.counters.iter().find(|(r, _)| *r == reason).unwrap().1
    }
    fn ct4(&self) -> BpfHashMap<MapData, Ct4Key, Ct4Entry> {
        let data = MapData::from_pin(self.pins.join(MAP_CT4)).unwrap();
        BpfHashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap()
    }
    fn ct6(&self) -> BpfHashMap<MapData, Ct6Key, Ct6Entry> {
        let data = MapData::from_pin(self.pins.join(MAP_CT6)).unwrap();
        BpfHashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap()
    }
}

fn ct_key(s: Endpoint, d: Endpoint) -> Ct4Key {
    Ct4Key {
        saddr: s.0,
        daddr: d.0,
        sport_be: s.1.to_be(),
        dport_be: d.1.to_be(),
        proto: PROTO_TCP,
        pad: [0; 3],
    }
}

#[test]
fn a_new_flow_is_dnated_and_its_replies_get_the_service_address_back() {
    if !privileged() {
        return;
    }
    let lb = load();
    for options in [vec![], vec![1, 1, 1, 0]] {
        // Without and with IP options (NOP NOP NOP EOL): ports are found after them.
        let mut syn = tcp((CLIENT, 40000), (NODE, 30080));
        syn.ip_options = options.clone();
        let (verdict, out) = lb.ingress(&packet(&syn));
        assert_eq!(verdict, TC_ACT_OK);
        let (src, dst, _) = read(&out);
        assert_eq!(
            src,
            (CLIENT, 40000),
            "the client address is kept (local backend)"
        );
        assert_eq!(dst, (POD_A, 8080));

        let mut reply = tcp((POD_A, 8080), (CLIENT, 40000));
        reply.ip_options = options;
        let (verdict, out) = lb.run("pier_nodeport_egress", &packet(&reply));
        assert_eq!(verdict, TC_ACT_OK);
        let (src, dst, _) = read(&out);
        assert_eq!(src, (NODE, 30080));
        assert_eq!(dst, (CLIENT, 40000));
    }
}

#[test]
fn udp_checksums_are_fixed_and_an_absent_one_stays_absent() {
    if !privileged() {
        return;
    }
    let lb = load();
    let (verdict, out) = lb.ingress(&packet(&udp((CLIENT, 5000), (NODE, 30053))));
    assert_eq!(verdict, TC_ACT_OK);
    let (_, dst, csum) = read(&out);
    assert_eq!(dst, (POD_A, 5353));
    assert_ne!(csum, 0);
    let mut none = udp((CLIENT, 5001), (NODE, 30053));
    none.udp_checksum = false;
    let (_, out) = lb.ingress(&packet(&none));
    let (_, dst, csum) = read(&out);
    assert_eq!(dst, (POD_A, 5353));
    assert_eq!(csum, 0, "no checksum means none after NAT too");
}

#[test]
fn packets_pier_cannot_parse_with_certainty_are_left_untouched() {
    if !privileged() {
        return;
    }
    let lb = load();
    let to_service = tcp((CLIENT, 40001), (NODE, 30080));
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut first_fragment = to_service.clone();
    first_fragment.frag_off = 0x2000; // more fragments
    cases.push(("first fragment", packet(&first_fragment)));
    let mut later_fragment = to_service.clone();
    later_fragment.frag_off = 0x0010;
    cases.push(("later fragment", packet(&later_fragment)));
    let full = packet(&to_service);
    cases.push(("TCP header cut short", full[..14 + 20 + 10].to_vec()));
    let mut long = full.clone();
    long[16..18].copy_from_slice(&200u16.to_be_bytes()); // IP total length past the end
    cases.push(("IP length past the end", long));
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x43; // header length 12 bytes
    cases.push(("IP header length below 20", bad_ihl));
    let mut bad_doff = full.clone();
    bad_doff[14 + 20 + 12] = 0x20; // TCP data offset 8 bytes
    cases.push(("TCP data offset below 20", bad_doff));
    let mut arp = full.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    cases.push(("not IPv4", arp));
    // (A frame cut inside the IP header is refused by BPF_PROG_TEST_RUN itself.)
    let mut long_options = full.clone();
    long_options[14] = 0x4f; // 60-byte header: options running into the TCP header
    cases.push(("IP options past the transport header", long_options));
    cases.push(("not a service", packet(&tcp((CLIENT, 40002), (NODE, 22)))));
    let fragments_before = lb.counter("fragment_passed");
    let malformed_before = lb.counter("malformed_passed");
    for (what, frame) in &cases {
        let (verdict, out) = lb.ingress(frame);
        assert_eq!(verdict, TC_ACT_OK, "{what}");
        assert_eq!(&out, frame, "{what}: changed");
    }
    assert_eq!(lb.counter("fragment_passed") - fragments_before, 2);
    assert_eq!(lb.counter("malformed_passed") - malformed_before, 5);
}

#[test]
fn a_service_without_endpoints_drops_and_counts() {
    if !privileged() {
        return;
    }
    let lb = load();
    let (verdict, _) = lb.ingress(&packet(&tcp((CLIENT, 40003), (NODE, 30099))));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(lb.counter("no_backend"), 1);
}

#[test]
fn a_flow_keeps_its_backend_until_that_backend_leaves() {
    if !privileged() {
        return;
    }
    let mut lb = load();
    let syn = packet(&tcp((CLIENT, 40004), (NODE, 30090)));
    let backend_of = |lb: &Loaded| read(&lb.ingress(&syn).1).1 .0;
    let first = backend_of(&lb);
    for _ in 0..20 {
        assert_eq!(
            backend_of(&lb),
            first,
            "conntrack keeps the flow on one backend"
        );
    }
    // The chosen backend leaves the service (and the node): the flow is balanced again.
    let before = services();
    let mut after = before.clone();
    let (gone, stays) = if first == POD_A { (1, 3) } else { (3, 1) };
    after.backends.remove(&gone);
    after.slots.insert(
        LbSlotKey {
            service_id: 4,
            slot: 1,
        },
        stays,
    );
    after.slots.remove(&LbSlotKey {
        service_id: 4,
        slot: 2,
    });
    let key = *after
        .services
        .keys()
        .find(|k| k.port_be == 30090u16.to_be())
        .unwrap();
    after.services.get_mut(&key).unwrap().backend_count = 1;
    // Service 1 used backend 1 too; point it at what stays.
    if gone == 1 {
        after.slots.insert(
            LbSlotKey {
                service_id: 1,
                slot: 1,
            },
            3,
        );
    }
    lb.maps.apply(&diff(&before, &after)).unwrap();
    let next = backend_of(&lb);
    assert_ne!(next, first);
}

/// An ICMP "fragmentation needed" from `from` to `to`, quoting the first 28
/// bytes (IP header + ports) of `quoted`.
fn icmp_error(from: [u8; 4], to: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend(&quoted[14..14 + 28]);
    let c = sum16(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend([0, 2, 0, 0, 64, 1, 0, 0]);
    ip.extend(from);
    ip.extend(to);
    let c = sum16(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend(ip);
    frame.extend(icmp);
    frame
}

/// Outer source and destination, and the quoted packet's endpoints, after
/// checking the outer IP, the ICMP and the quoted IP checksums.
fn read_icmp(frame: &[u8]) -> ([u8; 4], [u8; 4], Endpoint, Endpoint) {
    let ip = &frame[14..];
    assert_eq!(sum16(&ip[..20], 0), 0, "outer IP checksum");
    let icmp = &ip[20..];
    assert_eq!(sum16(icmp, 0), 0, "ICMP checksum");
    let inner = &icmp[8..];
    assert_eq!(sum16(&inner[..20], 0), 0, "quoted IP checksum");
    let addr = |b: &[u8]| -> [u8; 4] { b[..4].try_into().unwrap() };
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    (
        addr(&ip[12..]),
        addr(&ip[16..]),
        (addr(&inner[12..]), port(&inner[20..])),
        (addr(&inner[16..]), port(&inner[22..])),
    )
}

#[test]
fn icmp_errors_about_a_translated_flow_are_translated_too() {
    if !privileged() {
        return;
    }
    let lb = load();
    let syn = packet(&tcp((CLIENT, 40010), (NODE, 30080)));
    assert_eq!(lb.ingress(&syn).0, TC_ACT_OK);
    // The pod says "fragmentation needed" about the packet it received: the
    // client must see it from the service address, about the packet it sent.
    let dnated = packet(&tcp((CLIENT, 40010), (POD_A, 8080)));
    let (verdict, out) = lb.run("pier_nodeport_egress", &icmp_error(POD_A, CLIENT, &dnated));
    assert_eq!(verdict, TC_ACT_OK);
    let (src, dst, quoted_src, quoted_dst) = read_icmp(&out);
    assert_eq!((src, dst), (NODE, CLIENT));
    assert_eq!((quoted_src, quoted_dst), ((CLIENT, 40010), (NODE, 30080)));
    // The client's side says the same about a reply it got from the service:
    // the pod must get it about the packet it sent.
    let reply_seen = packet(&tcp((NODE, 30080), (CLIENT, 40010)));
    let (verdict, out) = lb.ingress(&icmp_error(CLIENT, NODE, &reply_seen));
    assert_eq!(verdict, TC_ACT_OK);
    let (src, dst, quoted_src, quoted_dst) = read_icmp(&out);
    assert_eq!((src, dst), (CLIENT, POD_A));
    assert_eq!((quoted_src, quoted_dst), ((POD_A, 8080), (CLIENT, 40010)));
    // An error about a flow pier does not know passes untouched.
    let unknown = packet(&tcp((CLIENT, 40011), (NODE, 22)));
    let frame = icmp_error(NODE, CLIENT, &unknown);
    let (verdict, out) = lb.run("pier_nodeport_egress", &frame);
    assert_eq!((verdict, &out), (TC_ACT_OK, &frame));
}

#[test]
fn a_reset_ends_the_flow_in_both_directions() {
    if !privileged() {
        return;
    }
    let lb = load();
    let syn = packet(&tcp((CLIENT, 40020), (NODE, 30080)));
    assert_eq!(lb.ingress(&syn).0, TC_ACT_OK);
    // The pod resets the connection: its RST goes out through egress.
    let mut rst = packet(&tcp((POD_A, 8080), (CLIENT, 40020)));
    let flags = 14 + 20 + 13;
    rst[flags] = 0x04;
    // Fix the TCP checksum for the changed flags byte (SYN 0x02 -> RST 0x04).
    let l4 = 14 + 20;
    rst[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let c = {
        let mut pseudo = Vec::new();
        pseudo.extend(POD_A);
        pseudo.extend(CLIENT);
        pseudo.extend([0, PROTO_TCP]);
        pseudo.extend(((rst.len() - l4) as u16).to_be_bytes());
        pseudo.extend(&rst[l4..]);
        sum16(&pseudo, 0)
    };
    rst[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    assert_eq!(lb.run("pier_nodeport_egress", &rst).0, TC_ACT_OK);
    let ct = lb.ct4();
    let forward = ct.get(&ct_key((CLIENT, 40020), (NODE, 30080)), 0).unwrap();
    let reply = ct.get(&ct_key((POD_A, 8080), (CLIENT, 40020)), 0).unwrap();
    assert_eq!((forward.closing, reply.closing), (1, 1));
    // With a closing timeout of 0 the flow is over: a new SYN on the same
    // tuple is a new flow again (translated, not dropped or misrouted).
    let (verdict, out) = lb.ingress(&syn);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(read(&out).1, (POD_A, 8080));
}

const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const NODE6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const POD6: [u8; 16] = [0xfd, 0, 0, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// Ethernet + IPv6 (`next` as next header) + a TCP SYN with 6 bytes of
/// payload, checksum right.
fn packet6(src: Endpoint6, dst: Endpoint6, next: u8) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(src.1.to_be_bytes());
    l4.extend(dst.1.to_be_bytes());
    l4.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    l4.extend(b"hello!");
    let c = l4_checksum6(src.0, dst.0, &l4);
    l4[16..18].copy_from_slice(&c.to_be_bytes());
    let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd];
    frame.extend([0x60, 0, 0, 0]);
    frame.extend((l4.len() as u16).to_be_bytes());
    frame.extend([next, 64]);
    frame.extend(src.0);
    frame.extend(dst.0);
    frame.extend(l4);
    frame
}

fn l4_checksum6(src: [u8; 16], dst: [u8; 16], l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend(src);
    pseudo.extend(dst);
    pseudo.extend((l4.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, PROTO_TCP]);
    pseudo.extend(l4);
    sum16(&pseudo, 0)
}

/// An IPv6 address and port.
type Endpoint6 = ([u8; 16], u16);

/// Source and destination of an IPv6 TCP frame, after checking the checksum.
fn read6(frame: &[u8]) -> (Endpoint6, Endpoint6) {
    let ip = &frame[14..];
    let src: [u8; 16] = ip[8..24].try_into().unwrap();
    let dst: [u8; 16] = ip[24..40].try_into().unwrap();
    let l4 = &ip[40..];
    assert_eq!(
        l4_checksum6(src, dst, l4),
        0,
        "TCP checksum over the IPv6 pseudo header"
    );
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    ((src, port(0)), (dst, port(2)))
}

#[test]
fn ipv6_node_ports_are_translated_and_extension_headers_left_alone() {
    if !privileged() {
        return;
    }
    let mut lb = load();
    let mut state = services();
    let before = state.clone();
    state.backends6.insert(
        10,
        Lb6Backend {
            address: POD6,
            port_be: 8080u16.to_be(),
            proto: PROTO_TCP,
            flags: BACKEND_LOCAL,
        },
    );
    state.slots.insert(
        LbSlotKey {
            service_id: 10,
            slot: 1,
        },
        10,
    );
    let key = Lb6Key {
        address: NODE6,
        port_be: 30080u16.to_be(),
        proto: PROTO_TCP,
        scope: SCOPE_NODEPORT,
    };
    let value = LbService {
        service_id: 10,
        backend_count: 1,
        flags: 0,
        affinity_timeout_s: 0,
        maglev_size: 0,
    };
    state.services6.insert(key, value);
    lb.maps.apply(&diff(&before, &state)).unwrap();

    let syn = packet6((CLIENT6, 40030), (NODE6, 30080), PROTO_TCP);
    let (verdict, out) = lb.ingress(&syn);
    assert_eq!(verdict, TC_ACT_OK);
    let (src, dst) = read6(&out);
    assert_eq!(
        src,
        (CLIENT6, 40030),
        "the client address is kept (local backend)"
    );
    assert_eq!(dst, (POD6, 8080));
    let reply = packet6((POD6, 8080), (CLIENT6, 40030), PROTO_TCP);
    let (verdict, out) = lb.run("pier_nodeport_egress", &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(read6(&out), ((NODE6, 30080), (CLIENT6, 40030)));

    // "Packet too big" from the pod about what it received: the client must
    // get it from the service address, about the packet it sent.
    let quoted = packet6((CLIENT6, 40030), (POD6, 8080), PROTO_TCP);
    let (verdict, out) = lb.run(
        "pier_nodeport_egress",
        &icmp6_too_big(POD6, CLIENT6, &quoted),
    );
    assert_eq!(verdict, TC_ACT_OK);
    let (src, dst, quoted_src, quoted_dst) = read_icmp6(&out);
    assert_eq!((src, dst), (NODE6, CLIENT6));
    assert_eq!((quoted_src, quoted_dst), ((CLIENT6, 40030), (NODE6, 30080)));

    // A hop-by-hop header (0) or a fragment header (44) first: untouched.
    let fragments_before = lb.counter("fragment_passed");
    for next in [0u8, 44] {
        let frame = packet6((CLIENT6, 40031), (NODE6, 30080), next);
        assert_eq!(
            lb.ingress(&frame),
            (TC_ACT_OK, frame.clone()),
            "next header {next}"
        );
    }
    assert_eq!(lb.counter("fragment_passed") - fragments_before, 1);
}

fn icmp6_checksum(src: [u8; 16], dst: [u8; 16], message: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend(src);
    pseudo.extend(dst);
    pseudo.extend((message.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, 58]);
    pseudo.extend(message);
    sum16(&pseudo, 0)
}

/// An ICMPv6 "packet too big" (MTU 1280) quoting the first 48 bytes (IPv6
/// header + ports and sequence) of `quoted`.
fn icmp6_too_big(from: [u8; 16], to: [u8; 16], quoted: &[u8]) -> Vec<u8> {
    let mut message = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
    message.extend(&quoted[14..14 + 48]);
    let c = icmp6_checksum(from, to, &message);
    message[2..4].copy_from_slice(&c.to_be_bytes());
    let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd];
    frame.extend([0x60, 0, 0, 0]);
    frame.extend((message.len() as u16).to_be_bytes());
    frame.extend([58, 64]);
    frame.extend(from);
    frame.extend(to);
    frame.extend(message);
    frame
}

/// Outer source and destination and the quoted endpoints of an ICMPv6 error,
/// after checking its checksum.
fn read_icmp6(frame: &[u8]) -> ([u8; 16], [u8; 16], Endpoint6, Endpoint6) {
    let ip = &frame[14..];
    let src: [u8; 16] = ip[8..24].try_into().unwrap();
    let dst: [u8; 16] = ip[24..40].try_into().unwrap();
    let message = &ip[40..];
    assert_eq!(icmp6_checksum(src, dst, message), 0, "ICMPv6 checksum");
    let inner = &message[8..];
    let addr = |b: &[u8]| -> [u8; 16] { b[..16].try_into().unwrap() };
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    (
        src,
        dst,
        (addr(&inner[8..]), port(&inner[40..])),
        (addr(&inner[24..]), port(&inner[42..])),
    )
}

/// Pins a plain BPF hash map of `max_entries` at `path`, for the agent to
/// adopt in place of its conntrack map (it takes whatever is pinned under a
/// map's name): unlike the LRU map, it refuses inserts once full, which is
/// how a failed conntrack insert is made to happen on purpose.
fn pin_small_hash(path: &std::path::Path, key_size: u32, value_size: u32, max_entries: u32) {
    use std::os::unix::ffi::OsStrExt;
    /// The `BPF_MAP_CREATE` members of `union bpf_attr` (the rest zero).
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    /// The `BPF_OBJ_PIN` members.
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let create = MapCreate {
        map_type: BPF_MAP_TYPE_HASH,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
    };
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: both attributes are valid `bpf_attr` prefixes passed with their
    // true sizes; the path outlives the call; the fd is closed once pinned.
    #[allow(unsafe_code)]
    unsafe {
        let fd = libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &create as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        );
        assert!(
            fd >= 0,
            "BPF_MAP_CREATE: {}",
            std::io::Error::last_os_error()
        );
        let pin = ObjPin {
            pathname: path.as_ptr() as u64,
            bpf_fd: fd as u32,
            file_flags: 0,
        };
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const ObjPin,
            std::mem::size_of::<ObjPin>(),
        );
        assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
        libc::close(fd as i32);
    }
}

#[test]
fn a_conntrack_insert_that_fails_leaves_no_half_flow_and_no_claimed_port() {
    if !privileged() {
        return;
    }
    // Conntrack maps with room for one entry: a new flow needs two.
    let lb = load_with(&config(), |pins| {
        pin_small_hash(&pins.join(MAP_CT4), 16, 32, 1);
        pin_small_hash(&pins.join(MAP_CT6), 40, 56, 1);
    });
    let ct = lb.ct4();

    // To a remote backend: the SNAT port is claimed (the one free entry),
    // then the forward entry does not fit. The claim must be taken back.
    let (verdict, _) = lb.ingress(&packet(&tcp((CLIENT, 40100), (NODE, 30070))));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(lb.counter("conntrack_insert_failed"), 1);
    assert_eq!(ct.keys().count(), 0, "the claimed SNAT port was given back");

    // To a local backend, with the map full: the reply entry does not fit,
    // so the flow is not translated half (its replies would leave untranslated).
    let other = ct_key(([198, 18, 0, 1], 1), ([198, 18, 0, 2], 2));
    let entry = Ct4Entry {
        saddr: [198, 18, 0, 1],
        daddr: [198, 18, 0, 2],
        sport_be: 1u16.to_be(),
        dport_be: 2u16.to_be(),
        backend_id: 0,
        last_seen_ns: u64::MAX / 2,
        flags: 0,
        closing: 0,
        pad: [0; 6],
    };
    let mut full = lb.ct4();
    full.insert(other, entry, 0).unwrap();
    let (verdict, _) = lb.ingress(&packet(&tcp((CLIENT, 40101), (NODE, 30080))));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(lb.counter("conntrack_insert_failed"), 2);
    let keys: Vec<Ct4Key> = ct.keys().map(Result::unwrap).collect();
    assert_eq!(keys, vec![other], "nothing of the flow is left");

    // IPv6, to a remote backend: the same.
    let mut lb = lb;
    let before = services();
    let mut state = before.clone();
    state.backends6.insert(
        11,
        Lb6Backend {
            address: POD6_REMOTE,
            port_be: 8080u16.to_be(),
            proto: PROTO_TCP,
            flags: 0,
        },
    );
    add_service6(&mut state, 11, 30070, &[11]);
    lb.maps.apply(&diff(&before, &state)).unwrap();
    let (verdict, _) = lb.ingress(&packet6((CLIENT6, 40102), (NODE6, 30070), PROTO_TCP));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(lb.counter("conntrack_insert_failed"), 3);
    assert_eq!(
        lb.ct6().keys().count(),
        0,
        "the IPv6 SNAT port was given back"
    );
}

const POD6_REMOTE: [u8; 16] = [0xfd, 0, 0, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];

fn add_service6(s: &mut MapState, id: u32, port: u16, backends: &[u32]) {
    for (i, b) in backends.iter().enumerate() {
        s.slots.insert(
            LbSlotKey {
                service_id: id,
                slot: i as u32 + 1,
            },
            *b,
        );
    }
    let key = Lb6Key {
        address: NODE6,
        port_be: port.to_be(),
        proto: PROTO_TCP,
        scope: SCOPE_NODEPORT,
    };
    let value = LbService {
        service_id: id,
        backend_count: backends.len() as u16,
        flags: 0,
        affinity_timeout_s: 0,
        maglev_size: 0,
    };
    s.services6.insert(key, value);
}

#[test]
fn an_idle_snat_port_is_taken_over_and_a_live_one_never() {
    if !privileged() {
        return;
    }
    // One SNAT port only.
    let one_port = Config {
        snat_port_min: 61000,
        snat_port_max: 61000,
        ..config()
    };
    let lb = load_with(&one_port, |_| {});
    let ct = lb.ct4();
    let claimed_by = |client: Endpoint| {
        let reply = ct_key((POD_REMOTE, 8080), (NODE, 61000));
        ct.get(&reply, 0)
            .ok()
            .filter(|e| (e.daddr, u16::from_be(e.dport_be)) == client)
    };
    let first = (CLIENT, 40200);
    let second = ([203, 0, 113, 3], 40201);
    lb.ingress(&packet(&tcp(first, (NODE, 30070))));
    assert!(claimed_by(first).is_some(), "the first flow has the port");
    let forward = ct.get(&ct_key(first, (NODE, 30070)), 0).unwrap();
    assert_eq!(
        (forward.saddr, u16::from_be(forward.sport_be)),
        (NODE, 61000)
    );

    // While the first flow lives, the port is not given to another.
    let (verdict, _) = lb.ingress(&packet(&tcp(second, (NODE, 30070))));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(lb.counter("snat_ports_exhausted"), 1);
    assert!(claimed_by(first).is_some(), "a live claim is never taken");

    // Once it is over both ways (closed, with a closing timeout of 0 here),
    // the next flow takes the port over.
    let mut entries = lb.ct4();
    let mut close = |key: Ct4Key| {
        let mut e = entries.get(&key, 0).unwrap();
        e.closing = 1;
        entries.insert(key, e, 0).unwrap();
    };
    // Not while its forward direction still lives (one-way traffic).
    close(ct_key((POD_REMOTE, 8080), (NODE, 61000)));
    lb.ingress(&packet(&tcp(second, (NODE, 30070))));
    assert!(claimed_by(first).is_some(), "the forward side still lives");
    assert_eq!(lb.counter("snat_ports_exhausted"), 2);
    close(ct_key(first, (NODE, 30070)));
    lb.ingress(&packet(&tcp(second, (NODE, 30070))));
    assert!(claimed_by(second).is_some(), "the idle port was taken over");
    assert_eq!(lb.counter("snat_ports_exhausted"), 2);
    let forward = ct.get(&ct_key(second, (NODE, 30070)), 0).unwrap();
    assert_eq!(u16::from_be(forward.sport_be), 61000);
}

/// CLOCK_MONOTONIC in nanoseconds, the BPF side's `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn session_affinity_holds_when_another_cpu_stored_a_later_time() {
    if !privileged() {
        return;
    }
    let mut lb = load();
    let before = services();
    let mut state = before.clone();
    add_service(&mut state, 5, 30091, PROTO_TCP, &[1, 3], SVC_AFFINITY);
    lb.maps.apply(&diff(&before, &state)).unwrap();
    let data = MapData::from_pin(lb.pins.join(MAP_LB_AFFINITY)).unwrap();
    let mut affinity: BpfHashMap<MapData, LbAffinityKey, LbAffinity> =
        BpfHashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    // Each client last used a backend (alternating), stamped by another CPU
    // a moment ahead of the clock this one reads.
    let later = monotonic_ns() + 5_000_000_000;
    let clients: Vec<([u8; 4], u32)> = (0..12u8)
        .map(|i| ([203, 0, 113, 10 + i], if i % 2 == 0 { 1 } else { 3 }))
        .collect();
    for (client, backend_id) in &clients {
        let key = LbAffinityKey {
            // As the tc program keys a client: its address, tagged.
            netns_cookie: (1 << 63) | u64::from(u32::from_ne_bytes(*client)),
            service_id: 5,
            pad: 0,
        };
        let value = LbAffinity {
            last_used_ns: later,
            backend_id: *backend_id,
            pad: 0,
        };
        affinity.insert(key, value, 0).unwrap();
    }
    for (client, backend_id) in &clients {
        let (verdict, out) = lb.ingress(&packet(&tcp((*client, 40300), (NODE, 30091))));
        assert_eq!(verdict, TC_ACT_OK);
        let want = if *backend_id == 1 { POD_A } else { POD_B };
        assert_eq!(
            read(&out).1,
            (want, 8080),
            "client {client:?} kept its backend"
        );
    }
}

#[test]
fn two_cpus_never_both_take_over_one_idle_snat_port() {
    use std::sync::atomic::{AtomicU64, Ordering};
    if !privileged() {
        return;
    }
    // One SNAT port, held by a closed flow (idle at once: closing timeout 0);
    // two new flows race for it from two threads, round after round. Exactly
    // one may win each round: two would share the port, and the replies of
    // one would reach the other's client.
    let one_port = Config {
        snat_port_min: 61000,
        snat_port_max: 61000,
        ..config()
    };
    let lb = load_with(&one_port, |_| {});
    let fd = lb.programs.program_fd("pier_nodeport_ingress").unwrap();
    let clients = [(CLIENT, 40400), ([203, 0, 113, 3], 40401)];
    let [mine, theirs] = clients.map(|c| packet(&tcp(c, (NODE, 30070))));
    let reply_key = ct_key((POD_REMOTE, 8080), (NODE, 61000));
    let closed = Ct4Entry {
        saddr: NODE,
        daddr: [198, 18, 0, 1],
        sport_be: 30070u16.to_be(),
        dport_be: 1u16.to_be(),
        backend_id: 4,
        last_seen_ns: 1,
        flags: CT_REPLY | CT_SNAT,
        closing: 1,
        pad: [0; 6],
    };
    let mut ct = lb.ct4();
    // The round the other thread is to run (0: not yet; u64::MAX: stop),
    // and the last round it finished. It spins, so both start together.
    let (go, done) = (AtomicU64::new(0), AtomicU64::new(0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut rounds = 0u64;
    std::thread::scope(|scope| {
        scope.spawn(|| loop {
            let round = go.load(Ordering::Acquire);
            if round == u64::MAX {
                return;
            }
            if round > done.load(Ordering::Relaxed) {
                test_run(fd, &theirs).unwrap();
                done.store(round, Ordering::Release);
            }
            std::hint::spin_loop();
        });
        while std::time::Instant::now() < deadline && rounds < 20_000 {
            rounds += 1;
            for client in clients {
                let _ = ct.remove(&ct_key(client, (NODE, 30070)));
            }
            ct.insert(reply_key, closed, 0).unwrap();
            go.store(rounds, Ordering::Release);
            test_run(fd, &mine).unwrap();
            while done.load(Ordering::Acquire) < rounds {
                std::hint::spin_loop();
            }
            let winners = clients
                .iter()
                .filter(|c| ct.get(&ct_key(**c, (NODE, 30070)), 0).is_ok())
                .count();
            if winners != 1 {
                go.store(u64::MAX, Ordering::Release);
                panic!("round {rounds}: {winners} flows got the one SNAT port");
            }
        }
        go.store(u64::MAX, Ordering::Release);
    });
    eprintln!("{rounds} rounds, one winner each");
}
