//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): every node builds
//! the same lookup table from the same backend names, so a flow from outside
//! lands on the same backend whichever node receives it, and when one backend
//! leaves only about 1/N of the flows move.

/// Default table size: a prime, as Maglev requires.
pub const DEFAULT_TABLE_SIZE: usize = 16_381;

/// FNV-1a, finished with a splitmix64 round: similar names (10.1.0.1, 10.1.0.2)
/// must still get unrelated permutations. Stable on every node.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut x = bytes.iter().fold(seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// Why a Maglev table cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not a prime")]
    NotPrime(usize),
    #[error("{backends} backends do not fit a Maglev table of {size}")]
    TooManyBackends { backends: usize, size: usize },
}

/// Builds the lookup table: entry i is the index (into `backends`) of the
/// backend owning hash bucket i. `backends` are stable names (e.g. `ip:port`).
/// Returns an empty table when there are no backends. `size` must be prime.
pub fn table(backends: &[String], size: usize) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    if backends.len() > size {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
            size,
        });
    }
    if backends.is_empty() {
        return Ok(Vec::new());
    }
    let m = size as u64;
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let offset = fnv1a(0xcbf2_9ce4_8422_2325, b.as_bytes()) % m;
            let skip = fnv1a(0x8422_2325_cbf2_9ce4, b.as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut entry = vec![u32::MAX; size];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while entry[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entry[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.1.{}.{}:8080", i / 250, i % 250))
            .collect()
    }

    #[test]
    fn every_backend_gets_an_even_share() {
        for n in [3usize, 10, 100] {
            let t = table(&names(n), DEFAULT_TABLE_SIZE).unwrap();
            let mut counts = vec![0usize; n];
            for e in &t {
                counts[*e as usize] += 1;
            }
            let even = DEFAULT_TABLE_SIZE as f64 / n as f64;
            for c in counts {
                assert!(
                    (c as f64 - even).abs() / even <= 0.01 + 1.0 / even,
                    "n={n}: {c} vs {even:.1}"
                );
            }
        }
    }

    #[test]
    fn removing_one_backend_moves_few_buckets() {
        // Maglev's extra disruption shrinks as the table grows relative to N:
        // the default size keeps it under 1 % up to a few dozen backends; large
        // services want a larger table (the size is configurable).
        for (n, size) in [
            (5usize, DEFAULT_TABLE_SIZE),
            (20, DEFAULT_TABLE_SIZE),
            (100, 65_537),
        ] {
            let all = names(n);
            let before = table(&all, size).unwrap();
            let mut fewer = all.clone();
            let gone = fewer.remove(n / 2);
            let after = table(&fewer, size).unwrap();
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| all[**b as usize] != fewer[**a as usize])
                .count();
            // The removed backend's buckets must move; everything else should stay.
            assert!(before.iter().filter(|b| all[**b as usize] == gone).count() <= moved);
            let share = moved as f64 / size as f64;
            assert!(
                share <= 0.01 + 1.0 / n as f64,
                "n={n}: {share:.4} of the buckets moved"
            );
        }
    }

    #[test]
    fn the_table_is_the_same_on_every_node_and_sizes_are_checked() {
        assert_eq!(
            table(&names(7), 251).unwrap(),
            table(&names(7), 251).unwrap()
        );
        assert!(table(&names(3), 1000).is_err(), "not a prime");
        assert!(
            table(&names(300), 251).is_err(),
            "more backends than buckets"
        );
        assert!(table(&[], 251).unwrap().is_empty());
    }
}
