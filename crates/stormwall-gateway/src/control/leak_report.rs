//! Leaked-key reports: an endpoint on the proxy listener that takes reports in the format of
//! GitHub's secret-scanning partner programme (a JSON array of `{token, type, url, source}`,
//! signed with ECDSA P-256 / SHA-256 over the raw body), revokes every Stormwall key it
//! recognises — keeping it as a tripwire — and answers one label per token, never echoing a
//! token. The signature is checked on the bytes as received, never on a re-serialisation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use stormwall_types::{KeyHash, KeyStatus, key};

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use stormwall_types::RejectReason;

use super::ControlPlane;
use crate::data::DataPlane;
use crate::data::body::ProxyBody;
use crate::data::recorder::Recorder;
use crate::error::ProxyError;
use crate::http::{json_response, set_request_id};

/// Header naming the reporter's public key.
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";
/// Header carrying the base64 DER signature.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";
/// Largest report body accepted.
pub const MAX_REPORT_BYTES: usize = 4 * 1024 * 1024;
/// Most tokens in one report.
pub const MAX_TOKENS: usize = 20_000;
/// Least time between reloads of the key file on an unknown key identifier.
const RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// `[leak_reports]`: the leaked-key report endpoint.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeakReportsConfig {
    /// Whether the endpoint is served.
    pub enabled: bool,
    /// Path on the proxy listener that accepts reports (POST).
    pub path: String,
    /// Reporter public keys given inline.
    pub keys: Vec<ReporterKey>,
    /// A file in GitHub's `meta/public_keys/secret_scanning` format
    /// (`{"public_keys":[{"key_identifier","key","is_current"}]}`), re-read when a report
    /// names an identifier not yet known (at most once a minute), so `stormwall leak-reports
    /// refresh-keys` takes effect without a restart.
    pub keys_file: Option<PathBuf>,
}

impl Default for LeakReportsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/stormwall/leaked-keys".to_owned(),
            keys: Vec::new(),
            keys_file: None,
        }
    }
}

/// One reporter's public key.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReporterKey {
    /// Identifier sent in `Github-Public-Key-Identifier`.
    pub identifier: String,
    /// Public key: PEM, or base64 of the DER SubjectPublicKeyInfo.
    pub public_key: String,
    /// Who reports with it (recorded on revoked keys).
    #[serde(default = "default_reporter")]
    pub reporter: String,
}

fn default_reporter() -> String {
    "github".to_owned()
}

/// A public key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyConfigError {
    /// Not base64 or PEM.
    #[error("reporter key {0:?}: not base64 or PEM")]
    Encoding(String),
    /// Not a P-256 SubjectPublicKeyInfo.
    #[error("reporter key {0:?}: not an ECDSA P-256 public key")]
    Curve(String),
    /// The key file could not be read or parsed.
    #[error("cannot load reporter keys from {path}: {why}")]
    File {
        /// File.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// Extracts the uncompressed P-256 point from PEM or base64 DER SPKI.
pub fn parse_public_key(identifier: &str, text: &str) -> Result<Vec<u8>, KeyConfigError> {
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| KeyConfigError::Encoding(identifier.to_owned()))?;
    match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
        Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(point.to_vec()),
        _ => Err(KeyConfigError::Curve(identifier.to_owned())),
    }
}

#[derive(Debug, Clone)]
struct Verifier {
    point: Vec<u8>,
    reporter: String,
}

#[derive(serde::Deserialize)]
struct KeyFile {
    public_keys: Vec<KeyFileEntry>,
}

#[derive(serde::Deserialize)]
struct KeyFileEntry {
    key_identifier: String,
    key: String,
}

/// Verifies report signatures against the configured reporter keys.
#[derive(Debug)]
pub struct ReportVerifier {
    keys: RwLock<HashMap<String, Verifier>>,
    file: Option<PathBuf>,
    last_reload: Mutex<Option<Instant>>,
}

/// Why a report was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Signature headers missing.
    #[error("missing signature headers")]
    MissingHeaders,
    /// No key with that identifier.
    #[error("unknown public key identifier")]
    UnknownKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The body is not a JSON array of reports.
    #[error("body is not a JSON array of {{token, type, url, source}}")]
    BadBody,
    /// Too many tokens in one report.
    #[error("too many tokens in one report")]
    TooMany,
}

