//! The bodies of the gateway's own model answers: `GET /v1/models` and
//! `GET /v1/models/{model}` are answered locally, with the models a key may use, in the
//! OpenAI wire shape, whatever kind of upstream (OpenAI, Azure, the built-in mock) serves
//! them. They are the gateway's API, so they live here rather than with the mock upstream
//! (`stormwall-mock`), which imitates a provider; both build the wire shape from
//! `stormwall_types::model`.

use bytes::Bytes;
use http::{Response, StatusCode};
use stormwall_types::model::{EMPTY_MODEL_LIST, ModelList, ModelObject};

use super::DataPlane;
use crate::data::body::ProxyBody;
use crate::data::keycache::CachedKey;
use crate::data::recorder::Recorder;
use crate::error::ProxyError;
use crate::http::{json_response, set_request_id};

/// The `GET /v1/models` body listing `models`.
pub fn list_body(models: &[&str]) -> Bytes {
    // An empty list is still a valid answer should serialization ever fail.
    serde_json::to_vec(&ModelList::new(models))
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(EMPTY_MODEL_LIST))
}

/// The `GET /v1/models/{model}` body for `id`.
pub fn object_body(id: &str) -> Result<Bytes, serde_json::Error> {
    serde_json::to_vec(&ModelObject::new(id)).map(Bytes::from)
}

/// Answers `GET /v1/models` locally with the models this key may use.
pub fn list_models(state: &DataPlane, rec: &mut Recorder, key: &CachedKey) -> Response<ProxyBody> {
    let allowed: Vec<&str> = state
        .router
        .models()
        .iter()
        .filter(|m| key.record.scope.allows_model(m))
        .map(String::as_str)
        .collect();
    let mut resp = json_response(StatusCode::OK, list_body(&allowed));
    set_request_id(&mut resp, rec.id());
    let durable = rec.take().finish(200);
    resp.map(|b| b.after(durable))
}

/// Answers `GET /v1/models/{model}` locally: the model object when the routing table
/// serves it and the key may use it; otherwise the same 404 `model_not_found` for both,
/// so a key learns nothing about models outside its scope.
pub fn retrieve_model(
    state: &DataPlane,
    rec: &mut Recorder,
    key: &CachedKey,
    id: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    rec.event().model = Some(id.to_owned());
    if !key.record.scope.allows_model(id) || state.router.route(id).is_none() {
        return Err(ProxyError::reject(stormwall_types::RejectReason::NoRoute));
    }
    let body = object_body(id).map_err(|_| ProxyError::UpstreamUnavailable)?;
    let mut resp = json_response(StatusCode::OK, body);
    set_request_id(&mut resp, rec.id());
    let durable = rec.take().finish(200);
    Ok(resp.map(|b| b.after(durable)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn model_object_shape() {
        let v: Value = serde_json::from_slice(&object_body("gpt-4o").unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "gpt-4o", "object": "model", "created": 1_700_000_000, "owned_by": "system"})
        );
    }

    #[test]
    fn models_list_shape() {
        let v: Value = serde_json::from_slice(&list_body(&["gpt-4o", "dall-e-3"])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"object": "list", "data": [
                {"id": "gpt-4o", "object": "model", "created": 1_700_000_000, "owned_by": "system"},
                {"id": "dall-e-3", "object": "model", "created": 1_700_000_000, "owned_by": "system"},
            ]})
        );
        let empty: Value = serde_json::from_slice(&list_body(&[])).unwrap();
        assert_eq!(empty, serde_json::json!({"object": "list", "data": []}));
    }
}
