//! A HyperLogLog distinct counter for the in-process counters, with Redis's precision
//! (2^14 registers, about 0.8 % standard error). Small sets are kept exactly, as hashes, so
//! counts a detector compares with a small threshold ("more than 3 networks") are exact.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Register-index bits.
const P: u32 = 14;
/// Registers.
const M: usize = 1 << P;
/// Exact hashes kept before switching to registers (a dense sketch is 16 KiB; this many
/// hashes take about the same).
const SPARSE_MAX: usize = 2_048;

/// A distinct counter.
#[derive(Debug, Clone)]
pub(crate) enum Hll {
    Sparse(HashSet<u64>),
    Dense(Box<[u8]>),
}

impl Default for Hll {
    fn default() -> Self {
        Hll::Sparse(HashSet::new())
    }
}

/// A fixed-key hasher, so the same item always lands in the same register within a process
/// (std's `RandomState` would make two sketches of the same items unmergeable).
fn hash(item: &str) -> u64 {
    let mut h = DefaultHasher::new();
    item.hash(&mut h);
    // SipHash output is well mixed already; the fold spreads it once more for short items.
    let x = h.finish();
    x ^ (x >> 31).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Hll {
    pub(crate) fn add(&mut self, item: &str) {
        self.add_hash(hash(item));
    }

    fn add_hash(&mut self, h: u64) {
        match self {
            Hll::Sparse(set) => {
                set.insert(h);
                if set.len() > SPARSE_MAX {
                    let hashes: Vec<u64> = set.iter().copied().collect();
                    *self = Hll::Dense(vec![0u8; M].into_boxed_slice());
                    for h in hashes {
                        self.add_hash(h);
                    }
                }
            }
            Hll::Dense(regs) => {
                let index = usize::try_from(h >> (64 - P)).unwrap_or(0);
                // Rank of the first set bit in the remaining 50 bits (a sentinel bit bounds it).
                let rest = (h << P) | (1 << (P - 1));
                let rank = u8::try_from(rest.leading_zeros() + 1).unwrap_or(u8::MAX);
                if let Some(r) = regs.get_mut(index)
                    && rank > *r
                {
                    *r = rank;
                }
            }
        }
    }

    /// Adds every item of `other` to this sketch.
    pub(crate) fn merge(&mut self, other: &Hll) {
        match other {
            Hll::Sparse(set) => {
                for &h in set {
                    self.add_hash(h);
                }
            }
            Hll::Dense(theirs) => {
                if let Hll::Sparse(set) = self {
                    let hashes: Vec<u64> = set.iter().copied().collect();
                    *self = Hll::Dense(vec![0u8; M].into_boxed_slice());
                    for h in hashes {
                        self.add_hash(h);
                    }
                }
                if let Hll::Dense(mine) = self {
                    for (m, t) in mine.iter_mut().zip(theirs.iter()) {
                        *m = (*m).max(*t);
                    }
                }
            }
        }
    }

    pub(crate) fn count(&self) -> u64 {
        match self {
            Hll::Sparse(set) => set.len() as u64,
            Hll::Dense(regs) => {
                let m = M as f64;
                let alpha = 0.7213 / (1.0 + 1.079 / m);
                let mut sum = 0.0;
                let mut zeros = 0usize;
                for &r in regs.iter() {
                    sum += 2f64.powi(-i32::from(r));
                    if r == 0 {
                        zeros += 1;
                    }
                }
                let raw = alpha * m * m / sum;
                let estimate = if raw <= 2.5 * m && zeros > 0 {
                    // Linear counting is more accurate while many registers are empty.
                    m * (m / zeros as f64).ln()
                } else {
                    raw
                };
                estimate.round() as u64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(range: std::ops::Range<u32>) -> Hll {
        let mut h = Hll::default();
        for i in range {
            h.add(&format!("10.{}.{}.0/24", i / 256, i % 256));
        }
        h
    }

    #[test]
    fn small_sets_are_exact() {
        let mut h = filled(0..5);
        h.add("10.0.0.0/24"); // a repeat
        assert_eq!(h.count(), 5);
        assert_eq!(Hll::default().count(), 0);
    }

    #[test]
    fn large_sets_are_close() {
        for n in [3_000u32, 50_000] {
            let c = filled(0..n).count() as f64;
            let err = (c - f64::from(n)).abs() / f64::from(n);
            assert!(err < 0.03, "{n}: counted {c}");
        }
    }

    #[test]
    fn merge_is_union() {
        let mut a = filled(0..1_500);
        a.merge(&filled(1_000..2_000));
        assert!((a.count() as i64 - 2_000).abs() < 40, "{}", a.count());
        let mut small = filled(0..3);
        small.merge(&filled(0..10_000));
        let c = small.count() as f64;
        assert!((c - 10_000.0).abs() / 10_000.0 < 0.03, "{c}");
    }
}
