//! External content classifiers behind one trait: Azure AI Content Safety (`text:analyze`),
//! Azure Prompt Shields (`text:shieldPrompt`), the OpenAI moderation endpoint, and an
//! OpenAI-compatible chat model judging with the Llama Guard 3 prompt.
//!
//! Each adapter turns one text into [`ExternalScore`]s in our categories; the safety stage
//! merges them into the local verdict ([`stormwall_safety::Verdict::merge_external`]), so an
//! external classifier can only make a verdict stricter. Results are cached by SHA-256 of
//! the classifier name and text. Requests go through the gateway's pooled HTTP client;
//! errors carry no text, key or response body.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri, header};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use stormwall_safety::{CATEGORY_COUNT, Category, ExternalScore, Verdict};

use crate::upstream::HttpClient;

/// Largest classifier response read, in bytes.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Azure AI Content Safety API version used for both Azure adapters.
pub const AZURE_API_VERSION: &str = "2024-09-01";

/// A classifier call that failed. Fixed messages only: never the text, key or body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// The request could not be built.
    #[error("classifier request could not be built")]
    Request,
    /// The classifier could not be reached.
    #[error("classifier unreachable")]
    Transport,
    /// The classifier answered with a non-success status.
    #[error("classifier answered with status {0}")]
    Status(u16),
    /// The response body broke or exceeded the size cap.
    #[error("classifier response unreadable")]
    Body,
    /// The response did not have the expected shape.
    #[error("classifier response has an unexpected shape")]
    Shape,
}

/// The future a classifier returns.
pub type ClassifyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<ExternalScore>, ClassifyError>> + Send + 'a>>;

/// An external classifier: one text in, scores in our categories out.
pub trait Classifier: Send + Sync {
    /// Classifies `text` (already truncated to the classifier's limit).
    fn classify<'a>(&'a self, client: &'a HttpClient, text: &'a str) -> ClassifyFuture<'a>;
}

/// Which service a `[[safety.classifiers]]` entry talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierKind {
    /// Azure AI Content Safety `text:analyze` (hate, sexual, self-harm, violence; severity 0–7).
    AzureContentSafety,
    /// Azure AI Content Safety Prompt Shields `text:shieldPrompt` (user prompt attacks → jailbreak).
    AzurePromptShields,
    /// OpenAI `/moderations` (`category_scores`).
    OpenaiModeration,
    /// An OpenAI-compatible chat model judging with the Llama Guard 3 prompt (`safe` / `unsafe\nS1,S3`).
    LlamaGuard,
}

impl ClassifierKind {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClassifierKind::AzureContentSafety => "azure_content_safety",
            ClassifierKind::AzurePromptShields => "azure_prompt_shields",
            ClassifierKind::OpenaiModeration => "openai_moderation",
            ClassifierKind::LlamaGuard => "llama_guard",
        }
    }
}

/// Whether a classifier may block, or only annotates the event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Runs before the request is forwarded; its scores can block.
    #[default]
    Enforce,
    /// Runs alongside the upstream call and only annotates the event.
    Flag,
}

/// What a classifier failure (timeout, error) means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Let the request through and record a `classifier_timeout` / `classifier_error` verdict.
    #[default]
    Open,
    /// Refuse the request with `content_policy_violation`.
    Closed,
}

/// `fail = "open"`, or per category: `fail = { default = "open", sexual_minors = "closed" }`.
/// A category entry applies when the local screener scored that category on the text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum FailPolicy {
    /// One mode for every request.
    All(FailMode),
    /// Per category name, plus `default`.
    PerCategory(BTreeMap<String, FailMode>),
}

impl Default for FailPolicy {
    fn default() -> Self {
        FailPolicy::All(FailMode::Open)
    }
}

