//! Azure: Azure OpenAI / AI Foundry diagnostic logs (`RequestResponse`, `Audit`, `Trace`),
//! API Management `GatewayLogs` in front of Azure OpenAI, and the Activity (ARM) log.
//!
//! Principal: a call made with a resource key (local auth: empty `objectId`) is the
//! resource's key — key1 and key2 cannot be told apart in these logs, so both are one
//! principal, `<resourceId>#key`; a call made with Entra ID is its `objectId`
//! (`oid:<objectId>`); an APIM call is its subscription (`<apim>#sub:<id>`).

use std::collections::HashMap;

use serde_json::Value;
use serde_json::value::RawValue;
use stormwall_types::safety::{Action, SafetyStage};
use stormwall_types::{
    ApiFlavor, CloudContext, CloudProvider, ControlAction, ControlEvent, CredentialKind, Endpoint,
    KeyId, Principal, SafetyVerdict, VerdictCategory,
};

use crate::util::{self, Text, derived_id, parse_ip, parse_time};
use crate::{ParseError, Record};

/// A field read under any of several names (diagnostic export, Log Analytics columns).
fn field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| v.get(*n))
        .filter(|x| !x.is_null())
}

fn text<'a>(v: &'a Value, names: &[&str]) -> Option<&'a str> {
    field(v, names).and_then(Value::as_str)
}

