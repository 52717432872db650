//! The Stormwall API-key format: built to be found by any scanner and killed on sight.
//!
//! `swk_<id:12>_<secret:32><crc:6>`, all base62. The public id is used for look-up and may
//! appear in logs; the secret carries 190 bits of entropy and is never stored (only a
//! SHA-256 of the whole key is). The CRC32 over everything before it lets a scanner, or the
//! gateway's authenticate step, reject a mistyped or made-up key offline, without a store
//! round trip and with no false positives.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every Stormwall key starts with this prefix.
pub const KEY_PREFIX: &str = "swk_";
/// Length of the public id part.
pub const ID_LEN: usize = 12;
/// Length of the random secret part (32 base62 characters ≈ 190 bits).
pub const SECRET_LEN: usize = 32;
/// Length of the base62-encoded CRC32 checksum (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Total length of a key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a well-formed Stormwall key. Deliberately carries no part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Wrong total length.
    #[error("key has the wrong length")]
    Length,
    /// Does not start with `swk_`.
    #[error("key has the wrong prefix")]
    Prefix,
    /// A character outside base62, or a misplaced separator.
    #[error("key contains an invalid character")]
    Charset,
    /// The checksum does not match.
    #[error("key checksum does not match")]
    Checksum,
}

/// The public, non-secret identifier of a key (12 base62 characters), kept inline: a
/// million cached keys and every event that names one carry no heap string for it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId([u8; ID_LEN]);

impl KeyId {
    /// Parses a public id, checking length and alphabet.
    pub fn new(s: &str) -> Result<Self, KeyFormatError> {
        let bytes: [u8; ID_LEN] = s
            .as_bytes()
            .try_into()
            .map_err(|_| KeyFormatError::Length)?;
        if !bytes.iter().all(u8::is_ascii_alphanumeric) {
            return Err(KeyFormatError::Charset);
        }
        Ok(Self(bytes))
    }

    /// An id from 12 bytes the caller made from the base62 alphabet (a derived cloud
    /// principal id); any other byte is replaced by `0` so the id stays well formed.
    pub(crate) fn from_alphanumeric(mut bytes: [u8; ID_LEN]) -> Self {
        for b in &mut bytes {
            if !b.is_ascii_alphanumeric() {
                *b = b'0';
            }
        }
        Self(bytes)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics get in (checked by `new`), so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The id's 12 ASCII bytes, e.g. as a fixed-size map key.
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }
}

impl TryFrom<String> for KeyId {
    type Error = KeyFormatError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.as_str().to_owned()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

/// SHA-256 of a whole key string: what is stored at rest.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a key string (any string: callers hash only well-formed keys).
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Constant-time equality, so a timing side channel cannot reveal how much matched.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Lowercase hex, for storage.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        s
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

/// A whole, well-formed Stormwall key. Its `Debug` and `Display` never show the secret.
#[derive(Clone)]
pub struct ApiKey {
    text: String,
}

impl ApiKey {
    /// Creates a new random key. Panics only if the OS random source fails, which leaves
    /// no safe way to mint a secret.
    pub fn generate() -> Self {
        let mut id = [0u8; ID_LEN];
        let mut secret = [0u8; SECRET_LEN];
        fill_base62(&mut id);
        fill_base62(&mut secret);
        let mut text = String::with_capacity(KEY_LEN);
        text.push_str(KEY_PREFIX);
        text.extend(id.iter().map(|&b| b as char));
        text.push('_');
        text.extend(secret.iter().map(|&b| b as char));
        let crc = crc32fast::hash(text.as_bytes());
        text.push_str(&encode_checksum(crc));
        Self { text }
    }

    /// Parses and validates a presented key: length, prefix, alphabet, checksum.
    /// Cheap and allocation-free until it succeeds, so it runs before any store look-up.
    pub fn parse(s: &str) -> Result<Self, KeyFormatError> {
        validate(s)?;
        Ok(Self { text: s.to_owned() })
    }

