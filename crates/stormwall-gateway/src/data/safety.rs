//! The screen stages: prompts are screened after admission and before forwarding, outputs
//! while they are relayed. The screener (`stormwall-safety`) is pure; this module picks the
//! profile for a key, records verdicts on the event (category, action, score, view and the
//! byte range of the match — never text; the whole prompt only when the profile keeps
//! evidence), runs external
//! classifiers ([`crate::data::classify`]) and screens streamed output incrementally.
//!
//! Profiles: the key's `policy_profile`, else the tenant's from `[safety] tenant_profiles`,
//! else `default_profile`. Image endpoints are also held to `image_profile` (the built-in
//! `default`, strict on images, unless configured otherwise): the stricter tier wins.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stormwall_safety::encoder::{PRECISION_ENV, PrecisionSetting};
use stormwall_safety::{
    Action, Analysis, CategoryScore, Detector, ExternalScore, Kind, Profile, ProfileError,
    SafetyError, Screener, Verdict,
};
use stormwall_types::{self as types, Endpoint, SafetyVerdict, VerdictCategory};

use crate::data::classify::{
    ClassifierConfig, ClassifierConfigError, ExternalClassifier, Failure, Mode, ScoreCache,
};
use crate::metrics::Metrics;
use crate::upstream::HttpClient;

/// Prompts longer than this are screened on the blocking pool, so one huge prompt cannot
/// stall a runtime worker.
const INLINE_SCREEN_BYTES: usize = 64 * 1024;

/// `[safety]`: content screening of prompts and outputs.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SafetyConfig {
    /// Screen at all.
    pub enabled: bool,
    /// Profile for keys with no `policy_profile` and tenants not in `tenant_profiles`.
    pub default_profile: String,
    /// Tenant → profile name.
    pub tenant_profiles: BTreeMap<String, String>,
    /// Image endpoints are held to this profile as well as the key's (the stricter tier
    /// wins); `""` uses the key's profile alone.
    pub image_profile: String,
    /// Directory of extra profile files (`*.toml`, the `stormwall-safety` profile format).
    pub profiles_dir: Option<PathBuf>,
    /// Extra profiles inline (`[[safety.profiles]]`, same format as a profile file).
    pub profiles: Vec<toml::Table>,
    /// Person gazetteer the operator supplies (`[[person]] name, aliases`), for the
    /// real-person and likeness categories.
    pub gazetteer_path: Option<PathBuf>,
    /// Screen non-streamed and streamed outputs (chat, completions, responses; images'
    /// `revised_prompt`).
    pub screen_output: bool,
    /// External classifiers.
    pub classifiers: Vec<ClassifierConfig>,
    /// Classifier results cached (by SHA-256 of the text).
    pub cache_entries: usize,
    /// Seconds a cached classifier result lives.
    pub cache_ttl_secs: u64,
    /// Directory of the encoder tier's sentence encoder (`config.json`, `tokenizer.json`,
    /// `model.safetensors`; `stormwall safety model fetch` fills it). Unset, or set without
    /// the files, the fast tier screens alone (`config check` and `/readyz` say so).
    pub encoder_dir: Option<PathBuf>,
    /// Number format of the encoder's linear layers: `auto` (int8 where the processor runs a
    /// SIMD int8 kernel, f32 elsewhere), `int8` or `f32`. `STORMWALL_ENCODER_PRECISION`, when
    /// set, overrides it.
    pub encoder_precision: PrecisionSetting,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        SafetyConfig {
            enabled: true,
            default_profile: "default".to_owned(),
            tenant_profiles: BTreeMap::new(),
            image_profile: "default".to_owned(),
            profiles_dir: None,
            profiles: Vec::new(),
            gazetteer_path: None,
            screen_output: true,
            classifiers: Vec::new(),
            cache_entries: 10_000,
            cache_ttl_secs: 600,
            encoder_dir: None,
            encoder_precision: PrecisionSetting::Auto,
        }
    }
}