/// A number written as a number or a string.
fn number(v: &Value, names: &[&str]) -> Option<f64> {
    match field(v, names)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `properties`, whether logged as an object or as a JSON string.
fn properties(v: &Value, names: &[&str]) -> Value {
    match field(v, names) {
        Some(Value::Object(_)) => field(v, names).cloned().unwrap_or(Value::Null),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn record_time(v: &Value) -> Result<time::OffsetDateTime, ParseError> {
    parse_time(
        text(v, &["time", "TimeGenerated", "eventTimestamp", "timeStamp"])
            .ok_or(ParseError::Missing("time"))?,
    )
}

fn resource_key(resource: &str) -> Principal {
    // Built in place (every diagnostic record without an object id comes here).
    let mut id = String::with_capacity(resource.len() + 4);
    id.push_str(resource);
    id.make_ascii_lowercase();
    id.push_str("#key");
    Principal {
        provider: CloudProvider::Azure,
        kind: CredentialKind::AzureResourceKey,
        id,
        // Matched without regard to case and lower-cased: the same as on `id`.
        account: util::azure_subscription(resource),
        name: util::azure_segment(resource, "accounts"),
    }
}

/// Most resources [`resource_key_memo`] remembers before it starts over.
const RESOURCE_MEMO_MAX: usize = 4096;

thread_local! {
    static RESOURCE_MEMO: std::cell::RefCell<HashMap<String, (Principal, KeyId)>> =
        std::cell::RefCell::new(HashMap::new());
}

/// [`resource_key`] and its key id, remembered per resource id as written: every
/// diagnostic record without an object id needs them, a log repeats a few resources, and
/// building them (lower-casing a ~170-byte id, hashing it byte by byte) cost a fifth of
/// parsing the record. Both depend on the resource id alone.
fn resource_key_memo(resource: &str) -> (Principal, KeyId) {
    let build = || {
        let p = resource_key(resource);
        let k = p.key_id();
        (p, k)
    };
    RESOURCE_MEMO.with(|memo| {
        let Ok(mut memo) = memo.try_borrow_mut() else {
            return build();
        };
        if let Some(hit) = memo.get(resource) {
            return hit.clone();
        }
        if memo.len() >= RESOURCE_MEMO_MAX {
            memo.clear();
        }
        let built = build();
        memo.insert(resource.to_owned(), built.clone());
        built
    })
}

fn entra(object_id: &str, name: Option<&str>, resource: &str) -> Principal {
    Principal {
        provider: CloudProvider::Azure,
        kind: CredentialKind::AzureEntraIdentity,
        id: lower_after(&["oid:"], object_id),
        account: util::azure_subscription(resource),
        name: name.map(str::to_owned),
    }
}

/// The `prefix` parts followed by `s` lower-cased (ASCII), in one allocation.
fn lower_after(prefix: &[&str], s: &str) -> String {
    let len: usize = prefix.iter().map(|p| p.len()).sum();
    let mut out = String::with_capacity(len + s.len());
    for p in prefix {
        out.push_str(p);
    }
    out.push_str(s);
    if let Some(tail) = out.get_mut(len..) {
        tail.make_ascii_lowercase();
    }
    out
}

/// Whether `s` starts with `prefix` (lower-case ASCII), ignoring ASCII case: the same as
/// lower-casing `s` first, without the copy.
fn starts_with_lower(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

fn endpoint_of_operation(op: &str) -> Option<Endpoint> {
    let o = |prefix| starts_with_lower(op, prefix);
    Some(if o("chatcompletions") {
        Endpoint::ChatCompletions
    } else if o("completions") {
        Endpoint::Completions
    } else if o("embeddings") {
        Endpoint::Embeddings
    } else if o("imagegenerations") {
        Endpoint::ImagesGenerations
    } else if o("responses") {
        Endpoint::Responses
    } else if o("models_list") || o("deployments_list") {
        Endpoint::Models
    } else {
        return None;
    })
}

/// A diagnostic record's top level (diagnostic-setting export names, with the Log
/// Analytics `AzureDiagnostics` column names as aliases). Typed and borrowed: this is the
/// highest-volume Azure source.
///
/// `P` is how `properties` is read (in place, or captured raw when that fails).
#[derive(serde::Deserialize)]
struct Diag<'a, P> {
    #[serde(borrow, alias = "TimeGenerated")]
    time: Option<Text<'a>>,
    #[serde(
        borrow,
        rename = "resourceId",
        alias = "ResourceId",
        alias = "_ResourceId"
    )]
    resource_id: Option<Text<'a>>,
    #[serde(borrow, alias = "Category")]
    category: Option<Text<'a>>,
    #[serde(borrow, rename = "operationName", alias = "OperationName")]
    operation_name: Option<Text<'a>>,
    #[serde(
        borrow,
        rename = "callerIpAddress",
        alias = "CallerIPAddress",
        alias = "CallerIpAddress"
    )]
    caller_ip: Option<Text<'a>>,
    #[serde(borrow, rename = "correlationId", alias = "CorrelationId")]
    correlation_id: Option<Text<'a>>,
    #[serde(borrow, rename = "durationMs", alias = "DurationMs")]
    duration_ms: Option<&'a RawValue>,
    #[serde(borrow, rename = "resultSignature", alias = "ResultSignature")]
    result_signature: Option<&'a RawValue>,
    #[serde(borrow, alias = "Location")]
    location: Option<Text<'a>>,
    #[serde(alias = "properties_s", alias = "Properties")]
    properties: Option<P>,
}

/// The `properties` of a diagnostic record.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DiagProps<'a> {
    #[serde(borrow)]
    api_name: Option<Text<'a>>,
    #[serde(borrow)]
    request_length: Option<&'a RawValue>,
    #[serde(borrow)]
    response_length: Option<&'a RawValue>,
    #[serde(borrow)]
    object_id: Option<Text<'a>>,
    #[serde(borrow)]
    stream_type: Option<Text<'a>>,
    #[serde(borrow)]
    model_deployment_name: Option<Text<'a>>,
    #[serde(borrow)]
    model_name: Option<Text<'a>>,
    #[serde(borrow)]
    count: Option<&'a RawValue>,
}

/// A number written as a JSON number or a string holding one.
fn raw_number(v: Option<&RawValue>) -> Option<f64> {
    let t = v?.get().trim();
    let t = t
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(t);
    t.trim().parse().ok()
}

