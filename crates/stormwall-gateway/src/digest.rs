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
        PromptDigest {
            system_hash: system.map(system_hash),
            simhash: (!all.trim().is_empty()).then(|| format!("{:016x}", simhash(all))),
            minhash: self.minhash(root),
            chars: 0,
            messages: 0,
        }
    }

    /// MinHash of word 3-shingles (single words for very short text).
    pub fn minhash(&self, text: &str) -> Vec<u32> {
        let words: Vec<u64> = words(text).map(hash_word).collect();
        if words.is_empty() {
            return Vec::new();
        }
        let mut mins = [u64::MAX; MINHASH_LEN];
        let mut feed = |h: u64| {
            for (m, seed) in mins.iter_mut().zip(&self.seeds) {
                let v = splitmix64(h ^ seed);
                if v < *m {
                    *m = v;
                }
            }
        };
        if words.len() < 3 {
            words.iter().for_each(|&w| feed(w));
        } else {
            for w in words.windows(3) {
                feed(w[0].rotate_left(1) ^ w[1].rotate_left(17) ^ w[2].rotate_left(33));
            }
        }
        mins.iter().map(|&m| (m >> 32) as u32).collect()
    }
}

/// Hex of the first 16 bytes of SHA-256 of the trimmed system prompt.
pub fn system_hash(text: &str) -> String {
    let d = Sha256::digest(text.trim().as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Charikar SimHash over lowercased words.
pub fn simhash(text: &str) -> u64 {
    let mut v = [0i32; 64];
    for w in words(text) {
        let h = hash_word(w);
        for (i, slot) in v.iter_mut().enumerate() {
            if h >> i & 1 == 1 {
                *slot += 1;
            } else {
                *slot -= 1;
            }
        }
    }
    v.iter()
        .enumerate()
        .fold(0u64, |acc, (i, &c)| if c > 0 { acc | 1 << i } else { acc })
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

fn hash_word(w: &str) -> u64 {
    // FNV-1a over ASCII-lowercased bytes, then a finaliser for avalanche.
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for b in w.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix64(h)
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
        let a = simhash("please summarise the quarterly sales report for the north region");
        let b = simhash("please summarise the quarterly sales report for the south region");
        let c = simhash("write a limerick about a cat who sails across the ocean at night");
        assert!((a ^ b).count_ones() < (a ^ c).count_ones());
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
    }
}
