//! Loading the socket-LB programs with aya, attaching them to a cgroup v2,
//! and applying [`MapOp`]s to the pinned maps.

use crate::maps::*;
use crate::plan::MapOp;
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use std::fs::File;
use std::path::{Path, PathBuf};

/// What went wrong loading, attaching or programming the BPF side, with the
/// underlying error as its `source()` (print the chain, e.g. anyhow's `{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{} is not on a bpffs: mount one (mount -t bpf bpf DIR) or use --pin-dir under /sys/fs/bpf", .0.display())]
    NotBpffs(PathBuf),
    #[error("could not mount a bpffs on /sys/fs/bpf")]
    MountBpffs,
    #[error("program {program} is missing from {object}")]
    MissingProgram {
        program: String,
        object: &'static str,
    },
    #[error("map {0} is missing from the loaded object")]
    MissingMap(&'static str),
    /// Maps pinned by an older pier-agent that cannot be taken over in place.
    #[error("{}: maps pinned by an older pier-agent ({}) {reason}; run `pier-agent uninstall` (with the same --pin-dir) and start the agent again", dir.display(), names.join(", "))]
    LegacyPins {
        dir: PathBuf,
        names: Vec<String>,
        reason: &'static str,
    },
    /// `what` failed because of `source`.
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        source: Cause,
    },
}

/// The error underneath an [`AgentError::Failed`], by kind.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Boxed: by far the largest (it carries the verifier log).
    #[error(transparent)]
    Load(Box<aya::EbpfError>),
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    #[error(transparent)]
    Link(#[from] aya::programs::links::LinkError),
    #[error(transparent)]
    Pin(#[from] aya::pin::PinError),
    #[error(transparent)]
    Map(#[from] aya::maps::MapError),
}

impl From<aya::EbpfError> for Cause {
    fn from(e: aya::EbpfError) -> Self {
        Cause::Load(Box::new(e))
    }
}

/// Wraps an error as the cause of `what` failing.
fn err<E: Into<Cause>>(what: &str) -> impl FnOnce(E) -> AgentError + '_ {
    move |source| AgentError::Failed {
        what: what.to_string(),
        source: source.into(),
    }
}

/// An error and its sources, joined with ": " (for logs that print one field).
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_dir_off_bpffs_outside_sys_fs_bpf_is_refused_clearly() {
        let e = ensure_bpffs(Path::new("/tmp/not-a-bpffs/pier")).unwrap_err();
        assert!(matches!(e, AgentError::NotBpffs(_)), "{e:?}");
        assert!(e.to_string().contains("is not on a bpffs"), "{e}");
    }

    #[test]
    fn a_failure_keeps_its_cause_as_the_source() {
        let e = err("opening the cgroup")(std::io::Error::from_raw_os_error(libc::ENOENT));
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.to_string().contains("No such file"), "{source}");
        assert!(matches!(
            e,
            AgentError::Failed {
                source: Cause::Io(_),
                ..
            }
        ));
        assert_eq!(
            Chain(&e).to_string(),
            "opening the cgroup: No such file or directory (os error 2)"
        );
    }
}

// SAFETY: plain `#[repr(C)]` structs of integers and byte arrays with no
// padding (sizes checked in maps.rs): any bit pattern is a valid value.
#[allow(unsafe_code)]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Lb4Key {}
    unsafe impl aya::Pod for LbService {}
    unsafe impl aya::Pod for LbSlotKey {}
    unsafe impl aya::Pod for Lb4Backend {}
    unsafe impl aya::Pod for Lb4RevNatKey {}
    unsafe impl aya::Pod for Lb4RevNat {}
    unsafe impl aya::Pod for LbMaglev {}
    unsafe impl aya::Pod for Lb6Key {}
    unsafe impl aya::Pod for Lb6Backend {}
    unsafe impl aya::Pod for Ct4Key {}
    unsafe impl aya::Pod for Ct4Entry {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for IdCounters {}
    unsafe impl aya::Pod for Ct6Key {}
    unsafe impl aya::Pod for Ct6Entry {}
    unsafe impl aya::Pod for LbAffinityKey {}
    unsafe impl aya::Pod for LbAffinity {}
    unsafe impl aya::Pod for Lb6RevNatKey {}
    unsafe impl aya::Pod for Lb6RevNat {}
}

