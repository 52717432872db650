//! Small, bounded data structures for per-key state: exact sets that stop growing at a cap,
//! a HyperLogLog for distinct counts that can grow without bound, and a count-min sketch for
//! "have we seen this value on this key before, and how often".
//!
//! They are hand-written because each is a few dozen lines and the detectors need fixed,
//! predictable memory per key more than they need a general-purpose library.

/// A 64-bit mix (splitmix64 finaliser): spreads any input over all bits.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a over bytes, then mixed: a fast, stable (across runs and machines) hash of a string.
pub fn hash_str(s: &str) -> u64 {
    hash_bytes(s.as_bytes())
}

/// FNV-1a over bytes, then mixed.
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in b {
        h ^= u64::from(c);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

/// An exact set of 64-bit values that stops accepting new values at `cap`; past that it
/// only counts how many insertions it refused, so memory stays bounded per key. Sixteen
/// bytes: an empty set or a set of one value (most sets of a key seen once in an hour) keeps
/// its cap and value in place, on no heap; two or more values, or a refusal, go to one box.
#[derive(Debug, Clone, Default)]
pub struct CappedSet(Items);

/// The states of a [`CappedSet`]: the cap and at most one value in place, the rest boxed.
#[derive(Debug, Clone)]
enum Items {
    /// No value yet.
    Empty { cap: u16 },
    /// One value.
    One { cap: u16, value: u64 },
    /// Two or more values, or at least one refused insertion.
    Many(Box<Many>),
}

impl Default for Items {
    fn default() -> Self {
        Items::Empty { cap: 0 }
    }
}

/// A [`CappedSet`] past its first value.
#[derive(Debug, Clone)]
struct Many {
    values: Vec<u64>,
    cap: u16,
    overflow: u32,
}

impl CappedSet {
    /// An empty set holding at most `cap` values.
    pub fn new(cap: u16) -> Self {
        Self(Items::Empty { cap })
    }

    fn as_slice(&self) -> &[u64] {
        match &self.0 {
            Items::Empty { .. } => &[],
            Items::One { value, .. } => std::slice::from_ref(value),
            Items::Many(m) => &m.values,
        }
    }

    fn cap(&self) -> u16 {
        match &self.0 {
            Items::Empty { cap } | Items::One { cap, .. } => *cap,
            Items::Many(m) => m.cap,
        }
    }

    fn overflow(&self) -> u32 {
        match &self.0 {
            Items::Many(m) => m.overflow,
            _ => 0,
        }
    }

    /// Whether the value is in the set.
    pub fn contains(&self, v: u64) -> bool {
        self.as_slice().contains(&v)
    }

    /// Inserts; returns `true` when the value is new (also when it was refused at the cap,
    /// since it is new all the same).
    pub fn insert(&mut self, v: u64) -> bool {
        if self.contains(v) {
            return false;
        }
        let boxed = |values: Vec<u64>, cap: u16, overflow: u32| {
            Items::Many(Box::new(Many {
                values,
                cap,
                overflow,
            }))
        };
        let next = match &mut self.0 {
            Items::Many(m) => {
                if m.values.len() < usize::from(m.cap) {
                    m.values.push(v);
                } else {
                    m.overflow = m.overflow.saturating_add(1);
                }
                return true;
            }
            Items::Empty { cap } if *cap >= 1 => Items::One {
                cap: *cap,
                value: v,
            },
            Items::One { cap, value } if *cap >= 2 => boxed(vec![*value, v], *cap, 0),
            // Full in place (a cap of 0 or 1): the refusal is counted on the heap.
            Items::Empty { cap } => boxed(Vec::new(), *cap, 1),
            Items::One { cap, value } => boxed(vec![*value], *cap, 1),
        };
        self.0 = next;
        true
    }

    /// Number of distinct values held (refused ones excluded).
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether values were refused at the cap (the set is then a lower bound).
    pub fn saturated(&self) -> bool {
        self.overflow() > 0
    }

    /// Distinct values seen, counting refused insertions (an upper bound past the cap).
    pub fn count(&self) -> usize {
        self.len() + self.overflow() as usize
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.0 = Items::Empty { cap: self.cap() };
    }

    /// The values held.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.as_slice().iter().copied()
    }
}

/// A short list that keeps its first element in place and only the second and later on the
/// heap: per-key lists (models called this hour, evidence ids) hold one element for most
/// keys, which then costs no allocation.
#[derive(Debug, Clone, Default)]
pub enum Few<T> {
    /// Empty.
    #[default]
    None,
    /// One element, in place.
    One(T),
    /// Two or more.
    Many(Vec<T>),
}

impl<T> Few<T> {
    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        match self {
            Few::None => &[],
            Few::One(v) => std::slice::from_ref(v),
            Few::Many(vs) => vs,
        }
    }

    /// The elements, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        match self {
            Few::None => &mut [],
            Few::One(v) => std::slice::from_mut(v),
            Few::Many(vs) => vs,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends an element.
    pub fn push(&mut self, v: T) {
        match std::mem::take(self) {
            Few::None => *self = Few::One(v),
            Few::One(first) => *self = Few::Many(vec![first, v]),
            Few::Many(mut vs) => {
                vs.push(v);
                *self = Few::Many(vs);
            }
        }
    }

    /// The elements, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.as_slice().iter()
    }
}

/// Number of HyperLogLog registers (2^8): 256 bytes, about 6.5 % standard error.
const HLL_REGISTERS: usize = 256;

/// A HyperLogLog distinct counter with 256 one-byte registers, allocated at the first value
/// (a day in which a key names no end user costs no registers).
#[derive(Debug, Clone, Default)]
pub struct Hll {
    regs: Option<Box<[u8; HLL_REGISTERS]>>,
}