/// An invalid `[safety]` section.
#[derive(Debug, thiserror::Error)]
pub enum SafetyConfigError {
    /// A name that is no built-in profile and no configured one.
    #[error(
        "[safety] {field}: unknown profile {name:?} (known: {known}); add it to profiles_dir or [[safety.profiles]]"
    )]
    UnknownProfile {
        /// The field naming it.
        field: String,
        /// The name.
        name: String,
        /// Known names, comma-separated.
        known: String,
    },
    /// A profile file or inline profile is invalid.
    #[error("[safety] profile {origin}: {source}")]
    Profile {
        /// File path or `[[safety.profiles]] #N`.
        origin: String,
        /// Cause.
        source: ProfileError,
    },
    /// Two profiles share a name.
    #[error("[safety] two profiles are named {0:?}")]
    DuplicateProfile(String),
    /// A file or directory could not be read.
    #[error("[safety] cannot read {path}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The gazetteer or the built-in lexicons did not load.
    #[error("[safety] screener: {0}")]
    Screener(#[from] SafetyError),
    /// A classifier entry is invalid.
    #[error(transparent)]
    Classifier(#[from] ClassifierConfigError),
    /// `STORMWALL_ENCODER_PRECISION` holds no precision setting.
    #[error("[safety] encoder_precision: {0}")]
    Precision(stormwall_safety::encoder::EncoderError),
    /// The encoder model's files are there but do not load.
    #[error("[safety] encoder_dir {path}: {source}")]
    Encoder {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: stormwall_safety::encoder::EncoderError,
    },
}

/// Whether the encoder tier has its model, in words for `config check` and `/readyz`.
pub fn encoder_summary(c: &SafetyConfig) -> String {
    match &c.encoder_dir {
        _ if !c.enabled => "safety: off".to_owned(),
        None => "safety: fast tier only (no [safety] encoder_dir)".to_owned(),
        Some(d) if !stormwall_safety::encoder::has_model_files(d) => format!(
            "safety: fast tier only (no encoder model in {}; run `stormwall safety model fetch`)",
            d.display()
        ),
        Some(d) => format!("safety: encoder model in {}", d.display()),
    }
}

/// A profile ready for both endpoint kinds: chat uses it as is, image with `image_profile`'s
/// tiers added.
#[derive(Debug)]
struct Resolved {
    chat: Arc<Profile>,
    image: Arc<Profile>,
}

impl Resolved {
    fn for_kind(&self, kind: Kind) -> &Arc<Profile> {
        match kind {
            Kind::Chat => &self.chat,
            Kind::Image => &self.image,
        }
    }
}

/// The running safety stage: screener, profiles, classifiers and their cache.
pub struct SafetyStage {
    screener: Arc<Screener>,
    profiles: HashMap<String, Resolved>,
    default_profile: String,
    tenant_profiles: HashMap<String, String>,
    screen_output: bool,
    classifiers: Vec<Arc<ExternalClassifier>>,
    cache: ScoreCache,
    encoder: Option<Arc<stormwall_safety::encoder::Encoder>>,
    encoder_summary: String,
}

impl std::fmt::Debug for SafetyStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetyStage")
            .field("profiles", &self.profiles.keys().collect::<Vec<_>>())
            .field("classifiers", &self.classifiers)
            .finish_non_exhaustive()
    }
}