const SOCK_PROGRAMS: [&str; 8] = [
    "pier_sock_connect4",
    "pier_sock_sendmsg4",
    "pier_sock_recvmsg4",
    "pier_sock_getpeername4",
    "pier_sock_connect6",
    "pier_sock_sendmsg6",
    "pier_sock_recvmsg6",
    "pier_sock_getpeername6",
];

/// Tail-called from the two above for IPv6 (index in `pier_tc_programs`).
const TAIL_PROGRAMS: [(&str, u32); 2] =
    [("pier_nodeport_ingress6", 0), ("pier_nodeport_egress6", 1)];

const TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    ("pier_nodeport_ingress", TcAttachType::Ingress),
    ("pier_nodeport_egress", TcAttachType::Egress),
];

/// Map capacities (`max_entries`), set when the maps are first created. Maps
/// already pinned keep the size they were created with: changing a size
/// takes `pier-agent uninstall` first.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// Service addresses (ClusterIP, NodePort, external / LB IP × port).
    pub services: u32,
    /// Backends, and service → backend slots.
    pub backends: u32,
    /// Conntrack entries for traffic from outside (LRU).
    pub conntrack: u32,
    /// Services reached from outside (one Maglev table each, 64 KiB).
    pub maglev_tables: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            services: 65_536,
            backends: 1_048_576,
            conntrack: 262_144,
            maglev_tables: 1_024,
        }
    }
}

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
        return Err(AgentError::NotBpffs(pin_dir.to_path_buf()));
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(default)
        .status()
        .map_err(err("running mount"))?;
    if !status.success() || fs_type_of(pin_dir).as_deref() != Some("bpf") {
        return Err(AgentError::MountBpffs);
    }
    tracing::info!("mounted a bpffs on /sys/fs/bpf");
    Ok(())
}

fn missing_program(program: &str, object: &'static str) -> AgentError {
    AgentError::MissingProgram {
        program: program.to_string(),
        object,
    }
}

/// Takes over what an older pier-agent pinned under former names (see
/// [`LEGACY_MAP_NAMES`]): each map is renamed in place, which keeps the map,
/// its content and every program using it, so services, ids and conntrack
/// survive the upgrade; the old counters are unpinned. A former name next to
/// its current one (an older agent ran after a newer one) is refused, naming
/// `pier-agent uninstall`. Returns the former names taken over.
pub fn migrate_legacy_pins(pin_dir: &Path) -> Result<Vec<&'static str>, AgentError> {
    let found: Vec<(&'static str, &'static str)> = LEGACY_MAP_NAMES
        .into_iter()
        .filter(|(old, _)| pin_dir.join(old).exists())
        .collect();
    let both: Vec<String> = found
        .iter()
        .filter(|(_, new)| pin_dir.join(new).exists())
        .map(|(old, new)| format!("{old} next to {new}"))
        .collect();
    if !both.is_empty() {
        return Err(AgentError::LegacyPins {
            dir: pin_dir.to_path_buf(),
            names: both,
            reason: "sit next to the maps of this version (which ones are in use is unknown)",
        });
    }
    let mut migrated = Vec::new();
    for (old, new) in found {
        std::fs::rename(pin_dir.join(old), pin_dir.join(new))
            .map_err(err(&format!("renaming the pinned map {old} to {new}")))?;
        tracing::info!(from = old, to = new, "pinned map renamed");
        migrated.push(old);
    }
    let counters = pin_dir.join(LEGACY_COUNTERS);
    if counters.exists() {
        std::fs::remove_file(&counters).map_err(err(&format!("unpinning {LEGACY_COUNTERS}")))?;
        migrated.push(LEGACY_COUNTERS);
    }
    Ok(migrated)
}

