//! The OpenAI wire shape of model objects (`GET /v1/models`, `GET /v1/models/{model}`):
//! one definition for the gateway's own answers and the mock upstream's.

use serde::Serialize;

/// One model object, as `GET /v1/models` lists it and `GET /v1/models/{model}` returns it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelObject<'a> {
    /// The model id.
    pub id: &'a str,
    /// Always `"model"`.
    pub object: &'static str,
    /// Creation time (Unix seconds).
    pub created: i64,
    /// Always `"system"`.
    pub owned_by: &'static str,
}

impl<'a> ModelObject<'a> {
    /// The object for model `id`.
    pub fn new(id: &'a str) -> Self {
        ModelObject {
            id,
            object: "model",
            // Neither the gateway nor the mock knows when a provider created a model; a
            // fixed date keeps the field an integer as SDKs expect.
            created: 1_700_000_000,
            owned_by: "system",
        }
    }
}

/// The `GET /v1/models` list.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList<'a> {
    /// Always `"list"`.
    pub object: &'static str,
    /// The models.
    pub data: Vec<ModelObject<'a>>,
}

impl<'a> ModelList<'a> {
    /// The list of `models`.
    pub fn new(models: &[&'a str]) -> Self {
        ModelList {
            object: "list",
            data: models.iter().map(|id| ModelObject::new(id)).collect(),
        }
    }
}

/// The body of an empty list, for when serialization cannot fail but must be handled.
pub const EMPTY_MODEL_LIST: &[u8] = br#"{"object":"list","data":[]}"#;
