//! pier-agent: the eBPF kube-proxy replacement.
//!
//! This crate holds the pure parts: the Rust mirrors of the map layouts
//! defined in `bpf/include/pier_maps.h` ([`maps`]), the translation of a
//! snapshot into the content of those maps and the ordered operations that
//! move the kernel from one content to the next ([`plan`]), and Maglev
//! ([`maglev`]). The BPF objects built from `bpf/` are embedded below.

pub mod health;
pub mod interfaces;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod plan;
pub mod planner;
pub mod sockets;

/// The socket-LB object (cgroup connect4 / sendmsg4 / recvmsg4 / getpeername4).
pub static SOCK_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sock.o"));

/// The socket-LB object for kernels before 5.18 (EPERM instead of ECONNREFUSED).
pub static SOCK_COMPAT_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sock_compat.o"));

/// The tc object (NodePort / LB IP / externalIP from outside, conntrack).
pub static NODEPORT_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tc_nodeport.o"));

#[cfg(test)]
mod tests {
    #[test]
    fn the_socket_lb_objects_are_bpf_elfs_with_all_hooks_and_maps() {
        for obj in [super::SOCK_OBJECT, super::SOCK_COMPAT_OBJECT] {
            check_sock_object(obj);
        }
    }

    fn check_sock_object(obj: &[u8]) {
        assert_eq!(&obj[..4], b"\x7fELF");
        assert_eq!(
            u16::from_le_bytes([obj[18], obj[19]]),
            247,
            "e_machine is EM_BPF"
        );
        let has = |s: &str| obj.windows(s.len()).any(|w| w == s.as_bytes());
        for section in [
            "cgroup/connect4",
            "cgroup/sendmsg4",
            "cgroup/recvmsg4",
            "cgroup/getpeername4",
            "cgroup/connect6",
            "cgroup/sendmsg6",
            "cgroup/recvmsg6",
            "cgroup/getpeername6",
            ".BTF",
            "license",
        ] {
            assert!(has(section), "missing {section}");
        }
        for map in [
            crate::maps::MAP_LB4_SERVICES,
            crate::maps::MAP_LB_SLOTS,
            crate::maps::MAP_LB4_BACKENDS,
            crate::maps::MAP_LB4_REVNAT,
            crate::maps::MAP_LB_AFFINITY,
            crate::maps::MAP_LB_MAGLEV,
            crate::maps::MAP_LB6_SERVICES,
            crate::maps::MAP_LB6_BACKENDS,
            crate::maps::MAP_LB6_REVNAT,
            crate::maps::MAP_CT4,
            crate::maps::MAP_CONFIG,
        ] {
            assert!(has(map), "missing map {map}");
        }
    }
}