/// Refuses to read a pin directory an older agent left (for `status`).
fn refuse_legacy_pins(pin_dir: &Path) -> Result<(), AgentError> {
    let names: Vec<String> = LEGACY_MAP_NAMES
        .iter()
        .map(|(old, _)| *old)
        .chain([LEGACY_COUNTERS])
        .filter(|old| pin_dir.join(old).exists())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    Err(AgentError::LegacyPins {
        dir: pin_dir.to_path_buf(),
        names,
        reason: "are not migrated yet (the agent of this version renames them when it starts)",
    })
}

fn loader(pin_dir: &Path, sizes: &MapSizes) -> Result<EbpfLoader<'static>, AgentError> {
    ensure_bpffs(pin_dir)?;
    std::fs::create_dir_all(pin_dir).map_err(err("creating the pin directory"))?;
    migrate_legacy_pins(pin_dir)?;
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(pin_dir)
        .map_max_entries(MAP_LB4_SERVICES, sizes.services)
        .map_max_entries(MAP_LB_SLOTS, sizes.backends)
        .map_max_entries(MAP_LB4_BACKENDS, sizes.backends)
        .map_max_entries(MAP_LB6_SERVICES, sizes.services)
        .map_max_entries(MAP_LB6_BACKENDS, sizes.backends)
        .map_max_entries(MAP_CT4, sizes.conntrack)
        .map_max_entries(MAP_CT6, sizes.conntrack)
        .map_max_entries(MAP_LB_MAGLEV, sizes.maglev_tables);
    Ok(loader)
}

/// Where the link of `program` (on `interface`, for tc programs) is pinned.
fn link_pin(pin_dir: &Path, program: &str, interface: Option<&str>) -> PathBuf {
    match interface {
        Some(i) => pin_dir.join(format!("link_{program}@{i}")),
        None => pin_dir.join(format!("link_{program}")),
    }
}

/// Detaches every hook (unpins all pinned links) and removes the pinned maps.
pub fn uninstall(pin_dir: &Path) -> Result<(), AgentError> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("link_") {
            let link = PinnedLink::from_pin(entry.path()).map_err(err(&name))?;
            drop(link.unpin().map_err(err(&name))?);
        }
    }
    std::fs::remove_dir_all(pin_dir).map_err(err("removing the pinned maps"))
}

/// The socket-LB programs attached to one cgroup. The hooks live in pinned
/// links, so they stay attached when this object (or the agent) goes away.
pub struct SockLb {
    _ebpf: Ebpf,
}

impl SockLb {
    /// Loads the programs, pins their maps under `pin_dir` (reusing maps
    /// already pinned there) and attaches the hooks to `cgroup`.
    pub fn attach(pin_dir: &Path, cgroup: &Path, sizes: &MapSizes) -> Result<SockLb, AgentError> {
        let modern = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 18, 0));
        let object = if modern {
            crate::SOCK_OBJECT
        } else {
            tracing::warn!("kernel before 5.18: a Service without endpoints refuses with EPERM, not ECONNREFUSED");
            crate::SOCK_COMPAT_OBJECT
        };
        let mut ebpf = loader(pin_dir, sizes)?
            .load(object)
            .map_err(err("loading sock.o"))?;
        let cgroup_fd = File::open(cgroup).map_err(err("opening the cgroup"))?;
        for name in SOCK_PROGRAMS {
            // A link pinned by a previous agent keeps the hook attached while the
            // agent restarts; it is kept (the maps it reads are the pinned ones).
            let pin = link_pin(pin_dir, name, None);
            if pin.exists() {
                continue;
            }
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| missing_program(name, "sock.o"))?
                .try_into()
                .map_err(err(name))?;
            program.load().map_err(err(name))?;
            let link_id = program
                .attach(&cgroup_fd, CgroupAttachMode::Single)
                .map_err(err(name))?;
            let link = program.take_link(link_id).map_err(err(name))?;
            let fd_link: FdLink = link.try_into().map_err(err(name))?;
            fd_link.pin(&pin).map_err(err(name))?;
        }
        Ok(SockLb { _ebpf: ebpf })
    }
}

