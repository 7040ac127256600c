//! Loading the socket-LB programs with aya, attaching them to a cgroup v2,
//! and applying [`MapOp`]s to the pinned maps.

use crate::maps::*;
use crate::plan::MapOp;
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct AgentError(pub String);

#[cfg(test)]
mod tests {
    #[test]
    fn a_pin_dir_off_bpffs_outside_sys_fs_bpf_is_refused_clearly() {
        let e = super::ensure_bpffs(std::path::Path::new("/tmp/not-a-bpffs/pier")).unwrap_err();
        assert!(e.0.contains("is not on a bpffs"), "{e}");
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AgentError {}

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> AgentError + '_ {
    move |e| AgentError(format!("{what}: {e}"))
}

// SAFETY: plain `#[repr(C)]` structs of integers and byte arrays with no
// padding (sizes checked in maps.rs): any bit pattern is a valid value.
#[allow(unsafe_code)]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Lb4Key {}
    unsafe impl aya::Pod for Lb4Service {}
    unsafe impl aya::Pod for Lb4SlotKey {}
    unsafe impl aya::Pod for Lb4Backend {}
    unsafe impl aya::Pod for Lb4RevNatKey {}
    unsafe impl aya::Pod for Lb4RevNat {}
}

const SOCK_PROGRAMS: [&str; 4] = [
    "pier_sock_connect4",
    "pier_sock_sendmsg4",
    "pier_sock_recvmsg4",
    "pier_sock_getpeername4",
];

/// The cgroup v2 mount point, from /proc/mounts (never hard-coded).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, path, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(path))
    })
}

/// The filesystem type of the mount holding `path` (longest mount-point prefix).
fn fs_type_of(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(point)
                .then(|| (point.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

/// Makes sure `pin_dir` is on a bpffs: mounts one on /sys/fs/bpf when the
/// node has none there (as kube-proxy replacements do); any other location
/// must already be a bpffs.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), AgentError> {
    if fs_type_of(pin_dir).as_deref() == Some("bpf") {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(default) {
        return Err(AgentError(format!("{} is not on a bpffs: mount one (mount -t bpf bpf DIR) or use --pin-dir under /sys/fs/bpf", pin_dir.display())));
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(default)
        .status()
        .map_err(|e| err("running mount")(&e))?;
    if !status.success() || fs_type_of(pin_dir).as_deref() != Some("bpf") {
        return Err(AgentError("could not mount a bpffs on /sys/fs/bpf".into()));
    }
    tracing::info!("mounted a bpffs on /sys/fs/bpf");
    Ok(())
}

/// Detaches the hooks (unpins their links) and removes the pinned maps.
pub fn uninstall(pin_dir: &Path) -> Result<(), AgentError> {
    for name in SOCK_PROGRAMS {
        let link_pin = pin_dir.join(format!("link_{name}"));
        if link_pin.exists() {
            let link = PinnedLink::from_pin(&link_pin).map_err(|e| err(name)(&e))?;
            drop(link.unpin().map_err(|e| err(name)(&e))?);
        }
    }
    if pin_dir.exists() {
        std::fs::remove_dir_all(pin_dir).map_err(|e| err("removing the pinned maps")(&e))?;
    }
    Ok(())
}

/// The socket-LB programs attached to one cgroup, and their maps.
pub struct SockLb {
    // The hooks live in pinned links (see `attach`), not in this object.
    _ebpf: Ebpf,
    services: BpfHashMap<MapData, Lb4Key, Lb4Service>,
    slots: BpfHashMap<MapData, Lb4SlotKey, u32>,
    backends: BpfHashMap<MapData, u32, Lb4Backend>,
}

impl SockLb {
    /// Loads the programs, pins their maps under `pin_dir` (reusing maps
    /// already pinned there) and attaches the hooks to `cgroup`.
    pub fn attach(pin_dir: &Path, cgroup: &Path) -> Result<SockLb, AgentError> {
        ensure_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir).map_err(|e| err("creating the pin directory")(&e))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(crate::SOCK_OBJECT)
            .map_err(|e| err("loading sock.o")(&e))?;
        let cgroup_fd = File::open(cgroup).map_err(|e| err("opening the cgroup")(&e))?;
        for name in SOCK_PROGRAMS {
            // A link pinned by a previous agent keeps the hook attached while the
            // agent restarts; it is kept (the maps it reads are the pinned ones).
            let link_pin = pin_dir.join(format!("link_{name}"));
            if link_pin.exists() {
                continue;
            }
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| AgentError(format!("program {name} missing from sock.o")))?
                .try_into()
                .map_err(|e| err(name)(&e))?;
            program.load().map_err(|e| err(name)(&e))?;
            let link_id = program
                .attach(&cgroup_fd, CgroupAttachMode::Single)
                .map_err(|e| err(name)(&e))?;
            let link = program.take_link(link_id).map_err(|e| err(name)(&e))?;
            let fd_link: FdLink = link.try_into().map_err(|e| err(name)(&e))?;
            fd_link.pin(&link_pin).map_err(|e| err(name)(&e))?;
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| AgentError(format!("map {name} missing from sock.o")))
        };
        let services =
            BpfHashMap::try_from(take(MAP_LB4_SERVICES)?).map_err(|e| err(MAP_LB4_SERVICES)(&e))?;
        let slots =
            BpfHashMap::try_from(take(MAP_LB4_SLOTS)?).map_err(|e| err(MAP_LB4_SLOTS)(&e))?;
        let backends =
            BpfHashMap::try_from(take(MAP_LB4_BACKENDS)?).map_err(|e| err(MAP_LB4_BACKENDS)(&e))?;
        Ok(SockLb {
            _ebpf: ebpf,
            services,
            slots,
            backends,
        })
    }

    /// Applies operations in the order given (use [`crate::plan::diff`]'s order).
    pub fn apply(&mut self, ops: &[MapOp]) -> Result<(), AgentError> {
        for op in ops {
            let result = match op {
                MapOp::PutBackend(id, b) => self.backends.insert(id, b, 0),
                MapOp::PutSlot(k, v) => self.slots.insert(k, v, 0),
                MapOp::PutService(k, v) => self.services.insert(k, v, 0),
                MapOp::DeleteService(k) => self.services.remove(k),
                MapOp::DeleteSlot(k) => self.slots.remove(k),
                MapOp::DeleteBackend(id) => self.backends.remove(id),
            };
            // Deleting what is already gone is success (a retry after a partial update).
            let result = match result {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                other => other,
            };
            result.map_err(|e| AgentError(format!("{op:?}: {e}")))?;
        }
        Ok(())
    }
}

fn open_pinned<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &str,
) -> Result<BpfHashMap<MapData, K, V>, AgentError> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(|e| err(name)(&e))?;
    let map = aya::maps::Map::from_map_data(data).map_err(|e| err(name)(&e))?;
    BpfHashMap::try_from(map).map_err(|e| err(name)(&e))
}