/// One `[[safety.classifiers]]` entry.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Name in events and metrics (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// Which service.
    pub kind: ClassifierKind,
    /// Azure: the resource endpoint (`https://NAME.cognitiveservices.azure.com`); OpenAI and
    /// judges: the base URL including `/v1`.
    pub url: String,
    /// Environment variable holding the API key (never the key itself); optional for judges
    /// served without authentication.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Model: the moderation model (default `omni-moderation-latest`) or the judge model.
    #[serde(default)]
    pub model: Option<String>,
    /// Milliseconds to wait for an answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What a timeout or error means.
    #[serde(default)]
    pub fail: FailPolicy,
    /// `enforce` (before forwarding, can block) or `flag` (alongside the upstream call).
    #[serde(default)]
    pub mode: Mode,
    /// Longest text sent, in bytes (the start of longer prompts is classified).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_timeout_ms() -> u64 {
    1_000
}

fn default_max_bytes() -> usize {
    // Azure text:analyze accepts 10k characters.
    10_000
}

/// An invalid classifier entry.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierConfigError {
    /// The URL does not parse or is not http(s).
    #[error("[[safety.classifiers]] {name}: url is not an http(s) URL")]
    Url {
        /// Classifier name.
        name: String,
    },
    /// The key's environment variable is unset or empty.
    #[error("[[safety.classifiers]] {name}: environment variable {env} is not set")]
    MissingKey {
        /// Classifier name.
        name: String,
        /// Variable name.
        env: String,
    },
    /// Azure and OpenAI need a key.
    #[error("[[safety.classifiers]] {name}: api_key_env is required for {kind}")]
    KeyRequired {
        /// Classifier name.
        name: String,
        /// Kind.
        kind: &'static str,
    },
    /// A judge needs a model.
    #[error("[[safety.classifiers]] {name}: model is required for llama_guard")]
    ModelRequired {
        /// Classifier name.
        name: String,
    },
    /// `fail` names no known category.
    #[error("[[safety.classifiers]] {name}: fail names unknown category {category:?}")]
    FailCategory {
        /// Classifier name.
        name: String,
        /// The name given.
        category: String,
    },
    /// Two classifiers share a name.
    #[error("[[safety.classifiers]]: two classifiers are named {0:?}")]
    DuplicateName(String),
    /// Zero timeout.
    #[error("[[safety.classifiers]] {name}: timeout_ms must be positive")]
    Timeout {
        /// Classifier name.
        name: String,
    },
}

/// A configured classifier, ready to call.
pub struct ExternalClassifier {
    /// Name in events and metrics.
    pub name: Arc<str>,
    /// Enforce or flag.
    pub mode: Mode,
    /// Answer deadline.
    pub timeout: Duration,
    /// Longest text sent.
    pub max_bytes: usize,
    fail_default: FailMode,
    fail_by_category: [Option<FailMode>; CATEGORY_COUNT],
    adapter: Box<dyn Classifier>,
}