/// The tc programs for traffic from outside (NodePort, LB IPs, externalIPs).
pub struct NodePortLb {
    ebpf: Ebpf,
    /// Kernels before 6.6 attach tc programs with netlink: those links
    /// cannot be pinned and live as long as this object.
    netlink_links: Vec<aya::programs::tc::SchedClassifierLink>,
}

impl NodePortLb {
    /// Loads the programs (sharing the pinned maps) and writes `config`,
    /// without attaching them anywhere (see [`NodePortLb::attach`]).
    pub fn load(
        pin_dir: &Path,
        sizes: &MapSizes,
        config: &Config,
    ) -> Result<NodePortLb, AgentError> {
        let mut ebpf = loader(pin_dir, sizes)?
            .load(crate::NODEPORT_OBJECT)
            .map_err(err("loading tc_nodeport.o"))?;
        for (name, _) in TC_PROGRAMS {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| missing_program(name, "tc_nodeport.o"))?
                .try_into()
                .map_err(err(name))?;
            program.load().map_err(err(name))?;
        }
        // The IPv6 halves, reached by tail call through the pinned program
        // array (so a restart or upgrade swaps them in place too).
        let mut tail_fds = Vec::new();
        for (name, index) in TAIL_PROGRAMS {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| missing_program(name, "tc_nodeport.o"))?
                .try_into()
                .map_err(err(name))?;
            program.load().map_err(err(name))?;
            let fd = program.fd().map_err(err(name))?;
            tail_fds.push((index, fd.try_clone().map_err(err(name))?));
        }
        let map = ebpf
            .map_mut(MAP_TC_PROGRAMS)
            .ok_or(AgentError::MissingMap(MAP_TC_PROGRAMS))?;
        let mut programs: aya::maps::ProgramArray<_> =
            aya::maps::ProgramArray::try_from(map).map_err(err(MAP_TC_PROGRAMS))?;
        for (index, fd) in &tail_fds {
            programs.set(*index, fd, 0).map_err(err(MAP_TC_PROGRAMS))?;
        }
        let map = ebpf
            .map_mut(MAP_CONFIG)
            .ok_or(AgentError::MissingMap(MAP_CONFIG))?;
        let mut array: aya::maps::Array<_, Config> =
            aya::maps::Array::try_from(map).map_err(err(MAP_CONFIG))?;
        array.set(0, config, 0).map_err(err(MAP_CONFIG))?;
        Ok(NodePortLb {
            ebpf,
            netlink_links: Vec::new(),
        })
    }

    /// Attaches ingress and egress programs to `interface` (TCX links,
    /// pinned). A link pinned by a previous agent is updated in place to the
    /// new programs: an upgrade swaps the code without a moment detached.
    pub fn attach(&mut self, pin_dir: &Path, interface: &str) -> Result<(), AgentError> {
        for (name, direction) in TC_PROGRAMS {
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| missing_program(name, "tc_nodeport.o"))?
                .try_into()
                .map_err(err(name))?;
            let pin = link_pin(pin_dir, name, Some(interface));
            let what = format!("{name} on {interface}");
            if pin.exists() {
                let old = PinnedLink::from_pin(&pin).map_err(err(&what))?;
                let link = FdLink::from(old).try_into().map_err(err(&what))?;
                program.attach_to_link(link).map_err(err(&what))?;
                continue;
            }
            // Kernels without TCX need the clsact qdisc; it may already be
            // there, with a filter a killed agent left behind: remove that one.
            let tcx = aya::util::KernelVersion::current()
                .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
            if !tcx {
                let _ = aya::programs::tc::qdisc_add_clsact(interface);
                let _ = aya::programs::tc::qdisc_detach_program(interface, direction, name);
            }
            let id = program.attach(interface, direction).map_err(err(&what))?;
            let link = program.take_link(id).map_err(err(&what))?;
            if tcx {
                let fd_link: FdLink = link.try_into().map_err(err(&what))?;
                fd_link.pin(&pin).map_err(err(&what))?;
            } else {
                tracing::warn!(interface, program = name, "kernel before 6.6: tc programs are attached with netlink and detach when the agent stops (no TCX links to pin)");
                self.netlink_links.push(link);
            }
        }
        Ok(())
    }

    /// The loaded program `name`, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program_fd(&self, name: &str) -> Result<std::os::fd::BorrowedFd<'_>, AgentError> {
        let program: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or_else(|| missing_program(name, "tc_nodeport.o"))?
            .try_into()
            .map_err(err(name))?;
        use std::os::fd::AsFd;
        Ok(program.fd().map_err(err(name))?.as_fd())
    }
}

