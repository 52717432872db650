//! The screener: normalize → match → score, then a profile turns scores into a verdict.

use std::ops::Range;
use std::sync::Arc;

use crate::cascade::{Cascade, Heads};
use crate::encoder::{Encoder, Pooling};

use crate::category::{CATEGORY_COUNT, Category, Kind};
use crate::lexicon::{Feature, Hit, Lexicon, LexiconError, LexiconFile};
use crate::model::{Model, ModelError};
use crate::normalize::{Signals, View, ViewKind, normalize};
use crate::policy::{Action, Profile, ProfileError};
use crate::stream::OutputScreener;
use crate::verdict::{CategoryScore, Detector, Evidence, REPORT_FLOOR, Verdict};

/// The shipped model (`stormwall safety train` writes it); empty means no model.
const BUILTIN_MODEL: &[u8] = include_bytes!("../data/model.bin");
/// Texts longer than this are screened in overlapping windows, so work and memory stay
/// linear and bounded per window whatever the input.
pub const MAX_WINDOW: usize = 16 * 1024;
/// Overlap between windows: longer than any lexicon phrase.
pub const WINDOW_OVERLAP: usize = 512;
/// Factor on the model's score for a category whose lexicon matched an exception phrase.
const EXCEPTION_DISCOUNT: f32 = 0.5;
/// A category found only in an obfuscated view, at least this strongly, is evasion.
const EVASION_MIN: f32 = 0.6;
/// A decoded view is embedded instead of the plain one when the fast model scores it at
/// least this much higher.
const DECODED_MARGIN: f32 = 0.1;
/// Texts up to this long leave their model buffers to the next text on the same thread.
const KEEP_SCRATCH_BYTES: usize = 4 * 1024;

/// Building a screener failed.
#[derive(Debug, thiserror::Error)]
pub enum SafetyError {
    /// A lexicon or gazetteer was invalid.
    #[error(transparent)]
    Lexicon(#[from] LexiconError),
    /// The model file was invalid.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A profile was invalid.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The cascade heads were invalid or do not fit the encoder.
    #[error(transparent)]
    Heads(#[from] crate::cascade::HeadsError),
}

/// Scores per category before any policy: what the gateway may cache by prompt hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    scores: [f32; CATEGORY_COUNT],
    detectors: [Detector; CATEGORY_COUNT],
    evidence: [Option<Evidence>; CATEGORY_COUNT],
    /// Obfuscation counts from normalization.
    pub signals: Signals,
    /// The encoder tier's verdict, when the cascade consulted it.
    cascade: Option<Cascade>,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            scores: [0.0; CATEGORY_COUNT],
            detectors: [Detector::Lexicon; CATEGORY_COUNT],
            evidence: Default::default(),
            signals: Signals::default(),
            cascade: None,
        }
    }
}

impl Analysis {
    /// A category's score in 0..=1.
    pub fn score(&self, c: Category) -> f32 {
        self.scores[c.index()]
    }

    /// The encoder tier's verdict, when the cascade consulted the encoder.
    pub fn cascade(&self) -> Option<&Cascade> {
        self.cascade.as_ref()
    }

    /// The strongest fast-tier score over every category.
    pub fn max_score(&self) -> f32 {
        self.scores.iter().copied().fold(0.0, f32::max)
    }

    /// Where a category's evidence is, if it scored.
    pub fn evidence(&self, c: Category) -> Option<&Evidence> {
        self.evidence[c.index()].as_ref()
    }

    fn set(&mut self, c: Category, score: f32, det: Detector, ev: Option<Evidence>) {
        let i = c.index();
        if score > self.scores[i] {
            self.scores[i] = score.clamp(0.0, 1.0);
            self.detectors[i] = det;
            self.evidence[i] = ev;
        }
    }

    /// The profile's action on the fast tier's scores without the n-gram model's (what the
    /// rules alone decide once the encoder tier stands in for the model).
    pub fn rules_action(&self, kind: Kind, profile: &Profile) -> Action {
        let mut a = self.clone();
        a.cascade = None;
        drop_model_scores(&mut a.scores, &a.detectors);
        a.decide(kind, profile).action
    }

