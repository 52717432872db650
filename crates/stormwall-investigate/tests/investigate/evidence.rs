use std::collections::BTreeMap;

use stormwall_investigate::evidence::{
    AUDIT, AuditHead, MANIFEST, PUBLIC_KEY, SIGNATURE, SigningKey, seal, verify,
};
use stormwall_store::{AUDIT_GENESIS, AuditEntry, AuditRecord, audit_hash};

const SEED: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const OTHER: &str = "0202020202020202020202020202020202020202020202020202020202020202";

fn chain(n: u64) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    let mut prev = AUDIT_GENESIS.to_owned();
    for seq in 1..=n {
        let entry = AuditEntry {
            at: time::OffsetDateTime::from_unix_timestamp(1_741_000_000 + seq as i64).unwrap(),
            actor: "detection".into(),
            action: "key.suspend".into(),
            target: Some("acmekey00001".into()),
            tenant: Some("acme".into()),
            detail: serde_json::json!({"n": seq}),
        };
        let hash = audit_hash(&prev, seq, &entry);
        out.push(AuditRecord {
            seq,
            entry,
            prev_hash: prev.clone(),
            hash: hash.clone(),
        });
        prev = hash;
    }
    out
}

fn folder(key: &SigningKey, audit: &[AuditRecord]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert(
        "events.jsonl".to_owned(),
        b"{\"a\":1}\n{\"a\":2}\n".to_vec(),
    );
    files.insert("summary.md".to_owned(), b"# Evidence\n".to_vec());
    files.insert(AUDIT.to_owned(), serde_json::to_vec(audit).unwrap());
    let last = audit.last().unwrap();
    let head = AuditHead {
        seq: last.seq,
        hash: last.hash.clone(),
    };
    let (m, sig) = seal("cluster:x", "2025-03-10T00:00:00Z", &files, Some(head), key).unwrap();
    files.insert(MANIFEST.to_owned(), m);
    files.insert(SIGNATURE.to_owned(), format!("{sig}\n").into_bytes());
    files.insert(
        PUBLIC_KEY.to_owned(),
        format!("{}\n", key.public_key_hex()).into_bytes(),
    );
    files
}

#[test]
fn a_sealed_folder_verifies() {
    let key = SigningKey::from_seed_hex(SEED).unwrap();
    let audit = chain(5);
    let files = folder(&key, &audit[2..]);
    let v = verify(&files, Some(&key.public_key_hex())).unwrap();
    assert_eq!(v.audit_records, 3);
    assert_eq!(v.manifest.files.len(), 3);
}

#[test]
fn every_kind_of_tamper_is_detected() {
    let key = SigningKey::from_seed_hex(SEED).unwrap();
    let audit = chain(5);
    let good = folder(&key, &audit[1..]);
    let pk = key.public_key_hex();
    let mut cases: Vec<(String, BTreeMap<String, Vec<u8>>)> = Vec::new();
    // Any byte of any file, the manifest and signature included.
    for (name, bytes) in &good {
        for at in [0, bytes.len() / 2, bytes.len() - 1] {
            let mut f = good.clone();
            f.get_mut(name).unwrap()[at] ^= 0x01;
            cases.push((format!("byte {at} of {name}"), f));
        }
        let mut f = good.clone();
        f.remove(name);
        cases.push((format!("{name} removed"), f));
        let mut f = good.clone();
        f.get_mut(name).unwrap().push(b' ');
        cases.push((format!("{name} grown"), f));
    }
    let mut f = good.clone();
    f.insert("extra.txt".into(), b"planted".to_vec());
    cases.push(("file added".into(), f));
    // Re-sealed by someone else after changing a file: the trusted key catches it.
    let other = SigningKey::from_seed_hex(OTHER).unwrap();
    let mut forged = folder(&other, &audit[1..]);
    forged.insert("summary.md".into(), b"# Nothing to see\n".to_vec());
    cases.push(("re-signed by another key".into(), forged));
    // A correctly sealed folder whose audit entries do not chain (an entry edited before
    // sealing, or a record dropped from the middle).
    let mut edited = audit.clone();
    edited[2].entry.action = "key.resume".into();
    cases.push(("audit entry edited".into(), folder(&key, &edited[1..])));
    let mut gap = audit.clone();
    gap.remove(2);
    cases.push(("audit record missing".into(), folder(&key, &gap[1..])));
    for (what, files) in cases {
        assert!(verify(&files, Some(&pk)).is_err(), "not detected: {what}");
    }
}

#[test]
fn bad_keys_and_paths_are_errors() {
    assert!(SigningKey::from_seed_hex("abc").is_err());
    assert!(SigningKey::from_seed_hex(&"zz".repeat(32)).is_err());
    let key = SigningKey::from_seed_hex(SEED).unwrap();
    let mut files = BTreeMap::new();
    files.insert("../escape".to_owned(), Vec::new());
    assert!(seal("x", "t", &files, None, &key).is_err());
    let (k, seed) = SigningKey::generate().unwrap();
    assert_eq!(
        SigningKey::from_seed_hex(&seed).unwrap().public_key_hex(),
        k.public_key_hex()
    );
}