/// The service maps, opened from their pins, and the writes that keep them
/// in step with the plan.
pub struct LbMaps {
    services: BpfHashMap<MapData, Lb4Key, LbService>,
    slots: BpfHashMap<MapData, LbSlotKey, u32>,
    backends: BpfHashMap<MapData, u32, Lb4Backend>,
    maglev: BpfHashMap<MapData, u32, LbMaglev>,
    revnat: BpfHashMap<MapData, Lb4RevNatKey, Lb4RevNat>,
    services6: BpfHashMap<MapData, Lb6Key, LbService>,
    backends6: BpfHashMap<MapData, u32, Lb6Backend>,
    ids: aya::maps::Array<MapData, IdCounters>,
}

impl LbMaps {
    pub fn open(pin_dir: &Path) -> Result<LbMaps, AgentError> {
        Ok(LbMaps {
            services: open_pinned(pin_dir, MAP_LB4_SERVICES)?,
            slots: open_pinned(pin_dir, MAP_LB_SLOTS)?,
            backends: open_pinned(pin_dir, MAP_LB4_BACKENDS)?,
            maglev: open_pinned(pin_dir, MAP_LB_MAGLEV)?,
            revnat: open_pinned(pin_dir, MAP_LB4_REVNAT)?,
            services6: open_pinned(pin_dir, MAP_LB6_SERVICES)?,
            backends6: open_pinned(pin_dir, MAP_LB6_BACKENDS)?,
            ids: open_pinned_array(pin_dir, MAP_IDS)?,
        })
    }

    /// Saves the id counters (after each successful update).
    pub fn save_ids(&mut self, counters: IdCounters) -> Result<(), AgentError> {
        self.ids.set(0, counters, 0).map_err(err(MAP_IDS))
    }

    /// Destroys connected UDP sockets that socket-LB pointed at one of the
    /// `removed` backends (see [`crate::sockets`]). Returns how many.
    pub fn destroy_stale_sockets(&self, removed: &[Lb4Backend]) -> usize {
        let removed: std::collections::BTreeSet<(std::net::Ipv4Addr, u16)> = removed
            .iter()
            .filter(|b| b.proto == PROTO_UDP)
            .map(|b| (std::net::Ipv4Addr::from(b.address), u16::from_be(b.port_be)))
            .collect();
        crate::sockets::destroy_stale_udp(&removed, &self.revnat)
    }

