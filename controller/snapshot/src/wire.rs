//! The wire encoding: a small header, then postcard (compact, positional serde).
//!
//! A stream carries one `Full` message, then `Delta`s against it. A reader
//! refuses a frame of another schema version rather than misreading it.

use crate::{
    diff_maps, BackendSet, Certificate, KeyChanges, L4Service, PoliciesPart, RoutesPart, Snapshot,
    SnapshotDiff, Versioned, SCHEMA_VERSION,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;

const MAGIC: &[u8; 4] = b"PIER";

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not a pier snapshot frame (bad magic)")]
    BadMagic,
    #[error("snapshot schema {found} is not the schema {expected} this build reads")]
    Schema { found: u32, expected: u32 },
    #[error("frame truncated")]
    Truncated,
    #[error("malformed frame: {0}")]
    Decode(#[from] postcard::Error),
    #[error("delta expects {part} at version {expected}, have {have}")]
    DeltaBase {
        part: &'static str,
        expected: u64,
        have: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Full(Snapshot),
    Delta(Delta),
}

/// Changes to bring a snapshot from one set of part versions to the next.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub routes: Option<PartReplace<RoutesPart>>,
    pub backends: Option<KeyedDelta<BackendSet>>,
    pub services: Option<KeyedDelta<L4Service>>,
    pub policies: Option<PartReplace<PoliciesPart>>,
    pub certificates: Option<KeyedDelta<Certificate>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartReplace<T> {
    pub base_version: u64,
    pub next: Versioned<T>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyedDelta<T> {
    pub base_version: u64,
    pub version: u64,
    pub upsert: BTreeMap<String, T>,
    pub remove: Vec<String>,
}

pub fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&SCHEMA_VERSION.to_le_bytes());
    // Serialising owned plain data into a Vec cannot fail.
    postcard::to_extend(message, out).expect("postcard encoding into a Vec")
}

pub fn decode(frame: &[u8]) -> Result<Message, WireError> {
    if frame.len() < 8 {
        return Err(WireError::Truncated);
    }
    if &frame[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let found = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
    if found != SCHEMA_VERSION {
        return Err(WireError::Schema {
            found,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(postcard::from_bytes(&frame[8..])?)
}

fn keyed_delta<T: Clone + PartialEq>(
    old: &Versioned<BTreeMap<String, T>>,
    new: &Versioned<BTreeMap<String, T>>,
) -> Option<KeyedDelta<T>> {
    if old.version == new.version && old.data == new.data {
        return None;
    }
    let changes = diff_maps(&old.data, &new.data);
    let upsert = changes
        .added
        .iter()
        .chain(&changes.changed)
        .map(|k| (k.clone(), new.data[k].clone()))
        .collect();
    Some(KeyedDelta {
        base_version: old.version,
        version: new.version,
        upsert,
        remove: changes.removed,
    })
}

fn part_replace<T: Clone + PartialEq>(
    old: &Versioned<T>,
    new: &Versioned<T>,
) -> Option<PartReplace<T>> {
    (old.version != new.version || old.data != new.data).then(|| PartReplace {
        base_version: old.version,
        next: new.clone(),
    })
}

/// Which parts of a snapshot a data plane is given (an agent never gets
/// routes or certificates, a proxy never gets L4 services or policies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Parts {
    pub routes: bool,
    pub backends: bool,
    pub services: bool,
    pub policies: bool,
    pub certificates: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        routes: true,
        backends: true,
        services: true,
        policies: true,
        certificates: true,
    };
}

impl Snapshot {
    /// A copy holding only `parts`; the others are empty at version 0.
    pub fn project(&self, parts: Parts) -> Snapshot {
        fn take<T: Clone + Default>(on: bool, part: &Versioned<T>) -> Versioned<T> {
            if on {
                part.clone()
            } else {
                Versioned::default()
            }
        }
        Snapshot {
            schema: self.schema,
            routes: take(parts.routes, &self.routes),
            backends: take(parts.backends, &self.backends),
            services: take(parts.services, &self.services),
            policies: take(parts.policies, &self.policies),
            certificates: take(parts.certificates, &self.certificates),
        }
    }
}

/// The delta of `parts` from `old` to `new`, for snapshots whose versions
/// keep their promise (equal version, equal content — what
/// `Snapshot::advance` and every producer of a stream maintain): a part
/// whose version did not move is skipped without comparing its content.
pub fn make_delta_parts(old: &Snapshot, new: &Snapshot, parts: Parts) -> Delta {
    fn moved<T>(on: bool, old: &Versioned<T>, new: &Versioned<T>) -> bool {
        on && old.version != new.version
    }
    Delta {
        routes: moved(parts.routes, &old.routes, &new.routes)
            .then(|| part_replace(&old.routes, &new.routes))
            .flatten(),
        backends: moved(parts.backends, &old.backends, &new.backends)
            .then(|| keyed_delta(&old.backends, &new.backends))
            .flatten(),
        services: moved(parts.services, &old.services, &new.services)
            .then(|| keyed_delta(&old.services, &new.services))
            .flatten(),
        policies: moved(parts.policies, &old.policies, &new.policies)
            .then(|| part_replace(&old.policies, &new.policies))
            .flatten(),
        certificates: moved(parts.certificates, &old.certificates, &new.certificates)
            .then(|| keyed_delta(&old.certificates, &new.certificates))
            .flatten(),
    }
}

impl Delta {
    /// Only the changes to `parts`.
    pub fn restricted(&self, parts: Parts) -> Delta {
        Delta {
            routes: parts.routes.then(|| self.routes.clone()).flatten(),
            backends: parts.backends.then(|| self.backends.clone()).flatten(),
            services: parts.services.then(|| self.services.clone()).flatten(),
            policies: parts.policies.then(|| self.policies.clone()).flatten(),
            certificates: parts
                .certificates
                .then(|| self.certificates.clone())
                .flatten(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_none()
            && self.backends.is_none()
            && self.services.is_none()
            && self.policies.is_none()
            && self.certificates.is_none()
    }
}

/// The delta that turns `old` into `new`.
pub fn make_delta(old: &Snapshot, new: &Snapshot) -> Delta {
    Delta {
        routes: part_replace(&old.routes, &new.routes),
        backends: keyed_delta(&old.backends, &new.backends),
        services: keyed_delta(&old.services, &new.services),
        policies: part_replace(&old.policies, &new.policies),
        certificates: keyed_delta(&old.certificates, &new.certificates),
    }
}

fn check_base(part: &'static str, expected: u64, have: u64) -> Result<(), WireError> {
    if expected == have {
        Ok(())
    } else {
        Err(WireError::DeltaBase {
            part,
            expected,
            have,
        })
    }
}

fn apply_keyed<T>(target: &mut Versioned<BTreeMap<String, T>>, delta: KeyedDelta<T>) {
    for key in delta.remove {
        target.data.remove(&key);
    }
    target.data.extend(delta.upsert);
    target.version = delta.version;
}

/// Applies `delta` to a copy of `base`. The base is left untouched when any
/// part's base version does not match (the reader must then ask for a full snapshot).
pub fn apply_delta(base: &Snapshot, delta: Delta) -> Result<Snapshot, WireError> {
    let mut next = base.clone();
    apply_delta_in_place(&mut next, delta)?;
    Ok(next)
}

/// What a delta touches: the keys of the keyed parts, and whether each
/// replaced part moved. A data plane that keeps per-part or per-key state
/// rebuilds only what is named here (endpoint churn never rebuilds routes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeltaKeys {
    /// The routes part (listeners, L7 and L4 routes) was replaced.
    pub routes: bool,
    /// The policies part was replaced.
    pub policies: bool,
    pub services: Vec<String>,
    pub backends: Vec<String>,
    /// Certificates added, changed or removed.
    pub certificates: Vec<String>,
}

impl DeltaKeys {
    /// Nothing the delta names changed.
    pub fn is_empty(&self) -> bool {
        !self.routes
            && !self.policies
            && self.services.is_empty()
            && self.backends.is_empty()
            && self.certificates.is_empty()
    }
}

impl Delta {
    pub fn keys(&self) -> DeltaKeys {
        fn keys_of<T>(d: &Option<KeyedDelta<T>>) -> Vec<String> {
            d.iter()
                .flat_map(|d| d.upsert.keys().chain(&d.remove).cloned())
                .collect()
        }
        DeltaKeys {
            routes: self.routes.is_some(),
            policies: self.policies.is_some(),
            services: keys_of(&self.services),
            backends: keys_of(&self.backends),
            certificates: keys_of(&self.certificates),
        }
    }
}

/// The same account from a [`SnapshotDiff`], for producers that compare two
/// snapshots instead of reading a delta (the standalone manifest reload).
impl From<&SnapshotDiff> for DeltaKeys {
    fn from(diff: &SnapshotDiff) -> Self {
        fn keys_of(c: &KeyChanges<String>) -> Vec<String> {
            c.added
                .iter()
                .chain(&c.changed)
                .chain(&c.removed)
                .cloned()
                .collect()
        }
        DeltaKeys {
            routes: diff.routes_changed(),
            policies: diff.policies_changed,
            services: keys_of(&diff.services),
            backends: keys_of(&diff.backends),
            certificates: keys_of(&diff.certificates),
        }
    }
}

/// [`apply_delta`] without copying the base: `base` is only changed when
/// every part's base version matches (all or nothing).
pub fn apply_delta_in_place(base: &mut Snapshot, delta: Delta) -> Result<(), WireError> {
    if let Some(d) = &delta.routes {
        check_base("routes", d.base_version, base.routes.version)?;
    }
    if let Some(d) = &delta.backends {
        check_base("backends", d.base_version, base.backends.version)?;
    }
    if let Some(d) = &delta.services {
        check_base("services", d.base_version, base.services.version)?;
    }
    if let Some(d) = &delta.policies {
        check_base("policies", d.base_version, base.policies.version)?;
    }
    if let Some(d) = &delta.certificates {
        check_base("certificates", d.base_version, base.certificates.version)?;
    }
    let next = base;
    if let Some(d) = delta.routes {
        next.routes = d.next;
    }
    if let Some(d) = delta.backends {
        apply_keyed(&mut next.backends, d);
    }
    if let Some(d) = delta.services {
        apply_keyed(&mut next.services, d);
    }
    if let Some(d) = delta.policies {
        next.policies = d.next;
    }
    if let Some(d) = delta.certificates {
        apply_keyed(&mut next.certificates, d);
    }
    Ok(())
}

/// Decodes any serde value written by [`encode_value`]; used for single parts.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    Ok(postcard::from_bytes(bytes)?)
}

pub fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encoding into a Vec")
}
