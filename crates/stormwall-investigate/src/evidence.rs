//! Evidence bundles: a case folder's manifest of SHA-256 digests, signed with Ed25519, and
//! its verification — every digest, no file added or missing, the signature, and the
//! audit entries forming an unbroken hash chain up to the audit-log head recorded when the
//! bundle was made. The CLI reads and writes the files; this module sees bytes only.

use std::collections::{BTreeMap, BTreeSet};

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sha2::Digest as _;
use stormwall_store::AuditRecord;

use crate::Error;
use crate::graph::hex;

/// The manifest's format name.
pub const FORMAT: &str = "stormwall-evidence/1";
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The signature's file name (hex).
pub const SIGNATURE: &str = "manifest.sig";
/// The public key's file name (hex).
pub const PUBLIC_KEY: &str = "public_key.txt";
/// The audit segment's file name.
pub const AUDIT: &str = "audit.json";

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileDigest {
    /// Path inside the bundle (`/`-separated, no `..`).
    pub path: String,
    /// SHA-256, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// The last audit record when the bundle was made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditHead {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// What the signature covers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// `incident:<id>` or `cluster:<id>`.
    pub subject: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// Every file but the manifest, its signature and the public key, sorted by path.
    pub files: Vec<FileDigest>,
    /// The audit log's head at that time (the audit segment ends there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<AuditHead>,
    /// The signer's Ed25519 public key, hex.
    pub public_key: String,
}