    /// Applies operations in the order given (use [`crate::plan::diff`]'s order).
    pub fn apply(&mut self, ops: &[MapOp]) -> Result<(), AgentError> {
        for op in ops {
            let result = match op {
                MapOp::PutBackend(id, b) => self.backends.insert(id, b, 0),
                MapOp::PutSlot(k, v) => self.slots.insert(k, v, 0),
                MapOp::PutMaglev(id, spec) => {
                    // A table that cannot be built or stored (the map is full,
                    // more backends than entries) costs only that service its
                    // Maglev consistency: without a table it picks at random.
                    // It never stops the rest of the update.
                    match spec.table() {
                        Ok(table) => {
                            let mut value = Box::new(LbMaglev {
                                backend_ids: [0; MAGLEV_MAX],
                            });
                            let n = table.len().min(MAGLEV_MAX);
                            value.backend_ids[..n].copy_from_slice(&table[..n]);
                            if let Err(e) = self.maglev.insert(id, *value, 0) {
                                tracing::warn!(service_id = id, error = %e, "no Maglev table stored for this service (random backend choice from outside; raise --max-maglev-tables?)");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(service_id = id, error = %e, "no Maglev table for this service (random backend choice from outside)");
                        }
                    }
                    Ok(())
                }
                MapOp::PutService(k, v) => self.services.insert(k, v, 0),
                MapOp::PutBackend6(id, b) => self.backends6.insert(id, b, 0),
                MapOp::PutService6(k, v) => self.services6.insert(k, v, 0),
                MapOp::DeleteService6(k) => self.services6.remove(k),
                MapOp::DeleteBackend6(id) => self.backends6.remove(id),
                MapOp::DeleteService(k) => self.services.remove(k),
                MapOp::DeleteMaglev(id) => self.maglev.remove(id),
                MapOp::DeleteSlot(k) => self.slots.remove(k),
                MapOp::DeleteBackend(id) => self.backends.remove(id),
            };
            // Deleting what is already gone is success (a retry after a partial update).
            let result = match result {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                other => other,
            };
            result.map_err(err(&format!("{op:?}")))?;
        }
        Ok(())
    }
}

fn open_pinned_array<V: aya::Pod>(
    pin_dir: &Path,
    name: &str,
) -> Result<aya::maps::Array<MapData, V>, AgentError> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(err(name))?;
    let map = aya::maps::Map::from_map_data(data).map_err(err(name))?;
    aya::maps::Array::try_from(map).map_err(err(name))
}

/// The id counters a previous agent saved (zero when none).
pub fn read_id_counters(pin_dir: &Path) -> IdCounters {
    open_pinned_array::<IdCounters>(pin_dir, MAP_IDS)
        .and_then(|a| a.get(&0, 0).map_err(err(MAP_IDS)))
        .unwrap_or_default()
}

/// Every entry of a pinned hash map.
fn read_all<K: aya::Pod + Ord, V: aya::Pod>(
    pin_dir: &Path,
    name: &str,
) -> Result<std::collections::BTreeMap<K, V>, AgentError> {
    let map: BpfHashMap<MapData, K, V> = open_pinned(pin_dir, name)?;
    map.iter().map(|entry| entry.map_err(err(name))).collect()
}

fn open_pinned<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &str,
) -> Result<BpfHashMap<MapData, K, V>, AgentError> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(err(name))?;
    let map = aya::maps::Map::from_map_data(data).map_err(err(name))?;
    BpfHashMap::try_from(map).map_err(err(name))
}

/// Reads the pinned lb4 maps back (for `status`, and so a restarted agent
/// reconciles against what the kernel really holds).
pub fn read_pinned(pin_dir: &Path) -> Result<crate::plan::MapState, AgentError> {
    refuse_legacy_pins(pin_dir)?;
    let mut state = crate::plan::MapState {
        services: read_all(pin_dir, MAP_LB4_SERVICES)?,
        slots: read_all(pin_dir, MAP_LB_SLOTS)?,
        backends: read_all(pin_dir, MAP_LB4_BACKENDS)?,
        services6: read_all(pin_dir, MAP_LB6_SERVICES)?,
        backends6: read_all(pin_dir, MAP_LB6_BACKENDS)?,
        ..Default::default()
    };
    // Which tables exist (what they were built from is not recoverable: a
    // placeholder that differs from any plan, so the next diff rewrites them).
    let maglev: BpfHashMap<MapData, u32, LbMaglev> = open_pinned(pin_dir, MAP_LB_MAGLEV)?;
    for id in maglev.keys() {
        let id = id.map_err(err(MAP_LB_MAGLEV))?;
        let placeholder = crate::plan::MaglevSpec {
            size: 0,
            backends: Vec::new(),
        };
        state.maglev.insert(id, placeholder);
    }
    Ok(state)
}

