//! Offline checksum validators: a match that carries a checksum is confirmed here, with no
//! network and no false positives, before it becomes a finding.
//!
//! Every validator takes the matched bytes and answers yes or no; none allocates on the
//! hot path, and none panics on any input (lengths are checked before slicing).

use serde::{Deserialize, Serialize};

/// Base62 alphabet used by GitHub-style and Stormwall checksums (digits, upper, lower).
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Standard base64 alphabet (Azure keys are standard, not URL-safe, base64).
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Marvin32 seed of Azure's common annotated security keys: the ASCII bytes of
/// `Default0`, reversed and read as a little-endian u64 (Microsoft security-utilities).
pub const AZURE_CASK_SEED: u64 = u64::from_le_bytes(*b"0tluafeD");

/// Which checksum a rule's matches must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validator {
    /// Stormwall's own keys: `swk_`, CRC32 over the key, base62 (delegates to stormwall-types).
    Stormwall,
    /// GitHub-style tokens: 6 base62 characters of the CRC32 of the random part.
    GithubCrc32,
    /// Cloudflare's 2026 scannable tokens: 8 lowercase hex characters of the CRC32 of the
    /// 40-character body.
    CloudflareCrc32,
    /// Azure common annotated security keys (84 characters, `JQQJ9` signature): seeded
    /// Marvin32 over the decoded key bytes.
    AzureCask,
}

impl Validator {
    /// True when `secret` carries a valid checksum of this kind.
    pub fn check(self, secret: &[u8]) -> bool {
        match self {
            Self::Stormwall => std::str::from_utf8(secret)
                .map(|s| stormwall_types::key::validate(s).is_ok())
                .unwrap_or(false),
            Self::GithubCrc32 => github_crc32(secret),
            Self::CloudflareCrc32 => cloudflare_crc32(secret),
            Self::AzureCask => azure_cask(secret),
        }
    }
}

/// `<prefix>_<random><6 base62 checksum>`: CRC32 of the random part, base62, zero-padded.
fn github_crc32(secret: &[u8]) -> bool {
    let Some(sep) = secret.iter().position(|&b| b == b'_') else {
        return false;
    };
    let body = &secret[sep + 1..];
    if body.len() <= 6 {
        return false;
    }
    let (random, check) = body.split_at(body.len() - 6);
    base62_fixed::<6>(crc32fast::hash(random)) == check
}

/// `cf(k|ut|at)_<40 base62><8 hex>`: CRC32 of the 40-character body, lowercase hex.
fn cloudflare_crc32(secret: &[u8]) -> bool {
    let Some(sep) = secret.iter().position(|&b| b == b'_') else {
        return false;
    };
    let rest = &secret[sep + 1..];
    if rest.len() != 48 {
        return false;
    }
    let (body, check) = rest.split_at(40);
    hex8(crc32fast::hash(body)) == check
}

/// Azure common annotated security key (standard 84-character form, or the 88-character
/// long form): `<52 random>JQQJ9<kind><date><platform><provider><signature><checksum>`.
fn azure_cask(secret: &[u8]) -> bool {
    if secret.len() != 84 && secret.len() != 88 {
        return false;
    }
    if secret.get(52..56) != Some(b"JQQJ".as_slice()) {
        return false;
    }
    let mut bytes = [0u8; 60];
    if !decode_base64_80(&secret[..80], &mut bytes) {
        return false;
    }
    let checksum = marvin32(&bytes, AZURE_CASK_SEED);
    let le = checksum.to_le_bytes();
    let text = &secret[80..84];
    // Keys in the wild carry the first three checksum bytes as base64; the library's
    // generator has also emitted a base62 rendering. Both are accepted, as Microsoft's
    // own validator does.
    let mut b64 = [0u8; 4];
    encode_base64_3(&le[..3].try_into().unwrap_or([0; 3]), &mut b64);
    text == b64 || text == &azure_base62_checksum(le)[..4]
}

/// Microsoft's base62 rendering of a checksum: the little-endian bytes read as a
/// big-endian number, base62 digits, leading zero bytes kept as `0`, right-padded to six.
fn azure_base62_checksum(le: [u8; 4]) -> [u8; 6] {
    let mut value = u32::from_be_bytes(le);
    let mut digits = [0u8; 8];
    let mut n = 0;
    while value > 0 {
        digits[n] = BASE62[(value % 62) as usize];
        value /= 62;
        n += 1;
    }
    let zeros = le.iter().take_while(|&&b| b == 0).count().min(3);
    let mut out = [b'0'; 6];
    let mut pos = zeros;
    for i in (0..n).rev() {
        if pos < out.len() {
            out[pos] = digits[i];
            pos += 1;
        }
    }
    out
}