/// SHA-256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// An Ed25519 signing key.
pub struct SigningKey(Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// From a 32-byte seed written as 64 hex digits (surrounding whitespace ignored).
    pub fn from_seed_hex(text: &str) -> Result<Self, Error> {
        let seed = unhex(text.trim())
            .filter(|s| s.len() == 32)
            .ok_or_else(|| Error::Key("expected a 32-byte Ed25519 seed as 64 hex digits".into()))?;
        Ed25519KeyPair::from_seed_unchecked(&seed)
            .map(SigningKey)
            .map_err(|e| Error::Key(e.to_string()))
    }

    /// A new random key and its seed (hex), from the operating system's generator.
    pub fn generate() -> Result<(Self, String), Error> {
        use ring::rand::SecureRandom as _;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| Error::Key("no randomness available".into()))?;
        let text = hex(&seed);
        Ok((Self::from_seed_hex(&text)?, text))
    }

    /// The public key, hex.
    pub fn public_key_hex(&self) -> String {
        hex(self.0.public_key().as_ref())
    }

    /// Signs bytes; the signature in hex.
    pub fn sign_hex(&self, msg: &[u8]) -> String {
        hex(self.0.sign(msg).as_ref())
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A path a bundle may hold: relative, `/`-separated, no `.`/`..`, no backslash.
pub fn safe_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Builds the manifest over the bundle's files and signs it: the manifest's bytes and the
/// signature (hex).
pub fn seal(
    subject: &str,
    created: &str,
    files: &BTreeMap<String, Vec<u8>>,
    audit_head: Option<AuditHead>,
    key: &SigningKey,
) -> Result<(Vec<u8>, String), Error> {
    let mut digests = Vec::new();
    for (path, bytes) in files {
        if !safe_path(path) || [MANIFEST, SIGNATURE, PUBLIC_KEY].contains(&path.as_str()) {
            return Err(Error::Evidence(format!("bad file name {path}")));
        }
        digests.push(FileDigest {
            path: path.clone(),
            sha256: sha256_hex(bytes),
            bytes: bytes.len() as u64,
        });
    }
    let m = Manifest {
        format: FORMAT.to_owned(),
        subject: subject.to_owned(),
        created: created.to_owned(),
        files: digests,
        audit_head,
        public_key: key.public_key_hex(),
    };
    let mut bytes = serde_json::to_vec_pretty(&m).map_err(|e| Error::Evidence(e.to_string()))?;
    bytes.push(b'\n');
    let sig = key.sign_hex(&bytes);
    Ok((bytes, sig))
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// Audit records checked (their chain ends at the recorded head).
    pub audit_records: usize,
}

/// Checks a bundle: `files` is every file found in the folder (manifest, signature and
/// public key included); `trusted_key` (hex), when given, must be the signer's.
pub fn verify(
    files: &BTreeMap<String, Vec<u8>>,
    trusted_key: Option<&str>,
) -> Result<Verified, Error> {
    let bad = |m: String| Err(Error::Evidence(m));
    let Some(manifest_bytes) = files.get(MANIFEST) else {
        return bad(format!("{MANIFEST} is missing"));
    };
    let Some(sig) = files.get(SIGNATURE) else {
        return bad(format!("{SIGNATURE} is missing"));
    };
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| Error::Evidence(format!("{MANIFEST} is not a manifest: {e}")))?;
    if manifest.format != FORMAT {
        return bad(format!("unknown format {}", manifest.format));
    }
    let Some(pk) = unhex(&manifest.public_key).filter(|k| k.len() == 32) else {
        return bad("the manifest's public key is not 32 bytes of hex".into());
    };
    if let Some(t) = trusted_key
        && !t.trim().eq_ignore_ascii_case(&manifest.public_key)
    {
        return bad("signed with a different key than the trusted one".into());
    }
    // Strict: the hex and at most one newline, so no byte of the file goes unchecked.
    let sig = std::str::from_utf8(sig)
        .ok()
        .map(|s| s.strip_suffix('\n').unwrap_or(s))
        .and_then(unhex)
        .ok_or_else(|| Error::Evidence(format!("{SIGNATURE} is not hex")))?;
    if UnparsedPublicKey::new(&ED25519, &pk)
        .verify(manifest_bytes, &sig)
        .is_err()
    {
        return bad("the signature does not match the manifest".into());
    }
    match files.get(PUBLIC_KEY) {
        None => return bad(format!("{PUBLIC_KEY} is missing")),
        Some(pkf) if *pkf != format!("{}\n", manifest.public_key).into_bytes() => {
            return bad(format!("{PUBLIC_KEY} differs from the manifest's key"));
        }
        Some(_) => {}
    }
    let mut listed = BTreeSet::new();
    for f in &manifest.files {
        if !safe_path(&f.path) {
            return bad(format!("bad file name {} in the manifest", f.path));
        }
        listed.insert(f.path.as_str());
        let Some(bytes) = files.get(&f.path) else {
            return bad(format!("{} is missing", f.path));
        };
        if bytes.len() as u64 != f.bytes || sha256_hex(bytes) != f.sha256 {
            return bad(format!("{} was changed (digest differs)", f.path));
        }
    }
    for p in files.keys() {
        if !listed.contains(p.as_str()) && ![MANIFEST, SIGNATURE, PUBLIC_KEY].contains(&p.as_str())
        {
            return bad(format!("{p} is not in the manifest (added)"));
        }
    }
    let mut audit_records = 0;
    if let Some(head) = &manifest.audit_head {
        let Some(bytes) = files.get(AUDIT) else {
            return bad(format!("{AUDIT} is missing"));
        };
        let records: Vec<AuditRecord> =
            serde_json::from_slice(bytes).map_err(|e| Error::Evidence(format!("{AUDIT}: {e}")))?;
        let Some(first) = records.first() else {
            return bad(format!("{AUDIT} is empty but the manifest names a head"));
        };
        stormwall_store::verify_audit(&records, first.seq.saturating_sub(1), &first.prev_hash)
            .map_err(|e| Error::Evidence(format!("{AUDIT}: {e}")))?;
        match records.last() {
            Some(last) if last.seq == head.seq && last.hash == head.hash => {}
            _ => return bad(format!("{AUDIT} does not end at the recorded audit head")),
        }
        audit_records = records.len();
    }
    Ok(Verified {
        manifest,
        audit_records,
    })
}