/// A readable table of the lb4 maps.
pub fn render_status(state: &crate::plan::MapState) -> String {
    use std::fmt::Write;
    use std::net::{IpAddr, SocketAddr};
    let proto = |p: u8| match p {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_SCTP => "SCTP",
        _ => "?",
    };
    let addr = |ip: IpAddr, port_be: u16| SocketAddr::new(ip, u16::from_be(port_be)).to_string();
    // (address, proto, scope, service) rows of both families.
    let rows4 = state.services.iter().map(|(k, v)| {
        let ip = IpAddr::from(k.address);
        (addr(ip, k.port_be), k.proto, k.scope, v)
    });
    let rows6 = state.services6.iter().map(|(k, v)| {
        let ip = IpAddr::from(k.address);
        (addr(ip, k.port_be), k.proto, k.scope, v)
    });
    let backend = |id: &u32| -> Option<String> {
        let b4 = state
            .backends
            .get(id)
            .map(|b| addr(b.address.into(), b.port_be));
        b4.or_else(|| {
            state
                .backends6
                .get(id)
                .map(|b| addr(b.address.into(), b.port_be))
        })
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<5} {:<9} {:>4}  BACKENDS",
        "SERVICE ADDRESS", "PROTO", "SCOPE", "ID"
    );
    for (address, p, scope, svc) in rows4.chain(rows6) {
        let backends: Vec<String> = (1..=u32::from(svc.backend_count))
            .map(|slot| {
                let key = LbSlotKey {
                    service_id: svc.service_id,
                    slot,
                };
                state
                    .slots
                    .get(&key)
                    .and_then(backend)
                    .unwrap_or_else(|| "<missing>".to_string())
            })
            .collect();
        let scope = match scope {
            SCOPE_NODEPORT => "nodeport",
            SCOPE_EXTERNAL => "external",
            _ => "cluster",
        };
        let shown = if backends.is_empty() {
            "(none: connects refused)".to_string()
        } else {
            backends.join(", ")
        };
        let _ = writeln!(
            out,
            "{address:<24} {:<5} {scope:<9} {:>4}  {shown}",
            proto(p),
            svc.service_id,
        );
    }
    let _ = writeln!(
        out,
        "{} service addresses, {} backends",
        state.services.len() + state.services6.len(),
        state.backends.len() + state.backends6.len()
    );
    out
}

/// One conntrack entry of either family, for `status`.
#[derive(Clone, Debug)]
pub struct Flow {
    pub proto: u8,
    pub source: std::net::SocketAddr,
    pub destination: std::net::SocketAddr,
    pub rewritten_source: std::net::SocketAddr,
    pub rewritten_destination: std::net::SocketAddr,
    pub flags: u8,
    pub closing: bool,
}

/// Up to `limit` conntrack entries of each family (`status`).
pub fn read_conntrack(pin_dir: &Path, limit: usize) -> Result<Vec<Flow>, AgentError> {
    use std::net::{IpAddr, SocketAddr};
    let at = |ip: IpAddr, port_be: u16| SocketAddr::new(ip, u16::from_be(port_be));
    let v4: BpfHashMap<MapData, Ct4Key, Ct4Entry> = open_pinned(pin_dir, MAP_CT4)?;
    let v6: BpfHashMap<MapData, Ct6Key, Ct6Entry> = open_pinned(pin_dir, MAP_CT6)?;
    // The two families' keys and entries have the same field names.
    macro_rules! flow {
        (($k:expr, $e:expr)) => {
            Flow {
                proto: $k.proto,
                source: at($k.saddr.into(), $k.sport_be),
                destination: at($k.daddr.into(), $k.dport_be),
                rewritten_source: at($e.saddr.into(), $e.sport_be),
                rewritten_destination: at($e.daddr.into(), $e.dport_be),
                flags: $e.flags,
                closing: $e.closing != 0,
            }
        };
    }
    let flows4 = v4
        .iter()
        .filter_map(Result::ok)
        .take(limit)
        .map(|(k, e)| flow!((k, e)));
    let flows6 = v6
        .iter()
        .filter_map(Result::ok)
        .take(limit)
        .map(|(k, e)| flow!((k, e)));
    Ok(flows4.chain(flows6).collect())
}