fn read(path: &std::path::Path) -> Result<String, SafetyConfigError> {
    std::fs::read_to_string(path).map_err(|source| SafetyConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

impl SafetyStage {
    /// Builds the stage (`None` when `enabled = false`). Unknown profile names, bad profile
    /// files, an unreadable gazetteer and bad classifier entries are errors here, at start-up.
    pub fn from_config(
        c: &SafetyConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<SafetyStage>, SafetyConfigError> {
        if !c.enabled {
            return Ok(None);
        }
        let mut raw: BTreeMap<String, Profile> = BTreeMap::new();
        for name in Profile::builtin_names() {
            if let Some(p) = Profile::builtin(name) {
                raw.insert(name.to_owned(), p);
            }
        }
        let mut add = |origin: String, p: Result<Profile, ProfileError>| {
            let p = p.map_err(|source| SafetyConfigError::Profile { origin, source })?;
            if raw.contains_key(p.name()) {
                return Err(SafetyConfigError::DuplicateProfile(p.name().to_owned()));
            }
            raw.insert(p.name().to_owned(), p);
            Ok(())
        };
        if let Some(dir) = &c.profiles_dir {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|source| SafetyConfigError::Read {
                    path: dir.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for f in files {
                add(f.display().to_string(), Profile::from_toml(&read(&f)?))?;
            }
        }
        for (i, table) in c.profiles.iter().enumerate() {
            let origin = format!("[[safety.profiles]] #{}", i + 1);
            add(origin, Profile::from_table(table.clone()))?;
        }
        let known = raw.keys().cloned().collect::<Vec<_>>().join(", ");
        let check = |field: String, name: &str| {
            if raw.contains_key(name) {
                Ok(())
            } else {
                Err(SafetyConfigError::UnknownProfile {
                    field,
                    name: name.to_owned(),
                    known: known.clone(),
                })
            }
        };
        check("default_profile".to_owned(), &c.default_profile)?;
        for (tenant, name) in &c.tenant_profiles {
            check(format!("tenant_profiles.{tenant}"), name)?;
        }
        let floor = if c.image_profile.is_empty() {
            None
        } else {
            check("image_profile".to_owned(), &c.image_profile)?;
            raw.get(&c.image_profile).cloned()
        };
        let mut profiles = HashMap::new();
        for (name, p) in raw {
            let image = match &floor {
                Some(f) => p.with_floor(f, Kind::Image),
                None => p.clone(),
            };
            profiles.insert(
                name,
                Resolved {
                    chat: Arc::new(p),
                    image: Arc::new(image),
                },
            );
        }
        // Checked even without a model, so a bad value is found before the model arrives.
        let (precision, from_env) = PrecisionSetting::with_env_override(c.encoder_precision, env)
            .map_err(SafetyConfigError::Precision)?;
        // A model that is there must load; a missing one leaves the fast tier alone.
        let encoder = match &c.encoder_dir {
            Some(d) if stormwall_safety::encoder::has_model_files(d) => Some(Arc::new(
                stormwall_safety::encoder::Encoder::from_dir_with(d, precision.resolve()).map_err(
                    |source| SafetyConfigError::Encoder {
                        path: d.clone(),
                        source,
                    },
                )?,
            )),
            _ => None,
        };
        let mut builder = Screener::builder().encoder(encoder.clone());
        if let Some(path) = &c.gazetteer_path {
            builder = builder.gazetteer_toml("gazetteer", &read(path)?)?;
        }
        let screener = Arc::new(builder.build()?);
        let mut classifiers: Vec<Arc<ExternalClassifier>> = Vec::new();
        for cc in &c.classifiers {
            let cl = ExternalClassifier::from_config(cc, env)?;
            if classifiers.iter().any(|x| x.name == cl.name) {
                return Err(ClassifierConfigError::DuplicateName(cl.name.to_string()).into());
            }
            classifiers.push(Arc::new(cl));
        }
        // What runs, not only what is configured: the kernel comes from the machine and the
        // precision setting, and the setting from the file or the environment variable.
        let encoder_summary = match &encoder {
            Some(e) => {
                let setting = if from_env {
                    format!(
                        "{PRECISION_ENV}={precision} overriding encoder_precision = \"{}\"",
                        c.encoder_precision
                    )
                } else {
                    format!("encoder_precision = \"{precision}\"")
                };
                format!(
                    "{} ({} kernel, {setting})",
                    encoder_summary(c),
                    e.kernel_name()
                )
            }
            None => encoder_summary(c),
        };
        Ok(Some(SafetyStage {
            screener,
            profiles,
            default_profile: c.default_profile.clone(),
            tenant_profiles: c
                .tenant_profiles
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            screen_output: c.screen_output,
            classifiers,
            cache: ScoreCache::new(c.cache_entries, Duration::from_secs(c.cache_ttl_secs)),
            encoder,
            encoder_summary,
        }))
    }

    /// Adds a classifier (tests and embedding programs with their own adapters).
    pub fn push_classifier(&mut self, c: ExternalClassifier) {
        self.classifiers.push(Arc::new(c));
    }

    /// The encoder tier's sentence encoder, when its model loaded.
    pub fn encoder(&self) -> Option<&Arc<stormwall_safety::encoder::Encoder>> {
        self.encoder.as_ref()
    }

    /// Whether the encoder tier has its model, in words ([`encoder_summary`]).
    pub fn encoder_summary(&self) -> &str {
        &self.encoder_summary
    }

    /// The screener.
    pub fn screener(&self) -> &Arc<Screener> {
        &self.screener
    }

    /// The classifier result cache.
    pub fn cache(&self) -> &ScoreCache {
        &self.cache
    }

    /// Whether a profile of this name is configured (built-in or from `[safety]`).
    pub fn knows_profile(&self, name: &str) -> bool {
        self.profiles.contains_key(name)
    }

    /// Names of the configured profiles, sorted.
    pub fn profile_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The profile for a key: its `policy_profile`, else its tenant's, else the default.
    /// A key naming an unknown profile (keys change at run time) gets its tenant's profile
    /// and the second value is `false`.
    pub fn profile_for(
        &self,
        tenant: &str,
        key_profile: Option<&str>,
        kind: Kind,
    ) -> (Arc<Profile>, bool) {
        let fallback = self
            .tenant_profiles
            .get(tenant)
            .and_then(|n| self.profiles.get(n))
            .or_else(|| self.profiles.get(&self.default_profile));
        let (resolved, known) = match key_profile {
            Some(name) => match self.profiles.get(name) {
                Some(r) => (Some(r), true),
                None => (fallback, false),
            },
            None => (fallback, true),
        };
        let profile = resolved.map_or_else(
            || Arc::new(Profile::default()),
            |r| Arc::clone(r.for_kind(kind)),
        );
        (profile, known)
    }

    /// Scores a text for an endpoint kind, through the cascade when the encoder is loaded
    /// (on the blocking pool when the text is long or the encoder may run).
    #[allow(clippy::disallowed_methods)] // spawn_blocking awaited here; the text is within the body cap
    pub async fn analyze(self: &Arc<Self>, text: Arc<str>, kind: Kind) -> Analysis {
        if text.len() <= INLINE_SCREEN_BYTES && !self.screener.has_encoder() {
            return self.screener.analyze_for(&text, kind);
        }
        let screener = Arc::clone(&self.screener);
        let t = Arc::clone(&text);
        match tokio::task::spawn_blocking(move || screener.analyze_for(&t, kind)).await {
            Ok(a) => a,
            // The blocking pool is gone (shutdown): screen inline rather than skip.
            Err(_) => self.screener.analyze_for(&text, kind),
        }
    }

    /// Whether outputs are screened.
    pub fn screens_output(&self) -> bool {
        self.screen_output
    }

    /// Classifiers in a mode.
    pub fn classifiers(&self, mode: Mode) -> impl Iterator<Item = &Arc<ExternalClassifier>> {
        self.classifiers.iter().filter(move |c| c.mode == mode)
    }

    /// Runs the enforce-mode classifiers concurrently and merges their scores into
    /// `verdict`. A failure records a `classifier_timeout` / `classifier_error` verdict and,
    /// when the classifier fails closed for this text, blocks.
    pub async fn enforce(
        &self,
        client: &HttpClient,
        metrics: &Metrics,
        text: &str,
        verdict: &mut Verdict,
        profile: &Profile,
        notes: &mut Vec<SafetyVerdict>,
    ) -> bool {
        let set: Vec<&Arc<ExternalClassifier>> = self.classifiers(Mode::Enforce).collect();
        if set.is_empty() {
            return false;
        }
        let runs = set
            .iter()
            .map(|c| crate::data::classify::run_one(c, client, &self.cache, text));
        let results = futures_util::future::join_all(runs).await;
        let mut fail_closed = false;
        let mut scores: Vec<ExternalScore> = Vec::new();
        for (c, (outcome, hit)) in set.iter().zip(results) {
            metrics.safety.classifier_call(&c.name, &outcome, hit);
            match outcome {
                Ok(s) => scores.extend(s.iter().cloned()),
                Err(f) => {
                    // The local verdict: the external scores are merged only after the loop.
                    let closed = c.fails_closed(verdict);
                    fail_closed |= closed;
                    notes.push(failure_verdict(&c.name, f, closed));
                }
            }
        }
        verdict.merge_external(&scores, profile);
        fail_closed
    }

    /// Starts the flag-mode classifiers alongside the upstream call; the handle yields the
    /// verdicts to annotate the event with. `None` when there are none.
    #[allow(clippy::disallowed_methods)] // bounded by each classifier's timeout; joined by the request's finisher
    pub fn spawn_flag(
        self: &Arc<Self>,
        client: &HttpClient,
        metrics_hook: Arc<crate::metrics::SafetyMetrics>,
        text: Arc<str>,
        local: Verdict,
        profile: Arc<Profile>,
    ) -> Option<tokio::task::JoinHandle<Vec<SafetyVerdict>>> {
        self.classifiers(Mode::Flag).next()?;
        let stage = Arc::clone(self);
        let client = client.clone();
        Some(tokio::spawn(async move {
            let set: Vec<&Arc<ExternalClassifier>> = stage.classifiers(Mode::Flag).collect();
            let runs = set
                .iter()
                .map(|c| crate::data::classify::run_one(c, &client, &stage.cache, &text));
            let results = futures_util::future::join_all(runs).await;
            let mut notes = Vec::new();
            let mut scores = Vec::new();
            for (c, (outcome, hit)) in set.iter().zip(results) {
                metrics_hook.classifier_call(&c.name, &outcome, hit);
                match outcome {
                    Ok(s) => scores.extend(s.iter().cloned()),
                    Err(f) => notes.push(failure_verdict(&c.name, f, false)),
                }
            }
            // Only what the classifiers changed: the local verdict is recorded already.
            let mut merged = local;
            merged.merge_external(&scores, &profile);
            for c in &merged.categories {
                if c.detector != Detector::External || c.action == Action::Allow {
                    continue;
                }
                // Flag mode never blocked anything: record at most `flag`.
                let mut cs = c.clone();
                cs.action = cs.action.min(Action::Flag);
                notes.push(record_one(&cs, types::SafetyStage::Input, None));
            }
            notes
        }))
    }
}

/// What the later stages need from a screened request: the profile for its output, and
/// the flag-mode classifiers still running.
pub struct RequestSafety {
    /// The stage.
    pub stage: Arc<SafetyStage>,
    /// The key's profile for this endpoint kind.
    pub profile: Arc<Profile>,
    /// Kind the output is screened as.
    pub kind: Kind,
    /// Flag-mode classifiers running alongside the upstream call.
    pub pending: Option<tokio::task::JoinHandle<Vec<SafetyVerdict>>>,
}

impl RequestSafety {
    /// A guard for the streamed output, when outputs are screened.
    pub fn stream_guard(&self) -> Option<StreamGuard> {
        self.stage
            .screens_output()
            .then(|| StreamGuard::new(&self.stage, Arc::clone(&self.profile), self.kind))
    }
}

/// The verdict recorded when a classifier failed.
fn failure_verdict(name: &str, f: Failure, closed: bool) -> SafetyVerdict {
    SafetyVerdict {
        category: f.category(),
        action: if closed { Action::Block } else { Action::Log },
        score: 1.0,
        stage: types::SafetyStage::Input,
        source: Some(name.to_owned()),
        ..Default::default()
    }
}

/// The screened text of an endpoint's request, if it is screened at all.
pub fn input_kind(endpoint: Endpoint) -> Option<Kind> {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Responses => Some(Kind::Chat),
        Endpoint::ImagesGenerations => Some(Kind::Image),
        _ => None,
    }
}

fn record_one(
    c: &CategoryScore,
    stage: types::SafetyStage,
    evidence: Option<&str>,
) -> SafetyVerdict {
    // A model score covers a whole view: its "range" would be the whole prompt. Only the
    // place of a match is recorded, never the matched text.
    let range = match &c.evidence {
        Some(ev) if !matches!(c.detector, Detector::Model | Detector::Signals) => {
            Some(ev.span.clone().into())
        }
        _ => None,
    };
    SafetyVerdict {
        category: VerdictCategory::Content(c.category),
        action: c.action,
        score: c.score,
        stage,
        view: c.evidence.as_ref().map(|e| e.view.as_str().to_owned()),
        range,
        evidence: evidence.map(str::to_owned),
        source: c.source.clone(),
    }
}

/// The verdicts to record for a screened text: every category the profile acted on (log,
/// flag, block), with its view and the byte range of the match in the whole screened text
/// (never the matched text); the whole text, on the decisive one only, when the profile
/// keeps evidence and the action is flag or block. `text` is what was screened (streams
/// screen a window of the output; ranges stay in the whole output's coordinates).
pub fn record(
    verdict: &Verdict,
    stage: types::SafetyStage,
    text: &str,
    profile: &Profile,
) -> Vec<SafetyVerdict> {
    let keep = profile.keep_evidence() && verdict.action >= Action::Flag;
    verdict
        .categories
        .iter()
        .filter(|c| c.action > Action::Allow)
        .enumerate()
        .map(|(i, c)| record_one(c, stage, (keep && i == 0).then_some(text)))
        .collect()
}

/// Counts verdicts in the metrics.
pub fn count(metrics: &Metrics, stage: types::SafetyStage, verdict: &Verdict) {
    metrics.safety.screened(stage.as_str());
    for c in verdict
        .categories
        .iter()
        .filter(|c| c.action > Action::Allow)
    {
        metrics
            .safety
            .action(stage.as_str(), c.category.as_str(), c.action.as_str());
    }
}

#[derive(serde::Deserialize)]
struct OutputDoc<'a> {
    #[serde(borrow, default)]
    choices: Vec<OutputChoice<'a>>,
    #[serde(borrow, default)]
    output: Vec<OutputItem<'a>>,
    #[serde(borrow, default)]
    data: Vec<ImageDatum<'a>>,
}

#[derive(serde::Deserialize)]
struct OutputChoice<'a> {
    #[serde(borrow, default)]
    message: Option<OutputMessage<'a>>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct OutputMessage<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct OutputItem<'a> {
    #[serde(borrow, default)]
    content: Vec<OutputPart<'a>>,
}

#[derive(serde::Deserialize)]
struct OutputPart<'a> {
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct ImageDatum<'a> {
    #[serde(borrow, default)]
    revised_prompt: Option<std::borrow::Cow<'a, str>>,
}

/// The text of a non-streamed response to screen, and the kind to screen it as: chat and
/// completions choices, responses output text, and images' `revised_prompt` (what the
/// model drew). `None` when there is nothing to screen.
pub fn output_text(endpoint: Endpoint, body: &[u8]) -> Option<(String, Kind)> {
    let kind = input_kind(endpoint)?;
    let doc: OutputDoc<'_> = serde_json::from_slice(body).ok()?;
    let mut text = String::new();
    let mut push = |t: &str| {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(t);
    };
    for c in &doc.choices {
        if let Some(t) = c.message.as_ref().and_then(|m| m.content.as_deref()) {
            push(t);
        }
        if let Some(t) = c.text.as_deref() {
            push(t);
        }
    }
    for item in &doc.output {
        for p in &item.content {
            if let Some(t) = p.text.as_deref() {
                push(t);
            }
        }
    }
    for d in &doc.data {
        if let Some(t) = d.revised_prompt.as_deref() {
            push(t);
        }
    }
    (!text.is_empty()).then_some((text, kind))
}

/// Screens a streamed output incrementally over a
/// [`StreamWindow`](stormwall_safety::stream::StreamWindow), as `OutputScreener` does — but
/// owning its screener and profile, so a relay that outlives the handler can hold it, and
/// keeping what to record from the window that decided.
#[derive(Debug)]
pub struct StreamGuard {
    screener: Arc<Screener>,
    profile: Arc<Profile>,
    kind: Kind,
    window: stormwall_safety::stream::StreamWindow,
    verdict: Verdict,
    recorded: Vec<SafetyVerdict>,
}

impl StreamGuard {
    /// A guard for one streamed response.
    pub fn new(stage: &SafetyStage, profile: Arc<Profile>, kind: Kind) -> Self {
        StreamGuard {
            screener: Arc::clone(&stage.screener),
            profile,
            kind,
            window: Default::default(),
            verdict: Verdict::allow(kind),
            recorded: Vec::new(),
        }
    }

    /// Adds a delta; `true` once the output is blocked.
    pub fn push(&mut self, delta: &str) -> bool {
        if self.verdict.is_blocked() {
            return true;
        }
        if self.window.push(delta) {
            self.screen_buffer();
        }
        self.verdict.is_blocked()
    }

    /// Screens what is left; the verdicts to record for the whole output.
    pub fn finish(&mut self) -> (Verdict, Vec<SafetyVerdict>) {
        if self.window.has_unscreened() && !self.verdict.is_blocked() {
            self.screen_buffer();
        }
        (self.verdict.clone(), std::mem::take(&mut self.recorded))
    }

    fn screen_buffer(&mut self) {
        let v = self.window.screen(&self.screener, self.kind, &self.profile);
        // Spans are in this window now; after trimming they could not be read back.
        let before = self.verdict.action;
        self.verdict.merge(&v, &self.profile);
        if v.action > Action::Allow && (v.action > before || self.recorded.is_empty()) {
            let (text, _) = self.window.text();
            self.recorded = record(&v, types::SafetyStage::Output, text, &self.profile);
        }
        self.window.advance();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stormwall_safety::Category;

    fn stage(c: &SafetyConfig) -> Result<Option<SafetyStage>, SafetyConfigError> {
        SafetyStage::from_config(c, &|_| None)
    }

    #[test]
    fn readiness_names_the_encoders_kernel_when_the_model_loads() {
        // scripts/test fetches the model; without it only the fast-tier wording is checked.
        let dir = std::env::var_os("STORMWALL_TEST_ENCODER_DIR").map(std::path::PathBuf::from);
        let c = SafetyConfig {
            encoder_dir: dir.clone(),
            ..Default::default()
        };
        let s = stage(&c).unwrap().unwrap();
        if dir.is_some() {
            let summary = s.encoder_summary();
            assert!(
                summary.starts_with("safety: encoder model in ")
                    && summary.ends_with(" kernel, encoder_precision = \"auto\")"),
                "{summary}"
            );
            assert!(
                summary.contains("(f32 kernel") || summary.contains("(int8/"),
                "{summary}"
            );
        } else {
            assert!(s.encoder_summary().contains("fast tier only"));
        }
    }

    #[test]
    fn the_configured_precision_reaches_the_loaded_encoder() {
        use stormwall_safety::encoder::Precision;
        let dir = tempfile::tempdir().unwrap();
        stormwall_testkit::write_tiny_encoder(dir.path()).unwrap();
        let config = |p: PrecisionSetting| SafetyConfig {
            encoder_dir: Some(dir.path().to_owned()),
            encoder_precision: p,
            ..Default::default()
        };
        for (setting, want) in [
            (PrecisionSetting::F32, Precision::F32),
            (PrecisionSetting::Int8, Precision::Int8),
            (PrecisionSetting::Auto, Precision::auto()),
        ] {
            let s = stage(&config(setting)).unwrap().unwrap();
            let e = s.encoder().expect("the tiny model loads");
            assert_eq!(e.precision(), want, "{setting}");
            assert!(
                e.embed("cat")
                    .is_ok_and(|v| v.len() == stormwall_testkit::TINY_ENCODER_DIM)
            );
            let summary = s.encoder_summary();
            assert!(
                summary.contains(&format!("({} kernel, ", e.kernel_name()))
                    && summary.ends_with(&format!("encoder_precision = \"{setting}\")")),
                "{summary}"
            );
        }
        // The environment variable wins over the file, and the summary says so.
        let env = |n: &str| (n == PRECISION_ENV).then(|| "f32".to_owned());
        let s = SafetyStage::from_config(&config(PrecisionSetting::Int8), &env)
            .unwrap()
            .unwrap();
        assert_eq!(s.encoder().map(|e| e.precision()), Some(Precision::F32));
        assert!(
            s.encoder_summary().ends_with(
                "(f32 kernel, STORMWALL_ENCODER_PRECISION=f32 overriding encoder_precision = \"int8\")"
            ),
            "{}",
            s.encoder_summary()
        );
        // Set but empty: the file decides.
        let empty = |_: &str| Some(String::new());
        let s = SafetyStage::from_config(&config(PrecisionSetting::Int8), &empty)
            .unwrap()
            .unwrap();
        assert_eq!(s.encoder().map(|e| e.precision()), Some(Precision::Int8));
    }

    #[test]
    fn a_bad_precision_in_the_environment_is_a_config_error_even_without_a_model() {
        let bad = |n: &str| (n == PRECISION_ENV).then(|| "fp16".to_owned());
        let e = SafetyStage::from_config(&SafetyConfig::default(), &bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("[safety] encoder_precision")
                && e.contains("STORMWALL_ENCODER_PRECISION=\"fp16\"")
                && e.contains("auto, int8 or f32"),
            "{e}"
        );
        // Screening off: nothing is loaded, nothing checked.
        let off = SafetyConfig {
            enabled: false,
            ..Default::default()
        };
        assert!(SafetyStage::from_config(&off, &bad).unwrap().is_none());
    }

    #[test]
    fn encoder_precision_is_read_from_the_safety_section() {
        let read = |t: &str| toml::from_str::<SafetyConfig>(t).map(|c| c.encoder_precision);
        assert_eq!(read("").ok(), Some(PrecisionSetting::Auto));
        assert_eq!(
            read("encoder_precision = \"int8\"").ok(),
            Some(PrecisionSetting::Int8)
        );
        assert_eq!(
            read("encoder_precision = \"f32\"").ok(),
            Some(PrecisionSetting::F32)
        );
        let e = read("encoder_precision = \"half\"")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("encoder_precision") && e.contains("half") && e.contains("`int8`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_profiles_are_config_errors() {
        let mut c = SafetyConfig {
            default_profile: "nope".into(),
            ..Default::default()
        };
        let e = stage(&c).unwrap_err().to_string();
        assert!(e.contains("default_profile") && e.contains("nope"), "{e}");
        c.default_profile = "default".into();
        c.tenant_profiles.insert("acme".into(), "stirct".into());
        assert!(
            stage(&c)
                .unwrap_err()
                .to_string()
                .contains("tenant_profiles.acme")
        );
        c.tenant_profiles.clear();
        c.image_profile = "x".into();
        assert!(stage(&c).is_err());
        c.image_profile = String::new();
        assert!(stage(&c).unwrap().is_some());
        c.enabled = false;
        assert!(stage(&c).unwrap().is_none());
    }

    #[test]
    fn inline_profiles_and_resolution() {
        let mut table = toml::Table::new();
        table.insert("name".into(), "kids".into());
        table.insert("extends".into(), "strict".into());
        let c = SafetyConfig {
            profiles: vec![table],
            tenant_profiles: [("school".to_owned(), "kids".to_owned())].into(),
            ..Default::default()
        };
        let s = stage(&c).unwrap().unwrap();
        assert_eq!(s.profile_for("school", None, Kind::Chat).0.name(), "kids");
        assert_eq!(s.profile_for("other", None, Kind::Chat).0.name(), "default");
        assert_eq!(
            s.profile_for("other", Some("permissive"), Kind::Chat)
                .0
                .name(),
            "permissive"
        );
        let (p, known) = s.profile_for("school", Some("missing"), Kind::Chat);
        assert!(!known);
        assert_eq!(p.name(), "kids");
        // Image: the permissive profile is held to the default image tiers.
        let (img, _) = s.profile_for("x", Some("permissive"), Kind::Image);
        assert_eq!(
            img.action(Kind::Image, Category::Sexual, 0.9),
            Action::Block
        );
        let (chat, _) = s.profile_for("x", Some("permissive"), Kind::Chat);
        assert_eq!(chat.action(Kind::Chat, Category::Sexual, 0.9), Action::Log);
        let mut dup = toml::Table::new();
        dup.insert("name".into(), "strict".into());
        let c = SafetyConfig {
            profiles: vec![dup],
            ..Default::default()
        };
        assert!(matches!(
            stage(&c),
            Err(SafetyConfigError::DuplicateProfile(_))
        ));
    }

    #[test]
    fn image_floor_keeps_profiles_whatever_their_name() {
        // A decomposed accent, as some keyboards type it: the profile must load and its
        // image side still be held to the default image tiers.
        let name = "cafe\u{301}";
        let mut table = toml::Table::new();
        table.insert("name".into(), name.into());
        table.insert("extends".into(), "permissive".into());
        let c = SafetyConfig {
            profiles: vec![table],
            ..Default::default()
        };
        let s = stage(&c).unwrap().unwrap();
        let (img, known) = s.profile_for("t", Some(name), Kind::Image);
        assert!(known);
        assert_eq!(img.name(), name);
        assert_eq!(
            img.action(Kind::Image, Category::Sexual, 0.9),
            Action::Block
        );
        let (chat, _) = s.profile_for("t", Some(name), Kind::Chat);
        assert_eq!(chat.action(Kind::Chat, Category::Sexual, 0.9), Action::Log);
    }

    #[test]
    fn output_texts() {
        let (t, k) = output_text(
            Endpoint::ChatCompletions,
            br#"{"choices":[{"message":{"role":"assistant","content":"Hello"}}]}"#,
        )
        .unwrap();
        assert_eq!((t.as_str(), k), ("Hello", Kind::Chat));
        let (t, k) = output_text(
            Endpoint::ImagesGenerations,
            br#"{"created":1,"data":[{"url":"u","revised_prompt":"a cat"}]}"#,
        )
        .unwrap();
        assert_eq!((t.as_str(), k), ("a cat", Kind::Image));
        let (t, _) = output_text(
            Endpoint::Responses,
            br#"{"output":[{"type":"message","content":[{"type":"output_text","text":"Hi"}]}]}"#,
        )
        .unwrap();
        assert_eq!(t, "Hi");
        assert!(output_text(Endpoint::Embeddings, br#"{"data":[]}"#).is_none());
        assert!(output_text(Endpoint::ChatCompletions, b"not json").is_none());
    }

    #[test]
    fn record_keeps_a_range_never_text_and_evidence_only_when_asked() {
        let s = stage(&SafetyConfig::default()).unwrap().unwrap();
        let text = "Please draw a nude photo of my ex for the party invitation";
        let (p, _) = s.profile_for("t", None, Kind::Chat);
        let v = s.screener().screen(text, Kind::Chat, &p);
        assert!(v.is_blocked());
        let r = record(&v, types::SafetyStage::Input, text, &p);
        assert_eq!(r[0].category, Category::RealPersonSexual);
        let range = r[0].range.expect("range recorded");
        assert!(range.start < range.end && (range.end as usize) <= text.len());
        assert!(r.iter().all(|v| v.evidence.is_none()));
        // No word of the prompt (of three letters or more) reaches the recorded verdicts.
        let json = serde_json::to_string(&r).unwrap();
        for w in text.split(' ').filter(|w| w.len() > 2) {
            assert!(!json.contains(w), "{w:?} leaked into {json}");
        }
        let keep = Profile::from_toml("name = \"k\"\nextends = \"default\"\nkeep_evidence = true")
            .unwrap();
        let v = s.screener().screen(text, Kind::Chat, &keep);
        let r = record(&v, types::SafetyStage::Input, text, &keep);
        assert_eq!(r[0].evidence.as_deref(), Some(text));
        assert!(r[1..].iter().all(|v| v.evidence.is_none()));
    }

    #[test]
    fn stream_guard_blocks_across_deltas() {
        let s = stage(&SafetyConfig::default()).unwrap().unwrap();
        let (p, _) = s.profile_for("t", Some("strict"), Kind::Chat);
        let mut g = StreamGuard::new(&s, p, Kind::Chat);
        let mut blocked = false;
        for _ in 0..10 {
            blocked |= g.push("Here is a calm story about bread and soup. ");
        }
        assert!(!blocked);
        for w in "and then an explicit sex scene follows, "
            .repeat(8)
            .split_inclusive(' ')
        {
            if g.push(w) {
                blocked = true;
                break;
            }
        }
        assert!(blocked);
        let (v, rec) = g.finish();
        assert!(v.is_blocked());
        assert_eq!(rec[0].stage, types::SafetyStage::Output);
        assert_eq!(rec[0].category, Category::Sexual);
    }
}
