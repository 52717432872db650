//! `UsageEvent`: one per request through the gateway (rejected ones included), and the
//! shape every cloud-log parser produces, so detectors never know where an event came from.
//!
//! Field names follow OpenTelemetry `gen_ai.*` and ECS so SIEM rules port; the serialized
//! form *is* the JSON-lines export format, and reads back unchanged.

use std::net::IpAddr;

use time::OffsetDateTime;

use crate::endpoint::{ApiFlavor, Endpoint};
use crate::key::KeyId;
use crate::record::KeyKind;
use crate::safety::{Action, SafetyStage, VerdictCategory};
use crate::timefmt::rfc3339;

/// The gateway's admission decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Forwarded upstream (or answered locally, for `/v1/models`).
    Allow,
    /// Refused by the gateway; see the reason.
    Deny,
}

/// Why the gateway refused a request. Stable names: metrics labels and detectors use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// No key in `Authorization` or `api-key`.
    MissingKey,
    /// Not a well-formed Stormwall key (wrong shape or checksum); the store was not consulted.
    MalformedKey,
    /// Well-formed but unknown, or the secret does not match.
    UnknownKey,
    /// Revoked key used (tripwire).
    RevokedKey,
    /// Canary key used (tripwire).
    CanaryKey,
    /// Suspended key.
    SuspendedKey,
    /// Expired key (or past a rotation's grace period).
    ExpiredKey,
    /// Before the key's `not_before`.
    NotYetValidKey,
    /// Model not in the key's scope.
    ModelNotAllowed,
    /// Endpoint not in the key's scope.
    EndpointNotAllowed,
    /// Client network not in the key's CIDRs.
    NetworkNotAllowed,
    /// Requests-per-minute limit.
    RateLimitRequests,
    /// Tokens-per-minute limit.
    RateLimitTokens,
    /// In-flight concurrency limit.
    ConcurrencyLimit,
    /// Daily or monthly budget spent.
    BudgetExhausted,
    /// Malformed request (body, JSON, size).
    BadRequest,
    /// Unknown path or method.
    NotFound,
    /// No upstream serves the model.
    NoRoute,
    /// Blocked by content policy.
    ContentPolicy,
    /// The key store has been unreachable for longer than the key cache may be trusted
    /// (`[server] key_cache_max_stale_secs`), so no key can be verified.
    KeysUnverified,
}

impl RejectReason {
    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MissingKey => "missing_key",
            RejectReason::MalformedKey => "malformed_key",
            RejectReason::UnknownKey => "unknown_key",
            RejectReason::RevokedKey => "revoked_key",
            RejectReason::CanaryKey => "canary_key",
            RejectReason::SuspendedKey => "suspended_key",
            RejectReason::ExpiredKey => "expired_key",
            RejectReason::NotYetValidKey => "not_yet_valid_key",
            RejectReason::ModelNotAllowed => "model_not_allowed",
            RejectReason::EndpointNotAllowed => "endpoint_not_allowed",
            RejectReason::NetworkNotAllowed => "network_not_allowed",
            RejectReason::RateLimitRequests => "rate_limit_requests",
            RejectReason::RateLimitTokens => "rate_limit_tokens",
            RejectReason::ConcurrencyLimit => "concurrency_limit",
            RejectReason::BudgetExhausted => "budget_exhausted",
            RejectReason::BadRequest => "bad_request",
            RejectReason::NotFound => "not_found",
            RejectReason::NoRoute => "no_route",
            RejectReason::ContentPolicy => "content_policy",
            RejectReason::KeysUnverified => "keys_unverified",
        }
    }

    /// How an OpenAI-compatible API answers this refusal (status, error `type` and `code`),
    /// so the official SDKs raise their usual exception class. The gateway's responses and
    /// the simulator's model of them both read it here.
    pub fn openai_error(self) -> OpenAiError {
        use RejectReason as R;
        let (status, error_type, code) = match self {
            R::MissingKey => (401, "invalid_request_error", "missing_api_key"),
            // One answer for every other authentication failure: a thief learns nothing about
            // whether a key is revoked, a canary, suspended, expired or made up.
            R::MalformedKey
            | R::UnknownKey
            | R::RevokedKey
            | R::CanaryKey
            | R::SuspendedKey
            | R::ExpiredKey
            | R::NotYetValidKey => (401, "invalid_request_error", "invalid_api_key"),
            R::ModelNotAllowed => (403, "invalid_request_error", "model_not_allowed"),
            R::EndpointNotAllowed => (403, "invalid_request_error", "endpoint_not_allowed"),
            R::NetworkNotAllowed => (403, "invalid_request_error", "ip_not_allowed"),
            R::RateLimitRequests => (429, "requests", "rate_limit_exceeded"),
            R::RateLimitTokens => (429, "tokens", "rate_limit_exceeded"),
            R::ConcurrencyLimit => (429, "requests", "concurrency_limit_exceeded"),
            R::BudgetExhausted => (429, "insufficient_quota", "insufficient_quota"),
            R::BadRequest => (400, "invalid_request_error", "invalid_request"),
            R::NotFound => (404, "invalid_request_error", "unknown_url"),
            R::NoRoute => (404, "invalid_request_error", "model_not_found"),
            R::ContentPolicy => (400, "invalid_request_error", "content_policy_violation"),
            R::KeysUnverified => (503, "api_error", "service_unavailable"),
        };
        OpenAiError {
            status,
            error_type,
            code,
        }
    }
}

