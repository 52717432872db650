//! The cascade's second tier: logistic-regression heads on the sentence encoder's embedding
//! stacked with the fast tier's scores.
//!
//! The fast tier (lexicons, rules, the hashed n-gram model) scores every text in
//! microseconds. The encoder costs milliseconds, so it runs on every image prompt (image
//! generation takes seconds upstream) and on the chat prompts whose strongest fast-tier
//! score falls in the uncertainty band [`Heads::band`]. Its heads read the embedding, the
//! fast tier's score per category and the endpoint kind: an any-harm head says how likely
//! harm is, the category heads which kind of harm. The any-harm head's operating point per
//! kind ([`Heads::threshold`]) and the band were chosen by cross-validation on the
//! development part of the frozen split ([`train`]); the test part is never read.
//!
//! At decision time the head's probability is mapped onto the profile's scale so that the
//! dev-chosen operating point lands on the profile's flag threshold for the category
//! ([`Cascade::score_under`]): a profile keeps its say over which categories it acts on.
//!
//! File format (`SWC1`, little-endian): magic, `u32` embedding length, `u32` input count,
//! `u32` head count, `f32` image and chat thresholds, `f32` band low and high edges, the
//! input means and scales (`f32` each), then per head a `u8` category index (`0xff` for the
//! any-harm head) and `input count + 1` weights (the bias last).

use crate::category::{CATEGORY_COUNT, Category, Kind};
use crate::eval::Record;
use crate::model::{self, TrainConfig};
use crate::policy::{Action, Profile};
use crate::screen::Screener;

/// Magic bytes of a heads file.
pub const MAGIC: &[u8; 4] = b"SWC1";
/// The shipped heads (`stormwall safety train --heads-out` writes them); empty means none.
const BUILTIN_HEADS: &[u8] = include_bytes!("../data/heads.bin");
/// Marks the any-harm head in the file.
const ANY_HEAD: u8 = 0xff;
/// Categories the cascade has heads for: the fast model's heads. The combinations
/// (`sexual_minors`, `real_person_sexual`) stay with the rules that define them.
pub const CASCADE_HEADS: &[Category] = model::DEFAULT_HEADS;
/// Cross-validation folds for stacking and threshold choice.
pub const FOLDS: u32 = 5;
/// Image operating point: the highest dev cross-validated F1 at no more than this benign
/// false-positive rate (the target is 2% on unseen prompts; the margin absorbs the
/// difference between folds and the test part).
pub const IMAGE_MAX_FPR: f64 = 0.015;
/// Chat prompts reaching the encoder: at most this share of benign dev chat prompts.
pub const CHAT_MAX_REACH: f64 = 0.10;

/// A heads file is invalid.
#[derive(Debug, thiserror::Error)]
pub enum HeadsError {
    /// Wrong magic or truncated.
    #[error("cascade heads: {0}")]
    Format(String),
}

/// The trained heads and their operating points.
#[derive(Debug, Clone, PartialEq)]
pub struct Heads {
    dim: usize,
    mean: Vec<f32>,
    scale: Vec<f32>,
    any: Vec<f32>,
    cats: Vec<(Category, Vec<f32>)>,
    image_threshold: f32,
    chat_threshold: f32,
    band: (f32, f32),
}

/// What the cascade said about one text: the any-harm probability, the category the
/// category heads rate likeliest, and the operating point for the kind it was scored for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cascade {
    /// Any-harm probability.
    pub probability: f32,
    /// The likeliest category.
    pub category: Category,
    /// The dev-chosen operating point for the kind.
    pub threshold: f32,
}