/// A readable table of conntrack entries: the tuple seen on the wire and
/// what it is rewritten to.
pub fn render_conntrack(flows: &[Flow]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if flows.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<5} {:<22} {:<22}    {:<22} {:<22} KIND",
        "PROTO", "SOURCE", "DESTINATION", "REWRITTEN SOURCE", "REWRITTEN DESTINATION"
    );
    for flow in flows {
        let proto = match flow.proto {
            PROTO_TCP => "TCP",
            PROTO_UDP => "UDP",
            _ => "?",
        };
        let mut kind = if flow.flags & CT_REPLY != 0 {
            "reply"
        } else {
            "forward"
        }
        .to_string();
        if flow.flags & CT_SNAT != 0 {
            kind.push_str(", snat");
        }
        if flow.closing {
            kind.push_str(", closing");
        }
        let _ = writeln!(
            out,
            "{proto:<5} {:<22} {:<22} -> {:<22} {:<22} {kind}",
            flow.source.to_string(),
            flow.destination.to_string(),
            flow.rewritten_source.to_string(),
            flow.rewritten_destination.to_string(),
        );
    }
    out
}

/// Conntrack entries and drop / pass counters, for `status` and metrics.
#[derive(Debug, Default)]
pub struct DataPathStats {
    pub conntrack_entries: usize,
    /// `(reason, packets)`, summed over CPUs.
    pub counters: Vec<(&'static str, u64)>,
}

/// Reads the conntrack fill and the counters from the pinned maps.
pub fn read_stats(pin_dir: &Path) -> Result<DataPathStats, AgentError> {
    let data = MapData::from_pin(pin_dir.join(MAP_CT4)).map_err(err(MAP_CT4))?;
    let map = aya::maps::Map::from_map_data(data).map_err(err(MAP_CT4))?;
    let ct: BpfHashMap<MapData, Ct4Key, Ct4Entry> =
        BpfHashMap::try_from(map).map_err(err(MAP_CT4))?;
    let ct6: BpfHashMap<MapData, Ct6Key, Ct6Entry> = open_pinned(pin_dir, MAP_CT6)?;
    let conntrack_entries =
        ct.keys().filter(Result::is_ok).count() + ct6.keys().filter(Result::is_ok).count();
    let data = MapData::from_pin(pin_dir.join(MAP_COUNTERS)).map_err(err(MAP_COUNTERS))?;
    let map = aya::maps::Map::from_map_data(data).map_err(err(MAP_COUNTERS))?;
    let per_cpu: aya::maps::PerCpuArray<MapData, u64> =
        aya::maps::PerCpuArray::try_from(map).map_err(err(MAP_COUNTERS))?;
    let mut counters = Vec::new();
    for (index, reason) in COUNTERS {
        let values = per_cpu.get(&index, 0).map_err(err(MAP_COUNTERS))?;
        counters.push((reason, values.iter().sum()));
    }
    Ok(DataPathStats {
        conntrack_entries,
        counters,
    })
}

/// Runs a tc program once on `packet` with `BPF_PROG_TEST_RUN` (the kernel
/// executes it on a real skb). Returns the verdict and the packet as the
/// program left it.
pub fn test_run(
    program: std::os::fd::BorrowedFd<'_>,
    packet: &[u8],
) -> std::io::Result<(u32, Vec<u8>)> {
    use std::os::fd::AsRawFd;
    /// The `test` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr.test` whose pointers refer to
    // buffers that outlive the call, with their true sizes.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok((attr.retval, out))
}