impl ReportError {
    /// The fixed message the reporter is told (the same as `Display`).
    pub fn message(self) -> &'static str {
        match self {
            ReportError::MissingHeaders => "missing signature headers",
            ReportError::UnknownKey => "unknown public key identifier",
            ReportError::BadSignature => "signature does not verify",
            ReportError::BadBody => "body is not a JSON array of {token, type, url, source}",
            ReportError::TooMany => "too many tokens in one report",
        }
    }
}

impl ReportVerifier {
    /// Loads inline keys and the key file.
    pub fn new(config: &LeakReportsConfig) -> Result<Self, KeyConfigError> {
        let mut keys = HashMap::new();
        for k in &config.keys {
            keys.insert(
                k.identifier.clone(),
                Verifier {
                    point: parse_public_key(&k.identifier, &k.public_key)?,
                    reporter: k.reporter.clone(),
                },
            );
        }
        if let Some(path) = &config.keys_file {
            keys.extend(load_key_file(path)?);
        }
        Ok(Self {
            keys: RwLock::new(keys),
            file: config.keys_file.clone(),
            last_reload: Mutex::new(None),
        })
    }

    fn lookup(&self, identifier: &str) -> Option<Verifier> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(identifier)
            .cloned()
    }

    fn reload_if_due(&self) {
        let Some(path) = &self.file else { return };
        let mut last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < RELOAD_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        match load_key_file(path) {
            Ok(fresh) => self
                .keys
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .extend(fresh),
            Err(e) => tracing::warn!(error = %e, "reloading reporter keys failed"),
        }
    }

    /// Verifies a report's signature over the raw body; returns the reporter's name.
    pub fn verify(
        &self,
        identifier: Option<&str>,
        signature_b64: Option<&str>,
        body: &[u8],
    ) -> Result<String, ReportError> {
        let (Some(identifier), Some(sig)) = (identifier, signature_b64) else {
            return Err(ReportError::MissingHeaders);
        };
        let verifier = match self.lookup(identifier) {
            Some(v) => v,
            None => {
                self.reload_if_due();
                self.lookup(identifier).ok_or(ReportError::UnknownKey)?
            }
        };
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig.trim())
            .map_err(|_| ReportError::BadSignature)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &verifier.point)
            .verify(body, &sig)
            .map_err(|_| ReportError::BadSignature)?;
        Ok(verifier.reporter)
    }
}