/// Parses one Azure OpenAI diagnostic record.
pub fn diagnostics(raw: &str) -> Result<Record, ParseError> {
    let mut holder = String::new();
    // One pass with `properties` read in place; when that fails (a bad record, or
    // properties not of the shape read), the raw reading, whose answer stands.
    type Fast<'a> = Diag<'a, util::InPlace<'a, DiagProps<'a>>>;
    if let Ok(mut v) = serde_json::from_str::<Fast<'_>>(raw) {
        let props = util::in_place(v.properties.take(), &mut holder);
        return diag_record(raw, v, props.unwrap_or_default());
    }
    diagnostics_raw(raw)
}

/// [`diagnostics`] with `properties` captured raw and read after: slower, and the reading
/// whose answers the one-pass reading keeps.
fn diagnostics_raw(raw: &str) -> Result<Record, ParseError> {
    let mut holder = String::new();
    let mut v: Diag<'_, &RawValue> = serde_json::from_str(raw)
        .map_err(|e| ParseError::Shape("Azure diagnostic", e.to_string()))?;
    let props = util::object_or_string_in(v.properties.take(), &mut holder);
    diag_record(raw, v, props.unwrap_or_default())
}

fn diag_record<P>(raw: &str, v: Diag<'_, P>, props: DiagProps<'_>) -> Result<Record, ParseError> {
    let t = parse_time(v.time.as_deref().ok_or(ParseError::Missing("time"))?)?;
    let category = v
        .category
        .as_deref()
        .ok_or(ParseError::Missing("category"))?;
    let op = v.operation_name.as_deref().unwrap_or("");
    let resource = v.resource_id.as_deref().unwrap_or("");
    let ip = v.caller_ip.as_deref().and_then(parse_ip);
    let id = v
        .correlation_id
        .as_deref()
        .map(|c| lower_after(&["az-", c, "-"], op))
        .unwrap_or_else(|| derived_id("az", raw));
    let object_id = props.object_id.as_deref().filter(|s| !s.is_empty());
    let status = raw_number(v.result_signature).map_or(200, |s| s.clamp(0.0, 999.0) as u16);
    let region = v.location.as_deref().map(str::to_owned);
    if category.eq_ignore_ascii_case("RequestResponse") {
        let (principal, key) = match object_id {
            Some(oid) => {
                let p = entra(oid, None, resource);
                let k = p.key_id();
                (p, k)
            }
            None => resource_key_memo(resource),
        };
        let ep = endpoint_of_operation(op);
        let mut e = util::usage(id, t, "azure.openai", "POST", "/openai/deployments");
        if let Some(ep) = ep {
            e.set_endpoint(ep);
        }
        if let Some((ip, _)) = ip {
            e.source_ip = ip;
        }
        e.flavor = Some(ApiFlavor::Azure);
        e.system = Some("az.ai.openai".into());
        e.model = props.model_deployment_name.as_deref().map(str::to_owned);
        e.response_model = props.model_name.as_deref().map(str::to_owned);
        e.api_version = props
            .api_name
            .as_deref()
            .and_then(|a| a.rsplit(' ').next())
            .filter(|s| s.starts_with("20"))
            .map(str::to_owned);
        e.stream = props
            .stream_type
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("Streaming"));
        e.status = status;
        e.upstream_status = Some(status);
        // Negative durations are logged (clock skew between stages): treat as unknown.
        e.duration_ms = raw_number(v.duration_ms).map_or(0.0, |d| d.max(0.0));
        let req_len = raw_number(props.request_length).map_or(0, |n| n.max(0.0) as u64);
        // Request bytes stand in for the prompt, which is not logged.
        e.prompt_chars = if status == 400 && req_len < 64 {
            0
        } else if req_len == 0 {
            util::UNSEEN_PROMPT_CHARS
        } else {
            req_len
        };
        e.estimated_input_tokens = req_len / 4;
        e.tenant = principal.account.clone();
        e.key_id = Some(key);
        e.cloud = Some(Box::new(CloudContext {
            principal,
            operation: op.to_owned(),
            region,
            resource: Some(resource.to_owned()),
            ip_masked: ip.is_some_and(|(_, m)| m),
            ip_missing: ip.is_none(),
            error: (status >= 400).then(|| status.to_string()),
            bearer: false,
        }));
        return Ok(Record::Usage(e));
    }
    // Audit, Trace and anything else: management records.
    let action = match op.to_ascii_lowercase().as_str() {
        "listkey" | "listkeys" => ControlAction::ListKeys,
        "regeneratekey" | "regeneratekeys" => ControlAction::RegenerateKey,
        _ => ControlAction::Other,
    };
    let principal = match object_id {
        Some(oid) => entra(oid, None, resource),
        None => resource_key(resource),
    };
    Ok(Record::Control(ControlEvent {
        timestamp: t,
        id,
        dataset: "azure.openai".into(),
        action,
        success: status < 400,
        source_ip: ip.map(|(ip, _)| ip),
        user_agent: None,
        cloud: CloudContext {
            principal,
            operation: format!("{category}/{op}"),
            region,
            resource: Some(resource.to_owned()),
            ip_masked: ip.is_some_and(|(_, m)| m),
            ip_missing: ip.is_none(),
            error: None,
            bearer: false,
        },
        service: Some("Microsoft.CognitiveServices".into()),
        target: None,
        scopes: Vec::new(),
        loosens: false,
        count: raw_number(props.count).map_or(1, |c| c.clamp(1.0, 1e9) as u32),
        response_bytes: raw_number(props.response_length).map(|n| n.max(0.0) as u64),
    }))
}

