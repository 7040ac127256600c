//! Endpoint choice: weighted backendRef split, then power-of-two-choices
//! least-request among usable endpoints, with passive health (endpoints that
//! fail to connect are ejected for a back-off that grows with failures).
//! Per-endpoint counters live here, outside the routing, so they survive swaps.

use pier_snapshot::{BackendSet, WeightedBackend};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

const BASE_EJECTION_MS: u64 = 1_000;
const MAX_EJECTION_MS: u64 = 30_000;

#[derive(Default, Debug)]
pub struct EndpointStats {
    pub in_flight: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the balancer's epoch until which the endpoint is skipped.
    ejected_until_ms: AtomicU64,
}

/// Holds an in-flight slot; released on drop.
pub struct InFlight(pub Arc<EndpointStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Balancer {
    epoch: Instant,
    stats: RwLock<HashMap<SocketAddr, Arc<EndpointStats>>>,
    /// Round-robin cursors per backend set key.
    cursors: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer {
            epoch: Instant::now(),
            stats: RwLock::new(HashMap::new()),
            cursors: RwLock::new(HashMap::new()),
        }
    }
}

/// How to choose among the candidates of one request.
pub enum Choice<'a> {
    LeastRequest,
    /// Round robin over the set named by this key.
    RoundRobin(&'a str),
    /// Rendezvous hashing on this request key.
    Hash(u64),
}

/// A stable 64-bit mix (splitmix64) of a key and an endpoint.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable hash of bytes (FNV-1a): the same in every process, unlike `DefaultHasher`,
/// so every proxy replica maps a key to the same endpoint.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn endpoint_hash(addr: &SocketAddr) -> u64 {
    stable_hash(addr.to_string().as_bytes())
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        h.finish() | 1
    });
}

/// A fast per-thread xorshift: routing decisions need spread, not secrecy.
pub fn random(below: u64) -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        if below == 0 {
            0
        } else {
            x % below
        }
    })
}