impl std::fmt::Debug for ExternalClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalClassifier")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ExternalClassifier {
    /// Validates a config entry; the key is read from the environment now.
    pub fn from_config(
        c: &ClassifierConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ExternalClassifier, ClassifierConfigError> {
        let name = c.name.clone().unwrap_or_else(|| c.kind.as_str().to_owned());
        if c.timeout_ms == 0 {
            return Err(ClassifierConfigError::Timeout { name });
        }
        let key = match &c.api_key_env {
            Some(var) => match env(var) {
                Some(k) if !k.is_empty() => Some(SecretString::from(k)),
                _ => {
                    return Err(ClassifierConfigError::MissingKey {
                        name,
                        env: var.clone(),
                    });
                }
            },
            None if c.kind == ClassifierKind::LlamaGuard => None,
            None => {
                return Err(ClassifierConfigError::KeyRequired {
                    name,
                    kind: c.kind.as_str(),
                });
            }
        };
        let base = c.url.trim_end_matches('/');
        let uri = |suffix: &str| -> Result<Uri, ClassifierConfigError> {
            let u: Uri = format!("{base}{suffix}")
                .parse()
                .map_err(|_| ClassifierConfigError::Url { name: name.clone() })?;
            if !matches!(u.scheme_str(), Some("http" | "https")) || u.host().is_none() {
                return Err(ClassifierConfigError::Url { name: name.clone() });
            }
            Ok(u)
        };
        let adapter: Box<dyn Classifier> = match c.kind {
            ClassifierKind::AzureContentSafety => Box::new(AzureContentSafety {
                uri: uri(&format!(
                    "/contentsafety/text:analyze?api-version={AZURE_API_VERSION}"
                ))?,
                key,
            }),
            ClassifierKind::AzurePromptShields => Box::new(AzurePromptShields {
                uri: uri(&format!(
                    "/contentsafety/text:shieldPrompt?api-version={AZURE_API_VERSION}"
                ))?,
                key,
            }),
            ClassifierKind::OpenaiModeration => Box::new(OpenAiModeration {
                uri: uri("/moderations")?,
                key,
                model: c
                    .model
                    .clone()
                    .unwrap_or_else(|| "omni-moderation-latest".to_owned()),
            }),
            ClassifierKind::LlamaGuard => Box::new(LlamaGuard {
                uri: uri("/chat/completions")?,
                key,
                model: c
                    .model
                    .clone()
                    .ok_or_else(|| ClassifierConfigError::ModelRequired { name: name.clone() })?,
            }),
        };
        let (fail_default, fail_by_category) = match &c.fail {
            FailPolicy::All(m) => (*m, [None; CATEGORY_COUNT]),
            FailPolicy::PerCategory(map) => {
                let mut by = [None; CATEGORY_COUNT];
                let mut default = FailMode::Open;
                for (k, m) in map {
                    if k == "default" {
                        default = *m;
                        continue;
                    }
                    let cat =
                        k.parse::<Category>()
                            .map_err(|_| ClassifierConfigError::FailCategory {
                                name: name.clone(),
                                category: k.clone(),
                            })?;
                    by[cat.index()] = Some(*m);
                }
                (default, by)
            }
        };
        Ok(ExternalClassifier {
            name: name.into(),
            mode: c.mode,
            timeout: Duration::from_millis(c.timeout_ms),
            max_bytes: c.max_bytes.max(1),
            fail_default,
            fail_by_category,
            adapter,
        })
    }

    /// A classifier over a custom adapter (tests, embedding programs).
    pub fn with_adapter(
        name: &str,
        mode: Mode,
        timeout: Duration,
        fail: FailMode,
        adapter: Box<dyn Classifier>,
    ) -> ExternalClassifier {
        ExternalClassifier {
            name: name.into(),
            mode,
            timeout,
            max_bytes: default_max_bytes(),
            fail_default: fail,
            fail_by_category: [None; CATEGORY_COUNT],
            adapter,
        }
    }

    /// Whether a failure of this classifier refuses a request whose local verdict is `local`:
    /// the default mode, or the mode of any category the local screener scored.
    pub fn fails_closed(&self, local: &Verdict) -> bool {
        if self.fail_default == FailMode::Closed {
            return true;
        }
        local
            .categories
            .iter()
            .any(|c| self.fail_by_category[c.category.index()] == Some(FailMode::Closed))
    }
}

/// Why a classifier gave no scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the timeout.
    Timeout,
    /// An error answer or transport failure.
    Error(ClassifyError),
}

impl Failure {
    /// The verdict category recorded for it: `classifier_timeout` or `classifier_error`.
    pub fn category(self) -> stormwall_types::VerdictCategory {
        match self {
            Failure::Timeout => stormwall_types::VerdictCategory::ClassifierTimeout,
            Failure::Error(_) => stormwall_types::VerdictCategory::ClassifierError,
        }
    }
}

/// One classifier's result for one text.
pub type Outcome = Result<Arc<[ExternalScore]>, Failure>;

/// Calls one classifier with its timeout, through the cache.
pub async fn run_one(
    c: &ExternalClassifier,
    client: &HttpClient,
    cache: &ScoreCache,
    text: &str,
) -> (Outcome, bool) {
    let text = crate::data::request::truncate(text, c.max_bytes);
    let key = ScoreCache::key(&c.name, text);
    if let Some(hit) = cache.get(&key) {
        return (Ok(hit), true);
    }
    let outcome = match tokio::time::timeout(c.timeout, c.adapter.classify(client, text)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(e)) => Err(Failure::Error(e)),
        Ok(Ok(mut scores)) => {
            // Events and verdicts name the configured classifier, not the adapter.
            for s in &mut scores {
                s.source = c.name.to_string();
            }
            let scores: Arc<[ExternalScore]> = scores.into();
            cache.put(key, Arc::clone(&scores));
            Ok(scores)
        }
    };
    (outcome, false)
}