impl Cascade {
    /// The score on the profile's scale: the operating point maps to the profile's flag
    /// threshold for the category (or its block threshold when it never flags). `None` when the profile neither flags nor blocks the category.
    pub fn score_under(&self, kind: Kind, profile: &Profile) -> Option<f32> {
        let anchor = profile
            .threshold_for(kind, self.category, Action::Flag)
            .filter(|a| *a > 0.0 && *a <= 1.0)?;
        let (p, t) = (self.probability, self.threshold.clamp(1e-4, 1.0 - 1e-4));
        // Squared below the operating point, so texts the heads find unlikely stay under
        // the profiles' log thresholds.
        let s = if p < t {
            (p / t).powi(2) * anchor
        } else {
            anchor + (p - t) / (1.0 - t) * (1.0 - anchor)
        };
        Some(s.clamp(0.0, 1.0))
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

impl Heads {
    /// The shipped heads, if any are shipped.
    pub fn builtin() -> Result<Option<Heads>, HeadsError> {
        if BUILTIN_HEADS.is_empty() {
            return Ok(None);
        }
        Heads::from_bytes(BUILTIN_HEADS).map(Some)
    }

    /// Length of the embedding the heads read.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The fast-tier score band `[low, high)` in which a chat prompt goes to the encoder.
    pub fn band(&self) -> (f32, f32) {
        self.band
    }

    /// The any-harm operating point for a kind.
    pub fn threshold(&self, kind: Kind) -> f32 {
        match kind {
            Kind::Image => self.image_threshold,
            Kind::Chat => self.chat_threshold,
        }
    }

    /// Whether a prompt of this kind, with this strongest fast-tier score, goes to the
    /// encoder: every image prompt, and chat prompts inside the band.
    pub fn wants(&self, kind: Kind, fast_max: f32) -> bool {
        match kind {
            Kind::Image => true,
            Kind::Chat => fast_max >= self.band.0 && fast_max < self.band.1,
        }
    }

    fn inputs(&self, embedding: &[f32], fast: &[f32; CATEGORY_COUNT], kind: Kind) -> Vec<f32> {
        let mut x = raw_inputs(embedding, fast, kind);
        for ((v, m), s) in x.iter_mut().zip(&self.mean).zip(&self.scale) {
            *v = (*v - m) * s;
        }
        x
    }

    /// Scores an embedding stacked with the fast tier's scores. `None` when the embedding
    /// has the wrong length (another encoder than the heads were trained on).
    pub fn score(
        &self,
        embedding: &[f32],
        fast: &[f32; CATEGORY_COUNT],
        kind: Kind,
    ) -> Option<Cascade> {
        if embedding.len() != self.dim {
            return None;
        }
        let x = self.inputs(embedding, fast, kind);
        let probability = sigmoid(dot(&self.any, &x));
        let category = self
            .cats
            .iter()
            .map(|(c, w)| (*c, dot(w, &x)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(Category::Sexual, |(c, _)| c);
        Some(Cascade {
            probability,
            category,
            threshold: self.threshold(kind),
        })
    }

    /// Serializes the heads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.mean.len();
        let mut b = Vec::with_capacity(32 + 4 * n * (3 + self.cats.len()));
        b.extend_from_slice(MAGIC);
        for v in [self.dim, n, self.cats.len() + 1] {
            b.extend_from_slice(&(v as u32).to_le_bytes());
        }
        for v in [
            self.image_threshold,
            self.chat_threshold,
            self.band.0,
            self.band.1,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let put = |b: &mut Vec<u8>, w: &[f32]| {
            for v in w {
                b.extend_from_slice(&v.to_le_bytes());
            }
        };
        put(&mut b, &self.mean);
        put(&mut b, &self.scale);
        b.push(ANY_HEAD);
        put(&mut b, &self.any);
        for (c, w) in &self.cats {
            b.push(c.index() as u8);
            put(&mut b, w);
        }
        b
    }

    /// Reads a heads file.
    pub fn from_bytes(b: &[u8]) -> Result<Heads, HeadsError> {
        let bad = |m: &str| HeadsError::Format(m.to_owned());
        let mut r = Reader { b, at: 0 };
        if r.take(4).ok_or_else(|| bad("truncated"))? != MAGIC {
            return Err(bad("not a heads file"));
        }
        let dim = r.u32().ok_or_else(|| bad("truncated"))? as usize;
        let n = r.u32().ok_or_else(|| bad("truncated"))? as usize;
        let heads = r.u32().ok_or_else(|| bad("truncated"))? as usize;
        if n != dim + CATEGORY_COUNT + 1 || dim == 0 || dim > 8192 || heads == 0 || heads > 64 {
            return Err(bad("inconsistent sizes"));
        }
        let mut f = || r.f32().ok_or_else(|| bad("truncated"));
        let (image_threshold, chat_threshold, lo, hi) = (f()?, f()?, f()?, f()?);
        let mut vec = |len: usize| -> Result<Vec<f32>, HeadsError> {
            (0..len)
                .map(|_| r.f32().ok_or_else(|| bad("truncated")))
                .collect()
        };
        let mean = vec(n)?;
        let scale = vec(n)?;
        let mut any = None;
        let mut cats = Vec::new();
        for _ in 0..heads {
            let tag = r.take(1).ok_or_else(|| bad("truncated"))?[0];
            let mut w = Vec::with_capacity(n + 1);
            for _ in 0..=n {
                w.push(r.f32().ok_or_else(|| bad("truncated"))?);
            }
            if tag == ANY_HEAD {
                any = Some(w);
            } else {
                let c = Category::ALL
                    .into_iter()
                    .find(|c| c.index() == usize::from(tag))
                    .ok_or_else(|| bad("unknown category"))?;
                cats.push((c, w));
            }
        }
        if r.at != b.len() {
            return Err(bad("trailing bytes"));
        }
        let any = any.ok_or_else(|| bad("no any-harm head"))?;
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        if !(finite(&mean)
            && finite(&scale)
            && finite(&any)
            && cats.iter().all(|(_, w)| finite(w))
            && finite(&[image_threshold, chat_threshold, lo, hi]))
        {
            return Err(bad("non-finite value"));
        }
        Ok(Heads {
            dim,
            mean,
            scale,
            any,
            cats,
            image_threshold,
            chat_threshold,
            band: (lo, hi),
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn f32(&mut self) -> Option<f32> {
        self.take(4)
            .and_then(|s| s.try_into().ok())
            .map(f32::from_le_bytes)
    }
}

/// The heads' inputs before standardisation: embedding, fast-tier scores, image flag.
fn raw_inputs(embedding: &[f32], fast: &[f32; CATEGORY_COUNT], kind: Kind) -> Vec<f32> {
    let mut x = Vec::with_capacity(embedding.len() + CATEGORY_COUNT + 1);
    x.extend_from_slice(embedding);
    x.extend_from_slice(fast);
    x.push(if kind == Kind::Image { 1.0 } else { 0.0 });
    x
}

/// `w · x + bias` (the bias is `w`'s last element).
fn dot(w: &[f32], x: &[f32]) -> f32 {
    let bias = w.last().copied().unwrap_or(0.0);
    w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() + bias
}

/// One development record as the heads see it.
#[derive(Debug, Clone)]
pub struct Row {
    /// The encoder's embedding of the text.
    pub embedding: Vec<f32>,
    /// The fast tier's scores, from a model that did not train on the record.
    pub fast: [f32; CATEGORY_COUNT],
    /// Whether the fast tier alone flags it under the default profile.
    pub fast_flag: bool,
    /// Whether the rules (the fast tier without its n-gram model, for which the heads
    /// stand in) flag it under the default profile.
    pub rule_flag: bool,
    /// Endpoint kind.
    pub kind: Kind,
    /// Ground truth.
    pub harmful: bool,
    /// Mapped categories.
    pub categories: Vec<Category>,
    /// Cross-validation fold.
    pub fold: u32,
    /// Source data set (for the report).
    pub source: String,
}

impl Row {
    fn fast_max(&self) -> f32 {
        self.fast.iter().copied().fold(0.0, f32::max)
    }
}

/// Settings of the heads' logistic regressions.
#[derive(Debug, Clone)]
pub struct HeadsConfig {
    /// L2 penalty per example.
    pub l2: f32,
    /// Full-batch Adam steps.
    pub steps: u32,
    /// Adam step size.
    pub learning_rate: f32,
}

impl Default for HeadsConfig {
    fn default() -> Self {
        HeadsConfig {
            l2: 1e-3,
            steps: 300,
            learning_rate: 0.05,
        }
    }
}

/// Logistic regression by full-batch Adam on standardised inputs; weights with the bias last.
fn fit(x: &[Vec<f32>], y: &[bool], cfg: &HeadsConfig) -> Vec<f32> {
    let n = x.first().map_or(0, Vec::len);
    let mut w = vec![0.0f32; n + 1];
    let (mut m, mut v) = (vec![0.0f32; n + 1], vec![0.0f32; n + 1]);
    let pos = y.iter().filter(|b| **b).count();
    if pos == 0 || x.is_empty() {
        w[n] = -8.0;
        return w;
    }
    let inv = 1.0 / x.len() as f32;
    let mut g = vec![0.0f32; n + 1];
    for step in 1..=cfg.steps {
        g.iter_mut().for_each(|v| *v = 0.0);
        for (xi, &yi) in x.iter().zip(y) {
            let e = sigmoid(dot(&w, xi)) - if yi { 1.0 } else { 0.0 };
            for (gj, xj) in g.iter_mut().zip(xi) {
                *gj += e * xj;
            }
            g[n] += e;
        }
        let (b1, b2) = (0.9f32, 0.999f32);
        let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        for j in 0..=n {
            let reg = if j < n { cfg.l2 * w[j] } else { 0.0 };
            let gj = g[j] * inv + reg;
            m[j] = b1 * m[j] + (1.0 - b1) * gj;
            v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
            w[j] -= cfg.learning_rate * (m[j] / c1) / ((v[j] / c2).sqrt() + 1e-8);
        }
    }
    w
}

/// Fits every head on rows, with their operating points given.
fn fit_heads(rows: &[&Row], cfg: &HeadsConfig, thresholds: (f32, f32), band: (f32, f32)) -> Heads {
    let dim = rows.first().map_or(0, |r| r.embedding.len());
    let raw: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| raw_inputs(&r.embedding, &r.fast, r.kind))
        .collect();
    let n = dim + CATEGORY_COUNT + 1;
    let mut mean = vec![0.0f32; n];
    let mut scale = vec![1.0f32; n];
    if !raw.is_empty() {
        for j in 0..n {
            let mu = raw.iter().map(|x| x[j]).sum::<f32>() / raw.len() as f32;
            let var = raw.iter().map(|x| (x[j] - mu).powi(2)).sum::<f32>() / raw.len() as f32;
            mean[j] = mu;
            scale[j] = if var > 1e-12 { 1.0 / var.sqrt() } else { 0.0 };
        }
    }
    let x: Vec<Vec<f32>> = raw
        .into_iter()
        .map(|mut x| {
            for j in 0..n {
                x[j] = (x[j] - mean[j]) * scale[j];
            }
            x
        })
        .collect();
    let any = fit(&x, &rows.iter().map(|r| r.harmful).collect::<Vec<_>>(), cfg);
    let cats = CASCADE_HEADS
        .iter()
        .map(|c| {
            let y: Vec<bool> = rows.iter().map(|r| r.categories.contains(c)).collect();
            (*c, fit(&x, &y, cfg))
        })
        .collect();
    Heads {
        dim,
        mean,
        scale,
        any,
        cats,
        image_threshold: thresholds.0,
        chat_threshold: thresholds.1,
        band,
    }
}

/// Confusion counts on rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Harmful and predicted.
    pub tp: u32,
    /// Benign and predicted.
    pub fp: u32,
    /// Benign, not predicted.
    pub tn: u32,
    /// Harmful, missed.
    pub fn_: u32,
}

impl Counts {
    fn add(&mut self, truth: bool, pred: bool) {
        match (truth, pred) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (false, false) => self.tn += 1,
            (true, false) => self.fn_ += 1,
        }
    }
    /// F1 score.
    pub fn f1(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fn_;
        if d == 0 {
            0.0
        } else {
            f64::from(2 * self.tp) / f64::from(d)
        }
    }
    /// Benign false-positive rate.
    pub fn fpr(&self) -> f64 {
        let d = self.fp + self.tn;
        if d == 0 {
            0.0
        } else {
            f64::from(self.fp) / f64::from(d)
        }
    }
    /// Recall.
    pub fn recall(&self) -> f64 {
        let d = self.tp + self.fn_;
        if d == 0 {
            0.0
        } else {
            f64::from(self.tp) / f64::from(d)
        }
    }
}

/// What [`train`] chose, with the development cross-validation behind it (tuning figures,
/// not quality figures: the quality figures are `stormwall safety eval --split test`).
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Development image prompts, fast tier alone (out of fold).
    pub image_fast: Counts,
    /// Development image prompts, the cascade at the chosen point (out of fold).
    pub image_cascade: Counts,
    /// Development chat prompts, fast tier alone (out of fold).
    pub chat_fast: Counts,
    /// Development chat prompts, the cascade at the chosen point and band (out of fold).
    pub chat_cascade: Counts,
    /// Share of development chat prompts (all / benign) inside the band.
    pub chat_reach: (f64, f64),
}

/// The cascade's decision on a row for a threshold (and, for chat, a band).
fn decide_row(r: &Row, p: f32, t: f32, band: (f32, f32)) -> bool {
    let m = r.fast_max();
    let inside = r.kind == Kind::Image || (m >= band.0 && m < band.1);
    if inside {
        r.rule_flag || p >= t
    } else {
        r.fast_flag
    }
}

/// Builds the stacking rows for development records: `embed` gives each record's embedding
/// (the encoder's, of [`Screener::encoder_text`]); the fast-tier scores come from a model
/// trained on the other folds, as the heads will meet scores of texts the fast model never
/// saw. Test-split records must not be passed in (the caller filters them).
pub fn rows(
    records: &[Record],
    fast_cfg: &TrainConfig,
    mut embed: impl FnMut(&Record) -> Vec<f32>,
) -> Result<Vec<Row>, crate::screen::SafetyError> {
    let profile = Profile::default();
    let mut out: Vec<Option<Row>> = vec![None; records.len()];
    // The fold models train on two threads: each is minutes of work, independent of the
    // others, and deterministic, so the order they finish in changes nothing.
    let next = std::sync::atomic::AtomicU32::new(0);
    let models = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k >= FOLDS {
                        break;
                    }
                    let train: Vec<Record> = records
                        .iter()
                        .filter(|r| r.fold(FOLDS) != k)
                        .cloned()
                        .collect();
                    let m = model::train_on_records(&train, fast_cfg);
                    models
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((k, m));
                }
            });
        }
    });
    let mut models = models
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    models.sort_by_key(|(k, _)| *k);
    for (k, m) in models {
        let screener = Screener::builder().model(Some(m)).build()?;
        for (i, r) in records.iter().enumerate() {
            if r.fold(FOLDS) != k {
                continue;
            }
            let a = screener.analyze(&r.text);
            let mut fast = [0.0f32; CATEGORY_COUNT];
            for c in Category::ALL {
                fast[c.index()] = a.score(c);
            }
            out[i] = Some(Row {
                embedding: embed(r),
                fast,
                fast_flag: a.decide(r.kind, &profile).action >= Action::Flag,
                rule_flag: a.rules_action(r.kind, &profile) >= Action::Flag,
                kind: r.kind,
                harmful: r.harmful,
                categories: r.mapped_categories(),
                fold: k,
                source: r.source.clone(),
            });
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Trains the heads on development rows ([`rows`]): out-of-fold predictions choose the image
/// operating point (best F1 at benign FPR ≤ [`IMAGE_MAX_FPR`]), the chat band (benign reach
/// ≤ [`CHAT_MAX_REACH`]) and the chat operating point (best F1 without raising the benign
/// FPR by more than two points); then the heads are fitted on every row.
pub fn train(rows: &[Row], cfg: &HeadsConfig) -> (Heads, TrainReport) {
    let mut oof = vec![0.0f32; rows.len()];
    for k in 0..FOLDS {
        let train: Vec<&Row> = rows.iter().filter(|r| r.fold != k).collect();
        let h = fit_heads(&train, cfg, (0.5, 0.5), (0.0, 1.0));
        for (i, r) in rows.iter().enumerate() {
            if r.fold == k {
                oof[i] = h
                    .score(&r.embedding, &r.fast, r.kind)
                    .map_or(0.0, |c| c.probability);
            }
        }
    }
    let grid: Vec<f32> = (1..200).map(|i| i as f32 / 200.0).collect();
    let counts = |kind: Kind, t: f32, band: (f32, f32)| {
        let mut c = Counts::default();
        for (r, p) in rows.iter().zip(&oof).filter(|(r, _)| r.kind == kind) {
            c.add(r.harmful, decide_row(r, *p, t, band));
        }
        c
    };
    let fast_only = |kind: Kind| {
        let mut c = Counts::default();
        for r in rows.iter().filter(|r| r.kind == kind) {
            c.add(r.harmful, r.fast_flag);
        }
        c
    };
    let image_t = grid
        .iter()
        .copied()
        .map(|t| (t, counts(Kind::Image, t, (0.0, 1.0))))
        .filter(|(_, c)| c.fpr() <= IMAGE_MAX_FPR)
        .max_by(|a, b| a.1.f1().total_cmp(&b.1.f1()))
        .map_or(1.0, |(t, _)| t);

    // Chat: the band's low edge at a quantile of benign fast-tier scores (so at most
    // CHAT_MAX_REACH of benign chat reaches the encoder), its high edge where the fast
    // tier's chat flag thresholds start; then the threshold.
    let chat: Vec<(&Row, f32)> = rows
        .iter()
        .zip(oof.iter().copied())
        .filter(|(r, _)| r.kind == Kind::Chat)
        .collect();
    let mut benign_max: Vec<f32> = chat
        .iter()
        .filter(|(r, _)| !r.harmful)
        .map(|(r, _)| r.fast_max())
        .collect();
    benign_max.sort_by(f32::total_cmp);
    let fast_chat = fast_only(Kind::Chat);
    let high = 0.9f32;
    let mut best = (fast_chat.f1(), 2.0f32, (2.0f32, 2.0f32));
    for q in [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95] {
        let idx = ((benign_max.len() as f64) * q) as usize;
        let Some(&low) = benign_max.get(idx.min(benign_max.len().saturating_sub(1))) else {
            continue;
        };
        let low = low.max(0.01);
        let band = (low, high);
        let reach = benign_max
            .iter()
            .filter(|m| **m >= band.0 && **m < band.1)
            .count() as f64
            / benign_max.len().max(1) as f64;
        if reach > CHAT_MAX_REACH {
            continue;
        }
        for &t in &grid {
            let c = counts(Kind::Chat, t, band);
            if c.fpr() <= fast_chat.fpr() + 0.02 && c.f1() > best.0 {
                best = (c.f1(), t, band);
            }
        }
    }
    let (_, chat_t, band) = best;
    let inside = |r: &Row| r.kind == Kind::Chat && r.fast_max() >= band.0 && r.fast_max() < band.1;
    let n_chat = chat.len().max(1) as f64;
    let n_benign = benign_max.len().max(1) as f64;
    let report = TrainReport {
        image_fast: fast_only(Kind::Image),
        image_cascade: counts(Kind::Image, image_t, (0.0, 1.0)),
        chat_fast: fast_chat,
        chat_cascade: counts(Kind::Chat, chat_t, band),
        chat_reach: (
            rows.iter().filter(|r| inside(r)).count() as f64 / n_chat,
            rows.iter().filter(|r| !r.harmful && inside(r)).count() as f64 / n_benign,
        ),
    };
    let all: Vec<&Row> = rows.iter().collect();
    (fit_heads(&all, cfg, (image_t, chat_t), band), report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(e: [f32; 4], harmful: bool, kind: Kind, fold: u32) -> Row {
        Row {
            embedding: e.to_vec(),
            fast: [0.0; CATEGORY_COUNT],
            fast_flag: false,
            rule_flag: false,
            kind,
            harmful,
            categories: if harmful {
                vec![Category::Sexual]
            } else {
                vec![]
            },
            fold,
            source: "t".into(),
        }
    }

    #[test]
    fn heads_learn_a_separable_direction_and_round_trip() {
        let mut rows = Vec::new();
        for i in 0..200u32 {
            let s = (i % 7) as f32 / 10.0;
            rows.push(row([1.0, s, 0.0, 0.0], true, Kind::Image, i % FOLDS));
            rows.push(row(
                [-1.0, s, 0.0, 0.0],
                false,
                Kind::Image,
                (i + 1) % FOLDS,
            ));
        }
        let (h, report) = train(&rows, &HeadsConfig::default());
        assert_eq!(report.image_cascade.fp, 0);
        assert_eq!(report.image_cascade.fn_, 0);
        let harm = h
            .score(&[1.0, 0.2, 0.0, 0.0], &[0.0; CATEGORY_COUNT], Kind::Image)
            .unwrap();
        let ok = h
            .score(&[-1.0, 0.2, 0.0, 0.0], &[0.0; CATEGORY_COUNT], Kind::Image)
            .unwrap();
        assert!(harm.probability >= harm.threshold && ok.probability < ok.threshold);
        assert_eq!(harm.category, Category::Sexual);
        assert!(
            h.score(&[1.0; 3], &[0.0; CATEGORY_COUNT], Kind::Image)
                .is_none()
        );
        let back = Heads::from_bytes(&h.to_bytes()).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn broken_files_are_errors_not_panics() {
        let (h, _) = train(
            &[
                row([1.0, 0.0, 0.0, 0.0], true, Kind::Image, 0),
                row([-1.0, 0.0, 0.0, 0.0], false, Kind::Image, 1),
            ],
            &HeadsConfig::default(),
        );
        let b = h.to_bytes();
        for cut in 0..b.len() {
            assert!(Heads::from_bytes(&b[..cut]).is_err());
        }
        let mut long = b.clone();
        long.push(0);
        assert!(Heads::from_bytes(&long).is_err());
    }

    #[test]
    fn the_operating_point_lands_on_the_profiles_flag_threshold() {
        let p = Profile::default();
        let flag = p
            .threshold_for(Kind::Image, Category::Sexual, Action::Flag)
            .unwrap();
        let at = |probability| Cascade {
            probability,
            category: Category::Sexual,
            threshold: 0.3,
        };
        let s = at(0.3).score_under(Kind::Image, &p).unwrap();
        assert!((s - flag).abs() < 1e-5);
        assert!(at(0.29).score_under(Kind::Image, &p).unwrap() < flag);
        assert!(at(1.0).score_under(Kind::Image, &p).unwrap() <= 1.0);
    }

    #[test]
    fn chat_goes_to_the_encoder_only_inside_the_band() {
        let (mut h, _) = train(
            &[
                row([1.0, 0.0, 0.0, 0.0], true, Kind::Image, 0),
                row([-1.0, 0.0, 0.0, 0.0], false, Kind::Image, 1),
            ],
            &HeadsConfig::default(),
        );
        h.band = (0.3, 0.9);
        assert!(h.wants(Kind::Image, 0.0));
        assert!(!h.wants(Kind::Chat, 0.1));
        assert!(h.wants(Kind::Chat, 0.5));
        assert!(!h.wants(Kind::Chat, 0.95));
    }
}
