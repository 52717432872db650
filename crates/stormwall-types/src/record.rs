//! What the store keeps about a key: kind, status, tenant and scope.

use ipnet::IpNet;
use time::OffsetDateTime;

use crate::endpoint::Endpoint;
use crate::key::{KeyHash, KeyId};
use crate::timefmt::{rfc3339, rfc3339_opt};

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// Issued to a client.
    Normal,
    /// Planted as bait: any use is a critical signal; never served.
    Canary,
}

/// Where a key is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Serves within its scope.
    Active,
    /// Refused until resumed (reversible).
    Suspended,
    /// Refused forever, kept as a tripwire: every retry is recorded.
    Revoked,
}

impl KeyKind {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Normal => "normal",
            KeyKind::Canary => "canary",
        }
    }
}

impl KeyStatus {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Suspended => "suspended",
            KeyStatus::Revoked => "revoked",
        }
    }
}

/// What a key may do. Empty lists mean "no restriction"; `None` limits mean "unlimited".
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyScope {
    /// Model (or Azure deployment) names the key may use; empty: every configured model.
    pub models: Vec<String>,
    /// Endpoints the key may call; empty: all.
    pub endpoints: Vec<Endpoint>,
    /// Client networks the key may be used from; empty: anywhere.
    pub cidrs: Vec<IpNet>,
    /// The key is refused before this instant.
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub not_before: Option<OffsetDateTime>,
    /// The key is refused from this instant.
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<OffsetDateTime>,
    /// Requests per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (input + output) per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Spend per UTC day, in US dollars.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_daily_usd: Option<f64>,
    /// Spend per UTC calendar month, in US dollars.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_monthly_usd: Option<f64>,
    /// Content-policy profile name (used by the safety stage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_profile: Option<String>,
}

impl KeyScope {
    /// Whether the scope allows a model name (empty list: all).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    /// Whether the scope allows an endpoint (empty list: all).
    pub fn allows_endpoint(&self, endpoint: Endpoint) -> bool {
        self.endpoints.is_empty() || self.endpoints.contains(&endpoint)
    }

    /// Whether the scope allows a client address (empty list: anywhere).
    pub fn allows_ip(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.cidrs.is_empty() || self.cidrs.iter().any(|n| n.contains(&ip))
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) to IPv4 so CIDR checks see one form.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// A key as the store keeps it. Serialized (admin API, CLI) without its hash.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    /// Public id.
    pub id: KeyId,
    /// Owning tenant.
    pub tenant: String,
    /// Normal or canary.
    pub kind: KeyKind,
    /// Lifecycle status.
    pub status: KeyStatus,
    /// SHA-256 of the whole key; never serialized.
    #[serde(skip)]
    pub hash: KeyHash,
    /// Last four characters of the key, for people to tell keys apart.
    pub last4: String,
    /// Free-form label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What the key may do.
    pub scope: KeyScope,
    /// When the key was created.
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the record last changed.
    #[serde(with = "rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Why the status last changed (operator note or detector reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// The key this one replaced by rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<KeyId>,
    /// The key that replaced this one by rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_to: Option<KeyId>,
}

/// Why a key may not serve right now, judged from its record alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Canary: never served.
    Canary,
    /// Revoked.
    Revoked,
    /// Suspended.
    Suspended,
    /// Before `not_before`.
    NotYetValid,
    /// At or after `expires_at`.
    Expired,
}

impl KeyRecord {
    /// Checks kind, status and validity window at `now`.
    pub fn usable_at(&self, now: OffsetDateTime) -> Result<(), KeyRefusal> {
        usable_at(self.kind, self.status, &self.scope, now)
    }
}

/// Checks a key's kind, status and validity window at `now` — [`KeyRecord::usable_at`] for
/// callers that keep those parts without the whole record (the gateway's key cache).
pub fn usable_at(
    kind: KeyKind,
    status: KeyStatus,
    scope: &KeyScope,
    now: OffsetDateTime,
) -> Result<(), KeyRefusal> {
    if kind == KeyKind::Canary {
        return Err(KeyRefusal::Canary);
    }
    match status {
        KeyStatus::Revoked => return Err(KeyRefusal::Revoked),
        KeyStatus::Suspended => return Err(KeyRefusal::Suspended),
        KeyStatus::Active => {}
    }
    if scope.not_before.is_some_and(|t| now < t) {
        return Err(KeyRefusal::NotYetValid);
    }
    if scope.expires_at.is_some_and(|t| now >= t) {
        return Err(KeyRefusal::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_empty_allows_all() {
        let s = KeyScope::default();
        assert!(s.allows_model("anything"));
        assert!(s.allows_endpoint(Endpoint::Embeddings));
        assert!(s.allows_ip("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn cidr_matches_mapped_ipv4() {
        let s = KeyScope {
            cidrs: vec!["127.0.0.0/24".parse().unwrap()],
            ..Default::default()
        };
        assert!(s.allows_ip("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!s.allows_ip("127.0.1.9".parse().unwrap()));
    }

    #[test]
    fn scope_rejects_unknown_fields() {
        let r: Result<KeyScope, _> = serde_json::from_str(r#"{"modles":["x"]}"#);
        assert!(r.is_err());
    }
}