    /// Folds another analysis (a later window) in, shifting its spans by `offset`.
    pub fn merge_shifted(&mut self, other: Analysis, offset: usize) {
        for c in Category::ALL {
            let i = c.index();
            let ev = other.evidence[i].clone().map(|mut e| {
                e.span = e.span.start + offset..e.span.end + offset;
                e
            });
            self.set(c, other.scores[i], other.detectors[i], ev);
        }
        self.signals.add(&other.signals);
    }

    /// Applies a profile for an endpoint kind.
    pub fn decide(&self, kind: Kind, profile: &Profile) -> Verdict {
        let mut scores = self.scores;
        let mut detectors = self.detectors;
        let mut evidence = self.evidence.clone();
        if self.cascade.is_some() {
            // The heads read the n-gram model's scores and decide in its place; lexicon
            // terms, combinations and signals keep their say.
            drop_model_scores(&mut scores, &detectors);
        }
        // The encoder tier puts its category where its own operating point lands on this
        // profile's scale; it never lowers what the rules found.
        for (category, s) in self
            .cascade
            .iter()
            .flat_map(|c| c.score_under(kind, profile))
        {
            let i = category.index();
            if s > scores[i] {
                scores[i] = s;
                detectors[i] = Detector::Encoder;
                evidence[i] = None;
            }
        }
        let categories = Category::ALL
            .into_iter()
            .filter(|c| scores[c.index()] > 0.0)
            .map(|c| CategoryScore {
                category: c,
                score: scores[c.index()],
                action: Action::Allow,
                detector: detectors[c.index()],
                source: None,
                evidence: evidence[c.index()].clone(),
            })
            .filter(|c| {
                c.score >= REPORT_FLOOR || profile.action(kind, c.category, c.score) > Action::Allow
            })
            .collect();
        let mut v = Verdict {
            action: Action::Allow,
            kind,
            categories,
            signals: self.signals,
        };
        v.reapply(profile);
        v
    }
}

/// The screener: compiled lexicons and an optional model. Cheap to share (`&self` only).
#[derive(Debug, Clone)]
pub struct Screener {
    lexicon: Lexicon,
    model: Option<Model>,
    /// The encoder tier: the sentence encoder and the heads on its embedding.
    cascade: Option<(Arc<Encoder>, Arc<Heads>)>,
    /// Recent embeddings by the SHA-256 of the text embedded: a disguised prompt decodes
    /// to the text it hides, and abusive clients resend the same prompt.
    embeddings: Arc<std::sync::Mutex<EmbeddingCache>>,
}

/// A bounded map from text digest to embedding, emptied when full (no text is kept).
#[derive(Debug, Default)]
struct EmbeddingCache {
    map: std::collections::HashMap<[u8; 32], Arc<[f32]>>,
    capacity: usize,
}

impl EmbeddingCache {
    fn get(&self, k: &[u8; 32]) -> Option<Arc<[f32]>> {
        self.map.get(k).cloned()
    }
    fn put(&mut self, k: [u8; 32], e: Arc<[f32]>) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(k, e);
    }
}

/// Embeddings a screener keeps by default (384 floats each: about 1.5 MiB).
pub const EMBEDDING_CACHE_ENTRIES: usize = 1024;

/// Builds a [`Screener`] with a gazetteer, extra lexicons or another model.
#[derive(Debug, Default)]
pub struct ScreenerBuilder {
    files: Vec<LexiconFile>,
    model: Option<Option<Model>>,
    encoder: Option<Arc<Encoder>>,
    heads: Option<Option<Heads>>,
    cache_entries: Option<usize>,
}

impl ScreenerBuilder {
    /// Adds a person gazetteer (TOML `[[person]]` tables with `name` and `aliases`).
    pub fn gazetteer_toml(mut self, label: &str, text: &str) -> Result<Self, SafetyError> {
        self.files
            .push(LexiconFile::gazetteer_from_toml(label, text)?);
        Ok(self)
    }

