//! Redaction: what a report may say about a credential. A short head and tail for a human
//! to recognise it, and a keyed hash (HMAC-SHA256) so findings can be deduplicated and
//! baselined across runs without the secret ever being stored or logged.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::rules::Rule;
use crate::validate::Validator;

/// Key used when the operator sets none. Public, so fingerprints made with it are only
/// stable identifiers, not a secret: set `STORMWALL_SCAN_HASH_KEY` to keep reports from
/// confirming a guessed key.
pub const DEFAULT_HASH_KEY: &[u8] = b"stormwall-scan fingerprint v1";

/// Hex characters of the HMAC kept in a fingerprint (128 bits).
const FINGERPRINT_HEX: usize = 32;

/// Turns credentials into safe-to-show text.
#[derive(Clone)]
pub struct Redactor {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor(..)")
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(DEFAULT_HASH_KEY)
    }
}

impl Redactor {
    /// A redactor whose fingerprints are keyed with `key`.
    pub fn new(key: &[u8]) -> Self {
        // HMAC pads a short key with zeros to the block size and hashes a long one first;
        // doing that here gives the fixed-size key `KeyInit::new` takes, so construction
        // has no error path.
        let mut block = [0u8; 64];
        if key.len() > block.len() {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        Self { mac }
    }

    /// Keyed hash of a credential, 32 hex characters: equal secrets give equal fingerprints.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(secret);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(FINGERPRINT_HEX);
        for b in digest.iter().take(FINGERPRINT_HEX / 2) {
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0xf));
        }
        out
    }

    /// Head and tail of the credential with the middle elided, e.g. `sk-pro…Qy93`.
    /// Stormwall keys show their public id, which is not secret, and their checksum tail.
    pub fn redact(&self, rule: &Rule, secret: &[u8]) -> String {
        let text = String::from_utf8_lossy(secret);
        if rule.validator() == Some(Validator::Stormwall)
            && let (Some(id), Some(tail)) = (
                stormwall_types::key::id_of(&text),
                text.get(text.len().saturating_sub(4)..),
            )
        {
            return format!("{}{id}_…{tail}", stormwall_types::key::KEY_PREFIX);
        }
        redact_text(&text)
    }
}

/// Generic head…tail elision: at most an eighth of the characters at each end.
pub fn redact_text(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    if n < 8 {
        return "…".to_owned();
    }
    let head = (n / 8).clamp(2, 6);
    let tail = (n / 8).clamp(1, 4);
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[n - tail..]);
    out
}

fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_keyed_and_stable() {
        let a = Redactor::new(b"k1");
        let b = Redactor::new(b"k2");
        assert_eq!(a.fingerprint(b"secret"), a.fingerprint(b"secret"));
        assert_ne!(a.fingerprint(b"secret"), b.fingerprint(b"secret"));
        assert_eq!(a.fingerprint(b"x").len(), 32);
    }

    #[test]
    fn redaction_keeps_little() {
        assert_eq!(redact_text("0123456789abcdef0123456789abcdef"), "0123…cdef");
        assert_eq!(redact_text("short"), "…");
        let long = "sk-proj-".to_owned() + &"a".repeat(150);
        let r = redact_text(&long);
        assert!(r.starts_with("sk-pro…"));
        assert!(r.chars().count() <= 11);
    }
}