    /// The public id.
    pub fn id(&self) -> KeyId {
        let mut id = [0u8; ID_LEN];
        // A parsed or generated key's id part is always ID_LEN base62 characters.
        for (d, s) in id.iter_mut().zip(self.id_str().bytes()) {
            *d = s;
        }
        KeyId(id)
    }

    /// The public id, borrowed.
    pub fn id_str(&self) -> &str {
        &self.text[KEY_PREFIX.len()..KEY_PREFIX.len() + ID_LEN]
    }

    /// The last four characters (checksum characters, safe to show).
    pub fn last4(&self) -> &str {
        &self.text[KEY_LEN - 4..]
    }

    /// The hash stored at rest.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.text)
    }

    /// The full secret text. Call only to show the key once, at creation.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}{}_…)", KEY_PREFIX, self.id_str())
    }
}

/// Validates a key string without allocating.
pub fn validate(s: &str) -> Result<(), KeyFormatError> {
    let b = s.as_bytes();
    if b.len() != KEY_LEN {
        return Err(KeyFormatError::Length);
    }
    if !s.starts_with(KEY_PREFIX) {
        return Err(KeyFormatError::Prefix);
    }
    let sep = KEY_PREFIX.len() + ID_LEN;
    if b[sep] != b'_' {
        return Err(KeyFormatError::Charset);
    }
    let body_ok = b[KEY_PREFIX.len()..]
        .iter()
        .enumerate()
        .all(|(i, c)| i + KEY_PREFIX.len() == sep || c.is_ascii_alphanumeric());
    if !body_ok {
        return Err(KeyFormatError::Charset);
    }
    let (head, check) = s.split_at(KEY_LEN - CHECKSUM_LEN);
    let expected = encode_checksum(crc32fast::hash(head.as_bytes()));
    if expected.as_bytes() != check.as_bytes() {
        return Err(KeyFormatError::Checksum);
    }
    Ok(())
}

/// Public id of a presented key string when it has the right shape (checksum not checked).
pub fn id_of(s: &str) -> Option<&str> {
    s.get(KEY_PREFIX.len()..KEY_PREFIX.len() + ID_LEN)
}

fn encode_checksum(mut crc: u32) -> String {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

fn fill_base62(out: &mut [u8]) {
    // Rejection sampling keeps every character uniform: 248 = 4 * 62.
    let mut filled = 0;
    let mut buf = [0u8; 64];
    while filled < out.len() {
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut buf).expect("operating-system random source failed");
        for &r in &buf {
            if r < 248 && filled < out.len() {
                out[filled] = ALPHABET[(r % 62) as usize];
                filled += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_round_trip() {
        let k = ApiKey::generate();
        assert_eq!(k.expose().len(), KEY_LEN);
        let p = ApiKey::parse(k.expose()).unwrap();
        assert_eq!(p.id(), k.id());
        assert!(p.hash().ct_eq(&k.hash()));
        assert!(!format!("{k:?}").contains(&k.expose()[20..]));
    }

    #[test]
    fn rejects_obvious_garbage() {
        assert_eq!(ApiKey::parse("").unwrap_err(), KeyFormatError::Length);
        assert_eq!(
            ApiKey::parse(&"x".repeat(KEY_LEN)).unwrap_err(),
            KeyFormatError::Prefix
        );
        let k = ApiKey::generate();
        let mut s = k.expose().to_owned();
        s.replace_range(20..21, "-");
        assert_eq!(ApiKey::parse(&s).unwrap_err(), KeyFormatError::Charset);
    }

    #[test]
    fn hash_hex_round_trip() {
        let h = ApiKey::generate().hash();
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
    }

    proptest! {
        #[test]
        fn every_single_character_change_fails(pos in 0usize..KEY_LEN, c in proptest::char::range('0', 'z')) {
            let k = ApiKey::generate();
            let original = k.expose();
            let mut bytes = original.as_bytes().to_vec();
            prop_assume!(bytes[pos] != c as u8);
            bytes[pos] = c as u8;
            let s = String::from_utf8(bytes).unwrap();
            prop_assert!(ApiKey::parse(&s).is_err());
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = ApiKey::parse(&s);
        }
    }
}