/// Reads the pinned lb4 maps back (for `status`, and so a restarted agent
/// reconciles against what the kernel really holds).
pub fn read_pinned(pin_dir: &Path) -> Result<crate::plan::MapState, AgentError> {
    let mut state = crate::plan::MapState::default();
    let services: BpfHashMap<MapData, Lb4Key, Lb4Service> = open_pinned(pin_dir, MAP_LB4_SERVICES)?;
    for entry in services.iter() {
        let (k, v) = entry.map_err(|e| err(MAP_LB4_SERVICES)(&e))?;
        state.services.insert(k, v);
    }
    let slots: BpfHashMap<MapData, Lb4SlotKey, u32> = open_pinned(pin_dir, MAP_LB4_SLOTS)?;
    for entry in slots.iter() {
        let (k, v) = entry.map_err(|e| err(MAP_LB4_SLOTS)(&e))?;
        state.slots.insert(k, v);
    }
    let backends: BpfHashMap<MapData, u32, Lb4Backend> = open_pinned(pin_dir, MAP_LB4_BACKENDS)?;
    for entry in backends.iter() {
        let (k, v) = entry.map_err(|e| err(MAP_LB4_BACKENDS)(&e))?;
        state.backends.insert(k, v);
    }
    Ok(state)
}

/// A readable table of the lb4 maps.
pub fn render_status(state: &crate::plan::MapState) -> String {
    use std::fmt::Write;
    let proto = |p: u8| match p {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_SCTP => "SCTP",
        _ => "?",
    };
    let addr = |a: [u8; 4], port_be: u16| {
        format!("{}:{}", std::net::Ipv4Addr::from(a), u16::from_be(port_be))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<5} {:<9} {:>4}  BACKENDS",
        "SERVICE ADDRESS", "PROTO", "SCOPE", "ID"
    );
    for (k, svc) in &state.services {
        let backends: Vec<String> = (1..=u32::from(svc.backend_count))
            .map(|slot| {
                state
                    .slots
                    .get(&Lb4SlotKey {
                        service_id: svc.service_id,
                        slot,
                    })
                    .and_then(|id| state.backends.get(id))
                    .map_or_else(|| "<missing>".to_string(), |b| addr(b.address, b.port_be))
            })
            .collect();
        let scope = if k.scope == SCOPE_NODEPORT {
            "nodeport"
        } else {
            "cluster"
        };
        let shown = if backends.is_empty() {
            "(none: connects refused)".to_string()
        } else {
            backends.join(", ")
        };
        let _ = writeln!(
            out,
            "{:<24} {:<5} {:<9} {:>4}  {}",
            addr(k.address, k.port_be),
            proto(k.proto),
            scope,
            svc.service_id,
            shown
        );
    }
    let _ = writeln!(
        out,
        "{} service addresses, {} backends",
        state.services.len(),
        state.backends.len()
    );
    out
}