/// A JSON body logged as an object or as a string holding JSON.
fn body(v: Option<&Value>) -> Option<Value> {
    match v? {
        Value::String(s) => serde_json::from_str(s).ok(),
        o @ Value::Object(_) => Some(o.clone()),
        _ => None,
    }
}

/// Parses one API Management gateway-log record (diagnostic export or
/// `ApiManagementGatewayLogs` columns).
pub fn apim(raw: &str) -> Result<Record, ParseError> {
    let v: Value =
        serde_json::from_str(raw).map_err(|e| ParseError::Shape("APIM", e.to_string()))?;
    let t = record_time(&v)?;
    let props = properties(&v, &["properties"]);
    // Properties (diagnostic export) or top-level columns (resource-specific table).
    let p = |names: &[&str]| -> Option<Value> {
        field(&props, names).or_else(|| field(&v, names)).cloned()
    };
    let ps = |names: &[&str]| p(names).and_then(|x| x.as_str().map(str::to_owned));
    let apim_resource = text(&v, &["resourceId", "_ResourceId", "ResourceId"]).unwrap_or("");
    let url = ps(&["url", "Url"]).unwrap_or_default();
    let backend = ps(&["backendUrl", "BackendUrl"]).unwrap_or_default();
    let path_of = |u: &str| {
        let no_query = u.split('?').next().unwrap_or(u);
        match no_query.find("://") {
            Some(i) => no_query
                .get(i + 3..)
                .and_then(|r| r.find('/').and_then(|j| r.get(j..)))
                .unwrap_or("/")
                .to_owned(),
            None => no_query.to_owned(),
        }
    };
    let path = path_of(if backend.is_empty() { &url } else { &backend });
    let api_version = url
        .split_once("api-version=")
        .or_else(|| backend.split_once("api-version="))
        .map(|(_, r)| r.split('&').next().unwrap_or(r).to_owned());
    let sub = ps(&["apimSubscriptionId", "ApimSubscriptionId", "subscriptionId"]);
    let principal = Principal {
        provider: CloudProvider::Azure,
        kind: CredentialKind::AzureApimSubscription,
        id: format!(
            "{}#sub:{}",
            apim_resource.to_ascii_lowercase(),
            sub.clone()
                .or_else(|| ps(&["productId", "ProductId"]))
                .unwrap_or_else(|| "anonymous".into())
        ),
        account: util::azure_subscription(apim_resource),
        name: sub.clone(),
    };
    let id = text(&v, &["correlationId", "CorrelationId"])
        .map(|c| format!("apim-{c}"))
        .unwrap_or_else(|| derived_id("apim", raw));
    let method = ps(&["method", "Method"]).unwrap_or_else(|| "POST".into());
    let mut e = util::usage(id, t, "azure.apim", &method, &path);
    let ip = ps(&["callerIpAddress", "CallerIpAddress"])
        .as_deref()
        .and_then(parse_ip);
    if let Some((ip, _)) = ip {
        e.source_ip = ip;
    }
    let lower = path.to_ascii_lowercase();
    let ep = if lower.ends_with("/chat/completions") {
        Some(Endpoint::ChatCompletions)
    } else if lower.ends_with("/completions") {
        Some(Endpoint::Completions)
    } else if lower.ends_with("/embeddings") {
        Some(Endpoint::Embeddings)
    } else if lower.ends_with("/images/generations") {
        Some(Endpoint::ImagesGenerations)
    } else if lower.ends_with("/responses") {
        Some(Endpoint::Responses)
    } else if lower.ends_with("/models") || lower.ends_with("/deployments") {
        Some(Endpoint::Models)
    } else {
        None
    };
    if let Some(ep) = ep {
        e.set_endpoint(ep);
    }
    e.flavor = Some(ApiFlavor::Azure);
    e.system = Some("az.ai.openai".into());
    e.api_version = api_version;
    e.model = util::azure_segment(&path, "deployments");
    let status = p(&["responseCode", "ResponseCode"])
        .and_then(|x| {
            x.as_f64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        })
        .map_or(200, |s| s.clamp(0.0, 999.0) as u16);
    e.status = status;
    e.upstream_status = p(&["backendResponseCode", "BackendResponseCode"])
        .and_then(|x| x.as_f64())
        .map(|s| s.clamp(0.0, 999.0) as u16);
    e.duration_ms = number(&v, &["durationMs", "TotalTime"]).map_or(0.0, |d| d.max(0.0));
    let req = body(p(&["backendRequestBody", "BackendRequestBody", "requestBody"]).as_ref());
    let resp = body(
        p(&[
            "backendResponseBody",
            "BackendResponseBody",
            "responseBody",
            "ResponseBody",
        ])
        .as_ref(),
    );
    e.prompt_chars = util::UNSEEN_PROMPT_CHARS;
    if let Some(req) = &req {
        let mut chars = 0u64;
        let mut sys = String::new();
        let mut roleplay = false;
        if let Some(msgs) = req.get("messages").and_then(Value::as_array) {
            e.prompt_messages = u32::try_from(msgs.len()).unwrap_or(u32::MAX);
            for m in msgs {
                let content = match m.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|x| x.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(" "),
                    _ => String::new(),
                };
                chars += content.chars().count() as u64;
                roleplay |= content.contains("{{char}}") || content.contains("{{user}}");
                if m.get("role").and_then(Value::as_str) == Some("system") {
                    sys.push_str(&content);
                }
            }
        } else if let Some(pr) = req.get("prompt").and_then(Value::as_str) {
            chars = pr.chars().count() as u64;
        }
        e.prompt_chars = chars;
        e.system_prompt_hash = (!sys.is_empty()).then(|| util::hash128(&sys));
        e.max_tokens = ["max_tokens", "max_completion_tokens"]
            .iter()
            .find_map(|k| req.get(k).and_then(Value::as_u64));
        e.stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
        e.end_user = req.get("user").and_then(Value::as_str).map(str::to_owned);
        if roleplay {
            e.safety.push(verdict(
                VerdictCategory::RoleplayMarkers,
                Action::Log,
                SafetyStage::Input,
            ));
        }
    }
    if let Some(resp) = &resp {
        if let Some(u) = resp.get("usage") {
            e.input_tokens = u.get("prompt_tokens").and_then(Value::as_u64);
            e.output_tokens = u.get("completion_tokens").and_then(Value::as_u64);
        }
        e.response_model = resp.get("model").and_then(Value::as_str).map(str::to_owned);
        let err = resp.get("error");
        let code = err.and_then(|x| x.get("code")).and_then(Value::as_str);
        let inner = err
            .and_then(|x| x.get("innererror"))
            .and_then(|x| x.get("code"))
            .and_then(Value::as_str);
        if code == Some("content_filter") || inner == Some("ResponsibleAIPolicyViolation") {
            e.error_code = Some("content_filter".into());
        } else if let Some(c) = code {
            e.error_code = Some(c.to_owned());
        }
        let filtered = |v: Option<&Value>| {
            v.and_then(Value::as_object).is_some_and(|cats| {
                cats.values()
                    .any(|c| c.get("filtered").and_then(Value::as_bool) == Some(true))
            })
        };
        let prompt_hit = resp
            .get("prompt_filter_results")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|r| filtered(r.get("content_filter_results"))));
        let output_hit = resp
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|r| filtered(r.get("content_filter_results"))));
        if prompt_hit {
            e.safety.push(verdict(
                VerdictCategory::Other("azure_content_filter".into()),
                Action::Block,
                SafetyStage::Input,
            ));
        }
        if output_hit {
            e.safety.push(verdict(
                VerdictCategory::Other("azure_content_filter".into()),
                Action::Block,
                SafetyStage::Output,
            ));
        }
    }
    e.tenant = principal.account.clone();
    e.key_id = Some(principal.key_id());
    e.cloud = Some(Box::new(CloudContext {
        principal,
        operation: ps(&["operationId", "OperationId"]).unwrap_or_else(|| "GatewayLogs".into()),
        region: text(&v, &["location", "Region"]).map(str::to_owned),
        resource: Some(backend),
        ip_masked: ip.is_some_and(|(_, m)| m),
        ip_missing: ip.is_none(),
        error: e.error_code.clone(),
        bearer: false,
    }));
    Ok(Record::Usage(e))
}