impl Hll {
    /// Adds a (pre-hashed) value.
    pub fn add(&mut self, hash: u64) {
        let h = mix64(hash);
        let idx = (h >> 56) as usize;
        let rest = h << 8 | 0x80; // a sentinel bit bounds the rank
        let rank = rest.leading_zeros() as u8 + 1;
        let regs = self
            .regs
            .get_or_insert_with(|| Box::new([0; HLL_REGISTERS]));
        if let Some(r) = regs.get_mut(idx)
            && rank > *r
        {
            *r = rank;
        }
    }

    /// Estimated number of distinct values added.
    pub fn estimate(&self) -> f64 {
        let Some(regs) = &self.regs else {
            return 0.0;
        };
        let m = HLL_REGISTERS as f64;
        let mut sum = 0.0;
        let mut zeros = 0u32;
        for &r in regs.iter() {
            sum += 1.0 / f64::from(1u32 << r.min(31));
            if r == 0 {
                zeros += 1;
            }
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            // Linear counting is far better for small cardinalities.
            m * (m / f64::from(zeros)).ln()
        } else {
            raw
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.regs = None;
    }
}

/// Rows of the count-min sketch.
const CM_DEPTH: usize = 3;
/// Counters per row.
const CM_WIDTH: usize = 128;

/// A count-min sketch of 3 × 128 saturating 16-bit counters (768 bytes, allocated at the
/// first value): frequency of a value on one key, never under-counted, rarely over-counted.
#[derive(Debug, Clone, Default)]
pub struct CountMin {
    rows: Option<Box<[[u16; CM_WIDTH]; CM_DEPTH]>>,
}

impl CountMin {
    fn slots(hash: u64) -> [usize; CM_DEPTH] {
        let h = mix64(hash);
        [
            (h & 0x7f) as usize,
            ((h >> 21) & 0x7f) as usize,
            ((h >> 42) & 0x7f) as usize,
        ]
    }

    /// Adds `n` occurrences of a (pre-hashed) value.
    pub fn add(&mut self, hash: u64, n: u16) {
        let rows = self
            .rows
            .get_or_insert_with(|| Box::new([[0; CM_WIDTH]; CM_DEPTH]));
        for (row, slot) in rows.iter_mut().zip(Self::slots(hash)) {
            if let Some(c) = row.get_mut(slot) {
                *c = c.saturating_add(n);
            }
        }
    }

    /// Estimated occurrences (an upper bound).
    pub fn estimate(&self, hash: u64) -> u16 {
        let Some(rows) = &self.rows else {
            return 0;
        };
        rows.iter()
            .zip(Self::slots(hash))
            .map(|(row, slot)| row.get(slot).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_of_one_value_keeps_it_in_place() {
        assert_eq!(std::mem::size_of::<CappedSet>(), 16);
        let mut s = CappedSet::new(4);
        assert!(s.is_empty() && !s.contains(0));
        assert!(s.insert(9));
        assert!(matches!(s.0, Items::One { cap: 4, value: 9 }));
        assert!(!s.insert(9));
        assert!(s.insert(10));
        assert_eq!(s.iter().collect::<Vec<_>>(), [9, 10]);
        s.clear();
        assert_eq!((s.len(), s.count()), (0, 0));
        let mut zero = CappedSet::new(0);
        assert!(zero.insert(1));
        assert_eq!((zero.len(), zero.count()), (0, 1));
    }

    #[test]
    fn a_set_of_cap_one_refuses_the_second_value_and_clear_keeps_the_cap() {
        let mut s = CappedSet::new(1);
        assert!(s.insert(7));
        assert!(s.insert(8));
        assert_eq!((s.len(), s.count(), s.saturated()), (1, 2, true));
        assert!(s.contains(7) && !s.contains(8));
        s.clear();
        assert_eq!((s.len(), s.count(), s.saturated()), (0, 0, false));
        assert!(s.insert(8) && s.contains(8));
        assert!(CappedSet::default().insert(1));
        assert_eq!(CappedSet::default().count(), 0);
    }

    #[test]
    fn few_keeps_one_element_in_place_and_the_rest_in_order() {
        assert_eq!(std::mem::size_of::<Few<(u64, u32)>>(), 24);
        assert_eq!(std::mem::size_of::<Few<Box<str>>>(), 24);
        let mut f = Few::default();
        assert!(f.is_empty());
        f.push(1u32);
        assert!(matches!(f, Few::One(1)));
        f.push(2);
        f.push(3);
        if let Some(x) = f.as_mut_slice().get_mut(1) {
            *x = 20;
        }
        assert_eq!(f.iter().copied().collect::<Vec<_>>(), [1, 20, 3]);
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn capped_set_stops_growing() {
        let mut s = CappedSet::new(3);
        for v in 0..10 {
            assert!(s.insert(v));
        }
        assert!(!s.insert(1));
        assert_eq!(s.len(), 3);
        assert!(s.saturated());
        assert_eq!(s.count(), 10);
    }

    #[test]
    fn hll_is_close() {
        let mut h = Hll::default();
        for i in 0..5_000u64 {
            h.add(i);
            h.add(i);
        }
        let e = h.estimate();
        assert!((e - 5_000.0).abs() < 5_000.0 * 0.2, "{e}");
        let mut small = Hll::default();
        for i in 0..10u64 {
            small.add(i);
        }
        assert!((small.estimate() - 10.0).abs() < 2.0);
    }

    #[test]
    fn count_min_never_undercounts() {
        let mut c = CountMin::default();
        for i in 0..500u64 {
            c.add(i, 1);
        }
        c.add(7, 5);
        assert!(c.estimate(7) >= 6);
        assert!(c.estimate(10_000) <= 20);
    }
}