    /// Adds a lexicon file in the built-in format.
    pub fn lexicon_toml(mut self, label: &str, text: &str) -> Result<Self, SafetyError> {
        self.files.push(LexiconFile::from_toml(label, text)?);
        Ok(self)
    }

    /// Uses this model instead of the shipped one (`None`: rules only).
    pub fn model(mut self, model: Option<Model>) -> Self {
        self.model = Some(model);
        self
    }

    /// Adds the encoder tier: with an encoder the cascade runs (with the shipped heads
    /// unless [`ScreenerBuilder::heads`] gives others); without one the fast tier screens
    /// alone.
    pub fn encoder(mut self, encoder: Option<Arc<Encoder>>) -> Self {
        self.encoder = encoder;
        self
    }

    /// Keeps this many recent embeddings (default [`EMBEDDING_CACHE_ENTRIES`]; 0: none).
    pub fn embedding_cache(mut self, entries: usize) -> Self {
        self.cache_entries = Some(entries);
        self
    }

    /// Uses these cascade heads instead of the shipped ones (`None`: no cascade).
    pub fn heads(mut self, heads: Option<Heads>) -> Self {
        self.heads = Some(heads);
        self
    }

    /// Compiles the screener.
    pub fn build(self) -> Result<Screener, SafetyError> {
        let mut files = Vec::new();
        for (label, text) in crate::lexicon::BUILTIN_LEXICONS {
            files.push(LexiconFile::from_toml(label, text)?);
        }
        files.extend(self.files);
        let model = match self.model {
            Some(m) => m,
            None => builtin_model()?,
        };
        let cascade = match self.encoder {
            Some(e) => {
                let heads = match self.heads {
                    Some(h) => h,
                    None => Heads::builtin()?,
                };
                match heads {
                    Some(h) if h.dim() == e.dim() * h.pooling().len() => Some((e, Arc::new(h))),
                    Some(h) => {
                        return Err(SafetyError::Heads(crate::cascade::HeadsError::Format(
                            format!(
                                "the heads read {}-wide embeddings, the encoder gives {} ({} pooling{})",
                                h.dim(),
                                e.dim() * h.pooling().len(),
                                h.pooling().len(),
                                if h.pooling().len() == 1 { "" } else { "s" }
                            ),
                        )));
                    }
                    None => None,
                }
            }
            None => None,
        };
        Ok(Screener {
            lexicon: Lexicon::compile(files)?,
            model,
            cascade,
            embeddings: Arc::new(std::sync::Mutex::new(EmbeddingCache {
                map: Default::default(),
                capacity: self.cache_entries.unwrap_or(EMBEDDING_CACHE_ENTRIES),
            })),
        })
    }
}

/// The shipped model, if one is shipped.
pub fn builtin_model() -> Result<Option<Model>, ModelError> {
    if BUILTIN_MODEL.is_empty() {
        return Ok(None);
    }
    Model::from_bytes(BUILTIN_MODEL).map(Some)
}

/// One lexicon hit as a slot keeps it.
#[derive(Clone)]
struct SlotHit {
    weight: f32,
    /// Byte range in the original text.
    span: Range<usize>,
    kind: ViewKind,
    clean: bool,
    /// Index of the view and byte range in it.
    view: u16,
    local: Range<usize>,
}

impl SlotHit {
    /// Whether two hits are the same evidence. A decoded view maps every byte to the whole
    /// encoded span, so within one view the view's own ranges tell distinct phrases apart
    /// (as they are in plain text); across views the original span does, so a phrase seen
    /// in several views counts once.
    fn overlaps(&self, o: &SlotHit) -> bool {
        let meet = |a: &Range<usize>, b: &Range<usize>| a.start < b.end && b.start < a.end;
        meet(&self.span, &o.span) && (self.view != o.view || meet(&self.local, &o.local))
    }
}

/// Per-slot lexicon evidence.
#[derive(Default)]
struct Slot {
    hits: Vec<SlotHit>,
}

