//! Classifies a request line into an endpoint and dialect: OpenAI `/v1/...` paths, and
//! Azure `/openai/deployments/{deployment}/...?api-version=...` paths. Azure's dated
//! routes require a dated `api-version`; its `/openai/v1/` surface takes none.

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
    /// The model named in the path of `GET /v1/models/{model}` (percent-decoded).
    pub model: Option<String>,
    /// Why the `api-version` this Azure route requires is refused (`None`: it is fine, or
    /// the route takes none).
    pub api_version_error: Option<ApiVersionError>,
}

/// What is wrong with the `api-version` of an Azure route that requires one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersionError {
    /// None was sent (or an empty one).
    Missing,
    /// Not a dated version: `YYYY-MM-DD`, optionally followed by a suffix like `-preview`.
    Malformed,
}

/// Longest `api-version` accepted.
const MAX_API_VERSION_LEN: usize = 32;

/// Whether `v` is a dated API version as Azure names them: `YYYY-MM-DD`, optionally
/// followed by `-` and a suffix of letters, digits, `.` and `-` (`2025-04-01-preview`).
pub fn is_dated_api_version(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() < 10 || b.len() > MAX_API_VERSION_LEN {
        return false;
    }
    let number = |from: usize, to: usize| -> Option<u32> {
        let digits = v.get(from..to)?;
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())
            .flatten()
    };
    let date = number(0, 4).is_some()
        && b[4] == b'-'
        && number(5, 7).is_some_and(|m| (1..=12).contains(&m))
        && b[7] == b'-'
        && number(8, 10).is_some_and(|d| (1..=31).contains(&d));
    let suffix = &b[10..];
    date && (suffix.is_empty()
        || (suffix.len() > 1
            && suffix[0] == b'-'
            && suffix[1..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.'))))
}

/// The dated `api-version` of a query, or what is wrong with it.
fn dated_api_version(query: Option<&str>) -> (Option<String>, Option<ApiVersionError>) {
    let raw = query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("api-version=")))
        .filter(|v| !v.is_empty());
    match raw {
        None => (None, Some(ApiVersionError::Missing)),
        Some(v) if is_dated_api_version(v) => (Some(v.to_owned()), None),
        Some(_) => (None, Some(ApiVersionError::Malformed)),
    }
}

/// Longest deployment name accepted (Azure allows 64).
const MAX_DEPLOYMENT_LEN: usize = 64;

/// Matches a method, path and query to a route.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> Option<Route> {
    let path = path.strip_suffix('/').unwrap_or(path);
    if let Some(rest) = path.strip_prefix("/v1/") {
        if let (&Method::GET, Some(id)) = (method, rest.strip_prefix("models/")) {
            return Some(Route {
                endpoint: Endpoint::Models,
                flavor: ApiFlavor::Openai,
                deployment: None,
                api_version: None,
                model: Some(model_id(id)?),
                api_version_error: None,
            });
        }
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
            model: None,
            api_version_error: None,
        });
    }
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
        let (api_version, api_version_error) = dated_api_version(query);
        return Some(Route {
            endpoint,
            flavor: ApiFlavor::Azure,
            deployment: Some(deployment.to_owned()),
            api_version,
            model: None,
            api_version_error,
        });
    }
    if let (&Method::POST, "/openai/v1/responses") = (method, path) {
        // The v1 surface takes no dated version; whatever was sent is only recorded.
        return Some(Route {
            endpoint: Endpoint::Responses,
            flavor: ApiFlavor::Azure,
            deployment: None,
            api_version: query.and_then(api_version_param),
            model: None,
            api_version_error: None,
        });
    }
    if let (&Method::GET, Some(id)) = (method, path.strip_prefix("/openai/models/")) {
        // Azure's "Models - Get": the same local answer as `GET /v1/models/{model}`.
        let (api_version, api_version_error) = dated_api_version(query);
        return Some(Route {
            endpoint: Endpoint::Models,
            flavor: ApiFlavor::Azure,
            deployment: None,
            api_version,
            model: Some(model_id(id)?),
            api_version_error,
        });
    }
    let endpoint = match (method, path) {
        (&Method::GET, "/openai/models" | "/openai/deployments") => Endpoint::Models,
        (&Method::POST, "/openai/responses") => Endpoint::Responses,
        _ => return None,
    };
    let (api_version, api_version_error) = dated_api_version(query);
    Some(Route {
        endpoint,
        flavor: ApiFlavor::Azure,
        deployment: None,
        api_version,
        model: None,
        api_version_error,
    })
}