fn load_key_file(path: &Path) -> Result<HashMap<String, Verifier>, KeyConfigError> {
    let err = |why: String| KeyConfigError::File {
        path: path.to_owned(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file: KeyFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let mut out = HashMap::new();
    for entry in file.public_keys {
        let point = parse_public_key(&entry.key_identifier, &entry.key)?;
        out.insert(
            entry.key_identifier,
            Verifier {
                point,
                reporter: "github".to_owned(),
            },
        );
    }
    Ok(out)
}

/// One reported token.
#[derive(Debug, serde::Deserialize)]
pub struct ReportedToken {
    /// The token as found.
    pub token: String,
    /// The reporter's token type.
    #[serde(rename = "type", default)]
    pub token_type: String,
    /// Where it was found.
    #[serde(default)]
    pub url: Option<String>,
    /// Where it was found, by kind (`content`, `commit`, `pull_request`, …).
    #[serde(default)]
    pub source: Option<String>,
}

/// The answer for one token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenLabel {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// The reporter's token type, echoed.
    pub token_type: String,
    /// `true_positive` (a Stormwall key we issued) or `false_positive`.
    pub label: &'static str,
}

/// Parses a verified report body.
pub fn parse_report(body: &[u8]) -> Result<Vec<ReportedToken>, ReportError> {
    let tokens: Vec<ReportedToken> =
        serde_json::from_slice(body).map_err(|_| ReportError::BadBody)?;
    if tokens.len() > MAX_TOKENS {
        return Err(ReportError::TooMany);
    }
    Ok(tokens)
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Revokes every reported Stormwall key, raises an E1 alert for each, and labels each token.
/// `report_event` is the id of the report request's event (the alert's evidence).
pub async fn handle_report(
    state: &ControlPlane,
    reporter: &str,
    report_event: &str,
    tokens: Vec<ReportedToken>,
) -> Vec<TokenLabel> {
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        let token_hash = sha256_hex(&t.token);
        let known = key::validate(&t.token).ok().and_then(|()| {
            let id = key::id_of(&t.token)?;
            let cached = state.keys.get(id)?;
            KeyHash::of(&t.token)
                .ct_eq(&cached.record.hash)
                .then_some(cached)
        });
        let label = match known {
            Some(cached) => {
                let id = cached.record.id.clone();
                if cached.record.status != KeyStatus::Revoked {
                    let reason = format!(
                        "leaked: reported by {reporter} ({}) at {} on {}",
                        t.source.as_deref().unwrap_or("unknown source"),
                        t.url.as_deref().unwrap_or("an unknown location"),
                        stormwall_types::timefmt::format(time::OffsetDateTime::now_utc()),
                    );
                    match crate::control::keys::revoke(
                        state,
                        id.as_str(),
                        Some(truncate(&reason, 500)),
                    )
                    .await
                    {
                        Ok(record) => {
                            crate::control::audit::record(
                                state,
                                &format!("leak-report:{reporter}"),
                                "key.revoke",
                                Some(record.id.as_str()),
                                Some(&record.tenant),
                                serde_json::json!({
                                    "reason": record.status_reason,
                                    "report_event": report_event,
                                }),
                            )
                            .await;
                            let alert = exposure_alert(&record, reporter, report_event, &t);
                            match &state.detection {
                                Some(d) => d.exposure(alert).await,
                                None => state.alerts.raise(&alert),
                            }
                        }
                        Err(e) => {
                            tracing::error!(key_id = %id, error = %e, "revoking a reported key failed")
                        }
                    }
                }
                "true_positive"
            }
            None => "false_positive",
        };
        out.push(TokenLabel {
            token_hash,
            token_type: t.token_type,
            label,
        });
    }
    out
}

/// The E1 alert for a reported key: exposure, critical, revoked at once.
fn exposure_alert(
    record: &stormwall_types::KeyRecord,
    reporter: &str,
    report_event: &str,
    t: &ReportedToken,
) -> stormwall_types::Alert {
    use stormwall_types::{Alert, AlertSubject, DetectorId, Severity, Stage};
    let mut subjects = vec![AlertSubject {
        kind: "reporter".to_owned(),
        value: reporter.to_owned(),
    }];
    if let Some(url) = &t.url {
        subjects.push(AlertSubject {
            kind: "url".to_owned(),
            value: truncate(url, 500),
        });
    }
    if let Some(source) = &t.source {
        subjects.push(AlertSubject {
            kind: "source".to_owned(),
            value: truncate(source, 100),
        });
    }
    Alert {
        id: format!("{report_event}-E1-{}", record.id),
        detector: DetectorId::E1,
        stage: Stage::Exposure,
        severity: Severity::Critical,
        at: time::OffsetDateTime::now_utc(),
        key_id: Some(record.id.clone()),
        tenant: Some(record.tenant.clone()),
        source_ip: None,
        features: Vec::new(),
        subjects,
        explanation: format!(
            "Key {} of tenant {} was reported leaked by {reporter} ({}); it was revoked at once and is kept as a tripwire.",
            record.id,
            record.tenant,
            t.url.as_deref().unwrap_or("no location given"),
        ),
        evidence: vec![report_event.to_owned()],
        score: 100.0,
    }
}

fn truncate(s: &str, max: usize) -> String {
    crate::data::request::truncate(s, max).to_owned()
}

/// Whether a request on the proxy listener is a leaked-key report (`POST` to the configured
/// path); the entry point sends those here instead of the data plane's pipeline.
pub fn is_report(control: &ControlPlane, method: &http::Method, path: &str) -> bool {
    control
        .leak_reports
        .as_ref()
        .is_some_and(|(p, _)| method == http::Method::POST && path == p)
}

/// Answers a leaked-key report arriving on the proxy listener. It is recorded as one event,
/// like every request there.
pub async fn serve(
    control: &ControlPlane,
    data: &Arc<DataPlane>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let mut rec = Recorder::start(
        data,
        req.method().as_str(),
        req.uri().path(),
        req.headers(),
        peer,
    );
    let (parts, body) = req.into_parts();
    let result = match &control.leak_reports {
        Some((_, verifier)) => receive(control, &mut rec, verifier, &parts.headers, body).await,
        None => Err(ProxyError::reject(RejectReason::NotFound)),
    };
    crate::data::pipeline::answer(rec, result)
}

/// Verifies, parses and acts on one report.
async fn receive(
    state: &ControlPlane,
    rec: &mut Recorder,
    verifier: &ReportVerifier,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Response<ProxyBody>, ProxyError> {
    let limits = crate::config::LimitsConfig {
        max_request_body_bytes: MAX_REPORT_BYTES,
        ..state.limits.clone()
    };
    let bytes = crate::http::read_request_body(body, &limits).await?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let reporter = match verifier.verify(header(KEY_ID_HEADER), header(SIGNATURE_HEADER), &bytes) {
        Ok(r) => r,
        Err(e) => {
            return Err(ProxyError::ReportRefused {
                bad_signature: true,
                message: e.message(),
            });
        }
    };
    let tokens = match parse_report(&bytes) {
        Ok(t) => t,
        Err(e) => {
            return Err(ProxyError::ReportRefused {
                bad_signature: false,
                message: e.message(),
            });
        }
    };
    let report_event = rec.id().to_owned();
    let labels = handle_report(state, &reporter, &report_event, tokens).await;
    let body = serde_json::to_vec(&labels).map_err(|_| ProxyError::BodyUnreadable)?;
    let mut resp = json_response(http::StatusCode::OK, Bytes::from(body));
    set_request_id(&mut resp, rec.id());
    let durable = rec.take().finish(200);
    Ok(resp.map(|b| b.after(durable)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // GitHub's documented verification example (secret scanning partner programme).
    const GH_KEY_ID: &str = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a";
    const GH_PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUqkCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==";
    const GH_BODY: &str = r#"[{"token":"some_token","type":"some_type","url":"some_url"}]"#;
    const GH_SIGNATURE: &str = "MEUCIQDKZokqnCjrRtw0tni+2Ltvl/uiMJ1EGumEsp1BsNr32AIgQY1YXD2nlj+XNfGK4rBfkMJ1JDOQcYXxa2sY8FNkrKc=";

    fn github() -> ReportVerifier {
        ReportVerifier::new(&LeakReportsConfig {
            enabled: true,
            keys: vec![ReporterKey {
                identifier: GH_KEY_ID.into(),
                public_key: GH_PUBLIC_KEY.into(),
                reporter: "github".into(),
            }],
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn githubs_documented_example_verifies() {
        let v = github();
        assert_eq!(
            v.verify(Some(GH_KEY_ID), Some(GH_SIGNATURE), GH_BODY.as_bytes())
                .unwrap(),
            "github"
        );
    }

    #[test]
    fn one_changed_byte_fails() {
        let v = github();
        let mut body = GH_BODY.as_bytes().to_vec();
        body[12] ^= 1;
        assert_eq!(
            v.verify(Some(GH_KEY_ID), Some(GH_SIGNATURE), &body),
            Err(ReportError::BadSignature)
        );
        assert_eq!(
            v.verify(Some("other"), Some(GH_SIGNATURE), GH_BODY.as_bytes()),
            Err(ReportError::UnknownKey)
        );
        assert_eq!(
            v.verify(None, Some(GH_SIGNATURE), GH_BODY.as_bytes()),
            Err(ReportError::MissingHeaders)
        );
        assert_eq!(
            v.verify(Some(GH_KEY_ID), Some("%%%"), GH_BODY.as_bytes()),
            Err(ReportError::BadSignature)
        );
    }

    #[test]
    fn pem_keys_parse_and_other_curves_do_not() {
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
            &GH_PUBLIC_KEY[..64],
            &GH_PUBLIC_KEY[64..]
        );
        assert_eq!(parse_public_key("x", &pem).unwrap().len(), 65);
        assert!(matches!(
            parse_public_key("x", "AAAA"),
            Err(KeyConfigError::Curve(_))
        ));
        assert!(matches!(
            parse_public_key("x", "not base64!"),
            Err(KeyConfigError::Encoding(_))
        ));
    }

    #[test]
    fn report_bodies_parse_strictly() {
        assert_eq!(parse_report(GH_BODY.as_bytes()).unwrap().len(), 1);
        assert!(parse_report(b"{}").is_err());
        assert!(parse_report(br#"[{"type":"x"}]"#).is_err());
    }
}
