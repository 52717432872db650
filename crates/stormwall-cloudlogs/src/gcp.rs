//! Google Cloud: Vertex AI audit logs (Data Access for predictions, Admin Activity for
//! changes), `protoPayload` in the `AuditLog` shape.
//!
//! Principal: a service-account key (`serviceAccountKeyName`) is the key; otherwise the
//! principal e-mail (an attached service account, a user).

use serde_json::Value;
use stormwall_types::{
    CloudContext, CloudProvider, ControlAction, ControlEvent, CredentialKind, Endpoint, Principal,
};

use crate::util::{self, derived_id, parse_ip, parse_time};
use crate::{ParseError, Record};

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// The HTTP status a google.rpc code corresponds to.
fn status_of(code: Option<i64>) -> u16 {
    match code {
        None | Some(0) => 200,
        Some(3) => 400,
        Some(5) => 404,
        Some(7) => 403,
        Some(8) => 429,
        Some(16) => 401,
        Some(_) => 500,
    }
}

/// Parses one Vertex AI audit record.
pub fn vertex(raw: &str) -> Result<Record, ParseError> {
    let v: Value =
        serde_json::from_str(raw).map_err(|e| ParseError::Shape("Vertex audit", e.to_string()))?;
    let p = v
        .get("protoPayload")
        .ok_or(ParseError::Missing("protoPayload"))?;
    let t = parse_time(
        s(&v, &["timestamp"])
            .or_else(|| s(&v, &["receiveTimestamp"]))
            .ok_or(ParseError::Missing("timestamp"))?,
    )?;
    let method = s(p, &["methodName"]).ok_or(ParseError::Missing("methodName"))?;
    let service = s(p, &["serviceName"]).unwrap_or("");
    let email = s(p, &["authenticationInfo", "principalEmail"])
        .or_else(|| s(p, &["authenticationInfo", "principalSubject"]))
        .unwrap_or("unknown");
    let key_name = s(p, &["authenticationInfo", "serviceAccountKeyName"]);
    let project = s(&v, &["resource", "labels", "project_id"]).map(str::to_owned);
    let resource_name = s(p, &["resourceName"]).unwrap_or("");
    let project = project.or_else(|| util::azure_segment(resource_name, "projects"));
    let principal = match key_name {
        Some(k) => Principal {
            provider: CloudProvider::Gcp,
            kind: CredentialKind::GcpServiceAccountKey,
            id: format!("{email}/keys/{}", k.rsplit('/').next().unwrap_or(k)),
            account: project.clone(),
            name: Some(email.to_owned()),
        },
        None => Principal {
            provider: CloudProvider::Gcp,
            kind: CredentialKind::GcpPrincipal,
            id: email.to_owned(),
            account: project.clone(),
            name: Some(email.to_owned()),
        },
    };
    let ip = s(p, &["requestMetadata", "callerIp"]).and_then(parse_ip);
    let ua = s(p, &["requestMetadata", "callerSuppliedUserAgent"]).map(|u| {
        u.trim_end_matches(",gzip(gfe)")
            .chars()
            .take(256)
            .collect::<String>()
    });
    let code = p
        .get("status")
        .and_then(|x| x.get("code"))
        .and_then(Value::as_i64);
    let denied = p
        .get("authorizationInfo")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|x| x.get("granted").and_then(Value::as_bool) == Some(false))
        });
    let status = if denied { 403 } else { status_of(code) };
    let short = method.rsplit('.').next().unwrap_or(method);
    let region = util::azure_segment(resource_name, "locations");
    let id = s(&v, &["insertId"]).map_or_else(|| derived_id("gcp", raw), |i| format!("gcp-{i}"));
    let error = (status >= 400).then(|| {
        if denied {
            "PERMISSION_DENIED".to_owned()
        } else {
            format!("rpc_{}", code.unwrap_or(0))
        }
    });
    let cloud = CloudContext {
        principal,
        operation: method.to_owned(),
        region,
        resource: Some(resource_name.to_owned()),
        ip_masked: false,
        ip_missing: ip.is_none(),
        error: error.clone(),
        bearer: false,
    };
    let inference = matches!(
        short,
        "GenerateContent"
            | "StreamGenerateContent"
            | "Predict"
            | "RawPredict"
            | "StreamRawPredict"
            | "ChatCompletions"
            | "ServerStreamingPredict"
    );
    let listing = matches!(
        short,
        "ListPublisherModels" | "GetPublisherModel" | "ListModels" | "ListEndpoints"
    );
    if service == "aiplatform.googleapis.com" && (inference || listing) {
        let mut e = util::usage(
            id,
            t,
            "gcp.vertex_audit",
            if listing { "GET" } else { "POST" },
            "/v1/predict",
        );
        if let Some((ip, _)) = ip {
            e.source_ip = ip;
        }
        e.user_agent = ua;
        e.system = Some("gcp.vertex_ai".into());
        if listing {
            e.set_endpoint(Endpoint::Models);
        } else {
            let model = resource_name
                .rsplit("/models/")
                .next()
                .filter(|m| *m != resource_name);
            let model = model.map(|m| m.split([':', '/']).next().unwrap_or(m).to_owned());
            e.set_endpoint(util::endpoint_for_model(model.as_deref().unwrap_or("")));
            e.model = model;
            e.stream = short.starts_with("Stream");
            e.prompt_chars = if status == 400 {
                0
            } else {
                util::UNSEEN_PROMPT_CHARS
            };
            e.estimated_input_tokens = e.prompt_chars / 4;
        }
        e.status = status;
        e.error_code = error;
        e.tenant = cloud.principal.account.clone();
        e.key_id = Some(cloud.principal.key_id());
        e.cloud = Some(Box::new(cloud));
        return Ok(Record::Usage(e));
    }
    let action = match short {
        "CreateServiceAccountKey" => ControlAction::CreateKey,
        "DeleteServiceAccountKey" | "DisableServiceAccountKey" => ControlAction::DeleteKey,
        "DeployModel" | "CreateEndpoint" => ControlAction::DeploymentWrite,
        "DeleteSink" => ControlAction::DeleteLogging,
        "UpdateSink" | "UpdateSettings" => ControlAction::PutLoggingConfig,
        _ => ControlAction::Other,
    };
    Ok(Record::Control(ControlEvent {
        timestamp: t,
        id,
        dataset: "gcp.vertex_audit".into(),
        action,
        success: status < 400,
        source_ip: ip.map(|(i, _)| i),
        user_agent: ua,
        cloud,
        service: Some(service.to_owned()),
        target: None,
        scopes: Vec::new(),
        loosens: false,
        count: 1,
        response_bytes: None,
    }))
}
