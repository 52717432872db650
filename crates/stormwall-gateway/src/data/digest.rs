//! Prompt digests: enough to tell prompt *styles* apart (detector R1: many end users behind
//! one key) without ever storing the text. A keyed hash of the system prompt, a 64-bit
//! SimHash of everything, and a MinHash signature of the conversation root.

use sha2::{Digest, Sha256};

/// Number of MinHash permutations kept per event.
pub const MINHASH_LEN: usize = 16;

/// What an event keeps of a prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptDigest {
    /// First 128 bits of SHA-256 of the system prompt, hex.
    pub system_hash: Option<String>,
    /// SimHash of all prompt words, hex.
    pub simhash: Option<String>,
    /// MinHash of the conversation root's word 3-shingles.
    pub minhash: Vec<u32>,
    /// Characters of text seen.
    pub chars: u64,
    /// Messages (or input items) seen.
    pub messages: u32,
}

/// Computes digests. Holds per-permutation seeds so the hot path allocates only the output.
#[derive(Debug, Clone)]
pub struct PromptDigester {
    seeds: [u64; MINHASH_LEN],
}

impl Default for PromptDigester {
    fn default() -> Self {
        let mut seeds = [0u64; MINHASH_LEN];
        let mut s = 0x5157_4f52_4d57_414c_u64; // fixed: digests must compare across restarts
        for seed in &mut seeds {
            s = splitmix64(s);
            *seed = s;
        }
        Self { seeds }
    }
}

impl PromptDigester {
    /// Digests a system prompt, the conversation root, and all text.
    pub fn digest(&self, system: Option<&str>, root: &str, all: &str) -> PromptDigest {
        let sim = simhash(all);
        PromptDigest {
            system_hash: system.map(system_hash),
            simhash: sim.map(|h| format!("{h:016x}")),
            minhash: self.minhash(root),
            chars: 0,
            messages: 0,
        }
    }

    /// MinHash of word 3-shingles (single words for very short text), by one-permutation
    /// hashing: one hash per shingle, binned by its top bits, the minimum kept per bin, and
    /// empty bins filled from their neighbours — the same estimator as k hashes at 1/k the cost.
    pub fn minhash(&self, text: &str) -> Vec<u32> {
        let mut mins = [u64::MAX; MINHASH_LEN];
        let mut window = [0u64; 3];
        let mut n = 0usize;
        let mut feed = |h: u64| {
            let h = splitmix64(h ^ self.seeds[0]);
            let bin = (h >> 60) as usize % MINHASH_LEN;
            let v = h & 0x0fff_ffff_ffff_ffff;
            if v < mins[bin] {
                mins[bin] = v;
            }
        };
        for_each_word_hash(text, |w| {
            window = [window[1], window[2], w];
            n += 1;
            if n >= 3 {
                feed(
                    window[0].rotate_left(1)
                        ^ window[1].rotate_left(17)
                        ^ window[2].rotate_left(33),
                );
            }
        });
        match n {
            0 => return Vec::new(),
            1 | 2 => window[3 - n..].iter().for_each(|&w| feed(w)),
            _ => {}
        }
        densify(&mut mins, &self.seeds);
        mins.iter().map(|&m| (m >> 28) as u32).collect()
    }
}

/// Fills empty bins from the next non-empty one (rotation densification), mixing in the
/// bin's seed so filled bins stay distinct.
fn densify(mins: &mut [u64; MINHASH_LEN], seeds: &[u64; MINHASH_LEN]) {
    if mins.iter().all(|&m| m == u64::MAX) {
        return;
    }
    let original = *mins;
    for i in 0..MINHASH_LEN {
        if original[i] != u64::MAX {
            continue;
        }
        let mut j = (i + 1) % MINHASH_LEN;
        while original[j] == u64::MAX {
            j = (j + 1) % MINHASH_LEN;
        }
        mins[i] = splitmix64(original[j] ^ seeds[i]) & 0x0fff_ffff_ffff_ffff;
    }
}

