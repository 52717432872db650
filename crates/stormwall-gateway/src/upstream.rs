//! Upstreams and routing: which provider serves a model, how to address it (OpenAI base
//! URL, or Azure resource + deployment + api-version), and the pooled HTTP client.
//! Provider keys are read from the environment once, at start, and held as secrets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretString};
use stormwall_types::{ApiFlavor, Endpoint};

use crate::config::{LimitsConfig, UpstreamConfig};

/// The pooled client used for every upstream call.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An invalid `[[upstreams]]` section.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    /// Two upstreams share a name.
    #[error("two upstreams are named {0:?}")]
    DuplicateName(String),
    /// Two upstreams claim one model.
    #[error("model {model:?} is routed to both {first:?} and {second:?}")]
    DuplicateModel {
        /// Model.
        model: String,
        /// First upstream.
        first: String,
        /// Second upstream.
        second: String,
    },
    /// A provider key's environment variable is unset or empty.
    #[error("upstream {upstream:?}: environment variable {var} is not set")]
    MissingSecret {
        /// Upstream.
        upstream: String,
        /// Variable.
        var: String,
    },
    /// A URL does not parse.
    #[error("upstream {upstream:?}: invalid URL {url:?}")]
    BadUrl {
        /// Upstream.
        upstream: String,
        /// URL.
        url: String,
    },
    /// An upstream serves no model.
    #[error("upstream {0:?} serves no models")]
    NoModels(String),
    /// A header value is invalid.
    #[error("upstream {0:?}: invalid organization header")]
    BadHeader(String),
}

/// How to reach one upstream.
#[derive(Debug)]
pub enum UpstreamKind {
    /// OpenAI-compatible.
    Openai {
        /// Base URL without trailing slash, e.g. `https://api.openai.com/v1`.
        base_url: String,
        /// `Authorization: Bearer` value.
        auth: SecretString,
        /// `OpenAI-Organization`.
        organization: Option<HeaderValue>,
    },
    /// Azure OpenAI.
    Azure {
        /// Resource endpoint without trailing slash.
        endpoint: String,
        /// `api-version` sent upstream.
        api_version: String,
        /// `api-key` value.
        key: SecretString,
        /// Model → deployment.
        deployments: HashMap<String, String>,
    },
    /// Built-in mock.
    Mock,
}

/// One configured upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Name in events and metrics.
    pub name: Arc<str>,
    /// How to reach it.
    pub kind: UpstreamKind,
}

impl Upstream {
    /// OpenTelemetry `gen_ai.system`.
    pub fn system(&self) -> &'static str {
        match self.kind {
            UpstreamKind::Openai { .. } => "openai",
            UpstreamKind::Azure { .. } => "az.ai.openai",
            UpstreamKind::Mock => "mock",
        }
    }
}

/// Where and how to send one request.
#[derive(Debug)]
pub struct Target {
    /// Full upstream URI.
    pub uri: Uri,
    /// Header name and value that authenticate the gateway upstream.
    pub auth: (http::HeaderName, HeaderValue),
    /// Extra header (OpenAI organization).
    pub organization: Option<HeaderValue>,
    /// Whether the body needs `"model"` set to this value before sending.
    pub set_model: Option<String>,
}

/// Model → upstream.
#[derive(Debug)]
pub struct Router {
    routes: HashMap<String, Arc<Upstream>>,
    models: Vec<String>,
}