/// Longest model id accepted in a path.
const MAX_MODEL_ID_LEN: usize = 256;

/// A model id from a path segment, percent-decoded (the SDKs encode `:` in fine-tuned
/// ids); `None` when empty, too long, badly encoded, not UTF-8 or holding control characters.
fn model_id(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let id = String::from_utf8(out).ok()?;
    (!id.is_empty() && id.len() <= MAX_MODEL_ID_LEN && !id.chars().any(char::is_control))
        .then_some(id)
}

fn api_version_param(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("api-version="))
        .filter(|v| {
            v.len() <= MAX_API_VERSION_LEN
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
    fn model_retrieve_path() {
        let r = classify(&Method::GET, "/v1/models/gpt-4o-mini", None).unwrap();
        assert_eq!(r.endpoint, Endpoint::Models);
        assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
        let r = classify(
            &Method::GET,
            "/v1/models/ft%3Agpt-4o-mini%3Aacme%3A%3Ax1",
            None,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("ft:gpt-4o-mini:acme::x1"));
        assert_eq!(
            classify(&Method::GET, "/v1/models/", None).unwrap().model,
            None
        );
        assert!(classify(&Method::POST, "/v1/models/gpt-4o", None).is_none());
        for bad in [
            "/v1/models//",
            "/v1/models/%zz",
            "/v1/models/%+f",
            "/v1/models/%0a",
            "/v1/models/%ff",
        ] {
            assert!(classify(&Method::GET, bad, None).is_none(), "{bad}");
        }
        let long = format!("/v1/models/{}", "m".repeat(257));
        assert!(classify(&Method::GET, &long, None).is_none());
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

    #[test]
    fn azure_dated_routes_require_a_dated_api_version() {
        let chat = "/openai/deployments/gpt-4o-mini/chat/completions";
        for path in [chat, "/openai/responses"] {
            let r = classify(&Method::POST, path, None).unwrap();
            assert_eq!(
                r.api_version_error,
                Some(ApiVersionError::Missing),
                "{path}"
            );
        }
        for path in [
            "/openai/models",
            "/openai/deployments",
            "/openai/models/gpt-4o-mini",
        ] {
            let r = classify(&Method::GET, path, Some("x=1&api-version=")).unwrap();
            assert_eq!(
                r.api_version_error,
                Some(ApiVersionError::Missing),
                "{path}"
            );
        }
        for bad in [
            "garbage",
            "2024-13-01",
            "2024-10-21-",
            "2024-10-21x",
            "24-10-21",
            "2024-10-21-pre view",
        ] {
            let r = classify(&Method::POST, chat, Some(&format!("api-version={bad}"))).unwrap();
            assert_eq!(
                r.api_version_error,
                Some(ApiVersionError::Malformed),
                "{bad}"
            );
            assert_eq!(r.api_version, None);
        }
        for good in ["2024-10-21", "2025-04-01-preview", "2024-02-15-preview.1"] {
            let r = classify(&Method::POST, chat, Some(&format!("api-version={good}"))).unwrap();
            assert_eq!(
                (r.api_version.as_deref(), r.api_version_error),
                (Some(good), None)
            );
        }
        // The v1 surface takes no dated version.
        let r = classify(&Method::POST, "/openai/v1/responses", None).unwrap();
        assert_eq!(r.api_version_error, None);
        let r = classify(
            &Method::POST,
            "/openai/v1/responses",
            Some("api-version=preview"),
        )
        .unwrap();
        assert_eq!(
            (r.api_version.as_deref(), r.api_version_error),
            (Some("preview"), None)
        );
    }
}
