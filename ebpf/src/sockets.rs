//! Stale socket destruction. Socket-LB rewrites a connected UDP socket's peer
//! once, at connect time; when that backend goes away the socket would keep
//! sending into the void (the CoreDNS-restart bug class). After a backend is
//! removed, every network namespace on the node is searched (sock_diag) for
//! connected UDP sockets whose peer is that backend *and* that pier itself
//! connected there (a `pier_lb4_revnat` entry for the socket cookie), and those
//! are destroyed (SOCK_DESTROY): the application sees ECONNABORTED and
//! reconnects through the service to a live backend. Sockets a pod opened to
//! a pod IP directly are never touched.

use crate::maps::{Lb4RevNat, Lb4RevNatKey};
use aya::maps::{HashMap as BpfHashMap, MapData};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Connected UDP sockets are in TCP_ESTABLISHED.
const STATE_ESTABLISHED: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [[u8; 4]; 4],
    dst: [[u8; 4]; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// The head of `struct inet_diag_msg` (what is needed of it).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsgHead {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
}

#[repr(C)]
struct Request {
    header: NlMsgHdr,
    body: InetDiagReqV2,
}

/// One network namespace per distinct `/proc/<pid>/ns/net`.
fn network_namespaces() -> Vec<PathBuf> {
    let mut seen = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("ns/net");
        if let Ok(target) = std::fs::read_link(&path) {
            seen.entry(target).or_insert(path);
        }
    }
    seen.into_values().collect()
}

/// A sock_diag netlink socket in the calling thread's network namespace.
struct DiagSocket(std::os::fd::OwnedFd);

#[allow(unsafe_code)]
impl DiagSocket {
    fn open() -> std::io::Result<DiagSocket> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the fd is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is not owned elsewhere.
        Ok(DiagSocket(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, request: &Request) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: sends the bytes of a `#[repr(C)]` request to the kernel
        // (netlink destination: pid 0); the pointer and length describe it exactly.
        let n = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.0.as_raw_fd(),
                (request as *const Request).cast(),
                std::mem::size_of::<Request>(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Reads a `#[repr(C)]` value of plain integers from the start of `bytes`.
fn read_struct<T: Copy + Default>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    let mut value = T::default();
    // SAFETY: `T` is a `#[repr(C)]` struct of integers (any bit pattern is
    // valid) and `bytes` holds at least `size_of::<T>()` bytes.
    #[allow(unsafe_code)]
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut value as *mut T).cast::<u8>(),
            std::mem::size_of::<T>(),
        );
    }
    Some(value)
}

fn request(kind: u16, flags: u16, protocol: u8, id: InetDiagSockId) -> Request {
    Request {
        header: NlMsgHdr {
            len: std::mem::size_of::<Request>() as u32,
            kind,
            flags,
            seq: 1,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family: libc::AF_INET as u8,
            protocol,
            states: STATE_ESTABLISHED,
            id,
            ..InetDiagReqV2::default()
        },
    }
}

/// Connected IPv4 UDP sockets of this thread's network namespace whose peer
/// is in `peers`.
fn connected_udp_to(
    diag: &DiagSocket,
    peers: &BTreeSet<([u8; 4], u16)>,
) -> std::io::Result<Vec<InetDiagSockId>> {
    diag.send(&request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        libc::IPPROTO_UDP as u8,
        InetDiagSockId::default(),
    ))?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = diag.recv(&mut buf)?;
        let mut at = 0;
        while at + std::mem::size_of::<NlMsgHdr>() <= n {
            let Some(header) = read_struct::<NlMsgHdr>(&buf[at..n]) else {
                break;
            };
            let len = header.len as usize;
            if len < std::mem::size_of::<NlMsgHdr>() || at + len > n {
                break;
            }
            match header.kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => return Err(std::io::Error::other("sock_diag dump refused")),
                _ => {
                    let body = &buf[at + std::mem::size_of::<NlMsgHdr>()..at + len];
                    if let Some(msg) = read_struct::<InetDiagMsgHead>(body) {
                        let peer = (msg.id.dst[0], u16::from_be_bytes(msg.id.dport));
                        if peers.contains(&peer) {
                            found.push(msg.id);
                        }
                    }
                }
            }
            at += (len + 3) & !3;
        }
    }
}

fn destroy(diag: &DiagSocket, id: InetDiagSockId) -> std::io::Result<()> {
    diag.send(&request(
        SOCK_DESTROY,
        NLM_F_REQUEST | NLM_F_ACK,
        libc::IPPROTO_UDP as u8,
        id,
    ))?;
    let mut buf = [0u8; 512];
    let n = diag.recv(&mut buf)?;
    let header: NlMsgHdr =
        read_struct(&buf[..n]).ok_or_else(|| std::io::Error::other("short netlink answer"))?;
    if header.kind == NLMSG_ERROR {
        let code: i32 = read_struct(&buf[std::mem::size_of::<NlMsgHdr>()..n]).unwrap_or(0);
        if code != 0 {
            return Err(std::io::Error::from_raw_os_error(-code));
        }
    }
    Ok(())
}

/// Destroys the connected UDP sockets, in every network namespace of the
/// node, that pier pointed at one of `removed` (backend address, port).
/// Returns how many were destroyed.
pub fn destroy_stale_udp(
    removed: &BTreeSet<(Ipv4Addr, u16)>,
    revnat: &BpfHashMap<MapData, Lb4RevNatKey, Lb4RevNat>,
) -> usize {
    if removed.is_empty() {
        return 0;
    }
    let peers: BTreeSet<([u8; 4], u16)> = removed.iter().map(|(a, p)| (a.octets(), *p)).collect();
    let mut destroyed = 0;
    for netns in network_namespaces() {
        // setns moves only the calling thread: do it on a thread of its own.
        let peers = &peers;
        let found = std::thread::scope(|s| {
            s.spawn(move || -> std::io::Result<Vec<InetDiagSockId>> {
                enter(&netns)?;
                let diag = DiagSocket::open()?;
                let candidates = connected_udp_to(&diag, peers)?;
                let mut done = Vec::new();
                for id in candidates {
                    let key = Lb4RevNatKey {
                        cookie: u64::from(id.cookie[0]) | (u64::from(id.cookie[1]) << 32),
                        address: id.dst[0],
                        port_be: u16::from_ne_bytes(id.dport),
                        pad: 0,
                    };
                    // Only sockets pier connected to this backend.
                    if revnat.get(&key, 0).is_ok() && destroy(&diag, id).is_ok() {
                        done.push(id);
                    }
                }
                Ok(done)
            })
            .join()
        });
        match found {
            Ok(Ok(done)) => destroyed += done.len(),
            Ok(Err(e)) => tracing::debug!(error = %e, "sock_diag in one network namespace"),
            Err(_) => tracing::warn!("stale socket search panicked"),
        }
    }
    destroyed
}

fn enter(netns: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(netns)?;
    // SAFETY: setns(2) on a namespace fd; affects only the calling thread.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