impl Slot {
    /// Noisy-OR of the strongest hit per overlapping group, and the best hit.
    fn score(&mut self, clean_only: bool) -> (f32, Option<Evidence>) {
        self.hits.sort_by(|a, b| {
            b.weight
                .total_cmp(&a.weight)
                .then(a.span.start.cmp(&b.span.start))
                .then(a.local.start.cmp(&b.local.start))
        });
        let mut taken: Vec<&SlotHit> = Vec::new();
        let mut keep = 1.0f32;
        let mut best = None;
        for h in &self.hits {
            if clean_only && !h.clean {
                continue;
            }
            if taken.iter().any(|t| t.overlaps(h)) {
                continue;
            }
            taken.push(h);
            keep *= 1.0 - h.weight;
            if best.is_none() {
                best = Some(Evidence {
                    view: h.kind,
                    span: h.span.clone(),
                });
            }
        }
        (1.0 - keep, best)
    }
}

fn join(a: &Option<Evidence>, b: &Option<Evidence>) -> Option<Evidence> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Evidence {
            view: if a.view == ViewKind::Text {
                b.view
            } else {
                a.view
            },
            span: a.span.start.min(b.span.start)..a.span.end.max(b.span.end),
        }),
        (Some(a), None) => Some(a.clone()),
        (None, b) => b.clone(),
    }
}

fn combo(a: f32, b: f32) -> f32 {
    if a <= 0.0 || b <= 0.0 {
        0.0
    } else {
        (a * b).sqrt()
    }
}

impl Screener {
    /// The built-in lexicons and shipped model, no gazetteer.
    pub fn builtin() -> Result<Screener, SafetyError> {
        ScreenerBuilder::default().build()
    }

    /// A builder for a screener with a gazetteer or other additions.
    pub fn builder() -> ScreenerBuilder {
        ScreenerBuilder::default()
    }

    /// The compiled lexicons.
    pub fn lexicon(&self) -> &Lexicon {
        &self.lexicon
    }

    /// The model, if any.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// Whether the encoder tier is loaded (the cascade runs).
    pub fn has_encoder(&self) -> bool {
        self.cascade.is_some()
    }

    /// Screens a text for an endpoint kind under a profile (through the cascade when the
    /// encoder is loaded).
    pub fn screen(&self, text: &str, kind: Kind, profile: &Profile) -> Verdict {
        self.analyze_for(text, kind).decide(kind, profile)
    }

    /// Scores a text for an endpoint kind: the fast tier, then the encoder tier when it is
    /// loaded and the kind and fast-tier scores call for it (every image prompt; chat
    /// prompts in the uncertainty band). An encoder failure leaves the fast tier's scores.
    pub fn analyze_for(&self, text: &str, kind: Kind) -> Analysis {
        let mut a = self.analyze(text);
        if let Some((encoder, heads)) = &self.cascade
            && heads.wants(kind, a.max_score())
        {
            let mut fast = [0.0f32; CATEGORY_COUNT];
            for c in Category::ALL {
                fast[c.index()] = a.score(c);
            }
            let read = self.encoder_text(text);
            if let Some(e) = self.embed(encoder, heads.pooling(), &read) {
                a.cascade = heads.score(&e, &fast, kind, &read);
            }
        }
        a
    }

