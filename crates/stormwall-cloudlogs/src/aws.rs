//! AWS: CloudTrail records (Bedrock management and data events, IAM credential calls, and
//! anything else a trail holds, kept as generic events) and Bedrock model-invocation logs.
//!
//! Principal: a long-lived access key (`AKIA…`) is itself the key; temporary credentials
//! (`ASIA…`) are grouped by role session ARN (each session gets new keys); a Bedrock API key
//! (bearer token) by its IAM user or access key id.

use serde::Deserialize;
use serde_json::value::RawValue;
use stormwall_types::{
    CloudContext, CloudProvider, ControlAction, ControlEvent, CredentialKind, Endpoint, Principal,
    SafetyVerdict, VerdictCategory,
    safety::{Action, SafetyStage},
};

use crate::util::{self, Text, UNSEEN_PROMPT_CHARS, derived_id, parse_ip, parse_time};
use crate::{ParseError, Record};

/// A CloudTrail record; `P` and `X` are how `requestParameters` and `additionalEventData`
/// are read (in place, or captured raw when the in-place reading fails).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Trail<'a, P, X> {
    #[serde(borrow)]
    event_time: Option<Text<'a>>,
    #[serde(borrow)]
    event_source: Option<Text<'a>>,
    #[serde(borrow)]
    event_name: Option<Text<'a>>,
    #[serde(borrow)]
    aws_region: Option<Text<'a>>,
    #[serde(rename = "sourceIPAddress", borrow)]
    source_ip_address: Option<Text<'a>>,
    #[serde(borrow)]
    user_agent: Option<Text<'a>>,
    #[serde(borrow)]
    user_identity: Option<Identity<'a>>,
    request_parameters: Option<P>,
    additional_event_data: Option<X>,
    #[serde(borrow)]
    error_code: Option<Text<'a>>,
    #[serde(rename = "eventID", borrow)]
    event_id: Option<Text<'a>>,
    #[serde(borrow)]
    recipient_account_id: Option<Text<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Identity<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    arn: Option<Text<'a>>,
    #[serde(borrow)]
    account_id: Option<Text<'a>>,
    #[serde(borrow)]
    access_key_id: Option<Text<'a>>,
    #[serde(borrow)]
    principal_id: Option<Text<'a>>,
    #[serde(borrow)]
    user_name: Option<Text<'a>>,
    #[serde(borrow)]
    session_context: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Params<'a> {
    #[serde(borrow)]
    model_id: Option<Text<'a>>,
    #[serde(borrow)]
    user_name: Option<Text<'a>>,
    #[serde(borrow)]
    guardrail_identifier: Option<Text<'a>>,
    // Read only for a logging change: most records never look inside.
    #[serde(default, borrow)]
    logging_config: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Extra<'a> {
    // `true`, or `"true"` in some trails.
    #[serde(default, borrow)]
    call_with_bearer_token: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SessionContext {
    session_issuer: Option<Issuer>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Issuer {
    arn: Option<String>,
    user_name: Option<String>,
}

/// The principal a CloudTrail identity stands for.
fn trail_principal(id: &Identity<'_>, bearer: bool, account: Option<&str>) -> Principal {
    let key = id.access_key_id.as_deref().unwrap_or("");
    let arn = id.arn.as_deref();
    let user = id.user_name.as_deref().unwrap_or("");
    let account = id.account_id.as_deref().or(account).map(str::to_owned);
    let phantom =
        user.starts_with("BedrockAPIKey-") || arn.is_some_and(|a| a.contains("/BedrockAPIKey-"));
    let (kind, ident) = if bearer || phantom {
        let ident = if key.is_empty() {
            arn.unwrap_or(user).to_owned()
        } else {
            key.to_owned()
        };
        (CredentialKind::AwsBedrockApiKey, ident)
    } else if key.starts_with("AKIA") {
        (CredentialKind::AwsLongTermKey, key.to_owned())
    } else if key.starts_with("ASIA") {
        // A session's keys change each time: the role session ARN is the stable handle.
        (
            CredentialKind::AwsSessionKey,
            arn.map_or_else(|| key.to_owned(), str::to_owned),
        )
    } else {
        let ident = arn
            .map(str::to_owned)
            .or_else(|| id.principal_id.as_deref().map(str::to_owned))
            .or_else(|| id.kind.as_deref().map(|k| format!("type:{k}")))
            .unwrap_or_else(|| "unknown".to_owned());
        (CredentialKind::AwsPrincipal, ident)
    };
    let name = match kind {
        CredentialKind::AwsSessionKey => {
            util::object_or_string::<SessionContext>(id.session_context)
                .and_then(|s| s.session_issuer)
                .and_then(|i| i.arn.or(i.user_name))
                .or_else(|| arn.map(str::to_owned))
        }
        _ => arn.map(str::to_owned),
    };
    Principal {
        provider: CloudProvider::Aws,
        kind,
        id: ident,
        account,
        name,
    }
}

/// HTTP status an AWS error code corresponds to (for the data-plane detectors).
pub fn status_of(error: Option<&str>) -> u16 {
    match error {
        None | Some("") => 200,
        Some(e) => {
            let e = e.trim_end_matches("Exception");
            match e {
                "AccessDenied" | "UnauthorizedOperation" | "Forbidden" => 403,
                "Validation" | "MalformedInput" | "InvalidRequest" => 400,
                "Throttling" | "ServiceQuotaExceeded" | "TooManyRequests" => 429,
                "ResourceNotFound" | "ModelNotReady" => 404,
                "UnrecognizedClient" | "InvalidClientTokenId" | "ExpiredToken" => 401,
                _ => 500,
            }
        }
    }
}

fn action_of(source: &str, name: &str) -> ControlAction {
    use ControlAction as A;
    match name {
        "GetModelInvocationLoggingConfiguration" => A::GetLoggingConfig,
        "PutModelInvocationLoggingConfiguration" => A::PutLoggingConfig,
        "DeleteModelInvocationLoggingConfiguration" | "DeleteTrail" | "StopLogging" => {
            A::DeleteLogging
        }
        "PutUseCaseForModelAccess" => A::ModelUseCase,
        "ListFoundationModelAgreementOffers" => A::ListAgreementOffers,
        "CreateFoundationModelAgreement" => A::ModelAgreement,
        "PutFoundationModelEntitlement" => A::ModelEntitlement,
        "GetFoundationModelAvailability" => A::ModelAvailability,
        "CreateGuardrail" => A::GuardrailCreate,
        "UpdateGuardrail" | "CreateGuardrailVersion" => A::GuardrailUpdate,
        "DeleteGuardrail" => A::GuardrailDelete,
        "CreateAccessKey" | "CreateLoginProfile" | "CreateServiceSpecificCredential"
            if source.starts_with("iam.") =>
        {
            A::CreateKey
        }
        "UpdateAccessKey" | "UpdateServiceSpecificCredential" | "UpdateLoginProfile"
            if source.starts_with("iam.") =>
        {
            A::UpdateKey
        }
        "DeleteAccessKey" | "DeleteServiceSpecificCredential" | "DeleteLoginProfile"
            if source.starts_with("iam.") =>
        {
            A::DeleteKey
        }
        "ConsoleLogin" => A::Login,
        _ => A::Other,
    }
}

fn is_invocation(name: &str) -> bool {
    matches!(
        name,
        "InvokeModel"
            | "InvokeModelWithResponseStream"
            | "Converse"
            | "ConverseStream"
            | "InvokeModelWithBidirectionalStream"
            | "StartAsyncInvoke"
    )
}

/// Parses one CloudTrail record.
pub fn cloudtrail(text: &str) -> Result<Record, ParseError> {
    let mut params_holder = String::new();
    let mut extra_holder = String::new();
    // One pass with the two nested objects read in place; when that fails (a bad record,
    // or a nested object that is not the shape read), the raw reading, whose answer
    // (default parameters, or the record's error) stands.
    type Fast<'a> = Trail<'a, util::InPlace<'a, Params<'a>>, util::InPlace<'a, Extra<'a>>>;
    if let Ok(mut r) = serde_json::from_str::<Fast<'_>>(text) {
        let params = util::in_place(r.request_parameters.take(), &mut params_holder);
        let extra = util::in_place(r.additional_event_data.take(), &mut extra_holder);
        return trail_record(
            text,
            r,
            params.unwrap_or_default(),
            extra.unwrap_or_default(),
        );
    }
    cloudtrail_raw(text)
}

