//! Classifies a request line into an endpoint and dialect: OpenAI `/v1/...` paths, and
//! Azure `/openai/deployments/{deployment}/...?api-version=...` paths.

use http::Method;
use stormwall_types::{ApiFlavor, Endpoint};

/// A recognised proxy route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Operation.
    pub endpoint: Endpoint,
    /// Dialect.
    pub flavor: ApiFlavor,
    /// Azure deployment from the path.
    pub deployment: Option<String>,
    /// Azure `api-version`.
    pub api_version: Option<String>,
}

/// Longest deployment name accepted (Azure allows 64).
const MAX_DEPLOYMENT_LEN: usize = 64;

/// Matches a method, path and query to a route.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> Option<Route> {
    let path = path.strip_suffix('/').unwrap_or(path);
    if let Some(rest) = path.strip_prefix("/v1/") {
        let endpoint = match (method, rest) {
            (&Method::POST, "chat/completions") => Endpoint::ChatCompletions,
            (&Method::POST, "completions") => Endpoint::Completions,
            (&Method::POST, "embeddings") => Endpoint::Embeddings,
            (&Method::POST, "images/generations") => Endpoint::ImagesGenerations,
            (&Method::POST, "responses") => Endpoint::Responses,
            (&Method::GET, "models") => Endpoint::Models,
            _ => return None,
        };
        return Some(Route {
            endpoint,
            flavor: ApiFlavor::Openai,
            deployment: None,
            api_version: None,
        });
    }
    let api_version = query.and_then(api_version_param);
    if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        let (deployment, op) = rest.split_once('/')?;
        let valid = !deployment.is_empty()
            && !deployment.bytes().all(|b| b == b'.')
            && deployment.len() <= MAX_DEPLOYMENT_LEN
            && deployment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid || method != Method::POST {
            return None;
        }
        let endpoint = match op {
            "chat/completions" => Endpoint::ChatCompletions,
            "completions" => Endpoint::Completions,
            "embeddings" => Endpoint::Embeddings,
            "images/generations" => Endpoint::ImagesGenerations,
            _ => return None,
        };
        return Some(Route {
            endpoint,
            flavor: ApiFlavor::Azure,
            deployment: Some(deployment.to_owned()),
            api_version,
        });
    }
    let endpoint = match (method, path) {
        (&Method::GET, "/openai/models" | "/openai/deployments") => Endpoint::Models,
        (&Method::POST, "/openai/responses" | "/openai/v1/responses") => Endpoint::Responses,
        _ => return None,
    };
    Some(Route {
        endpoint,
        flavor: ApiFlavor::Azure,
        deployment: None,
        api_version,
    })
}

fn api_version_param(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("api-version="))
        .filter(|v| {
            v.len() <= 32
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_paths() {
        let r = classify(&Method::POST, "/v1/chat/completions", None).unwrap();
        assert_eq!(r.endpoint, Endpoint::ChatCompletions);
        assert_eq!(
            classify(&Method::GET, "/v1/models", None).unwrap().endpoint,
            Endpoint::Models
        );
        assert!(classify(&Method::GET, "/v1/chat/completions", None).is_none());
        assert!(classify(&Method::POST, "/v2/chat/completions", None).is_none());
    }

    #[test]
    fn azure_paths() {
        let r = classify(
            &Method::POST,
            "/openai/deployments/gpt-4o-mini/chat/completions",
            Some("api-version=2024-10-21"),
        )
        .unwrap();
        assert_eq!(r.flavor, ApiFlavor::Azure);
        assert_eq!(r.deployment.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(r.api_version.as_deref(), Some("2024-10-21"));
        assert!(
            classify(
                &Method::POST,
                "/openai/deployments/../x/chat/completions",
                None
            )
            .is_none()
        );
        assert!(classify(&Method::POST, "/openai/deployments//chat/completions", None).is_none());
    }
}