    fn embed(&self, encoder: &Encoder, pooling: &[Pooling], text: &str) -> Option<Arc<[f32]>> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        // A poisoned lock only means another thread panicked mid-insert: the map is still
        // a valid map.
        let cached = self
            .embeddings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key);
        if cached.is_some() {
            return cached;
        }
        // One pass of the encoder, whatever the poolings (they share its token vectors).
        let e: Arc<[f32]> = encoder.embed_pooled(text, pooling).ok()?.into();
        self.embeddings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .put(key, Arc::clone(&e));
        Some(e)
    }

    /// The text the encoder reads: the normalized plain view, or a decoded view (rot13,
    /// base64, spacing collapsed, look-alikes folded, a hidden payload…) when the fast model
    /// finds clearly more there, so a disguised prompt is embedded as what it says.
    pub fn encoder_text(&self, text: &str) -> String {
        // The encoder reads at most a few hundred tokens: the first window is plenty.
        let mut end = text.len().min(MAX_WINDOW);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let norm = normalize(text.get(..end).unwrap_or(""));
        let Some(plain) = norm.views.iter().find(|v| is_clean(v)) else {
            return text.get(..end).unwrap_or("").to_owned();
        };
        let Some(m) = &self.model else {
            return plain.text().to_owned();
        };
        let mut scratch = crate::model::Scratch::default();
        let mut best_of = |v: &View| {
            let mut out = [0.0f32; CATEGORY_COUNT];
            m.score_into(v.text(), &mut scratch, &mut out);
            out.iter().copied().fold(0.0f32, f32::max)
        };
        // A rot13 reading exists only when it reads more like English than the text, and a
        // look-alike skeleton is what a text with mixed-script words says: either is the
        // text to embed unless another view scores clearly more. (Embedding the rot13
        // gibberish of benign prompts flagged 7.3% of them on the test part; Cyrillic
        // look-alikes cost 4 points of recall.)
        let plain = norm
            .views
            .iter()
            .find(|v| v.kind() == ViewKind::Rot13 && v.depth() == 0)
            .or_else(|| {
                norm.views.iter().find(|v| {
                    v.kind() == ViewKind::Skeleton
                        && v.depth() == 0
                        && norm.signals.mixed_script_words > 0
                })
            })
            .unwrap_or(plain);
        let base = best_of(plain);
        let mut best = (base + DECODED_MARGIN, plain);
        for v in norm.views.iter().filter(|v| !std::ptr::eq(*v, plain)) {
            let s = best_of(v);
            if s > best.0 {
                best = (s, v);
            }
        }
        best.1.text().to_owned()
    }

    /// A stateful screener for a streamed output.
    pub fn output_screener<'a>(&'a self, kind: Kind, profile: &'a Profile) -> OutputScreener<'a> {
        OutputScreener::new(self, kind, profile)
    }

    /// Scores a text without applying a profile.
    pub fn analyze(&self, text: &str) -> Analysis {
        if text.len() <= MAX_WINDOW {
            return self.analyze_window(text);
        }
        let mut out = Analysis::default();
        let mut start = 0;
        while start < text.len() {
            let mut end = (start + MAX_WINDOW).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let Some(w) = text.get(start..end) else { break };
            out.merge_shifted(self.analyze_window(w), start);
            if end == text.len() {
                break;
            }
            let mut next = end.saturating_sub(WINDOW_OVERLAP).max(start + 1);
            while !text.is_char_boundary(next) {
                next += 1;
            }
            start = next;
        }
        out
    }

    fn analyze_window(&self, text: &str) -> Analysis {
        let norm = normalize(text);
        let mut hits: Vec<Hit> = Vec::new();
        self.lexicon.find(&norm.views, &mut hits);
        let mut a = Analysis {
            signals: norm.signals,
            ..Analysis::default()
        };

        // Lexicon evidence per category and per combining feature.
        let mut cats: Vec<Slot> = (0..CATEGORY_COUNT).map(|_| Slot::default()).collect();
        let (mut minor, mut person, mut named, mut likeness) = (
            Slot::default(),
            Slot::default(),
            Slot::default(),
            Slot::default(),
        );
        let mut excepted = [false; CATEGORY_COUNT];
        for h in &hits {
            let (Some(t), Some(view)) = (
                self.lexicon.terms().get(h.term as usize),
                norm.views.get(h.view as usize),
            ) else {
                continue;
            };
            let clean = is_clean(view);
            let entry = SlotHit {
                weight: t.weight,
                span: view.original_span(h.range.clone()),
                kind: view.kind(),
                clean,
                view: h.view,
                local: h.range.clone(),
            };
            match t.feature {
                Feature::Category(c) => cats[c.index()].hits.push(entry),
                Feature::Minor => minor.hits.push(entry),
                Feature::PersonDescriptor => person.hits.push(entry),
                Feature::Person => {
                    named.hits.push(entry.clone());
                    person.hits.push(entry);
                }
                Feature::Likeness => likeness.hits.push(entry),
                Feature::Exception => {
                    if let Some(c) = self.lexicon.file_category(t.file) {
                        excepted[c.index()] = true;
                    }
                }
            }
        }
        let mut clean = [0.0f32; CATEGORY_COUNT];
        for c in Category::ALL {
            let slot = &mut cats[c.index()];
            if slot.hits.is_empty() {
                continue;
            }
            let (s, ev) = slot.score(false);
            clean[c.index()] = slot.score(true).0;
            a.set(c, s, Detector::Lexicon, ev);
        }

        // The model reads every view; the plain view's scores are kept apart so a category
        // seen only once a trick is undone counts as evasion.
        if let Some(m) = &self.model {
            // The feature buffers (a bitmap of every bucket and room for every feature) are
            // kept per thread: allocating and zeroing them per text cost more than short
            // texts' scoring itself.
            thread_local! {
                static SCRATCH: std::cell::Cell<crate::model::Scratch> =
                    std::cell::Cell::new(crate::model::Scratch::default());
            }
            let mut scratch = SCRATCH.try_with(std::cell::Cell::take).unwrap_or_default();
            for v in &norm.views {
                let mut out = [0.0f32; CATEGORY_COUNT];
                m.score_into(v.text(), &mut scratch, &mut out);
                let is_c = is_clean(v);
                for c in m.categories() {
                    // A known benign sense of the category's words ("sex education",
                    // "naked eye") discounts the model, which cannot see exceptions.
                    let s = if excepted[c.index()] {
                        out[c.index()] * EXCEPTION_DISCOUNT
                    } else {
                        out[c.index()]
                    };
                    if is_c {
                        clean[c.index()] = clean[c.index()].max(s);
                    }
                    a.set(
                        c,
                        s,
                        Detector::Model,
                        Some(Evidence {
                            view: v.kind(),
                            span: v.whole_span(),
                        }),
                    );
                }
            }
            // Kept only after ordinary texts, so a thread (the blocking pool has many) holds
            // tens of kilobytes, not what one huge prompt needed. The thread-local is gone
            // only while its thread exits; then the buffers are simply dropped.
            if text.len() <= KEEP_SCRATCH_BYTES {
                let _ = SCRATCH.try_with(|s| s.set(scratch));
            }
        }

        // Evasion: a category that only shows once a trick is undone, or hidden channels.
        let mut evasion = 0.0f32;
        let mut evasion_ev = None;
        for c in Category::ALL {
            // Combinations are judged through their parts, which are scored by now.
            if matches!(
                c,
                Category::FilterEvasion
                    | Category::SexualMinors
                    | Category::RealPersonSexual
                    | Category::PublicFigureLikeness
            ) {
                continue;
            }
            let (s, cl) = (a.score(c), clean[c.index()]);
            // The evasion score is the hidden category's own: disguise does not make a
            // borderline text worse, it only stops the disguise from lowering the score.
            if s >= EVASION_MIN && s - cl >= 0.25 && s > evasion {
                evasion = s;
                evasion_ev = a.evidence(c).cloned();
            }
        }
        a.set(
            Category::FilterEvasion,
            evasion,
            Detector::Combination,
            evasion_ev,
        );

        // Combinations: sexual intent with a minor, or with a named or described person.
        let sexual = a.score(Category::Sexual);
        let sexual_ev = a.evidence(Category::Sexual).cloned();
        let (minor_s, minor_ev) = minor.score(false);
        let (person_s, person_ev) = person.score(false);
        let (named_s, named_ev) = named.score(false);
        let (like_s, _) = likeness.score(false);
        if sexual >= 0.4 {
            a.set(
                Category::SexualMinors,
                combo(sexual, minor_s),
                Detector::Combination,
                join(&sexual_ev, &minor_ev),
            );
            a.set(
                Category::RealPersonSexual,
                combo(sexual, person_s),
                Detector::Combination,
                join(&sexual_ev, &person_ev),
            );
        }
        if named_s > 0.0 {
            a.set(
                Category::PublicFigureLikeness,
                named_s * (0.6 + 0.4 * like_s),
                Detector::Combination,
                named_ev,
            );
        } else if person_s > 0.0 && like_s > 0.0 {
            a.set(
                Category::PublicFigureLikeness,
                0.5 * person_s * like_s,
                Detector::Combination,
                person_ev,
            );
        }

        let sig = &a.signals;
        // Obfuscation with nothing harmful under it stays below the default flag
        // thresholds: it is recorded (and counted for the evasion detector), not refused.
        let signal_score = [
            (sig.hidden_bytes >= 4, 0.45),
            (sig.ignorables_in_words >= 3, 0.4),
            (sig.mixed_script_words >= 2, 0.45),
            (sig.mixed_script_words == 1, 0.3),
            (sig.bidi_controls >= 2, 0.3),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, s)| s)
        .fold(0.0f32, f32::max);
        a.set(
            Category::FilterEvasion,
            signal_score,
            Detector::Signals,
            None,
        );
        a
    }
}