/// [`cloudtrail`] with the nested objects captured raw and read after: slower, and the
/// reading whose answers the one-pass reading keeps.
fn cloudtrail_raw(text: &str) -> Result<Record, ParseError> {
    let mut params_holder = String::new();
    let mut extra_holder = String::new();
    let mut r: Trail<'_, &RawValue, &RawValue> =
        serde_json::from_str(text).map_err(|e| ParseError::Shape("CloudTrail", e.to_string()))?;
    let params = util::object_or_string_in(r.request_parameters.take(), &mut params_holder);
    let extra = util::object_or_string_in(r.additional_event_data.take(), &mut extra_holder);
    trail_record(
        text,
        r,
        params.unwrap_or_default(),
        extra.unwrap_or_default(),
    )
}

fn trail_record<P, X>(
    text: &str,
    r: Trail<'_, P, X>,
    params: Params<'_>,
    extra: Extra<'_>,
) -> Result<Record, ParseError> {
    let time = parse_time(
        r.event_time
            .as_deref()
            .ok_or(ParseError::Missing("eventTime"))?,
    )?;
    let source = r
        .event_source
        .as_deref()
        .ok_or(ParseError::Missing("eventSource"))?;
    let name = r
        .event_name
        .as_deref()
        .ok_or(ParseError::Missing("eventName"))?;
    let id = r
        .event_id
        .as_deref()
        .map_or_else(|| derived_id("ct", text), str::to_owned);
    let bearer = extra.call_with_bearer_token.is_some_and(|v| {
        let t = v.get().trim();
        t == "true" || t.eq_ignore_ascii_case("\"true\"")
    });
    let identity = r.user_identity.unwrap_or_default();
    let principal = trail_principal(&identity, bearer, r.recipient_account_id.as_deref());
    let ip = r.source_ip_address.as_deref().and_then(parse_ip);
    let error = r.error_code.as_deref().filter(|e| !e.is_empty());
    let cloud = CloudContext {
        principal,
        operation: name.to_owned(),
        region: r.aws_region.as_deref().map(str::to_owned),
        resource: params
            .model_id
            .as_deref()
            .or(params.guardrail_identifier.as_deref())
            .map(str::to_owned),
        ip_masked: false,
        ip_missing: ip.is_none(),
        error: error.map(str::to_owned),
        bearer,
    };
    let bedrock = source == "bedrock.amazonaws.com";
    let ua = r.user_agent.as_deref().map(|u| truncate(u, 256));
    if bedrock && (is_invocation(name) || name == "ListFoundationModels") {
        let listing = name == "ListFoundationModels";
        let mut e = util::usage(
            id,
            time,
            "aws.cloudtrail",
            if listing { "GET" } else { "POST" },
            if listing {
                "/foundation-models"
            } else {
                "/model/invoke"
            },
        );
        if let Some((ip, _)) = ip {
            e.source_ip = ip;
        }
        e.user_agent = ua;
        e.system = Some("aws.bedrock".to_owned());
        let status = status_of(error);
        e.status = status;
        e.upstream_status = Some(status);
        e.error_code = error.map(str::to_owned);
        if listing {
            e.set_endpoint(Endpoint::Models);
        } else {
            let model = params.model_id.as_deref().unwrap_or_default().to_owned();
            e.set_endpoint(util::endpoint_for_model(&model));
            e.model = (!model.is_empty()).then_some(model);
            e.stream = name.contains("Stream");
            // CloudTrail logs no prompt: a malformed-input refusal is the only probe it shows.
            e.prompt_chars = if status == 400 {
                0
            } else {
                UNSEEN_PROMPT_CHARS
            };
            e.estimated_input_tokens = e.prompt_chars / 4;
        }
        e.tenant = cloud.principal.account.clone();
        e.key_id = Some(cloud.principal.key_id());
        e.cloud = Some(Box::new(cloud));
        return Ok(Record::Usage(e));
    }
    let action = action_of(source, name);
    let target = params.user_name.as_deref().map(str::to_owned);
    let loosens = matches!(action, ControlAction::PutLoggingConfig)
        && params
            .logging_config
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c.get()).ok())
            .is_some_and(|c| {
                // Delivery switched off for text: the record says what stops being logged.
                c.get("textDataDeliveryEnabled") == Some(&serde_json::Value::Bool(false))
            });
    Ok(Record::Control(ControlEvent {
        timestamp: time,
        id,
        dataset: "aws.cloudtrail".to_owned(),
        action,
        success: error.is_none(),
        source_ip: ip.map(|(ip, _)| ip),
        user_agent: ua,
        cloud,
        service: Some(source.to_owned()),
        target,
        scopes: Vec::new(),
        loosens,
        count: 1,
        response_bytes: None,
    }))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("").to_owned()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Invocation {
    schema_type: Option<String>,
    timestamp: Option<String>,
    account_id: Option<String>,
    identity: Option<InvIdentity>,
    region: Option<String>,
    request_id: Option<String>,
    operation: Option<String>,
    model_id: Option<String>,
    input: Option<InvInput>,
    output: Option<InvOutput>,
    error_code: Option<String>,
}