/// Base62 of a CRC32, most significant digit first, zero-padded to `N` characters.
pub(crate) fn base62_fixed<const N: usize>(mut value: u32) -> [u8; N] {
    let mut out = [b'0'; N];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// Lowercase hex of a CRC32, eight characters.
pub(crate) fn hex8(value: u32) -> [u8; 8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 8];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = HEX[((value >> (28 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// Marvin32 (Microsoft's seeded hash, as in .NET and SymCrypt), folded to 32 bits.
pub fn marvin32(data: &[u8], seed: u64) -> u32 {
    let (lo, hi) = marvin64(data, seed);
    lo ^ hi
}

/// The two 32-bit halves of the 64-bit Marvin state after the final blocks.
fn marvin64(data: &[u8], seed: u64) -> (u32, u32) {
    let mut p0 = seed as u32;
    let mut p1 = (seed >> 32) as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        p0 = p0.wrapping_add(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        marvin_block(&mut p0, &mut p1);
    }
    let rest = chunks.remainder();
    let tail = match rest.len() {
        0 => 0x80,
        1 => 0x8000 | u32::from(rest[0]),
        2 => 0x80_0000 | u32::from(u16::from_le_bytes([rest[0], rest[1]])),
        _ => {
            0x8000_0000
                | (u32::from(rest[2]) << 16)
                | u32::from(u16::from_le_bytes([rest[0], rest[1]]))
        }
    };
    p0 = p0.wrapping_add(tail);
    marvin_block(&mut p0, &mut p1);
    marvin_block(&mut p0, &mut p1);
    (p0, p1)
}

fn marvin_block(p0: &mut u32, p1: &mut u32) {
    *p1 ^= *p0;
    *p0 = p0.rotate_left(20);
    *p0 = p0.wrapping_add(*p1);
    *p1 = p1.rotate_left(9);
    *p1 ^= *p0;
    *p0 = p0.rotate_left(27);
    *p0 = p0.wrapping_add(*p1);
    *p1 = p1.rotate_left(19);
}

fn base64_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes exactly 80 base64 characters (no padding) into 60 bytes.
fn decode_base64_80(text: &[u8], out: &mut [u8; 60]) -> bool {
    if text.len() != 80 {
        return false;
    }
    for (i, quad) in text.chunks_exact(4).enumerate() {
        let mut v = 0u32;
        for &c in quad {
            let Some(d) = base64_value(c) else {
                return false;
            };
            v = (v << 6) | d;
        }
        out[3 * i] = (v >> 16) as u8;
        out[3 * i + 1] = (v >> 8) as u8;
        out[3 * i + 2] = v as u8;
    }
    true
}

/// Encodes three bytes as four base64 characters.
pub(crate) fn encode_base64_3(bytes: &[u8; 3], out: &mut [u8; 4]) {
    let v = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = BASE64[((v >> (18 - 6 * i)) & 0x3f) as usize];
    }
}

/// Encodes a whole number of three-byte groups as base64 (generator use).
#[cfg(feature = "inputs")]
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() / 3 * 4);
    for group in bytes.chunks_exact(3) {
        let mut out = [0u8; 4];
        encode_base64_3(&[group[0], group[1], group[2]], &mut out);
        s.extend(out.iter().map(|&b| b as char));
    }
    s
}

/// Completes an Azure key from its first 80 characters by appending the checksum
/// (generator use; the inverse of [`Validator::AzureCask`]).
#[cfg(feature = "inputs")]
pub(crate) fn azure_cask_checksum(first80: &[u8]) -> Option<[u8; 4]> {
    let mut bytes = [0u8; 60];
    if !decode_base64_80(first80, &mut bytes) {
        return None;
    }
    let le = marvin32(&bytes, AZURE_CASK_SEED).to_le_bytes();
    let mut out = [0u8; 4];
    encode_base64_3(&[le[0], le[1], le[2]], &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SymCrypt's published Marvin32 test vector.
    #[test]
    fn marvin_matches_symcrypt() {
        let (lo, hi) = marvin64(b"abc", 0xd53c_d9ce_cd08_93b7);
        assert_eq!((u64::from(hi) << 32) | u64::from(lo), 0x22c7_4339_4927_69bf);
        let (lo, hi) = marvin64(b"abcdefghijklmnopqrstuvwxyz", 0x0ddd_deee_efff_f000);
        assert_eq!((u64::from(hi) << 32) | u64::from(lo), 0xa128_eb7e_7260_aca2);
    }

    #[test]
    fn marvin_short_inputs() {
        let seed = 0x004f_b61a_001b_dbcc;
        let cases: [(&[u8], u64); 4] = [
            (&[], 0x30ed_35c1_00cd_3c7d),
            (&[175], 0x48e7_3fc7_7d75_ddc1),
            (&[231, 15], 0xb5f6_e1fc_485d_bff8),
            (&[55, 244, 149], 0xf0b0_7c78_9b8c_f7e8),
        ];
        for (data, want) in cases {
            let (lo, hi) = marvin64(data, seed);
            assert_eq!((u64::from(hi) << 32) | u64::from(lo), want);
        }
    }

    #[test]
    fn seed_is_default0() {
        assert_eq!(AZURE_CASK_SEED.to_be_bytes(), *b"Default0");
    }

    #[test]
    fn validators_reject_garbage_without_panicking() {
        for v in [
            Validator::Stormwall,
            Validator::GithubCrc32,
            Validator::CloudflareCrc32,
            Validator::AzureCask,
        ] {
            for s in [&b""[..], b"_", b"ghp_", b"cfut_x", &[0xff; 84], &[b'A'; 88]] {
                assert!(!v.check(s));
            }
        }
    }

    #[test]
    fn github_checksum_round_trip() {
        let random = b"abcdefghijABCDEFGHIJ0123456789";
        let mut token = b"ghp_".to_vec();
        token.extend_from_slice(random);
        token.extend_from_slice(&base62_fixed::<6>(crc32fast::hash(random)));
        assert!(Validator::GithubCrc32.check(&token));
        let last = token.len() - 1;
        token[last] = if token[last] == b'a' { b'b' } else { b'a' };
        assert!(!Validator::GithubCrc32.check(&token));
    }

    #[test]
    fn azure_base62_rendering_keeps_leading_zero_bytes() {
        assert_eq!(&azure_base62_checksum([0, 0, 0, 1]), b"0001\x30\x30");
        assert_eq!(&azure_base62_checksum([0, 0, 0, 0]), b"000000");
    }
}
