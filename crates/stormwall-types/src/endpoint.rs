//! The API operations the gateway proxies, and the two wire dialects clients speak.

use std::fmt;
use std::str::FromStr;

/// One proxied operation, whichever dialect the client used to ask for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/images/generations`
    ImagesGenerations,
    /// `POST /v1/responses`
    Responses,
    /// `GET /v1/models`
    Models,
}

impl Endpoint {
    /// Every endpoint, in a stable order.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::ImagesGenerations,
        Endpoint::Responses,
        Endpoint::Models,
    ];

    /// The stable snake_case name used in config, scopes and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::ImagesGenerations => "images_generations",
            Endpoint::Responses => "responses",
            Endpoint::Models => "models",
        }
    }

    /// The OpenAI path suffix after `/v1/` (and after the deployment for Azure).
    pub fn path_suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::ImagesGenerations => "images/generations",
            Endpoint::Responses => "responses",
            Endpoint::Models => "models",
        }
    }

    /// OpenTelemetry `gen_ai.operation.name`.
    pub fn otel_operation(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embeddings",
            Endpoint::ImagesGenerations => "image_generation",
            Endpoint::Responses => "generate_content",
            Endpoint::Models => "list_models",
        }
    }

    /// Whether content-policy treats this endpoint as an image endpoint.
    pub fn is_image(self) -> bool {
        matches!(self, Endpoint::ImagesGenerations)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown endpoint name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown endpoint {0:?}; expected one of chat_completions, completions, embeddings, images_generations, responses, models"
)]
pub struct UnknownEndpoint(pub String);

impl FromStr for Endpoint {
    type Err = UnknownEndpoint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownEndpoint(s.to_owned()))
    }
}

/// Which wire dialect a client spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiFlavor {
    /// OpenAI `/v1/...` paths, `Authorization: Bearer`.
    Openai,
    /// Azure OpenAI `/openai/deployments/{d}/...?api-version=`, `api-key` header.
    Azure,
}