/// Hex of the first 16 bytes of SHA-256 of the trimmed system prompt.
pub fn system_hash(text: &str) -> String {
    let d = Sha256::digest(text.trim().as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Charikar SimHash over lowercased words; `None` when the text has no words.
pub fn simhash(text: &str) -> Option<u64> {
    // Bit-sliced counting: each byte of a word's hash is spread by a table into eight byte
    // lanes of a u64, so one add counts eight bit positions at once. Lanes hold at most 255,
    // so they are drained into wide counters every 255 words.
    let mut lanes = [0u64; 8];
    let mut wide = [0u32; 64];
    let mut in_lanes = 0u32;
    let mut words = 0u32;
    let drain = |lanes: &mut [u64; 8], wide: &mut [u32; 64]| {
        for (j, lane) in lanes.iter_mut().enumerate() {
            for (k, count) in lane.to_le_bytes().iter().enumerate() {
                wide[j * 8 + k] += u32::from(*count);
            }
            *lane = 0;
        }
    };
    for_each_word_hash(text, |h| {
        for (j, lane) in lanes.iter_mut().enumerate() {
            *lane += SPREAD[((h >> (j * 8)) & 0xff) as usize];
        }
        words += 1;
        in_lanes += 1;
        if in_lanes == 255 {
            drain(&mut lanes, &mut wide);
            in_lanes = 0;
        }
    });
    if words == 0 {
        return None;
    }
    drain(&mut lanes, &mut wide);
    // A bit is set when more than half of the words had it set.
    Some(wide.iter().enumerate().fold(
        0u64,
        |acc, (i, &c)| if 2 * c > words { acc | 1 << i } else { acc },
    ))
}

/// Byte → eight byte lanes holding its bits (bit k of the byte → 0x01 in byte k).
static SPREAD: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut v = 0u64;
        let mut k = 0;
        while k < 8 {
            if b >> k & 1 == 1 {
                v |= 1 << (k * 8);
            }
            k += 1;
        }
        table[b] = v;
        b += 1;
    }
    table
};

/// Calls `f` with a hash of each word: a run of ASCII letters and digits, or of any
/// non-ASCII bytes (so UTF-8 text stays whole), lowercased. One pass, no allocation.
fn for_each_word_hash(text: &str, mut f: impl FnMut(u64)) {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    let mut h = FNV_OFFSET;
    let mut in_word = false;
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b >= 0x80 {
            h ^= u64::from(b.to_ascii_lowercase());
            h = h.wrapping_mul(0x0100_0000_01b3);
            in_word = true;
        } else if in_word {
            f(splitmix64(h));
            h = FNV_OFFSET;
            in_word = false;
        }
    }
    if in_word {
        f(splitmix64(h));
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_texts_have_close_simhash() {
        let a =
            simhash("please summarise the quarterly sales report for the north region").unwrap();
        let b =
            simhash("please summarise the quarterly sales report for the south region").unwrap();
        let c =
            simhash("write a limerick about a cat who sails across the ocean at night").unwrap();
        assert!((a ^ b).count_ones() < (a ^ c).count_ones());
    }

    #[test]
    fn simhash_matches_the_plain_definition() {
        let text = (0..600)
            .map(|i| format!("w{} ", i % 97))
            .collect::<String>();
        let mut counts = [0i64; 64];
        let mut n = 0;
        for_each_word_hash(&text, |h| {
            n += 1;
            for (i, c) in counts.iter_mut().enumerate() {
                *c += ((h >> i) & 1) as i64;
            }
        });
        let plain =
            counts.iter().enumerate().fold(
                0u64,
                |acc, (i, &c)| if 2 * c > n { acc | 1 << i } else { acc },
            );
        assert_eq!(simhash(&text), Some(plain));
    }

    #[test]
    fn minhash_is_stable_and_sized() {
        let d = PromptDigester::default();
        let m1 = d.minhash("one two three four five");
        assert_eq!(m1.len(), MINHASH_LEN);
        assert_eq!(
            m1,
            PromptDigester::default().minhash("ONE two three four five")
        );
        assert!(d.minhash("  ").is_empty());
        assert_eq!(simhash(" ,. "), None);
    }

    #[test]
    fn minhash_estimates_similarity() {
        let d = PromptDigester::default();
        let same = |a: &[u32], b: &[u32]| a.iter().zip(b).filter(|(x, y)| x == y).count();
        let base = "you are a friendly barista who recommends coffee drinks to customers based on their taste and mood today";
        let near = "you are a friendly barista who recommends coffee drinks to customers based on their taste and mood tonight";
        let far = "translate the following legal contract clause from german into plain english for a small business owner";
        let (a, b, c) = (d.minhash(base), d.minhash(near), d.minhash(far));
        assert!(same(&a, &b) > same(&a, &c), "{a:?} {b:?} {c:?}");
    }
}
