//! OpenAI: the organisation audit log (`GET /v1/organization/audit_logs`) and the usage
//! API's buckets (`/v1/organization/usage/*`, grouped by `api_key_id`).
//!
//! Principal: an API key is its key id (`key_…`); a console session is its user id.

use serde_json::Value;
use stormwall_types::{
    CloudContext, CloudProvider, ControlAction, ControlEvent, CredentialKind, Endpoint, Principal,
};

use crate::util::{self, derived_id, parse_ip, unix_time};
use crate::{ParseError, Record};

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn time_of(v: &Value, key: &str) -> Result<time::OffsetDateTime, ParseError> {
    match v.get(key) {
        Some(Value::Number(n)) => {
            unix_time(n.as_i64().ok_or(ParseError::Field("time", n.to_string()))?)
        }
        Some(Value::String(t)) => util::parse_time(t),
        _ => Err(ParseError::Missing("effective_at")),
    }
}

/// Parses one audit-log entry.
pub fn audit(raw: &str) -> Result<Record, ParseError> {
    let v: Value =
        serde_json::from_str(raw).map_err(|e| ParseError::Shape("OpenAI audit", e.to_string()))?;
    let kind = s(&v, &["type"])
        .ok_or(ParseError::Missing("type"))?
        .to_owned();
    let t = time_of(&v, "effective_at")?;
    let actor = v.get("actor").cloned().unwrap_or(Value::Null);
    let actor_type = s(&actor, &["type"]).unwrap_or("");
    let principal = if actor_type == "api_key" {
        let key = s(&actor, &["api_key", "id"]).unwrap_or("unknown-key");
        Principal {
            provider: CloudProvider::Openai,
            kind: CredentialKind::OpenaiApiKey,
            id: key.to_owned(),
            account: None,
            name: s(&actor, &["api_key", "user", "email"])
                .or_else(|| s(&actor, &["api_key", "service_account", "id"]))
                .map(str::to_owned),
        }
    } else {
        let user = s(&actor, &["session", "user", "id"]).unwrap_or("unknown-user");
        Principal {
            provider: CloudProvider::Openai,
            kind: CredentialKind::OpenaiSession,
            id: user.to_owned(),
            account: None,
            name: s(&actor, &["session", "user", "email"]).map(str::to_owned),
        }
    };
    let ip = s(&actor, &["session", "ip_address"]).and_then(parse_ip);
    let ua = s(&actor, &["session", "user_agent"]).map(str::to_owned);
    let payload = v.get(&kind).cloned().unwrap_or(Value::Null);
    let scopes: Vec<String> = payload
        .get("data")
        .and_then(|d| d.get("scopes"))
        .or_else(|| {
            payload
                .get("changes_requested")
                .and_then(|c| c.get("scopes"))
        })
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let action = match kind.as_str() {
        "api_key.created" | "service_account.created" => ControlAction::CreateKey,
        "api_key.updated" | "service_account.updated" => ControlAction::UpdateKey,
        "api_key.deleted" | "service_account.deleted" => ControlAction::DeleteKey,
        "login.succeeded" => ControlAction::Login,
        "login.failed" => ControlAction::LoginFailed,
        k if k.starts_with("ip_allowlist.") => ControlAction::NetworkChange,
        _ => ControlAction::Other,
    };
    let loosens = matches!(
        kind.as_str(),
        "ip_allowlist.deleted" | "ip_allowlist.config.deactivated" | "ip_allowlist.updated"
    );
    let id = s(&v, &["id"]).map_or_else(|| derived_id("oa", raw), str::to_owned);
    Ok(Record::Control(ControlEvent {
        timestamp: t,
        id,
        dataset: "openai.audit".into(),
        action,
        success: action != ControlAction::LoginFailed,
        source_ip: ip.map(|(i, _)| i),
        user_agent: ua,
        cloud: CloudContext {
            principal,
            operation: kind,
            region: s(&actor, &["session", "ip_address_details", "country"]).map(str::to_owned),
            resource: s(&v, &["project", "id"]).map(str::to_owned),
            ip_masked: false,
            ip_missing: ip.is_none(),
            error: None,
            bearer: false,
        },
        service: Some("api.openai.com".into()),
        target: s(&payload, &["id"]).map(str::to_owned),
        scopes,
        loosens,
        count: 1,
        response_bytes: None,
    }))
}

/// Parses one usage bucket: one event per result row (a key's calls to a model in the
/// bucket's minute, hour or day).
pub fn usage(raw: &str) -> Result<Vec<Record>, ParseError> {
    let v: Value =
        serde_json::from_str(raw).map_err(|e| ParseError::Shape("OpenAI usage", e.to_string()))?;
    let t = time_of(&v, "start_time")?;
    let results = v
        .get("results")
        .and_then(Value::as_array)
        .ok_or(ParseError::Missing("results"))?;
    let mut out = Vec::with_capacity(results.len());
    for (i, r) in results.iter().enumerate() {
        let object = s(r, &["object"]).unwrap_or("");
        let endpoint = if object.contains(".completions.") {
            Some(Endpoint::ChatCompletions)
        } else if object.contains(".images.") {
            Some(Endpoint::ImagesGenerations)
        } else if object.contains(".embeddings.") {
            Some(Endpoint::Embeddings)
        } else {
            None
        };
        let (kind, key) = match (s(r, &["api_key_id"]), s(r, &["project_id"])) {
            (Some(k), _) => (CredentialKind::OpenaiApiKey, k.to_owned()),
            (None, Some(p)) => (CredentialKind::OpenaiApiKey, format!("project:{p}")),
            (None, None) => (CredentialKind::OpenaiApiKey, "organization".to_owned()),
        };
        let principal = Principal {
            provider: CloudProvider::Openai,
            kind,
            id: key,
            account: s(r, &["project_id"]).map(str::to_owned),
            name: None,
        };
        let n = r
            .get("num_model_requests")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1);
        let mut e = util::usage(
            format!("{}-{i}", derived_id("oau", raw)),
            t,
            "openai.usage",
            "POST",
            "/v1/usage",
        );
        if let Some(ep) = endpoint {
            e.set_endpoint(ep);
        }
        e.system = Some("openai".into());
        e.model = s(r, &["model"]).map(str::to_owned);
        e.input_tokens = r.get("input_tokens").and_then(Value::as_u64);
        e.output_tokens = r.get("output_tokens").and_then(Value::as_u64);
        e.images = r
            .get("images")
            .and_then(Value::as_u64)
            .map(|x| u32::try_from(x).unwrap_or(u32::MAX));
        // An aggregate: its prompt size is the average; concurrency is not known.
        e.prompt_chars = e
            .input_tokens
            .map_or(util::UNSEEN_PROMPT_CHARS, |x| x * 4 / n);
        e.status = 200;
        e.tenant = principal.account.clone();
        e.key_id = Some(principal.key_id());
        e.cloud = Some(Box::new(CloudContext {
            principal,
            operation: object.to_owned(),
            region: None,
            resource: None,
            ip_masked: false,
            ip_missing: true,
            error: None,
            bearer: false,
        }));
        out.push(Record::Usage(e));
    }
    Ok(out)
}
