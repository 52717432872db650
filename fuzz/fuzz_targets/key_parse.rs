//! `ApiKey::parse`, `key::validate`, `KeyId::new` and `KeyHash::from_hex` on arbitrary UTF-8,
//! plus a differential check of the key format: a key assembled here from the input (base62
//! body + CRC32 checksum, per the documented layout) must validate, and any single-character
//! change to it must not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormwall_types::key::{
    self, ApiKey, CHECKSUM_LEN, ID_LEN, KEY_LEN, KEY_PREFIX, KeyHash, KeyId, SECRET_LEN,
};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn checksum(mut crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

fn check_str(s: &str) {
    let parsed = ApiKey::parse(s);
    let validated = key::validate(s);
    assert_eq!(parsed.is_ok(), validated.is_ok(), "parse and validate disagree");
    if let Err(e) = &validated {
        assert_eq!(parsed.as_ref().err(), Some(e));
    }
    if let Ok(k) = parsed {
        assert_eq!(s.len(), KEY_LEN);
        assert_eq!(k.expose(), s);
        assert_eq!(key::id_of(s), Some(k.id_str()));
        assert_eq!(k.id().as_str(), k.id_str());
        assert!(KeyId::new(k.id_str()).is_ok());
        assert_eq!(k.last4(), &s[KEY_LEN - 4..]);
        assert!(k.hash().ct_eq(&KeyHash::of(s)));
        // Debug must never show the secret.
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&s[KEY_PREFIX.len() + ID_LEN + 1..]));
    }
    let _ = key::id_of(s);
    if let Ok(id) = KeyId::new(s) {
        assert_eq!(id.as_str(), s);
        assert_eq!(s.len(), ID_LEN);
    }
    match KeyHash::from_hex(s) {
        Some(h) => {
            assert_eq!(h.to_hex(), s.to_ascii_lowercase(), "hex round trip");
            assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        }
        None => assert!(s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit())),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check_str(s);
    }
    // Assemble a well-formed key from the input bytes.
    if data.len() < ID_LEN + SECRET_LEN {
        return;
    }
    let mut text = Vec::with_capacity(KEY_LEN);
    text.extend_from_slice(KEY_PREFIX.as_bytes());
    text.extend(data[..ID_LEN].iter().map(|b| ALPHABET[*b as usize % 62]));
    text.push(b'_');
    text.extend(data[ID_LEN..ID_LEN + SECRET_LEN].iter().map(|b| ALPHABET[*b as usize % 62]));
    let crc = crc32fast::hash(&text);
    text.extend_from_slice(&checksum(crc));
    let good = String::from_utf8(text.clone()).expect("ascii");
    assert!(key::validate(&good).is_ok(), "assembled key rejected: {good}");
    check_str(&good);
    // A single changed character (to another base62 character, '_' or any byte) must fail.
    if let Some(&[pos, c]) = data.get(ID_LEN + SECRET_LEN..ID_LEN + SECRET_LEN + 2) {
        let pos = pos as usize % KEY_LEN;
        let c = if c < 128 { c } else { ALPHABET[c as usize % 62] };
        if text[pos] != c {
            text[pos] = c;
            let bad = String::from_utf8(text).expect("ascii");
            assert!(key::validate(&bad).is_err(), "one-character change accepted: {bad}");
            check_str(&bad);
        }
    }
});