#[derive(Deserialize)]
struct InvIdentity {
    arn: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvInput {
    input_body_json: Option<serde_json::Value>,
    input_token_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvOutput {
    output_body_json: Option<serde_json::Value>,
    output_token_count: Option<u64>,
}

/// Parses one Bedrock model-invocation log record.
pub fn invocation(text: &str) -> Result<Record, ParseError> {
    let r: Invocation = serde_json::from_str(text)
        .map_err(|e| ParseError::Shape("Bedrock invocation log", e.to_string()))?;
    if r.schema_type.as_deref() != Some("ModelInvocationLog") {
        return Err(ParseError::Shape(
            "Bedrock invocation log",
            "schemaType is not ModelInvocationLog".into(),
        ));
    }
    let time = parse_time(
        r.timestamp
            .as_deref()
            .ok_or(ParseError::Missing("timestamp"))?,
    )?;
    let arn = r
        .identity
        .and_then(|i| i.arn)
        .ok_or(ParseError::Missing("identity.arn"))?;
    let kind = if arn.contains(":assumed-role/") {
        CredentialKind::AwsSessionKey
    } else if arn.contains("/BedrockAPIKey-") {
        CredentialKind::AwsBedrockApiKey
    } else {
        CredentialKind::AwsPrincipal
    };
    let principal = Principal {
        provider: CloudProvider::Aws,
        kind,
        id: arn.clone(),
        account: r.account_id.clone(),
        name: Some(arn),
    };
    let id = r
        .request_id
        .clone()
        .map_or_else(|| derived_id("bil", text), |rid| format!("bil-{rid}"));
    let operation = r.operation.clone().unwrap_or_else(|| "InvokeModel".into());
    let model = r.model_id.clone().unwrap_or_default();
    let mut e = util::usage(id, time, "aws.bedrock_invocation", "POST", "/model/invoke");
    e.set_endpoint(util::endpoint_for_model(&model));
    e.system = Some("aws.bedrock".to_owned());
    e.model = (!model.is_empty()).then_some(model.clone());
    e.stream = operation.contains("Stream");
    let error = r.error_code.clone().filter(|c| !c.is_empty());
    e.status = status_of(error.as_deref());
    e.error_code = error.clone();
    let (mut prompt_chars, mut messages, mut system_text) = (0u64, 0u32, None::<String>);
    let mut max_tokens = None;
    if let Some(input) = &r.input {
        e.input_tokens = input.input_token_count;
        if let Some(body) = &input.input_body_json {
            let scan = scan_body(body);
            prompt_chars = scan.chars;
            messages = scan.messages;
            system_text = scan.system;
            max_tokens = scan.max_tokens;
            if scan.roleplay {
                e.safety.push(SafetyVerdict {
                    category: VerdictCategory::RoleplayMarkers,
                    action: Action::Log,
                    score: 1.0,
                    stage: SafetyStage::Input,
                    view: None,
                    range: None,
                    evidence: None,
                    source: Some("bedrock_invocation_log".into()),
                });
            }
        }
    }
    if r.input.as_ref().is_none_or(|i| i.input_body_json.is_none()) {
        // Bodies not logged: judge by the token count, not an empty prompt.
        prompt_chars = e.input_tokens.map_or(UNSEEN_PROMPT_CHARS, |t| t * 4);
    }
    e.prompt_chars = prompt_chars;
    e.prompt_messages = messages;
    e.max_tokens = max_tokens;
    e.system_prompt_hash = system_text.as_deref().map(util::hash128);
    if let Some(out) = &r.output {
        e.output_tokens = out.output_token_count;
        let stop = out
            .output_body_json
            .as_ref()
            .and_then(|b| b.get("stopReason").or_else(|| b.get("stop_reason")))
            .and_then(|v| v.as_str());
        let intervened = stop == Some("guardrail_intervened")
            || out
                .output_body_json
                .as_ref()
                .and_then(|b| b.get("amazon-bedrock-guardrailAction"))
                .and_then(|v| v.as_str())
                == Some("INTERVENED");
        if intervened {
            e.safety.push(SafetyVerdict {
                category: VerdictCategory::Other("guardrail_intervened".into()),
                action: Action::Block,
                score: 1.0,
                stage: SafetyStage::Output,
                view: None,
                range: None,
                evidence: None,
                source: Some("bedrock_guardrail".into()),
            });
        }
    }
    let principal_key = principal.key_id();
    e.tenant = principal.account.clone();
    e.key_id = Some(principal_key);
    e.cloud = Some(Box::new(CloudContext {
        principal,
        operation,
        region: r.region.clone(),
        resource: Some(model),
        ip_masked: false,
        ip_missing: true,
        error,
        bearer: false,
    }));
    Ok(Record::Usage(e))
}

/// What the detectors need from a logged request body (never the text itself).
struct BodyScan {
    chars: u64,
    messages: u32,
    system: Option<String>,
    max_tokens: Option<u64>,
    roleplay: bool,
}

fn scan_body(body: &serde_json::Value) -> BodyScan {
    let mut chars = 0u64;
    let mut roleplay = false;
    let mut visit = |s: &str| {
        chars += s.chars().count() as u64;
        roleplay |= s.contains("{{char}}") || s.contains("{{user}}");
    };
    fn walk(v: &serde_json::Value, f: &mut dyn FnMut(&str), depth: u32) {
        if depth > 32 {
            return;
        }
        match v {
            serde_json::Value::String(s) => f(s),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, f, depth + 1)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, f, depth + 1)),
            _ => {}
        }
    }
    walk(body, &mut visit, 0);
    let messages = body
        .get("messages")
        .and_then(|m| m.as_array())
        .map_or(0, |a| u32::try_from(a.len()).unwrap_or(u32::MAX));
    let mut system = String::new();
    if let Some(s) = body.get("system") {
        walk(s, &mut |t| system.push_str(t), 0);
    }
    let max_tokens = ["max_tokens", "max_tokens_to_sample", "maxTokens"]
        .iter()
        .find_map(|k| {
            body.get(k)
                .or_else(|| body.get("inferenceConfig").and_then(|c| c.get(k)))
                .and_then(serde_json::Value::as_u64)
        });
    BodyScan {
        chars,
        messages,
        system: (!system.is_empty()).then_some(system),
        max_tokens,
        roleplay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Awkward nested objects: the one-pass reading answers as the raw reading does.
    #[test]
    fn in_place_nested_objects_answer_as_raw_capture() {
        let nested = [
            r#"{"modelId":"m-1"}"#,
            r#"{"modelId":"m\u002d1","userName":"bob"}"#,
            r#""{\"modelId\":\"m-2\",\"guardrailIdentifier\":\"g\"}""#,
            r#""{\"modelId\":5}""#,
            r#""[\"m-3\",\"u\",\"g\"]""#,
            r#""not json""#,
            r#""""#,
            r#"{"modelId":5,"userName":"bob"}"#,
            r#"{"modelId":"a","modelId":"b"}"#,
            r#"{"modelId":null,"loggingConfig":{"textDataDeliveryEnabled":false}}"#,
            r#"{"loggingConfig":"x","loggingConfig":"y"}"#,
            r#"{"userName":["x"]}"#,
            r#"["m-4"]"#,
            r#"[]"#,
            "null",
            "true",
            "12",
            "{}",
            r#"{"callWithBearerToken":true}"#,
            r#"{"callWithBearerToken":"true","callWithBearerToken":true}"#,
            r#""{\"callWithBearerToken\":\"TRUE\"}""#,
        ];
        let names = [
            ("bedrock.amazonaws.com", "InvokeModel"),
            (
                "bedrock.amazonaws.com",
                "PutModelInvocationLoggingConfiguration",
            ),
            ("iam.amazonaws.com", "CreateAccessKey"),
        ];
        for p in nested {
            for x in nested {
                for (source, name) in names {
                    let text = format!(
                        r#"{{"eventTime":"2025-02-03T00:00:00Z","eventSource":"{source}","eventName":"{name}","userIdentity":{{"type":"IAMUser","arn":"arn:aws:iam::1:user/u","accessKeyId":"AKIAX"}},"requestParameters":{p},"additionalEventData":{x},"eventID":"e1"}}"#
                    );
                    assert_eq!(cloudtrail(&text), cloudtrail_raw(&text), "{text}");
                }
            }
        }
        // Whole-record failures keep the raw reading's error.
        for bad in [
            "{",
            "[]",
            r#"{"eventTime":1}"#,
            r#"{"requestParameters":{"modelId":1}}"#,
        ] {
            assert_eq!(cloudtrail(bad), cloudtrail_raw(bad), "{bad}");
        }
    }
}