fn verdict(category: VerdictCategory, action: Action, stage: SafetyStage) -> SafetyVerdict {
    SafetyVerdict {
        category,
        action,
        score: 1.0,
        stage,
        view: None,
        range: None,
        evidence: None,
        source: Some("azure_content_filter".into()),
    }
}

const OID: &str = "http://schemas.microsoft.com/identity/claims/objectidentifier";
const UPN: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn";
const NAME: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name";

/// Parses one Azure Activity (ARM) record, from a diagnostic export or the REST API.
pub fn activity(raw: &str) -> Result<Record, ParseError> {
    let v: Value = serde_json::from_str(raw)
        .map_err(|e| ParseError::Shape("Azure Activity", e.to_string()))?;
    let t = record_time(&v)?;
    let op = match field(&v, &["operationName", "OperationNameValue"]) {
        Some(Value::String(s)) => s.clone(),
        Some(o @ Value::Object(_)) => o
            .get("value")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        _ => return Err(ParseError::Missing("operationName")),
    };
    let upper = op.to_ascii_uppercase();
    let resource = text(&v, &["resourceId", "ResourceId", "_ResourceId"]).unwrap_or("");
    let claims = field(&v, &["claims"])
        .or_else(|| v.get("identity").and_then(|i| i.get("claims")))
        .cloned()
        .unwrap_or(Value::Null);
    let claims = match claims {
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
        c => c,
    };
    let caller = text(&v, &["caller", "Caller"]);
    let oid = text(&claims, &[OID, "oid"]);
    let name = text(&claims, &[UPN, NAME, "appid"]).or(caller);
    let principal = match (oid, caller) {
        (Some(o), _) => entra(o, name, resource),
        (None, Some(c)) => entra(c, name, resource),
        (None, None) => Principal {
            provider: CloudProvider::Azure,
            kind: CredentialKind::AzureEntraIdentity,
            id: "unknown-caller".into(),
            account: util::azure_subscription(resource),
            name: None,
        },
    };
    let ip = text(&v, &["callerIpAddress", "CallerIpAddress"])
        .or_else(|| {
            v.get("httpRequest")
                .and_then(|h| text(h, &["clientIpAddress"]))
        })
        .or_else(|| text(&claims, &["ipaddr"]))
        .and_then(parse_ip);
    let status = text(&v, &["resultType", "ActivityStatusValue"])
        .or_else(|| v.get("status").and_then(|s| text(s, &["value"])))
        .unwrap_or("Succeeded");
    let success = !status.to_ascii_lowercase().starts_with("fail");
    let props = properties(&v, &["properties", "Properties"]);
    let request_body = props
        .get("requestbody")
        .or_else(|| props.get("requestBody"))
        .map(|b| match b {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    let compact: String = request_body
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let mut loosens = false;
    let action = if upper.ends_with("/LISTKEYS/ACTION") {
        ControlAction::ListKeys
    } else if upper.ends_with("/REGENERATEKEY/ACTION") {
        ControlAction::RegenerateKey
    } else if upper.contains("/RAIPOLICIES/") || upper.contains("/RAIBLOCKLISTS/") {
        if upper.ends_with("/DELETE") {
            ControlAction::GuardrailDelete
        } else {
            loosens =
                compact.contains("\"blocking\":false") || compact.contains("\"enabled\":false");
            ControlAction::GuardrailUpdate
        }
    } else if upper.starts_with("MICROSOFT.INSIGHTS/DIAGNOSTICSETTINGS/DELETE") {
        ControlAction::DeleteLogging
    } else if upper.starts_with("MICROSOFT.INSIGHTS/DIAGNOSTICSETTINGS/WRITE") {
        ControlAction::PutLoggingConfig
    } else if upper.contains("/DEPLOYMENTS/WRITE") && upper.contains("COGNITIVESERVICES") {
        ControlAction::DeploymentWrite
    } else if upper.ends_with("COGNITIVESERVICES/ACCOUNTS/WRITE")
        || upper.contains("/NETWORKRULESETS/")
        || upper.contains("/PRIVATEENDPOINTCONNECTIONS/")
    {
        let public = compact.contains("\"publicnetworkaccess\":\"enabled\"");
        let allow = compact.contains("\"defaultaction\":\"allow\"");
        let local = compact.contains("\"disablelocalauth\":false");
        loosens = public || allow || local;
        if local && !(public || allow) {
            ControlAction::LocalAuthChange
        } else if loosens || compact.contains("networkacls") || upper.contains("/NETWORK") {
            ControlAction::NetworkChange
        } else {
            ControlAction::Other
        }
    } else {
        ControlAction::Other
    };
    let id = text(&v, &["eventDataId", "correlationId", "CorrelationId"])
        .map(|c| {
            format!(
                "arm-{c}-{}-{}",
                status.to_ascii_lowercase(),
                t.unix_timestamp()
            )
        })
        .unwrap_or_else(|| derived_id("arm", raw));
    Ok(Record::Control(ControlEvent {
        timestamp: t,
        id,
        dataset: "azure.activity".into(),
        action,
        success,
        source_ip: ip.map(|(ip, _)| ip),
        user_agent: None,
        cloud: CloudContext {
            principal,
            operation: op,
            region: text(&v, &["location"]).map(str::to_owned),
            resource: Some(resource.to_owned()),
            ip_masked: ip.is_some_and(|(_, m)| m),
            ip_missing: ip.is_none(),
            error: (!success).then(|| status.to_owned()),
            bearer: false,
        },
        service: Some("Microsoft.Resources".into()),
        target: None,
        scopes: Vec::new(),
        loosens,
        count: 1,
        response_bytes: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_resource_keys_are_the_ones_built() {
        let a = "/SUBSCRIPTIONS/00000000-1111-2222-3333-444444444444/RESOURCEGROUPS/RG-AI/PROVIDERS/MICROSOFT.COGNITIVESERVICES/ACCOUNTS/ACCT-1";
        let b = "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg-ai/providers/Microsoft.CognitiveServices/accounts/acct-2";
        for _ in 0..3 {
            for r in [a, b, "", "no-subscription-here"] {
                let (p, k) = resource_key_memo(r);
                let built = resource_key(r);
                assert_eq!(k, built.key_id());
                assert_eq!(p, built);
            }
        }
        let p = resource_key(a);
        assert_eq!(p.id, format!("{}#key", a.to_ascii_lowercase()));
        assert_eq!(
            p.account.as_deref(),
            Some("00000000-1111-2222-3333-444444444444")
        );
        assert_eq!(p.name.as_deref(), Some("ACCT-1"));
    }

    #[test]
    fn operations_and_ids_ignore_case_as_lower_casing_did() {
        let lower = |op: &str| {
            let o = op.to_ascii_lowercase();
            [
                "chatcompletions",
                "completions",
                "embeddings",
                "imagegenerations",
                "responses",
                "models_list",
                "deployments_list",
            ]
            .iter()
            .position(|p| o.starts_with(p))
        };
        for op in [
            "ChatCompletions_Create",
            "CHATCOMPLETIONS",
            "Completions_Create",
            "Embeddings_Create",
            "ImageGenerations_Create",
            "Responses_Create",
            "Models_List",
            "Deployments_List",
            "ListKey",
            "",
            "Chat",
            "ÉChatCompletions",
        ] {
            assert_eq!(
                endpoint_of_operation(op).is_some(),
                lower(op).is_some(),
                "{op:?}"
            );
        }
        assert_eq!(
            lower_after(&["az-", "AbC-1", "-"], "ChatCompletions_Create"),
            format!("az-AbC-1-{}", "ChatCompletions_Create".to_ascii_lowercase())
        );
        assert_eq!(lower_after(&["oid:"], "ABC-déf"), "oid:abc-déf");
    }

    /// Awkward `properties`: the one-pass reading answers as the raw reading does.
    #[test]
    fn in_place_properties_answer_as_raw_capture() {
        let props = [
            r#"{"modelDeploymentName":"d","modelName":"gpt-4o","requestLength":12,"streamType":"Streaming"}"#,
            r#"{"objectId":"00000000-0000-0000-0000-000000000001","apiName":"Azure OpenAI API version 2024-06-01"}"#,
            r#""{\"modelDeploymentName\":\"d2\",\"requestLength\":\"40\"}""#,
            r#""{\"modelName\":7}""#,
            r#""[\"api\",1,2,\"oid\"]""#,
            r#""not json""#,
            r#""""#,
            r#"{"modelName":7,"modelDeploymentName":"d"}"#,
            r#"{"modelName":"a","modelName":"b"}"#,
            r#"{"count":{"x":1},"responseLength":[1]}"#,
            r#"{"objectId":["x"]}"#,
            r#"{"modelName":"caf\u00e9"}"#,
            r#"["d"]"#,
            "null",
            "false",
            "3.5",
            "{}",
        ];
        let heads = [
            r#""category":"RequestResponse","operationName":"ChatCompletions_Create""#,
            r#""Category":"Audit","OperationName":"ListKey""#,
        ];
        for p in props {
            for h in heads {
                for key in ["properties", "properties_s", "Properties"] {
                    let text = format!(
                        r#"{{"time":"2025-02-03T00:00:00Z","resourceId":"/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.COGNITIVESERVICES/ACCOUNTS/A",{h},"callerIpAddress":"198.51.100.***","correlationId":"c1","resultSignature":"200","{key}":{p}}}"#
                    );
                    assert_eq!(diagnostics(&text), diagnostics_raw(&text), "{text}");
                }
            }
        }
        // Whole-record failures (a duplicate under an alias included) keep the raw error.
        for bad in [
            "{",
            "[]",
            r#"{"time":1}"#,
            r#"{"properties":{},"Properties":{}}"#,
            r#"{"time":"2025-02-03T00:00:00Z","category":"RequestResponse","properties":{"modelName":1}"#,
        ] {
            assert_eq!(diagnostics(bad), diagnostics_raw(bad), "{bad}");
        }
    }
}