/// Classifier results by SHA-256 of (classifier name, text): bounded, oldest evicted first,
/// entries expire after a TTL. Only successful results are cached.
#[derive(Debug)]
pub struct ScoreCache {
    inner: Mutex<CacheInner>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<[u8; 32], (Instant, Arc<[ExternalScore]>)>,
    order: VecDeque<[u8; 32]>,
}

impl ScoreCache {
    /// A cache of at most `capacity` entries living `ttl` each (`capacity` 0: no caching).
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        ScoreCache {
            inner: Mutex::new(CacheInner::default()),
            capacity,
            ttl,
        }
    }

    /// The cache key of a text for a classifier.
    pub fn key(classifier: &str, text: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(classifier.as_bytes());
        h.update([0u8]);
        h.update(text.as_bytes());
        h.finalize().into()
    }

    /// A live entry.
    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<[ExternalScore]>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .map
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| Arc::clone(v))
    }

    /// Stores an entry, evicting the oldest past capacity.
    pub fn put(&self, key: [u8; 32], value: Arc<[ExternalScore]>) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.map.insert(key, (Instant::now(), value)).is_none() {
            inner.order.push_back(key);
        }
        while inner.map.len() > self.capacity {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            inner.map.remove(&old);
        }
    }

    /// Entries held (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// POSTs JSON and reads a capped success body.
async fn post_json(
    client: &HttpClient,
    uri: &Uri,
    auth: Option<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
) -> Result<Bytes, ClassifyError> {
    let mut req = Request::builder()
        .method(http::Method::POST)
        .uri(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("stormwall/", env!("CARGO_PKG_VERSION")),
        );
    if let Some((name, value)) = auth {
        req = req.header(name, value);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| ClassifyError::Request)?;
    let resp = client
        .request(req)
        .await
        .map_err(|_| ClassifyError::Transport)?;
    let (parts, body) = resp.into_parts();
    if !parts.status.is_success() {
        return Err(ClassifyError::Status(parts.status.as_u16()));
    }
    crate::http::read_capped(body, MAX_RESPONSE_BYTES, None)
        .await
        .map_err(|_| ClassifyError::Body)
}

fn secret_header(
    name: &'static str,
    prefix: &str,
    key: &Option<SecretString>,
) -> Result<Option<(HeaderName, HeaderValue)>, ClassifyError> {
    let Some(k) = key else { return Ok(None) };
    let mut v = HeaderValue::from_str(&format!("{prefix}{}", k.expose_secret()))
        .map_err(|_| ClassifyError::Request)?;
    v.set_sensitive(true);
    Ok(Some((HeaderName::from_static(name), v)))
}

fn to_json(v: &serde_json::Value) -> Result<Vec<u8>, ClassifyError> {
    serde_json::to_vec(v).map_err(|_| ClassifyError::Request)
}

/// Keeps the highest score per category.
fn push_max(out: &mut Vec<ExternalScore>, source: &str, category: Category, score: f32) {
    let score = if score.is_finite() {
        score.clamp(0.0, 1.0)
    } else {
        0.0
    };
    match out.iter_mut().find(|s| s.category == category) {
        Some(s) => s.score = s.score.max(score),
        None => out.push(ExternalScore {
            source: source.to_owned(),
            category,
            score,
        }),
    }
}

struct AzureContentSafety {
    uri: Uri,
    key: Option<SecretString>,
}

#[derive(Deserialize)]
struct AzureAnalyze {
    #[serde(rename = "categoriesAnalysis")]
    categories_analysis: Vec<AzureCategory>,
}

#[derive(Deserialize)]
struct AzureCategory {
    category: String,
    #[serde(default)]
    severity: Option<f32>,
}