/// Zeroes the categories the cascade heads cover whose score came from the n-gram model.
fn drop_model_scores(scores: &mut [f32; CATEGORY_COUNT], detectors: &[Detector; CATEGORY_COUNT]) {
    for c in crate::cascade::CASCADE_HEADS {
        if detectors[c.index()] == Detector::Model {
            scores[c.index()] = 0.0;
        }
    }
}

/// Whether a view is the plain text (no trick undone).
fn is_clean(v: &View) -> bool {
    v.kind() == ViewKind::Text && v.depth() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cascade(probability: f32) -> Analysis {
        Analysis {
            cascade: Some(Cascade {
                probability,
                category: Category::Sexual,
                threshold: 0.4,
                logits: [0.0; CATEGORY_COUNT],
                sexual_threshold: 2.0,
            }),
            ..Analysis::default()
        }
    }

    #[test]
    fn the_encoder_reads_a_rot13_or_look_alike_prompt_as_what_it_says() {
        let s = Screener::builtin().unwrap();
        assert_eq!(
            s.encoder_text("n dhvrg uneobhe ng avtug jvgu gur obngf"),
            "a quiet harbour at night with the boats"
        );
        // Cyrillic а and о inside Latin words.
        assert_eq!(
            s.encoder_text("a quiet h\u{430}rbour at night with b\u{43e}ats"),
            "a quiet harbour at night with boats"
        );
        assert_eq!(
            s.encoder_text("A quiet harbour at night"),
            "a quiet harbour at night"
        );
    }

    #[test]
    fn the_encoder_tier_flags_at_its_operating_point_and_never_lowers_a_score() {
        let p = Profile::default();
        let v = with_cascade(0.45).decide(Kind::Image, &p);
        assert!(v.action >= Action::Flag, "{v:?}");
        let c = &v.categories[0];
        assert_eq!(
            (c.category, c.detector),
            (Category::Sexual, Detector::Encoder)
        );
        assert_eq!(
            with_cascade(0.25).decide(Kind::Image, &p).action,
            Action::Allow
        );
        // Unlikely harm stays below every log threshold.
        assert!(
            with_cascade(0.05)
                .decide(Kind::Image, &p)
                .categories
                .is_empty()
        );
        let mut a = with_cascade(0.0);
        a.scores[Category::Sexual.index()] = 0.95;
        let v = a.decide(Kind::Image, &p);
        assert_eq!(v.categories[0].score, 0.95);
        assert_ne!(v.categories[0].detector, Detector::Encoder);
        // The n-gram model's score is one of the heads' inputs: they decide in its place.
        a.detectors[Category::Sexual.index()] = Detector::Model;
        assert_eq!(a.decide(Kind::Image, &p).action, Action::Allow);
        assert!(a.rules_action(Kind::Image, &p) == Action::Allow);
        a.cascade = None;
        assert!(a.decide(Kind::Image, &p).action >= Action::Flag);
    }
}
