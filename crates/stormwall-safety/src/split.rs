//! The frozen development/test split of the safety data sets (issue 12): the ids of the test
//! part are committed in `data/split/test-ids.txt` and pinned by SHA-256, so the part the
//! figures in docs/safety.md are measured on cannot drift, and training, threshold tuning
//! and cross-validation never see it. Every record whose id is not listed is development
//! data (records added to the sets later included).
//!
//! The list was made once with `cargo run -p stormwall-safety --example split -- DATA_DIR`
//! ([`assign_test`]: 30% of each source by a salted hash of the id) and is never regenerated:
//! a change to the file is a new split, and every figure measured on the old one is void.

use sha2::{Digest, Sha256};

/// The committed test ids (comment lines start with `#`).
pub const TEST_IDS: &str = include_str!("../data/split/test-ids.txt");

/// SHA-256 (hex) of [`TEST_IDS`]: the split's identity.
pub const TEST_IDS_SHA256: &str =
    "df95603d0a8527553549dd403fb88e94504edf59338eeefe1b8a6e12c4b092ff";

/// Share of each source's records assigned to the test part, in percent.
pub const TEST_PERCENT: u64 = 30;

/// Salt of the assignment hash, so the split is independent of the fold hash.
const SALT: &str = "stormwall-split-v1:";

/// The split file does not match its pinned digest, or is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The file's SHA-256 is not [`TEST_IDS_SHA256`].
    #[error("split: data/split/test-ids.txt has SHA-256 {0}, pinned {TEST_IDS_SHA256}")]
    Digest(String),
    /// Ids are not sorted and unique.
    #[error("split: test ids are not sorted and unique")]
    Order,
}

/// Whether [`assign_test`] puts a record id into the test part (used once, to make the list).
pub fn assign_test(id: &str) -> bool {
    let mut x = crate::eval::stable_hash(&format!("{SALT}{id}"));
    // splitmix64's finaliser: FNV's low bits alone mix poorly for a modulus.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    x % 100 < TEST_PERCENT
}

/// The frozen split: which record ids belong to the test part.
#[derive(Debug, Clone)]
pub struct Split {
    test: Vec<&'static str>,
}

/// The part of the split a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Training, tuning and cross-validation data.
    Dev,
    /// Held out: figures only.
    Test,
}

impl Part {
    /// `dev` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Dev => "dev",
            Part::Test => "test",
        }
    }
}

impl std::str::FromStr for Part {
    type Err = String;
    fn from_str(s: &str) -> Result<Part, String> {
        match s {
            "dev" => Ok(Part::Dev),
            "test" => Ok(Part::Test),
            _ => Err(format!("expected dev or test, got {s:?}")),
        }
    }
}

/// Hex SHA-256 of a text.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Split {
    /// The committed split, after checking its digest.
    pub fn frozen() -> Result<Split, SplitError> {
        let got = sha256_hex(TEST_IDS);
        if got != TEST_IDS_SHA256 {
            return Err(SplitError::Digest(got));
        }
        let test: Vec<&'static str> = TEST_IDS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if !test.windows(2).all(|w| w[0] < w[1]) {
            return Err(SplitError::Order);
        }
        Ok(Split { test })
    }

    /// Which part a record id is in.
    pub fn part(&self, id: &str) -> Part {
        if self.test.binary_search(&id).is_ok() {
            Part::Test
        } else {
            Part::Dev
        }
    }

    /// Number of test ids.
    pub fn test_len(&self) -> usize {
        self.test.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frozen_split_matches_its_pinned_digest() {
        let s = Split::frozen().unwrap_or_else(|e| panic!("{e}"));
        assert!(s.test_len() > 1000, "{}", s.test_len());
        // Every listed id is one the assignment rule puts in the test part.
        assert!(s.test.iter().all(|id| assign_test(id)));
        assert_eq!(s.part(s.test[0]), Part::Test);
        assert_eq!(s.part("not-an-id"), Part::Dev);
    }

    #[test]
    fn assignment_is_about_the_configured_share() {
        let n = 10_000;
        let t = (0..n).filter(|i| assign_test(&format!("x-{i}"))).count();
        assert!((2_800..3_200).contains(&t), "{t}");
    }
}