/// Azure text:analyze: severity 0..=7 (eight levels) scaled to 0..=1.
pub fn parse_azure_analyze(body: &[u8], source: &str) -> Result<Vec<ExternalScore>, ClassifyError> {
    let r: AzureAnalyze = serde_json::from_slice(body).map_err(|_| ClassifyError::Shape)?;
    let mut out = Vec::new();
    for c in r.categories_analysis {
        if let Some(cat) = Category::from_taxonomy(&c.category) {
            push_max(&mut out, source, cat, c.severity.unwrap_or(0.0) / 7.0);
        }
    }
    Ok(out)
}

impl Classifier for AzureContentSafety {
    fn classify<'a>(&'a self, client: &'a HttpClient, text: &'a str) -> ClassifyFuture<'a> {
        Box::pin(async move {
            let body = to_json(&serde_json::json!({
                "text": text,
                "categories": ["Hate", "Sexual", "SelfHarm", "Violence"],
                "outputType": "EightSeverityLevels",
            }))?;
            let auth = secret_header("ocp-apim-subscription-key", "", &self.key)?;
            let resp = post_json(client, &self.uri, auth, body).await?;
            parse_azure_analyze(&resp, "azure_content_safety")
        })
    }
}

struct AzurePromptShields {
    uri: Uri,
    key: Option<SecretString>,
}

#[derive(Deserialize)]
struct ShieldResponse {
    #[serde(rename = "userPromptAnalysis")]
    user_prompt_analysis: ShieldAnalysis,
}

#[derive(Deserialize)]
struct ShieldAnalysis {
    #[serde(rename = "attackDetected")]
    attack_detected: bool,
}

/// Prompt Shields: an attack on the user prompt is a jailbreak with score 1.
pub fn parse_prompt_shields(
    body: &[u8],
    source: &str,
) -> Result<Vec<ExternalScore>, ClassifyError> {
    let r: ShieldResponse = serde_json::from_slice(body).map_err(|_| ClassifyError::Shape)?;
    let mut out = Vec::new();
    push_max(
        &mut out,
        source,
        Category::Jailbreak,
        if r.user_prompt_analysis.attack_detected {
            1.0
        } else {
            0.0
        },
    );
    Ok(out)
}

impl Classifier for AzurePromptShields {
    fn classify<'a>(&'a self, client: &'a HttpClient, text: &'a str) -> ClassifyFuture<'a> {
        Box::pin(async move {
            let body = to_json(&serde_json::json!({"userPrompt": text, "documents": []}))?;
            let auth = secret_header("ocp-apim-subscription-key", "", &self.key)?;
            let resp = post_json(client, &self.uri, auth, body).await?;
            parse_prompt_shields(&resp, "azure_prompt_shields")
        })
    }
}

struct OpenAiModeration {
    uri: Uri,
    key: Option<SecretString>,
    model: String,
}

#[derive(Deserialize)]
struct ModerationResponse {
    results: Vec<ModerationResult>,
}

#[derive(Deserialize)]
struct ModerationResult {
    category_scores: BTreeMap<String, Option<f32>>,
}

/// OpenAI moderation: each `category_scores` entry mapped onto our categories (max wins).
pub fn parse_moderation(body: &[u8], source: &str) -> Result<Vec<ExternalScore>, ClassifyError> {
    let r: ModerationResponse = serde_json::from_slice(body).map_err(|_| ClassifyError::Shape)?;
    let mut out = Vec::new();
    for result in r.results {
        for (name, score) in result.category_scores {
            if let (Some(cat), Some(s)) = (Category::from_taxonomy(&name), score) {
                push_max(&mut out, source, cat, s);
            }
        }
    }
    Ok(out)
}

impl Classifier for OpenAiModeration {
    fn classify<'a>(&'a self, client: &'a HttpClient, text: &'a str) -> ClassifyFuture<'a> {
        Box::pin(async move {
            let body = to_json(&serde_json::json!({"model": self.model, "input": text}))?;
            let auth = secret_header("authorization", "Bearer ", &self.key)?;
            let resp = post_json(client, &self.uri, auth, body).await?;
            parse_moderation(&resp, "openai_moderation")
        })
    }
}

struct LlamaGuard {
    uri: Uri,
    key: Option<SecretString>,
    model: String,
}