/// The OpenAI-shaped answer to a refusal: `{"error":{"type","code",…}}` with this status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenAiError {
    /// HTTP status.
    pub status: u16,
    /// The error body's `type`.
    pub error_type: &'static str,
    /// The error body's `code`.
    pub code: &'static str,
}

/// How a streamed response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamOutcome {
    /// The upstream finished and the client received everything.
    Completed,
    /// The client went away; the upstream request was cancelled.
    ClientDisconnected,
    /// The upstream connection broke mid-body.
    UpstreamCut,
    /// The upstream went silent longer than the idle timeout.
    IdleTimeout,
    /// The response exceeded the size cap.
    TooLarge,
    /// The gateway cut the stream because its output broke the content policy.
    ContentBlocked,
    /// The gateway cut the stream because its key was revoked while it ran.
    KeyRevoked,
    /// The gateway cut the stream because its key was suspended while it ran.
    KeySuspended,
}

/// A byte range `[start, end)` of a screened text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl From<std::ops::Range<usize>> for ByteRange {
    fn from(r: std::ops::Range<usize>) -> Self {
        ByteRange {
            start: r.start as u64,
            end: r.end as u64,
        }
    }
}

/// One content-safety finding recorded on an event (filled by the safety stage).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SafetyVerdict {
    /// Category, e.g. `sexual`, `real_person_sexual`, `jailbreak`, `roleplay_markers`.
    pub category: VerdictCategory,
    /// `allow`, `log`, `flag` or `block`.
    pub action: Action,
    /// Score in 0..=1.
    pub score: f32,
    /// `input` or `output`.
    pub stage: SafetyStage,
    /// Normalisation view the match was made in (`text`, or the trick undone: `base64`,
    /// `leet`, ...), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// Where the match was: a byte range of the screened text (the prompt, or the whole
    /// output), when a term or combination matched. Never the matched text itself: events
    /// written before this field carried `span` (up to 64 bytes of the prompt), which is
    /// still read and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<ByteRange>,
    /// The whole screened text: only when the key's profile keeps evidence and the action
    /// is `flag` or `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// External classifier that produced the score, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One request through the gateway, or one parsed cloud-log record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UsageEvent {
    /// When the request arrived.
    #[serde(rename = "@timestamp", with = "rfc3339")]
    pub timestamp: OffsetDateTime,
    /// Unique event id (UUIDv7 text: sorts by time).
    #[serde(rename = "event.id")]
    pub id: String,
    /// Where the event came from: `gateway`, or a log source name.
    #[serde(rename = "event.dataset")]
    pub dataset: String,
    /// Admission decision.
    #[serde(rename = "decision")]
    pub decision: Decision,
    /// Why it was refused, when it was.
    #[serde(
        rename = "decision.reason",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reject_reason: Option<RejectReason>,
    /// Tenant of the key, when the key was recognised.
    #[serde(rename = "tenant.id", default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Public id of the key, when one was presented in a recognisable shape.
    #[serde(rename = "key.id", default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    /// Kind of the key, when recognised.
    #[serde(rename = "key.kind", default, skip_serializing_if = "Option::is_none")]
    pub key_kind: Option<KeyKind>,
    /// Last four characters of the presented key (checksum characters, not secret).
    #[serde(rename = "key.last4", default, skip_serializing_if = "Option::is_none")]
    pub key_last4: Option<String>,
    /// Public id of a second Stormwall key (secret verified) presented in the same request —
    /// the other of `Authorization: Bearer` and `api-key` — when the request is recorded as
    /// the use of a tripwire key (`key.id`): whoever holds the tripwire likely holds it too.
    #[serde(
        rename = "key.other_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub other_key_id: Option<KeyId>,
    /// Client address (socket peer, or from trusted proxies' forwarding headers).
    #[serde(rename = "source.ip")]
    pub source_ip: IpAddr,
    /// Client port.
    #[serde(rename = "source.port", default)]
    pub source_port: u16,
    /// Autonomous system number of the client address.
    #[serde(
        rename = "source.as.number",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub source_asn: Option<u32>,
    /// Autonomous system organisation.
    #[serde(
        rename = "source.as.organization.name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub source_as_org: Option<String>,
    /// ISO 3166 country of the client address.
    #[serde(
        rename = "source.geo.country_iso_code",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub source_country: Option<String>,
    /// User agent (truncated).
    #[serde(
        rename = "user_agent.original",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub user_agent: Option<String>,
    /// Request header names in arrival order, lowercased: the client's header shape.
    #[serde(rename = "http.request.header_names", default)]
    pub header_names: Vec<String>,
    /// `Origin` header (truncated); `Some("")` when present but empty.
    #[serde(
        rename = "http.request.headers.origin",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub origin: Option<String>,
    /// `Referer` header (truncated); `Some("")` when present but empty.
    #[serde(
        rename = "http.request.headers.referer",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub referer: Option<String>,
    /// Whether any forwarding header (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`) came in.
    #[serde(rename = "http.request.forwarded", default)]
    pub forwarded: bool,
    /// The client's TLS fingerprint (JA4-style digest of its ClientHello, see
    /// docs/investigation.md), when the gateway terminated TLS itself.
    #[serde(
        rename = "tls.client.fingerprint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_fingerprint: Option<String>,
    /// HTTP method.
    #[serde(rename = "http.request.method")]
    pub method: String,
    /// Request path (no query string).
    #[serde(rename = "url.path")]
    pub path: String,
    /// Wire dialect.
    #[serde(
        rename = "api.flavor",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub flavor: Option<ApiFlavor>,
    /// Azure `api-version` query parameter.
    #[serde(
        rename = "api.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    /// Endpoint called (Stormwall's name, e.g. `chat_completions`).
    #[serde(
        rename = "api.endpoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint: Option<Endpoint>,
    /// OpenTelemetry `gen_ai.operation.name` (`chat`, `embeddings`, …) of that endpoint.
    #[serde(
        rename = "gen_ai.operation.name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub operation: Option<std::borrow::Cow<'static, str>>,
    /// Provider system (`openai`, `az.ai.openai`, `mock`).
    #[serde(
        rename = "gen_ai.system",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub system: Option<String>,
    /// Requested model (Azure: the deployment name).
    #[serde(
        rename = "gen_ai.request.model",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub model: Option<String>,
    /// Model the upstream says answered.
    #[serde(
        rename = "gen_ai.response.model",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub response_model: Option<String>,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens` as requested.
    #[serde(
        rename = "gen_ai.request.max_tokens",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tokens: Option<u64>,
    /// Whether a stream was requested.
    #[serde(rename = "gen_ai.request.stream", default)]
    pub stream: bool,
    /// End-user id the client passed (`user`, `safety_identifier`).
    #[serde(
        rename = "end_user.id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub end_user: Option<String>,
    /// Input tokens estimated at admission.
    #[serde(rename = "gen_ai.usage.estimated_input_tokens", default)]
    pub estimated_input_tokens: u64,
    /// Input tokens reported by the upstream.
    #[serde(
        rename = "gen_ai.usage.input_tokens",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub input_tokens: Option<u64>,
    /// Output tokens reported by the upstream.
    #[serde(
        rename = "gen_ai.usage.output_tokens",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub output_tokens: Option<u64>,
    /// Number of images requested (image endpoints).
    #[serde(
        rename = "gen_ai.request.images",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub images: Option<u32>,
    /// Cost in US dollars from the configured price table.
    #[serde(rename = "cost.usd", default)]
    pub cost_usd: f64,
    /// Hash of the system prompt (hex, 128 bits), never the text.
    #[serde(
        rename = "prompt.system_hash",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub system_prompt_hash: Option<String>,
    /// 64-bit SimHash of the prompt text (hex).
    #[serde(
        rename = "prompt.simhash",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prompt_simhash: Option<String>,
    /// MinHash signature of the conversation root's word shingles.
    #[serde(
        rename = "prompt.minhash",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub prompt_minhash: Vec<u32>,
    /// Characters of prompt text seen.
    #[serde(rename = "prompt.chars", default)]
    pub prompt_chars: u64,
    /// Number of chat messages (or input items).
    #[serde(rename = "prompt.messages", default)]
    pub prompt_messages: u32,
    /// Rule ids of credentials found in the request body (detector E2); never the secret.
    #[serde(
        rename = "prompt.credentials",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub prompt_credentials: Vec<String>,
    /// Rule ids of credentials found in a non-streamed response body; never the secret.
    #[serde(
        rename = "output.credentials",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub output_credentials: Vec<String>,
    /// Safety verdicts recorded for the request and its response.
    #[serde(
        rename = "content_filter",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub safety: Vec<SafetyVerdict>,
    /// Upstream that served the request.
    #[serde(
        rename = "upstream.name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream: Option<String>,
    /// Upstream's HTTP status.
    #[serde(
        rename = "upstream.status_code",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_status: Option<u16>,
    /// Milliseconds from sending upstream to its response headers.
    #[serde(
        rename = "upstream.ttfb_ms",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_ttfb_ms: Option<f64>,
    /// Status the client got.
    #[serde(rename = "http.response.status_code")]
    pub status: u16,
    /// OpenAI-style error code the client got, if any.
    #[serde(
        rename = "error.code",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub error_code: Option<String>,
    /// How a stream ended (streamed responses only).
    #[serde(
        rename = "stream.outcome",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stream_outcome: Option<StreamOutcome>,
    /// Total milliseconds from arrival to the last byte (or refusal).
    #[serde(rename = "event.duration_ms", default)]
    pub duration_ms: f64,
    /// Requests in flight on this key when this one was admitted (itself included).
    #[serde(rename = "inflight", default)]
    pub inflight: u32,
    /// Cloud-log origin: the principal (credential) and operation, for events parsed from a
    /// cloud's logs rather than seen by the gateway.
    #[serde(rename = "cloud", default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<Box<crate::cloud::CloudContext>>,
}

impl UsageEvent {
    /// Sets the endpoint and its OpenTelemetry operation name together.
    pub fn set_endpoint(&mut self, endpoint: Endpoint) {
        self.endpoint = Some(endpoint);
        self.operation = Some(std::borrow::Cow::Borrowed(endpoint.otel_operation()));
    }

    /// A blank event for a request that just arrived.
    pub fn new(
        id: String,
        timestamp: OffsetDateTime,
        source_ip: IpAddr,
        method: &str,
        path: &str,
    ) -> Self {
        Self::new_in("gateway", id, timestamp, source_ip, method, path)
    }

    /// Like [`UsageEvent::new`], for an event of another `event.dataset` (a cloud log, an
    /// import): the dataset is set once instead of replacing `gateway`.
    pub fn new_in(
        dataset: &str,
        id: String,
        timestamp: OffsetDateTime,
        source_ip: IpAddr,
        method: &str,
        path: &str,
    ) -> Self {
        Self {
            timestamp,
            id,
            dataset: dataset.to_owned(),
            decision: Decision::Allow,
            reject_reason: None,
            tenant: None,
            key_id: None,
            key_kind: None,
            key_last4: None,
            other_key_id: None,
            source_ip,
            source_port: 0,
            source_asn: None,
            source_as_org: None,
            source_country: None,
            user_agent: None,
            header_names: Vec::new(),
            origin: None,
            referer: None,
            forwarded: false,
            tls_fingerprint: None,
            method: method.to_owned(),
            path: path.to_owned(),
            flavor: None,
            api_version: None,
            endpoint: None,
            operation: None,
            system: None,
            model: None,
            response_model: None,
            max_tokens: None,
            stream: false,
            end_user: None,
            estimated_input_tokens: 0,
            input_tokens: None,
            output_tokens: None,
            images: None,
            cost_usd: 0.0,
            system_prompt_hash: None,
            prompt_simhash: None,
            prompt_minhash: Vec::new(),
            prompt_chars: 0,
            prompt_messages: 0,
            prompt_credentials: Vec::new(),
            output_credentials: Vec::new(),
            safety: Vec::new(),
            upstream: None,
            upstream_status: None,
            upstream_ttfb_ms: None,
            status: 0,
            error_code: None,
            stream_outcome: None,
            duration_ms: 0.0,
            inflight: 0,
            cloud: None,
        }
    }

    /// Marks the event refused.
    pub fn deny(&mut self, reason: RejectReason) {
        self.decision = Decision::Deny;
        self.reject_reason = Some(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_uses_otel_names() {
        let mut e = UsageEvent::new(
            "0190".into(),
            OffsetDateTime::UNIX_EPOCH,
            "127.0.0.1".parse().unwrap(),
            "POST",
            "/v1/chat/completions",
        );
        e.model = Some("gpt-4o-mini".into());
        e.deny(RejectReason::RateLimitRequests);
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.contains("\"gen_ai.request.model\":\"gpt-4o-mini\""));
        assert!(s.contains("\"decision.reason\":\"rate_limit_requests\""));
        let back: UsageEvent = serde_json::from_str(&s).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn safety_verdicts_without_evidence_fields_still_parse() {
        let old = r#"{"category":"jailbreak","action":"log","score":0.5,"stage":"input"}"#;
        let v: SafetyVerdict = serde_json::from_str(old).unwrap();
        assert_eq!(v.view, None);
        assert_eq!(serde_json::to_string(&v).unwrap(), old);
        let new = SafetyVerdict {
            view: Some("base64".into()),
            range: Some((3..9).into()),
            ..v
        };
        let back: SafetyVerdict =
            serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(back, new);
    }

    #[test]
    fn an_event_stored_before_typed_verdicts_reads_and_writes_back_the_same() {
        // Written when category, action and stage were plain strings.
        let old = r#"{"@timestamp":"2025-01-02T03:04:05Z","event.id":"0190","event.dataset":"gateway","decision":"deny","decision.reason":"content_policy","source.ip":"127.0.0.1","source.port":0,"http.request.method":"POST","url.path":"/v1/chat/completions","content_filter":[{"category":"real_person_sexual","action":"block","score":0.9,"stage":"input","view":"leet","span":"abc"},{"category":"roleplay_markers","action":"log","score":1.0,"stage":"input"},{"category":"classifier_timeout","action":"log","score":1.0,"stage":"input","source":"judge"},{"category":"classifier_error","action":"block","score":1.0,"stage":"input","source":"judge"},{"category":"Vendor/Thing","action":"flag","score":0.5,"stage":"output"}],"http.response.status_code":400}"#;
        let e: UsageEvent = serde_json::from_str(old).unwrap();
        let cats: Vec<&VerdictCategory> = e.safety.iter().map(|v| &v.category).collect();
        assert!(matches!(
            cats[..],
            [
                VerdictCategory::Content(crate::safety::Category::RealPersonSexual),
                VerdictCategory::RoleplayMarkers,
                VerdictCategory::ClassifierTimeout,
                VerdictCategory::ClassifierError,
                VerdictCategory::Other(_),
            ]
        ));
        assert_eq!(e.safety[4].category.as_str(), "Vendor/Thing");
        let actions: Vec<Action> = e.safety.iter().map(|v| v.action).collect();
        assert_eq!(
            actions,
            [
                Action::Block,
                Action::Log,
                Action::Log,
                Action::Block,
                Action::Flag
            ]
        );
        assert_eq!(e.safety[0].stage, SafetyStage::Input);
        assert_eq!(e.safety[4].stage, SafetyStage::Output);
        let mut old_value: serde_json::Value = serde_json::from_str(old).unwrap();
        let written = serde_json::to_string(&e).unwrap();
        // The legacy `span` (matched prompt text) is read and dropped, never written back.
        assert!(
            !written.contains("\"span\"") && !written.contains("abc"),
            "{written}"
        );
        if let Some(o) = old_value["content_filter"][0].as_object_mut() {
            o.remove("span");
        }
        let new_value: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(new_value["content_filter"], old_value["content_filter"]);
        assert_eq!(serde_json::from_str::<UsageEvent>(&written).unwrap(), e);
    }
}