impl Router {
    /// Validates the upstream sections, reading provider keys through `env`.
    pub fn from_config(
        configs: &[UpstreamConfig],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, UpstreamConfigError> {
        let mut routes: HashMap<String, Arc<Upstream>> = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for cfg in configs {
            let name = cfg.name().to_owned();
            if !names.insert(name.clone()) {
                return Err(UpstreamConfigError::DuplicateName(name));
            }
            let secret = |var: &str| {
                env(var)
                    .filter(|v| !v.is_empty())
                    .map(SecretString::from)
                    .ok_or_else(|| UpstreamConfigError::MissingSecret {
                        upstream: name.clone(),
                        var: var.to_owned(),
                    })
            };
            let check_url = |url: &str| {
                url.parse::<Uri>()
                    .ok()
                    .filter(|u| u.scheme().is_some() && u.host().is_some())
                    .map(|_| url.trim_end_matches('/').to_owned())
                    .ok_or_else(|| UpstreamConfigError::BadUrl {
                        upstream: name.clone(),
                        url: url.to_owned(),
                    })
            };
            let (kind, models): (UpstreamKind, Vec<String>) = match cfg {
                UpstreamConfig::Openai {
                    base_url,
                    api_key_env,
                    models,
                    organization,
                    ..
                } => {
                    let organization = organization
                        .as_deref()
                        .map(HeaderValue::from_str)
                        .transpose()
                        .map_err(|_| UpstreamConfigError::BadHeader(name.clone()))?;
                    (
                        UpstreamKind::Openai {
                            base_url: check_url(base_url)?,
                            auth: secret(api_key_env)?,
                            organization,
                        },
                        models.clone(),
                    )
                }
                UpstreamConfig::Azure {
                    endpoint,
                    api_version,
                    api_key_env,
                    deployments,
                    ..
                } => (
                    UpstreamKind::Azure {
                        endpoint: check_url(endpoint)?,
                        api_version: api_version.clone(),
                        key: secret(api_key_env)?,
                        deployments: deployments
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    },
                    deployments.keys().cloned().collect(),
                ),
                UpstreamConfig::Mock { models, .. } => (UpstreamKind::Mock, models.clone()),
            };
            if models.is_empty() {
                return Err(UpstreamConfigError::NoModels(name));
            }
            let upstream = Arc::new(Upstream {
                name: Arc::from(name.as_str()),
                kind,
            });
            for model in models {
                if let Some(first) = routes.get(&model) {
                    return Err(UpstreamConfigError::DuplicateModel {
                        model,
                        first: first.name.to_string(),
                        second: name,
                    });
                }
                routes.insert(model, Arc::clone(&upstream));
            }
        }
        let mut models: Vec<String> = routes.keys().cloned().collect();
        models.sort();
        Ok(Self { routes, models })
    }

    /// The upstream serving a model (or Azure deployment name).
    pub fn route(&self, model: &str) -> Option<&Arc<Upstream>> {
        self.routes.get(model)
    }

    /// Every routed model name, sorted.
    pub fn models(&self) -> &[String] {
        &self.models
    }
}

/// Builds the upstream address for a request (`None` for the built-in mock).
pub fn target(
    upstream: &Upstream,
    endpoint: Endpoint,
    model: &str,
    flavor: ApiFlavor,
) -> Option<Result<Target, http::Error>> {
    let build = || -> Result<Option<Target>, http::Error> {
        match &upstream.kind {
            UpstreamKind::Mock => Ok(None),
            UpstreamKind::Openai {
                base_url,
                auth,
                organization,
            } => {
                let uri: Uri = format!("{base_url}/{}", endpoint.path_suffix()).parse()?;
                let bearer = HeaderValue::from_str(&format!("Bearer {}", auth.expose_secret()))?;
                Ok(Some(Target {
                    uri,
                    auth: (http::header::AUTHORIZATION, sensitive(bearer)),
                    organization: organization.clone(),
                    // Azure clients put the deployment in the path; OpenAI wants it in the body.
                    set_model: (flavor == ApiFlavor::Azure).then(|| model.to_owned()),
                }))
            }
            UpstreamKind::Azure {
                endpoint: base,
                api_version,
                key,
                deployments,
            } => {
                let deployment = deployments.get(model).map_or(model, String::as_str);
                let uri: Uri = if endpoint == Endpoint::Responses {
                    format!("{base}/openai/responses?api-version={api_version}").parse()?
                } else {
                    format!(
                        "{base}/openai/deployments/{deployment}/{}?api-version={api_version}",
                        endpoint.path_suffix()
                    )
                    .parse()?
                };
                Ok(Some(Target {
                    uri,
                    auth: (
                        http::HeaderName::from_static("api-key"),
                        sensitive(HeaderValue::from_str(key.expose_secret())?),
                    ),
                    organization: None,
                    set_model: (endpoint == Endpoint::Responses).then(|| deployment.to_owned()),
                }))
            }
        }
    };
    build().transpose()
}

fn sensitive(mut v: HeaderValue) -> HeaderValue {
    // Keeps the provider key out of any Debug output of the request.
    v.set_sensitive(true);
    v
}

/// Builds the pooled client for calls off the request path (webhooks, classifiers).
pub fn http_client(limits: &LimitsConfig) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(limits.upstream_pool_max_idle_per_host)
        .build(connector(limits))
}

/// The upstream connector: TLS with the Mozilla roots, HTTP/1.1, TCP_NODELAY.
pub fn connector(limits: &LimitsConfig) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(
        limits.upstream_connect_timeout_ms,
    )));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let tls = rustls_config();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

fn rustls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            // The ring provider supports the default versions; this branch is unreachable
            // in practice but must not panic.
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(v: &str) -> Option<String> {
        (v == "KEY").then(|| "sk-test".to_owned())
    }

    #[test]
    fn azure_target_uses_deployment_and_api_version() {
        let mut deployments = BTreeMap::new();
        deployments.insert("gpt-4o-mini".to_owned(), "mini-prod".to_owned());
        let r = Router::from_config(
            &[UpstreamConfig::Azure {
                name: "az".into(),
                endpoint: "https://contoso.openai.azure.com/".into(),
                api_version: "2024-10-21".into(),
                api_key_env: "KEY".into(),
                deployments,
            }],
            &env,
        )
        .unwrap();
        let up = r.route("gpt-4o-mini").unwrap();
        let t = target(
            up,
            Endpoint::ChatCompletions,
            "gpt-4o-mini",
            ApiFlavor::Openai,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            t.uri.to_string(),
            "https://contoso.openai.azure.com/openai/deployments/mini-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(t.auth.0.as_str(), "api-key");
        assert!(!format!("{t:?}").contains("sk-test"));
    }

    #[test]
    fn config_errors() {
        let mock = |name: &str, m: &str| UpstreamConfig::Mock {
            name: name.into(),
            models: vec![m.into()],
        };
        assert!(matches!(
            Router::from_config(&[mock("a", "x"), mock("a", "y")], &env),
            Err(UpstreamConfigError::DuplicateName(_))
        ));
        assert!(matches!(
            Router::from_config(&[mock("a", "x"), mock("b", "x")], &env),
            Err(UpstreamConfigError::DuplicateModel { .. })
        ));
        let missing = UpstreamConfig::Openai {
            name: "o".into(),
            base_url: "https://api.openai.com/v1".into(),
            api_key_env: "NOPE".into(),
            models: vec!["m".into()],
            organization: None,
        };
        assert!(matches!(
            Router::from_config(&[missing], &env),
            Err(UpstreamConfigError::MissingSecret { .. })
        ));
    }
}