/// The Llama Guard 3 hazard taxonomy (S1..S14) in our categories; `None` for hazards we do
/// not score (specialized advice, intellectual property, elections).
pub fn llama_guard_category(code: &str) -> Option<Category> {
    let n: u8 = code.trim().strip_prefix(['S', 's'])?.parse().ok()?;
    Some(match n {
        1 => Category::Violence,     // violent crimes
        2 => Category::Illicit,      // non-violent crimes
        3 => Category::Sexual,       // sex-related crimes
        4 => Category::SexualMinors, // child sexual exploitation
        5 => Category::Harassment,   // defamation
        7 => Category::Harassment,   // privacy
        9 => Category::Illicit,      // indiscriminate weapons
        10 => Category::Hate,        // hate
        11 => Category::SelfHarm,    // suicide and self-harm
        12 => Category::Sexual,      // sexual content
        14 => Category::Illicit,     // code interpreter abuse
        _ => return None,            // 6 advice, 8 IP, 13 elections
    })
}

/// The Llama Guard 3 prompt for one user message.
pub fn llama_guard_prompt(text: &str) -> String {
    format!(
        "Task: Check if there is unsafe content in 'User' messages in conversations according our safety policy with the below categories.\n\n\
<BEGIN UNSAFE CONTENT CATEGORIES>\n\
S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\nS5: Defamation.\n\
S6: Specialized Advice.\nS7: Privacy.\nS8: Intellectual Property.\nS9: Indiscriminate Weapons.\nS10: Hate.\n\
S11: Self-Harm.\nS12: Sexual Content.\nS13: Elections.\nS14: Code Interpreter Abuse.\n\
<END UNSAFE CONTENT CATEGORIES>\n\n\
<BEGIN CONVERSATION>\n\nUser: {text}\n\n<END CONVERSATION>\n\n\
Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n\
 - First line must read 'safe' or 'unsafe'.\n\
 - If unsafe, a second line must include a comma-separated list of violated categories."
    )
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<ChatChoice>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatMessage,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Option<String>,
}

/// A judge's answer: `safe`, or `unsafe` with the violated codes on the next line (score 1).
pub fn parse_llama_guard(body: &[u8], source: &str) -> Result<Vec<ExternalScore>, ClassifyError> {
    let r: ChatResponse = serde_json::from_slice(body).map_err(|_| ClassifyError::Shape)?;
    let content = r
        .choices
        .first()
        .and_then(|c| c.message.content.as_deref())
        .ok_or(ClassifyError::Shape)?;
    let mut lines = content.trim().lines();
    let mut out = Vec::new();
    match lines
        .next()
        .map(|l| l.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("safe") => Ok(out),
        Some("unsafe") => {
            for code in lines.next().unwrap_or("").split(',') {
                if let Some(cat) = llama_guard_category(code) {
                    push_max(&mut out, source, cat, 1.0);
                }
            }
            Ok(out)
        }
        _ => Err(ClassifyError::Shape),
    }
}