/// Chooses among weighted backendRefs.
pub fn pick_weighted(backends: &[WeightedBackend]) -> Option<usize> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = random(total);
    for (i, b) in backends.iter().enumerate() {
        let w = u64::from(b.weight);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

impl Balancer {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn stats(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        if let Some(s) = self
            .stats
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
        {
            return s.clone();
        }
        self.stats
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
            .or_default()
            .clone()
    }

    /// Picks an endpoint of `set`, never one in `exclude`. Ready endpoints
    /// first, terminating ones only when none is ready; ejected endpoints
    /// only when every candidate is ejected.
    pub fn pick(&self, set: &BackendSet, exclude: &[SocketAddr]) -> Option<(SocketAddr, InFlight)> {
        self.pick_with(set, exclude, Choice::LeastRequest)
    }

    fn cursor(&self, key: &str) -> Arc<AtomicU64> {
        if let Some(c) = self
            .cursors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            return c.clone();
        }
        self.cursors
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    pub fn pick_with(
        &self,
        set: &BackendSet,
        exclude: &[SocketAddr],
        choice: Choice<'_>,
    ) -> Option<(SocketAddr, InFlight)> {
        let candidates: Vec<SocketAddr> = set
            .usable(|e| !exclude.contains(&SocketAddr::new(e.address, e.port)))
            .into_iter()
            .map(|e| SocketAddr::new(e.address, e.port))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let now = self.now_ms();
        let stats: Vec<(SocketAddr, Arc<EndpointStats>)> =
            candidates.iter().map(|a| (*a, self.stats(*a))).collect();
        let healthy: Vec<&(SocketAddr, Arc<EndpointStats>)> = stats
            .iter()
            .filter(|(_, s)| s.ejected_until_ms.load(Ordering::Relaxed) <= now)
            .collect();
        let pool: Vec<&(SocketAddr, Arc<EndpointStats>)> = if healthy.is_empty() {
            stats.iter().collect()
        } else {
            healthy
        };
        let chosen = match choice {
            _ if pool.len() == 1 => pool[0],
            Choice::RoundRobin(key) => {
                pool[(self.cursor(key).fetch_add(1, Ordering::Relaxed) % pool.len() as u64)
                    as usize]
            }
            Choice::Hash(h) => pool
                .iter()
                .copied()
                .max_by_key(|(addr, _)| mix(h ^ endpoint_hash(addr)))
                .expect("pool is not empty"),
            Choice::LeastRequest => {
                let a = random(pool.len() as u64) as usize;
                let mut b = random(pool.len() as u64 - 1) as usize;
                if b >= a {
                    b += 1;
                }
                let load = |i: usize| pool[i].1.in_flight.load(Ordering::Relaxed);
                if load(b) < load(a) {
                    pool[b]
                } else {
                    pool[a]
                }
            }
        };
        chosen.1.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((chosen.0, InFlight(chosen.1.clone())))
    }

    /// Forgets endpoints and backend sets no longer in the snapshot (keeps
    /// the tables from growing with every pod IP ever seen).
    pub fn prune(
        &self,
        endpoints: &std::collections::HashSet<SocketAddr>,
        backend_keys: &std::collections::HashSet<&str>,
    ) {
        self.stats
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|addr, _| endpoints.contains(addr));
        self.cursors
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| backend_keys.contains(key.as_str()));
    }

    /// Forgets the given endpoints and backend sets (what a delta took away).
    pub fn forget(&self, endpoints: &[SocketAddr], backend_keys: &[&str]) {
        if !endpoints.is_empty() {
            let mut stats = self.stats.write().unwrap_or_else(|e| e.into_inner());
            for addr in endpoints {
                stats.remove(addr);
            }
        }
        if !backend_keys.is_empty() {
            let mut cursors = self.cursors.write().unwrap_or_else(|e| e.into_inner());
            for key in backend_keys {
                cursors.remove(*key);
            }
        }
    }

    pub fn connect_failed(&self, addr: SocketAddr) {
        let s = self.stats(addr);
        let failures = s.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let backoff = (BASE_EJECTION_MS << (failures - 1).min(5)).min(MAX_EJECTION_MS);
        s.ejected_until_ms
            .store(self.now_ms() + backoff, Ordering::Relaxed);
        tracing::warn!(endpoint = %addr, failures, ejected_ms = backoff, "endpoint failed to connect; ejected");
    }

    pub fn connect_succeeded(&self, addr: SocketAddr) {
        let s = self.stats(addr);
        if s.consecutive_failures.swap(0, Ordering::Relaxed) > 0 {
            s.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_snapshot::{BackendRef, Endpoint};

    fn set(n: u8) -> BackendSet {
        BackendSet {
            endpoints: (1..=n)
                .map(|i| Endpoint {
                    address: [10, 0, 0, i].into(),
                    port: 80,
                    ready: true,
                    serving: true,
                    terminating: false,
                    zone: None,
                    node_name: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn least_request_avoids_busy_endpoints() {
        let b = Balancer::default();
        let s = set(2);
        let (first, _held) = b.pick(&s, &[]).unwrap();
        // With one request outstanding on `first`, P2C over two endpoints picks the other.
        for _ in 0..50 {
            let (next, _) = b.pick(&s, &[]).unwrap();
            assert_ne!(next, first);
        }
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_all_are_ejected() {
        let b = Balancer::default();
        let s = set(2);
        let bad: SocketAddr = "10.0.0.1:80".parse().unwrap();
        b.connect_failed(bad);
        for _ in 0..50 {
            assert_ne!(b.pick(&s, &[]).unwrap().0, bad);
        }
        b.connect_failed("10.0.0.2:80".parse().unwrap());
        assert!(b.pick(&s, &[]).is_some(), "all ejected: still try one");
        assert!(b.pick(&s, &[bad, "10.0.0.2:80".parse().unwrap()]).is_none());
    }

    #[test]
    fn round_robin_cycles_and_hashing_is_sticky_and_moves_little() {
        let b = Balancer::default();
        let s = set(4);
        let seq: Vec<SocketAddr> = (0..8)
            .map(|_| b.pick_with(&s, &[], Choice::RoundRobin("k")).unwrap().0)
            .collect();
        assert_eq!(seq[..4], seq[4..], "round robin repeats with period 4");
        let distinct: std::collections::HashSet<_> = seq.iter().collect();
        assert_eq!(distinct.len(), 4);
        // Same key, same endpoint; removing one endpoint moves only its keys.
        let before: Vec<SocketAddr> = (0..1000u64)
            .map(|k| {
                b.pick_with(&s, &[], Choice::Hash(stable_hash(&k.to_le_bytes())))
                    .unwrap()
                    .0
            })
            .collect();
        let again: Vec<SocketAddr> = (0..1000u64)
            .map(|k| {
                b.pick_with(&s, &[], Choice::Hash(stable_hash(&k.to_le_bytes())))
                    .unwrap()
                    .0
            })
            .collect();
        assert_eq!(before, again);
        let gone: SocketAddr = "10.0.0.3:80".parse().unwrap();
        let after: Vec<SocketAddr> = (0..1000u64)
            .map(|k| {
                b.pick_with(&s, &[gone], Choice::Hash(stable_hash(&k.to_le_bytes())))
                    .unwrap()
                    .0
            })
            .collect();
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        let owned = before.iter().filter(|x| **x == gone).count();
        assert_eq!(moved, owned, "only the removed endpoint's keys move");
        assert!((150..350).contains(&owned), "keys spread evenly: {owned}");
    }

    #[test]
    fn pruning_forgets_endpoints_that_left() {
        let b = Balancer::default();
        let s = set(3);
        for _ in 0..20 {
            b.pick_with(&s, &[], Choice::RoundRobin("k"));
        }
        let keep: std::collections::HashSet<SocketAddr> = ["10.0.0.1:80".parse().unwrap()].into();
        b.prune(&keep, &std::collections::HashSet::new());
        assert_eq!(b.stats.read().unwrap().len(), 1);
        assert!(b.cursors.read().unwrap().is_empty());
    }

    #[test]
    fn weights_split_traffic() {
        let backends = vec![
            WeightedBackend {
                backend: BackendRef::Unresolved("a".into()),
                weight: 90,
                filters: vec![],
            },
            WeightedBackend {
                backend: BackendRef::Unresolved("b".into()),
                weight: 10,
                filters: vec![],
            },
            WeightedBackend {
                backend: BackendRef::Unresolved("c".into()),
                weight: 0,
                filters: vec![],
            },
        ];
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[pick_weighted(&backends).unwrap()] += 1;
        }
        assert!((8_700..9_300).contains(&counts[0]), "{counts:?}");
        assert_eq!(counts[2], 0);
    }
}