impl Classifier for LlamaGuard {
    fn classify<'a>(&'a self, client: &'a HttpClient, text: &'a str) -> ClassifyFuture<'a> {
        Box::pin(async move {
            let body = to_json(&serde_json::json!({
                "model": self.model,
                "messages": [{"role": "user", "content": llama_guard_prompt(text)}],
                "max_tokens": 16,
                "temperature": 0,
            }))?;
            let auth = secret_header("authorization", "Bearer ", &self.key)?;
            let resp = post_json(client, &self.uri, auth, body).await?;
            parse_llama_guard(&resp, "llama_guard")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_severity_scales() {
        let s = parse_azure_analyze(
            br#"{"blocklistsMatch":[],"categoriesAnalysis":[{"category":"Hate","severity":0},{"category":"Sexual","severity":7},{"category":"SelfHarm","severity":2},{"category":"Violence"}]}"#,
            "a",
        )
        .unwrap();
        let get = |c| s.iter().find(|x| x.category == c).unwrap().score;
        assert!((get(Category::Sexual) - 1.0).abs() < 1e-6);
        assert!((get(Category::SelfHarm) - 2.0 / 7.0).abs() < 1e-6);
        assert_eq!(get(Category::Hate), 0.0);
        assert!(parse_azure_analyze(b"{}", "a").is_err());
    }

    #[test]
    fn prompt_shields_and_moderation() {
        let s = parse_prompt_shields(
            br#"{"userPromptAnalysis":{"attackDetected":true},"documentsAnalysis":[]}"#,
            "p",
        )
        .unwrap();
        assert_eq!(s[0].category, Category::Jailbreak);
        assert_eq!(s[0].score, 1.0);
        let m = parse_moderation(
            br#"{"id":"m","model":"omni","results":[{"flagged":true,"categories":{},"category_scores":{"sexual":0.2,"sexual/minors":0.01,"self-harm/intent":0.7,"self-harm":0.3,"violence/graphic":0.4,"illicit":null}}]}"#,
            "o",
        )
        .unwrap();
        let get = |c| m.iter().find(|x| x.category == c).map(|x| x.score);
        assert_eq!(get(Category::SelfHarm), Some(0.7));
        assert_eq!(get(Category::Sexual), Some(0.2));
        assert_eq!(get(Category::Violence), Some(0.4));
        assert_eq!(get(Category::Illicit), None);
    }

    #[test]
    fn llama_guard_answers() {
        let body = |c: &str| {
            serde_json::json!({"choices":[{"message":{"role":"assistant","content":c}}]})
                .to_string()
        };
        assert!(
            parse_llama_guard(body("safe").as_bytes(), "j")
                .unwrap()
                .is_empty()
        );
        let s = parse_llama_guard(body("unsafe\nS1,S3, S13").as_bytes(), "j").unwrap();
        let cats: Vec<_> = s.iter().map(|x| x.category).collect();
        assert_eq!(cats, vec![Category::Violence, Category::Sexual]);
        assert!(parse_llama_guard(body("maybe").as_bytes(), "j").is_err());
        assert_eq!(llama_guard_category("S4"), Some(Category::SexualMinors));
        assert_eq!(llama_guard_category("S99"), None);
        assert!(llama_guard_prompt("hi").contains("User: hi"));
    }

    #[test]
    fn cache_is_bounded_and_expires() {
        let c = ScoreCache::new(2, Duration::from_secs(60));
        let v: Arc<[ExternalScore]> = Vec::new().into();
        for t in ["a", "b", "c"] {
            c.put(ScoreCache::key("x", t), Arc::clone(&v));
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&ScoreCache::key("x", "a")).is_none());
        assert!(c.get(&ScoreCache::key("x", "c")).is_some());
        assert!(c.get(&ScoreCache::key("y", "c")).is_none());
        let expired = ScoreCache::new(2, Duration::ZERO);
        expired.put(ScoreCache::key("x", "a"), v);
        assert!(expired.get(&ScoreCache::key("x", "a")).is_none());
    }

    #[test]
    fn fail_policy_per_category() {
        let env = |_: &str| Some("k".to_owned());
        let mut cfg: ClassifierConfig = serde_json::from_value(serde_json::json!({
            "kind": "openai_moderation", "url": "https://api.example/v1", "api_key_env": "K",
            "fail": {"default": "open", "sexual_minors": "closed"}
        }))
        .unwrap();
        let c = ExternalClassifier::from_config(&cfg, &env).unwrap();
        let mut v = Verdict::allow(stormwall_safety::Kind::Chat);
        assert!(!c.fails_closed(&v));
        v.categories.push(stormwall_safety::CategoryScore {
            category: Category::SexualMinors,
            score: 0.3,
            action: stormwall_safety::Action::Allow,
            detector: stormwall_safety::Detector::Lexicon,
            source: None,
            evidence: None,
        });
        assert!(c.fails_closed(&v));
        cfg.fail = FailPolicy::PerCategory([("nope".to_owned(), FailMode::Closed)].into());
        assert!(ExternalClassifier::from_config(&cfg, &env).is_err());
        cfg.fail = FailPolicy::All(FailMode::Open);
        assert!(ExternalClassifier::from_config(&cfg, &|_| None).is_err());
        cfg.url = "ftp://x".into();
        assert!(ExternalClassifier::from_config(&cfg, &env).is_err());
    }
}
