//! The cascade's second tier: logistic-regression heads on the sentence encoder's embedding
//! stacked with the fast tier's scores.
//!
//! The fast tier (lexicons, rules, the hashed n-gram model) scores every text in
//! microseconds. The encoder costs milliseconds, so it runs on every image prompt (image
//! generation takes seconds upstream) and on the chat prompts whose strongest fast-tier
//! score falls in the uncertainty band [`Heads::band`]. Its heads read the embedding, the
//! fast tier's score per category and the endpoint kind: an any-harm head per kind says how
//! likely harm is (image and chat prompts differ too much for one head to serve both: on dev
//! a shared head lost three points of image F1), the category heads which kind of harm. Each
//! any-harm head's L2 penalty, its operating point ([`Heads::threshold`]) and the chat band
//! were chosen by cross-validation on the development part of the frozen split ([`train`]);
//! the test part is never read.
//!
//! At decision time the head's probability is mapped onto the profile's scale so that the
//! dev-chosen operating point lands on the profile's flag threshold for the category
//! ([`Cascade::score_under`]): a profile keeps its say over which categories it acts on.
//!
//! File format (`SWC4`, little-endian): magic, `u32` embedding length, `u32` input count,
//! `u32` head count, `f32` image and chat thresholds, `f32` band low and high edges, `f32`
//! image operating point of the sexual head (above 1: none), the
//! input means and scales (`f32` each), then per head a `u8` category index (`0xff` for the
//! image any-harm head, `0xfe` for the chat one) and `input count + 1` weights (the bias
//! last), then the image n-gram model: `u8` bits (0: none), and with bits `f32` scale, `f32`
//! bias and `2^bits` `i8` weights. With an n-gram model its logit is the last input before
//! the image flag's. `SWC4` (ninth cut) adds, after the n-gram section, a `u8` of flags (bit
//! 0: the inputs hold the log-odds of the head categories' fast scores and of their
//! maximum, after the scores themselves), a `u32` hidden width and a `u32` network count,
//! then per network the image any-harm network's weights ([`Mlp`]: `hidden × inputs`
//! first-layer weights, `hidden` biases, `hidden` output weights, the output bias). `SWC5`
//! (tenth cut) ends with the embedding's poolings: a `u8` count and each
//! [`Pooling::to_code`] (the embedding length is the encoder's width times the count).
//! `SWC4` (mean pooling), `SWC3`, `SWC2` (no n-gram model) and `SWC1` files (one any-harm
//! head for both kinds) still load.

use crate::category::{CATEGORY_COUNT, Category, Kind};
use crate::encoder::Pooling;
use crate::eval::Record;
use crate::model::{self, TrainConfig};
use crate::policy::{Action, Profile};
use crate::screen::Screener;

/// Magic bytes of a heads file.
pub const MAGIC: &[u8; 4] = b"SWC5";
/// Magic bytes of the fourth heads format (the embedding mean-pooled only).
const MAGIC_V4: &[u8; 4] = b"SWC4";
/// Magic bytes of the third heads format (no log-odds inputs, no image network).
const MAGIC_V3: &[u8; 4] = b"SWC3";
/// Magic bytes of the second heads format (no image n-gram model).
const MAGIC_V2: &[u8; 4] = b"SWC2";
/// Magic bytes of the first heads format (one any-harm head for both kinds).
const MAGIC_V1: &[u8; 4] = b"SWC1";
/// The shipped heads (`stormwall safety train --heads-out` writes them); empty means none.
const BUILTIN_HEADS: &[u8] = include_bytes!("../data/heads.bin");
/// Marks the image any-harm head in the file (in `SWC1`, the one any-harm head).
const ANY_HEAD: u8 = 0xff;
/// Marks the chat any-harm head in the file.
const ANY_CHAT_HEAD: u8 = 0xfe;
/// Categories the cascade has heads for: the fast model's heads. The combinations
/// (`sexual_minors`, `real_person_sexual`) stay with the rules that define them.
pub const CASCADE_HEADS: &[Category] = model::DEFAULT_HEADS;
/// Cross-validation folds for stacking and threshold choice.
pub const FOLDS: u32 = 5;
/// Image operating point: the highest dev cross-validated F1 at no more than this benign
/// false-positive rate. The target is 2% on unseen prompts; this is the largest cap
/// (of 1.7–2.0%) whose nested estimate on dev (points chosen on four folds, counted on the
/// fifth: [`TrainReport::image_nested`]) stays within 2% — seventh cut: 2.0% gave 2.2%.
pub const IMAGE_MAX_FPR: f64 = 0.019;
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
    any_image: Vec<f32>,
    any_chat: Vec<f32>,
    cats: Vec<(Category, Vec<f32>)>,
    image_threshold: f32,
    chat_threshold: f32,
    band: (f32, f32),
    /// The sexual head's own operating point on image prompts (above 1: none).
    image_sexual_threshold: f32,
    /// The image n-gram model whose logit is one of the inputs (none in older files).
    ngram: Option<Ngram>,
    /// Whether the inputs carry the fast scores' log-odds too (none in older files).
    logit_inputs: bool,
    /// The image any-harm networks (none in older files): with them the image any-harm
    /// probability is the mean of the logistic regression's and the networks' mean.
    image_mlp: Vec<Mlp>,
    /// How the encoder's token vectors are pooled into the embedding the heads read
    /// ([`Pooling::DEFAULT`] in older files).
    pooling: Vec<Pooling>,
}

/// A network with one hidden layer (tanh) on the heads' standardised inputs, a second
/// opinion for the image any-harm head. On dev (5-fold out of fold, ninth cut) a network
/// alone was no better than the logistic regression (its probabilities overconfident),
/// but the mean of the two gained 1–2 points of image F1 at the 1.9% benign FPR cap.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    inputs: usize,
    hidden: usize,
    /// `hidden × inputs` first-layer weights, `hidden` biases, `hidden` output weights,
    /// the output bias.
    w: Vec<f32>,
}

impl Mlp {
    fn len(inputs: usize, hidden: usize) -> usize {
        hidden * inputs + 2 * hidden + 1
    }

    /// The output logit; `hid` receives the hidden activations.
    fn forward(&self, x: &[f32], hid: &mut [f32]) -> f32 {
        let (n, h) = (self.inputs, self.hidden);
        let (w1, rest) = self.w.split_at(h * n);
        let (b1, rest) = rest.split_at(h);
        let (w2, b2) = rest.split_at(h);
        let mut z = b2.first().copied().unwrap_or(0.0);
        for (j, a) in hid.iter_mut().enumerate().take(h) {
            let s = w1[j * n..(j + 1) * n]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum::<f32>()
                + b1[j];
            *a = s.tanh();
            z += w2[j] * *a;
        }
        z
    }

    /// The network's probability for standardised inputs.
    fn probability(&self, x: &[f32]) -> f32 {
        let mut hid = vec![0.0f32; self.hidden];
        sigmoid(self.forward(x, &mut hid))
    }

    /// Fits a network by mini-batch Adam (batches of 32, step 1e-3) with weight decay `wd`
    /// on the weights (not the biases); deterministic for a given seed and input order.
    fn fit(x: &[&[f32]], y: &[bool], hidden: usize, wd: f32, epochs: u32, seed: u64) -> Mlp {
        let n = x.first().map_or(0, |v| v.len());
        let len = Mlp::len(n, hidden);
        let mut rng = seed | 1;
        let mut uniform = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut w = vec![0.0f32; len];
        // Uniform initialisation with the variance of 1/fan-in per layer.
        let s1 = 1.7 * (1.0 / n.max(1) as f64).sqrt();
        for v in &mut w[..hidden * n] {
            *v = ((uniform() * 2.0 - 1.0) * s1) as f32;
        }
        let s2 = 1.7 * (1.0 / hidden.max(1) as f64).sqrt();
        for v in &mut w[hidden * n + hidden..hidden * n + 2 * hidden] {
            *v = ((uniform() * 2.0 - 1.0) * s2) as f32;
        }
        let mut net = Mlp {
            inputs: n,
            hidden,
            w,
        };
        if x.is_empty() || hidden == 0 {
            return net;
        }
        let (mut m, mut v, mut g) = (vec![0.0f32; len], vec![0.0f32; len], vec![0.0f32; len]);
        let mut hid = vec![0.0f32; hidden];
        let mut order: Vec<usize> = (0..x.len()).collect();
        let decays = |k: usize| k < hidden * n || (hidden * n + hidden..len - 1).contains(&k);
        let mut step = 0i32;
        for _ in 0..epochs {
            for i in (1..order.len()).rev() {
                let j = ((uniform() * (i + 1) as f64) as usize).min(i);
                order.swap(i, j);
            }
            for batch in order.chunks(MLP_BATCH) {
                g.iter_mut().for_each(|v| *v = 0.0);
                for &i in batch {
                    let e = sigmoid(net.forward(x[i], &mut hid)) - if y[i] { 1.0 } else { 0.0 };
                    let (gw1, rest) = g.split_at_mut(hidden * n);
                    let (gb1, rest) = rest.split_at_mut(hidden);
                    let (gw2, gb2) = rest.split_at_mut(hidden);
                    gb2[0] += e;
                    let w2 = &net.w[hidden * n + hidden..hidden * n + 2 * hidden];
                    for j in 0..hidden {
                        gw2[j] += e * hid[j];
                        let d = e * w2[j] * (1.0 - hid[j] * hid[j]);
                        gb1[j] += d;
                        for (gk, xk) in gw1[j * n..(j + 1) * n].iter_mut().zip(x[i]) {
                            *gk += d * xk;
                        }
                    }
                }
                step += 1;
                let inv = 1.0 / batch.len() as f32;
                let (c1, c2) = (1.0 - 0.9f32.powi(step), 1.0 - 0.999f32.powi(step));
                for k in 0..len {
                    let gk = g[k] * inv + if decays(k) { wd * net.w[k] } else { 0.0 };
                    m[k] = 0.9 * m[k] + 0.1 * gk;
                    v[k] = 0.999 * v[k] + 0.001 * gk * gk;
                    net.w[k] -= MLP_LEARNING_RATE * (m[k] / c1) / ((v[k] / c2).sqrt() + 1e-8);
                }
            }
        }
        net
    }
}

/// Mini-batch size and Adam step of the image networks.
const MLP_BATCH: usize = 32;
const MLP_LEARNING_RATE: f32 = 1e-3;
/// Seeds of the image networks' ensemble.
const MLP_SEED: u64 = 0x5eed_0009;

/// The image any-harm probability: the logistic regression's, or with networks the mean of
/// it and the networks' mean.
fn image_probability(lr: f32, mlp: &[Mlp], x: &[f32]) -> f32 {
    if mlp.is_empty() {
        return lr;
    }
    let m = mlp.iter().map(|n| n.probability(x)).sum::<f32>() / mlp.len() as f32;
    0.5 * (lr + m)
}

/// A logistic regression over hashed n-grams ([`model::features`]) trained on image prompts
/// alone. The fast model is trained on chat and image texts together, for every category:
/// an image-only model of the words and spellings image prompts use adds its own evidence
/// to the embedding (the TF-IDF and embedding baselines gained three points of F1
/// stacked).
#[derive(Debug, Clone, PartialEq)]
struct Ngram {
    bits: u8,
    scale: f32,
    bias: f32,
    weights: Vec<i8>,
}

/// A text with fewer n-gram features counts as if it had this many (its few features must
/// not each weigh like a sentence's worth).
const NGRAM_MIN_FEATURES: usize = 16;

/// Each feature of a text as (bucket, signed weight), binary and normalised by length.
fn ngram_features(text: &str, bits: u8, scratch: &mut model::Scratch) -> Vec<(u32, f32)> {
    model::features(text, bits, scratch);
    let f = scratch.feats();
    let v = 1.0 / (f.len().max(NGRAM_MIN_FEATURES) as f32).sqrt();
    let mask = (1u32 << bits) - 1;
    f.iter()
        .map(|&h| (h & mask, if h >> 31 == 0 { v } else { -v }))
        .collect()
}

impl Ngram {
    fn logit(&self, text: &str) -> f32 {
        let mut scratch = model::Scratch::default();
        let x = ngram_features(text, self.bits, &mut scratch);
        let acc: f32 = x
            .iter()
            .map(|&(b, v)| f32::from(self.weights.get(b as usize).copied().unwrap_or(0)) * v)
            .sum();
        self.bias + acc * self.scale
    }
}

/// Settings of the image n-gram model's training (AdaGrad, as the fast model).
const NGRAM_EPOCHS: u32 = 6;
const NGRAM_LEARNING_RATE: f32 = 0.4;
const NGRAM_L2: f32 = 1e-6;

/// Float weights (bias last) of an n-gram logistic regression on `(features, label)` pairs,
/// deterministic for a given input order.
fn fit_ngram_f32(x: &[&[(u32, f32)]], y: &[bool], bits: u8) -> Vec<f32> {
    let n = 1usize << bits;
    let mut w = vec![0.0f32; n + 1];
    let mut g2 = vec![0.0f32; n + 1];
    if x.is_empty() {
        return w;
    }
    let pos = y.iter().filter(|b| **b).count().max(1) as f32;
    let wpos = ((x.len() as f32 - pos) / pos).sqrt().clamp(1.0, 8.0);
    let mut order: Vec<usize> = (0..x.len()).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let z = |w: &[f32], xi: &[(u32, f32)]| {
        xi.iter().map(|&(b, v)| w[b as usize] * v).sum::<f32>() + w[n]
    };
    for _ in 0..NGRAM_EPOCHS {
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &i in &order {
            let p = sigmoid(z(&w, x[i]));
            let g = if y[i] { (p - 1.0) * wpos } else { p };
            for &(b, v) in x[i] {
                let b = b as usize;
                let gj = g * v + NGRAM_L2 * w[b];
                g2[b] += gj * gj;
                w[b] -= NGRAM_LEARNING_RATE * gj / (g2[b].sqrt() + 1e-6);
            }
            g2[n] += g * g;
            w[n] -= NGRAM_LEARNING_RATE * g / (g2[n].sqrt() + 1e-6);
        }
    }
    w
}

/// The float model's logit for a text's features.
fn ngram_logit_f32(w: &[f32], x: &[(u32, f32)]) -> f32 {
    x.iter()
        .map(|&(b, v)| w.get(b as usize).copied().unwrap_or(0.0) * v)
        .sum::<f32>()
        + w.last().copied().unwrap_or(0.0)
}

/// Quantises float weights to `i8` (a high quantile of |w| maps to 127, as the fast model).
fn quantize_ngram(w: &[f32], bits: u8) -> Ngram {
    let (table, bias) = w.split_at(w.len().saturating_sub(1));
    let mut a: Vec<f32> = table.iter().map(|v| v.abs()).filter(|v| *v > 0.0).collect();
    a.sort_by(f32::total_cmp);
    let q = a
        .get(((a.len() as f64 * 0.999) as usize).min(a.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    let scale = if q > 0.0 { q / 127.0 } else { 1e-9 };
    Ngram {
        bits,
        scale,
        bias: bias.first().copied().unwrap_or(0.0),
        weights: table
            .iter()
            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8)
            .collect(),
    }
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
    /// The category heads' logits by category index (`-inf` where there is no head).
    pub logits: [f32; CATEGORY_COUNT],
    /// The sexual head's own operating point for the kind (above 1: none).
    pub sexual_threshold: f32,
}

impl Cascade {
    /// The categories and scores on the profile's scale. The any-harm route: the likeliest
    /// category the profile flags or blocks for the kind (the operating point was chosen as
    /// "harmful or not", so a likeliest category the profile only logs must not swallow the
    /// decision), with the operating point mapped onto that category's flag threshold (or its
    /// block threshold when it never flags). The sexual route, on image prompts: the sexual
    /// head at or over its own operating point scores `sexual` the same way (the harm at the
    /// centre of the abuse gets recall of its own). Empty when the profile acts on none of
    /// the head categories.
    pub fn score_under(&self, kind: Kind, profile: &Profile) -> Vec<(Category, f32)> {
        let anchor_of = |c: Category| {
            profile
                .threshold_for(kind, c, Action::Flag)
                .filter(|a| *a > 0.0 && *a <= 1.0)
        };
        let mut out = Vec::with_capacity(2);
        let any = anchor_of(self.category)
            .map(|a| (self.category, a))
            .or_else(|| {
                CASCADE_HEADS
                    .iter()
                    .copied()
                    .filter(|c| self.logits[c.index()].is_finite())
                    .filter_map(|c| anchor_of(c).map(|a| (c, a, self.logits[c.index()])))
                    .max_by(|a, b| a.2.total_cmp(&b.2))
                    .map(|(c, a, _)| (c, a))
            });
        if let Some((c, anchor)) = any {
            out.push((c, to_scale(self.probability, self.threshold, anchor)));
        }
        let ps = sigmoid(self.logits[Category::Sexual.index()]);
        if self.sexual_threshold <= 1.0
            && ps >= self.sexual_threshold
            && let Some(anchor) = anchor_of(Category::Sexual)
        {
            out.push((
                Category::Sexual,
                to_scale(ps, self.sexual_threshold, anchor),
            ));
        }
        out
    }
}

/// A probability on the profile's scale: the operating point `t` lands on `anchor`; squared
/// below it, so texts the heads find unlikely stay under the profiles' log thresholds.
fn to_scale(p: f32, t: f32, anchor: f32) -> f32 {
    let t = t.clamp(1e-4, 1.0 - 1e-4);
    let s = if p < t {
        (p / t).powi(2) * anchor
    } else {
        anchor + (p - t) / (1.0 - t) * (1.0 - anchor)
    };
    s.clamp(0.0, 1.0)
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

    /// The poolings the embedding is made of, in order
    /// ([`crate::encoder::Encoder::embed_pooled`]).
    pub fn pooling(&self) -> &[Pooling] {
        &self.pooling
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

    fn inputs(
        &self,
        embedding: &[f32],
        fast: &[f32; CATEGORY_COUNT],
        kind: Kind,
        text: &str,
    ) -> Vec<f32> {
        let z = self.ngram.as_ref().map(|m| m.logit(text));
        let mut x = raw_inputs(embedding, fast, kind, z, self.logit_inputs);
        standardise_in_place(&mut x, &self.mean, &self.scale);
        x
    }

    /// Whether the heads read an image n-gram model's logit of the text too.
    pub fn has_ngram(&self) -> bool {
        self.ngram.is_some()
    }

    /// Scores an embedding of `text` (the text the encoder read, [`Screener::encoder_text`])
    /// stacked with the fast tier's scores. `None` when the embedding has the wrong length
    /// (another encoder than the heads were trained on).
    pub fn score(
        &self,
        embedding: &[f32],
        fast: &[f32; CATEGORY_COUNT],
        kind: Kind,
        text: &str,
    ) -> Option<Cascade> {
        if embedding.len() != self.dim {
            return None;
        }
        let x = self.inputs(embedding, fast, kind, text);
        let any = match kind {
            Kind::Image => &self.any_image,
            Kind::Chat => &self.any_chat,
        };
        let probability = match kind {
            Kind::Image => image_probability(sigmoid(dot(any, &x)), &self.image_mlp, &x),
            Kind::Chat => sigmoid(dot(any, &x)),
        };
        let mut logits = [f32::NEG_INFINITY; CATEGORY_COUNT];
        for (c, w) in &self.cats {
            logits[c.index()] = dot(w, &x);
        }
        let category = self
            .cats
            .iter()
            .map(|(c, _)| (*c, logits[c.index()]))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(Category::Sexual, |(c, _)| c);
        Some(Cascade {
            probability,
            category,
            threshold: self.threshold(kind),
            logits,
            sexual_threshold: match kind {
                Kind::Image => self.image_sexual_threshold,
                Kind::Chat => 2.0,
            },
        })
    }

    /// Serializes the heads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.mean.len();
        let mut b = Vec::with_capacity(32 + 4 * n * (4 + self.cats.len()));
        b.extend_from_slice(MAGIC);
        for v in [self.dim, n, self.cats.len() + 2] {
            b.extend_from_slice(&(v as u32).to_le_bytes());
        }
        for v in [
            self.image_threshold,
            self.chat_threshold,
            self.band.0,
            self.band.1,
            self.image_sexual_threshold,
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
        put(&mut b, &self.any_image);
        b.push(ANY_CHAT_HEAD);
        put(&mut b, &self.any_chat);
        for (c, w) in &self.cats {
            b.push(c.index() as u8);
            put(&mut b, w);
        }
        match &self.ngram {
            None => b.push(0),
            Some(m) => {
                b.push(m.bits);
                b.extend_from_slice(&m.scale.to_le_bytes());
                b.extend_from_slice(&m.bias.to_le_bytes());
                b.extend(m.weights.iter().map(|w| *w as u8));
            }
        }
        b.push(u8::from(self.logit_inputs));
        let hidden = self.image_mlp.first().map_or(0, |m| m.hidden);
        for v in [hidden, self.image_mlp.len()] {
            b.extend_from_slice(&(v as u32).to_le_bytes());
        }
        for m in &self.image_mlp {
            put(&mut b, &m.w);
        }
        b.push(self.pooling.len() as u8);
        for p in &self.pooling {
            b.extend_from_slice(&p.to_code());
        }
        b
    }

    /// Reads a heads file.
    pub fn from_bytes(b: &[u8]) -> Result<Heads, HeadsError> {
        let bad = |m: &str| HeadsError::Format(m.to_owned());
        let mut r = Reader { b, at: 0 };
        let magic = r.take(4).ok_or_else(|| bad("truncated"))?;
        if ![MAGIC, MAGIC_V4, MAGIC_V3, MAGIC_V2, MAGIC_V1]
            .iter()
            .any(|m| m[..] == *magic)
        {
            return Err(bad("not a heads file"));
        }
        // The n-gram section exists from SWC3 on, the log-odds inputs and networks from SWC4,
        // the poolings in SWC5.
        let v4_on = magic == MAGIC || magic == MAGIC_V4;
        let has_ngram_section = v4_on || magic == MAGIC_V3;
        let v1 = magic == MAGIC_V1;
        let dim = r.u32().ok_or_else(|| bad("truncated"))? as usize;
        let n = r.u32().ok_or_else(|| bad("truncated"))? as usize;
        let heads = r.u32().ok_or_else(|| bad("truncated"))? as usize;
        // An n-gram model (SWC3 on) adds one input, the log-odds (SWC4) CATEGORY_COUNT + 1;
        // whether they are there is checked below.
        let base = dim + CATEGORY_COUNT + 1;
        let logit_extra = CATEGORY_COUNT + 1;
        let plausible = if v4_on {
            [base, base + 1, base + logit_extra, base + logit_extra + 1].contains(&n)
        } else {
            n == base || (has_ngram_section && n == base + 1)
        };
        if !plausible || dim == 0 || dim > 8192 || heads == 0 || heads > 64 {
            return Err(bad("inconsistent sizes"));
        }
        let mut f = || r.f32().ok_or_else(|| bad("truncated"));
        let (image_threshold, chat_threshold, lo, hi) = (f()?, f()?, f()?, f()?);
        let image_sexual_threshold = if v1 { 2.0 } else { f()? };
        let mut vec = |len: usize| -> Result<Vec<f32>, HeadsError> {
            (0..len)
                .map(|_| r.f32().ok_or_else(|| bad("truncated")))
                .collect()
        };
        let mean = vec(n)?;
        let scale = vec(n)?;
        let (mut any, mut any_chat) = (None, None);
        let mut cats = Vec::new();
        for _ in 0..heads {
            let tag = r.take(1).ok_or_else(|| bad("truncated"))?[0];
            let mut w = Vec::with_capacity(n + 1);
            for _ in 0..=n {
                w.push(r.f32().ok_or_else(|| bad("truncated"))?);
            }
            if tag == ANY_HEAD {
                any = Some(w);
            } else if tag == ANY_CHAT_HEAD && !v1 {
                any_chat = Some(w);
            } else {
                let c = Category::ALL
                    .into_iter()
                    .find(|c| c.index() == usize::from(tag))
                    .ok_or_else(|| bad("unknown category"))?;
                cats.push((c, w));
            }
        }
        let ngram = if has_ngram_section {
            let bits = r.take(1).ok_or_else(|| bad("truncated"))?[0];
            if bits == 0 {
                None
            } else {
                if !model::BITS_RANGE.contains(&bits) {
                    return Err(bad("n-gram bits out of range"));
                }
                let scale = r.f32().ok_or_else(|| bad("truncated"))?;
                let bias = r.f32().ok_or_else(|| bad("truncated"))?;
                let weights = r
                    .take(1usize << bits)
                    .ok_or_else(|| bad("truncated"))?
                    .iter()
                    .map(|w| *w as i8)
                    .collect();
                if !(scale.is_finite() && bias.is_finite()) {
                    return Err(bad("non-finite value"));
                }
                Some(Ngram {
                    bits,
                    scale,
                    bias,
                    weights,
                })
            }
        } else {
            None
        };
        let (logit_inputs, image_mlp) = if v4_on {
            let flags = r.take(1).ok_or_else(|| bad("truncated"))?[0];
            if flags > 1 {
                return Err(bad("unknown flags"));
            }
            let hidden = r.u32().ok_or_else(|| bad("truncated"))? as usize;
            let count = r.u32().ok_or_else(|| bad("truncated"))? as usize;
            if hidden > 1024 || count > 16 || (hidden == 0) != (count == 0) {
                return Err(bad("network sizes out of range"));
            }
            let mut nets = Vec::with_capacity(count);
            for _ in 0..count {
                let w = (0..Mlp::len(n, hidden))
                    .map(|_| r.f32().ok_or_else(|| bad("truncated")))
                    .collect::<Result<Vec<f32>, _>>()?;
                if !w.iter().all(|v| v.is_finite()) {
                    return Err(bad("non-finite value"));
                }
                nets.push(Mlp {
                    inputs: n,
                    hidden,
                    w,
                });
            }
            (flags == 1, nets)
        } else {
            (false, Vec::new())
        };
        let expected =
            base + usize::from(ngram.is_some()) + if logit_inputs { logit_extra } else { 0 };
        if n != expected {
            return Err(bad(
                "input count does not match the n-gram model and the log-odds flag",
            ));
        }
        let pooling = if magic == MAGIC {
            let count = usize::from(r.take(1).ok_or_else(|| bad("truncated"))?[0]);
            if count == 0 || !dim.is_multiple_of(count) {
                return Err(bad("poolings do not divide the embedding length"));
            }
            (0..count)
                .map(|_| {
                    let c = r.take(2).ok_or_else(|| bad("truncated"))?;
                    Pooling::from_code([c[0], c[1]]).ok_or_else(|| bad("unknown pooling"))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Pooling::DEFAULT.to_vec()
        };
        if r.at != b.len() {
            return Err(bad("trailing bytes"));
        }
        let any_image = any.ok_or_else(|| bad("no any-harm head"))?;
        let any_chat = match any_chat {
            Some(w) => w,
            None if v1 => any_image.clone(),
            None => return Err(bad("no chat any-harm head")),
        };
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        if !(finite(&mean)
            && finite(&scale)
            && finite(&any_image)
            && finite(&any_chat)
            && cats.iter().all(|(_, w)| finite(w))
            && finite(&[
                image_threshold,
                chat_threshold,
                lo,
                hi,
                image_sexual_threshold,
            ]))
        {
            return Err(bad("non-finite value"));
        }
        Ok(Heads {
            dim,
            mean,
            scale,
            any_image,
            any_chat,
            cats,
            image_threshold,
            chat_threshold,
            band: (lo, hi),
            image_sexual_threshold,
            ngram,
            logit_inputs,
            image_mlp,
            pooling,
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

/// The heads' inputs before standardisation: embedding, fast-tier scores of the head
/// categories, the image n-gram model's logit (when the heads have one), image flag. The other categories' scores (filter evasion from obfuscation
/// signals, the combinations) read as zero: the development prompts are undisguised, so the
/// heads never learn what those scores mean, and a disguise's signal score sat many
/// standard deviations out (zero-width characters cost the cascade 8 points of recall on
/// the test part). The rules still act on them.
fn raw_inputs(
    embedding: &[f32],
    fast: &[f32; CATEGORY_COUNT],
    kind: Kind,
    ngram: Option<f32>,
    logits: bool,
) -> Vec<f32> {
    let mut x = Vec::with_capacity(embedding.len() + 2 * CATEGORY_COUNT + 3);
    x.extend_from_slice(embedding);
    let head = |c: Category| {
        if CASCADE_HEADS.contains(&c) {
            fast[c.index()]
        } else {
            0.0
        }
    };
    x.extend(Category::ALL.into_iter().map(head));
    if logits {
        // The fast scores' log-odds: a score of 0.99 and one of 0.9999 differ by little on
        // the score's scale and by a lot in evidence. Non-head categories stay constant.
        x.extend(Category::ALL.into_iter().map(|c| {
            if CASCADE_HEADS.contains(&c) {
                log_odds(fast[c.index()])
            } else {
                0.0
            }
        }));
        let max = Category::ALL.into_iter().map(head).fold(0.0f32, f32::max);
        x.push(log_odds(max));
    }
    x.extend(ngram);
    x.push(if kind == Kind::Image { 1.0 } else { 0.0 });
    x
}

/// A score's log-odds, the score kept within [1e-3, 1 − 1e-3].
fn log_odds(s: f32) -> f32 {
    let s = s.clamp(1e-3, 1.0 - 1e-3);
    (s / (1.0 - s)).ln()
}

/// Standardised inputs are clipped to this many standard deviations: an input far outside
/// what the heads were fitted on must not decide alone.
const INPUT_CLIP: f32 = 8.0;

/// Standardises raw inputs in place (clipped to ±[`INPUT_CLIP`]).
fn standardise_in_place(x: &mut [f32], mean: &[f32], scale: &[f32]) {
    for ((v, m), s) in x.iter_mut().zip(mean).zip(scale) {
        *v = ((*v - m) * s).clamp(-INPUT_CLIP, INPUT_CLIP);
    }
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
    /// The text the encoder read ([`Screener::encoder_text`]); the image n-gram model
    /// reads it too.
    pub text: String,
}

impl Row {
    fn fast_max(&self) -> f32 {
        self.fast.iter().copied().fold(0.0, f32::max)
    }
}

/// Settings of the heads' logistic regressions.
#[derive(Debug, Clone)]
pub struct HeadsConfig {
    /// L2 penalty per example of the category heads.
    pub l2: f32,
    /// L2 penalties per example tried for each any-harm head; [`train`] keeps the one with
    /// the best out-of-fold F1 at the kind's operating constraint. (On dev, image: 1e-3 gave
    /// F1 0.69, 0.03 0.76, 0.1 0.76, 1.0 0.74 at 2% FPR: the embedding's 384 inputs overfit
    /// a few thousand prompts without a real penalty.)
    pub l2_grid: Vec<f32>,
    /// Full-batch Adam steps.
    pub steps: u32,
    /// Adam step size.
    pub learning_rate: f32,
    /// Chat prompts reaching the encoder: at most this share of benign dev chat prompts
    /// (out-of-fold fast-tier scores) falls in the band.
    pub chat_max_reach: f64,
    /// The image operating points' benign false-positive cap on out-of-fold dev predictions.
    pub image_max_fpr: f64,
    /// log2 of the image n-gram model's bucket count (0: no n-gram model, the default: on
    /// dev, 5-fold out of fold at 1.7% benign FPR, 2^16 buckets moved image F1 0.744 →
    /// 0.746 and cost the sexual route 2.4 points of recall, 0.848 → 0.824; not worth its
    /// 64 KiB).
    pub ngram_bits: u8,
    /// Whether the heads read the fast scores' log-odds too. Off: on dev (5-fold, 1.9% cap)
    /// they lifted the image logistic regression alone (nested F1 0.762 → 0.773) but not the
    /// cascade with the networks (nested 0.775 without, 0.769 with).
    pub logit_inputs: bool,
    /// Hidden width of the image any-harm networks (0: none, the default: the logistic
    /// regression alone). Ninth cut, dev 5-fold nested image F1: on the rows of a retrained
    /// fast model, 32 networks lifted it 0.763 → 0.775 at the 1.9% cap, but on the shipped
    /// fast model's rows 0.764 (nested FPR 2.0%) against 0.761, and at 1.8% 0.758 against
    /// 0.761 — no gain on the model that ships, so none ship (`MLP_H=32` in the example).
    pub image_hidden: usize,
    /// Their weight decay (3e-3 and 1e-2 tried on dev; 3e-3 best with three seeds).
    pub image_mlp_wd: f32,
    /// Their training epochs.
    pub image_mlp_epochs: u32,
    /// How many networks (seeds) the image ensemble averages.
    pub image_mlp_count: usize,
    /// The poolings the rows' embeddings are made of (recorded in the heads, so the
    /// screener embeds the same way).
    pub pooling: Vec<Pooling>,
}

impl Default for HeadsConfig {
    fn default() -> Self {
        HeadsConfig {
            l2: 0.1,
            l2_grid: vec![0.03, 0.1, 0.3],
            steps: 300,
            learning_rate: 0.05,
            chat_max_reach: CHAT_MAX_REACH,
            image_max_fpr: IMAGE_MAX_FPR,
            ngram_bits: 0,
            logit_inputs: false,
            image_hidden: 0,
            image_mlp_wd: 3e-3,
            image_mlp_epochs: 20,
            image_mlp_count: 3,
            pooling: Pooling::DEFAULT.to_vec(),
        }
    }
}

/// Logistic regression by full-batch Adam on `n` standardised inputs; weights with the bias
/// last (a constant "no" when no row is positive, such as a kind without rows).
fn fit(x: &[&[f32]], y: &[bool], n: usize, l2: f32, cfg: &HeadsConfig) -> Vec<f32> {
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
            for (gj, xj) in g.iter_mut().zip(xi.iter()) {
                *gj += e * xj;
            }
            g[n] += e;
        }
        let (b1, b2) = (0.9f32, 0.999f32);
        let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        for j in 0..=n {
            let reg = if j < n { l2 * w[j] } else { 0.0 };
            let gj = g[j] * inv + reg;
            m[j] = b1 * m[j] + (1.0 - b1) * gj;
            v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
            w[j] -= cfg.learning_rate * (m[j] / c1) / ((v[j] / c2).sqrt() + 1e-8);
        }
    }
    w
}

/// Means and inverse standard deviations of the rows' inputs (with each row's n-gram logit,
/// `z`, parallel to `rows`), and the standardised inputs.
fn standardise(
    rows: &[&Row],
    z: &[Option<f32>],
    logits: bool,
) -> (Vec<f32>, Vec<f32>, Vec<Vec<f32>>) {
    let raw: Vec<Vec<f32>> = rows
        .iter()
        .zip(z)
        .map(|(r, z)| raw_inputs(&r.embedding, &r.fast, r.kind, *z, logits))
        .collect();
    let n = raw.first().map_or(0, Vec::len);
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
    let x = raw
        .into_iter()
        .map(|mut x| {
            standardise_in_place(&mut x, &mean, &scale);
            x
        })
        .collect();
    (mean, scale, x)
}

/// The any-harm head for one kind, fitted on that kind's rows only.
fn fit_any(rows: &[&Row], x: &[Vec<f32>], kind: Kind, l2: f32, cfg: &HeadsConfig) -> Vec<f32> {
    let (xs, ys): (Vec<&[f32]>, Vec<bool>) = rows
        .iter()
        .zip(x)
        .filter(|(r, _)| r.kind == kind)
        .map(|(r, x)| (x.as_slice(), r.harmful))
        .unzip();
    let n = x.first().map_or(0, Vec::len);
    fit(&xs, &ys, n, l2, cfg)
}

/// The image any-harm networks fitted on that kind's rows (none when `cfg.image_hidden` is
/// 0), each from its own seed.
fn fit_image_mlps(rows: &[&Row], x: &[Vec<f32>], cfg: &HeadsConfig) -> Vec<Mlp> {
    if cfg.image_hidden == 0 || cfg.image_mlp_count == 0 {
        return Vec::new();
    }
    let (xs, ys): (Vec<&[f32]>, Vec<bool>) = rows
        .iter()
        .zip(x)
        .filter(|(r, _)| r.kind == Kind::Image)
        .map(|(r, x)| (x.as_slice(), r.harmful))
        .unzip();
    if xs.is_empty() {
        return Vec::new();
    }
    (0..cfg.image_mlp_count as u64)
        .map(|s| {
            Mlp::fit(
                &xs,
                &ys,
                cfg.image_hidden,
                cfg.image_mlp_wd,
                cfg.image_mlp_epochs,
                MLP_SEED.wrapping_add(s.wrapping_mul(0x9e37_79b9)),
            )
        })
        .collect()
}

/// A text's n-gram features: (bucket, signed weight).
type Features = [(u32, f32)];

/// Each row's n-gram features (empty without an n-gram model).
fn row_features(rows: &[Row], bits: u8) -> Vec<Vec<(u32, f32)>> {
    if bits == 0 {
        return Vec::new();
    }
    let mut scratch = model::Scratch::default();
    rows.iter()
        .map(|r| ngram_features(&r.text, bits, &mut scratch))
        .collect()
}

/// The image n-gram model fitted on the image rows `use_row` admits.
fn fit_ngram_on(
    rows: &[Row],
    feats: &[Vec<(u32, f32)>],
    bits: u8,
    use_row: impl Fn(&Row) -> bool,
) -> Vec<f32> {
    let (x, y): (Vec<&Features>, Vec<bool>) = rows
        .iter()
        .zip(feats)
        .filter(|(r, _)| r.kind == Kind::Image && use_row(r))
        .map(|(r, f)| (f.as_slice(), r.harmful))
        .unzip();
    fit_ngram_f32(&x, &y, bits)
}

/// Fits every head on rows, with the any-harm heads' penalties (image, chat) and their
/// operating points given.
fn fit_heads(
    rows: &[&Row],
    z: &[Option<f32>],
    ngram: Option<Ngram>,
    cfg: &HeadsConfig,
    l2: (f32, f32),
    thresholds: (f32, f32, f32),
    band: (f32, f32),
) -> Heads {
    let dim = rows.first().map_or(0, |r| r.embedding.len());
    let (mean, scale, x) = standardise(rows, z, cfg.logit_inputs);
    let n = mean.len();
    let xs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
    let image_mlp = fit_image_mlps(rows, &x, cfg);
    let any_image = fit_any(rows, &x, Kind::Image, l2.0, cfg);
    let any_chat = fit_any(rows, &x, Kind::Chat, l2.1, cfg);
    let cats = CASCADE_HEADS
        .iter()
        .map(|c| {
            let y: Vec<bool> = rows.iter().map(|r| r.categories.contains(c)).collect();
            (*c, fit(&xs, &y, n, cfg.l2, cfg))
        })
        .collect();
    Heads {
        dim,
        mean,
        scale,
        any_image,
        any_chat,
        cats,
        image_threshold: thresholds.0,
        chat_threshold: thresholds.1,
        band,
        image_sexual_threshold: thresholds.2,
        ngram,
        logit_inputs: cfg.logit_inputs,
        image_mlp,
        pooling: cfg.pooling.clone(),
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
    /// Development image prompts, each fold at the points chosen on the other four (nested).
    pub image_nested: Counts,
    /// Development chat prompts, fast tier alone (out of fold).
    pub chat_fast: Counts,
    /// Development chat prompts, the cascade at the chosen point and band (out of fold).
    pub chat_cascade: Counts,
    /// Share of development chat prompts (all / benign) inside the band.
    pub chat_reach: (f64, f64),
    /// The any-harm heads' L2 penalties (image, chat) cross-validation chose.
    pub l2: (f32, f32),
    /// Recall on development image prompts labelled sexual: fast tier, cascade (out of fold).
    pub image_sexual_recall: (f64, f64),
    /// Development chat prompts per source, the cascade at the chosen point and band (out of
    /// fold).
    pub chat_by_source: Vec<(String, Counts)>,
}

/// The cascade's decision on a row for a threshold (and, for chat, a band).
fn decide_row(r: &Row, p: f32, t: f32, band: (f32, f32)) -> bool {
    decide_row_sexual(r, p, t, band, (0.0, 2.0))
}

/// [`decide_row`] with the sexual head's probability and operating point (image only).
fn decide_row_sexual(r: &Row, p: f32, t: f32, band: (f32, f32), sexual: (f32, f32)) -> bool {
    let m = r.fast_max();
    let inside = r.kind == Kind::Image || (m >= band.0 && m < band.1);
    if inside {
        r.rule_flag || p >= t || (r.kind == Kind::Image && sexual.0 >= sexual.1)
    } else {
        r.fast_flag
    }
}

/// Builds the stacking rows for development records: `embed` gives the embedding of each
/// record's [`Screener::encoder_text`] (as `runtime` picks it); the fast-tier scores come from a model
/// trained on the other folds, as the heads will meet scores of texts the fast model never
/// saw. Those fold models score on the scale of `runtime`, the fast model the heads will run
/// beside ([`model::Model::with_pivots_of`]): each model's calibration pivot is a noisy
/// extreme quantile (0.876 in the shipped model, 0.34–0.48 in the fold models), and heads
/// and thresholds tuned on the fold models' own scales met scores on the test part far
/// lower than they expected (benign FPR 0.7% where dev chose 1.7%, recall lost). Test-split
/// records must not be passed in (the caller filters them).
pub fn rows(
    records: &[Record],
    fast_cfg: &TrainConfig,
    runtime: &model::Model,
    mut embed: impl FnMut(&str) -> Vec<f32>,
) -> Result<Vec<Row>, crate::screen::SafetyError> {
    let profile = Profile::default();
    let reader = Screener::builder().model(Some(runtime.clone())).build()?;
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
                    let m = model::train_on_records(&train, fast_cfg).with_pivots_of(runtime);
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
            let text = reader.encoder_text(&r.text);
            out[i] = Some(Row {
                embedding: embed(&text),
                fast,
                fast_flag: a.decide(r.kind, &profile).action >= Action::Flag,
                rule_flag: a.rules_action(r.kind, &profile) >= Action::Flag,
                kind: r.kind,
                harmful: r.harmful,
                categories: r.mapped_categories(),
                fold: k,
                source: r.source.clone(),
                text,
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
    let l2_grid: Vec<f32> = if cfg.l2_grid.is_empty() {
        vec![cfg.l2]
    } else {
        cfg.l2_grid.clone()
    };
    // The image n-gram model's out-of-fold logits (trained on the image rows of four folds,
    // scoring every row of the fifth), as the heads meet its logits of unseen texts.
    let bits = cfg.ngram_bits;
    let feats = row_features(rows, bits);
    let mut z: Vec<Option<f32>> = vec![None; rows.len()];
    if bits > 0 {
        for k in 0..FOLDS {
            let w = fit_ngram_on(rows, &feats, bits, |r| r.fold != k);
            for (i, r) in rows.iter().enumerate() {
                if r.fold == k {
                    z[i] = Some(ngram_logit_f32(&w, &feats[i]));
                }
            }
        }
    }
    // Out-of-fold any-harm probabilities per penalty in the grid: each kind's head is fitted
    // on four folds (standardised on them) and scores the fifth.
    let mut oof_by_l2 = vec![vec![0.0f32; rows.len()]; l2_grid.len()];
    // And the sexual category head's, on image prompts (fitted as in `fit_heads`).
    let mut oof_sexual = vec![0.0f32; rows.len()];
    for k in 0..FOLDS {
        let (train, tz): (Vec<&Row>, Vec<Option<f32>>) = rows
            .iter()
            .zip(&z)
            .filter(|(r, _)| r.fold != k)
            .map(|(r, z)| (r, *z))
            .unzip();
        let (mean, scale, x) = standardise(&train, &tz, cfg.logit_inputs);
        let xs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
        let mlps = fit_image_mlps(&train, &x, cfg);
        let ys: Vec<bool> = train
            .iter()
            .map(|r| r.categories.contains(&Category::Sexual))
            .collect();
        let n = mean.len();
        let ws = fit(&xs, &ys, n, cfg.l2, cfg);
        for (i, r) in rows.iter().enumerate() {
            if r.fold == k && r.kind == Kind::Image {
                let mut xi = raw_inputs(&r.embedding, &r.fast, r.kind, z[i], cfg.logit_inputs);
                standardise_in_place(&mut xi, &mean, &scale);
                oof_sexual[i] = sigmoid(dot(&ws, &xi));
            }
        }
        for (g, &l2) in l2_grid.iter().enumerate() {
            for kind in [Kind::Image, Kind::Chat] {
                let w = fit_any(&train, &x, kind, l2, cfg);
                for (i, r) in rows.iter().enumerate() {
                    if r.fold == k && r.kind == kind {
                        let mut xi =
                            raw_inputs(&r.embedding, &r.fast, r.kind, z[i], cfg.logit_inputs);
                        standardise_in_place(&mut xi, &mean, &scale);
                        let p = sigmoid(dot(&w, &xi));
                        oof_by_l2[g][i] = match kind {
                            Kind::Image => image_probability(p, &mlps, &xi),
                            Kind::Chat => p,
                        };
                    }
                }
            }
        }
    }
    let grid: Vec<f32> = (1..200).map(|i| i as f32 / 200.0).collect();
    let fast_chat_fpr = {
        let mut c = Counts::default();
        for r in rows.iter().filter(|r| r.kind == Kind::Chat) {
            c.add(r.harmful, r.fast_flag);
        }
        c.fpr()
    };
    // Per kind, the penalty whose out-of-fold F1 is best under the kind's constraint (image:
    // benign FPR at most IMAGE_MAX_FPR; chat, every prompt through the heads: at most two
    // points over the fast tier's).
    let best_f1 = |oof: &[f32], kind: Kind, cap: f64| {
        grid.iter()
            .map(|&t| {
                let mut c = Counts::default();
                for (r, p) in rows.iter().zip(oof).filter(|(r, _)| r.kind == kind) {
                    c.add(r.harmful, decide_row(r, *p, t, (0.0, 2.0)));
                }
                c
            })
            .filter(|c| c.fpr() <= cap)
            .map(|c| c.f1())
            .fold(0.0f64, f64::max)
    };
    let pick = |kind: Kind, cap: f64| {
        (0..l2_grid.len())
            .map(|g| (g, best_f1(&oof_by_l2[g], kind, cap)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(g, _)| g)
    };
    let (gi, gc) = (
        pick(Kind::Image, cfg.image_max_fpr),
        pick(Kind::Chat, fast_chat_fpr + 0.02),
    );
    let oof: Vec<f32> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| match r.kind {
            Kind::Image => oof_by_l2[gi][i],
            Kind::Chat => oof_by_l2[gc][i],
        })
        .collect();
    let l2 = (l2_grid[gi], l2_grid[gc]);
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
    // Image: the any-harm head's and the sexual head's operating points together (the
    // sexual one may stay off), best F1 at benign FPR <= IMAGE_MAX_FPR.
    let image_rows: Vec<(&Row, f32, f32)> = rows
        .iter()
        .zip(oof.iter().zip(&oof_sexual))
        .filter(|(r, _)| r.kind == Kind::Image)
        .map(|(r, (p, s))| (r, *p, *s))
        .collect();
    let image_counts = |t: f32, ts: f32| {
        let mut c = Counts::default();
        for (r, p, s) in &image_rows {
            c.add(r.harmful, decide_row_sexual(r, *p, t, (0.0, 1.0), (*s, ts)));
        }
        c
    };
    let sexual_grid: Vec<f32> = (1..100).map(|i| i as f32 / 100.0).chain([2.0]).collect();
    // The operating points with the best F1 at the cap over the image rows `use_row` admits.
    let choose = |use_row: &dyn Fn(&Row) -> bool| {
        let sub: Vec<&(&Row, f32, f32)> =
            image_rows.iter().filter(|(r, _, _)| use_row(r)).collect();
        grid.iter()
            .flat_map(|&t| sexual_grid.iter().map(move |&ts| (t, ts)))
            .map(|(t, ts)| {
                let mut c = Counts::default();
                for (r, p, s) in &sub {
                    c.add(r.harmful, decide_row_sexual(r, *p, t, (0.0, 1.0), (*s, ts)));
                }
                (t, ts, c)
            })
            .filter(|(_, _, c)| c.fpr() <= cfg.image_max_fpr)
            // On a tie the sexual head stays off: a second route must earn its place.
            .max_by(|a, b| {
                a.2.f1()
                    .total_cmp(&b.2.f1())
                    .then((a.1 > 1.0).cmp(&(b.1 > 1.0)))
            })
            .map_or((1.0, 2.0), |(t, ts, _)| (t, ts))
    };
    let (image_t, image_ts) = choose(&|_| true);
    // Nested: the operating points chosen on four folds' out-of-fold predictions, applied to
    // the fifth's, so the cap's effect on unseen prompts is estimated without choosing on them.
    let mut image_nested = Counts::default();
    for k in 0..FOLDS {
        let (t, ts) = choose(&|r: &Row| r.fold != k);
        for (r, p, s) in image_rows.iter().filter(|(r, _, _)| r.fold == k) {
            image_nested.add(r.harmful, decide_row_sexual(r, *p, t, (0.0, 1.0), (*s, ts)));
        }
    }
    let sexual_recall = |pred: &dyn Fn(&Row, f32, f32) -> bool| {
        let (mut hit, mut all) = (0u32, 0u32);
        for (r, p, s) in image_rows
            .iter()
            .filter(|(r, _, _)| r.categories.contains(&Category::Sexual))
        {
            all += 1;
            hit += u32::from(pred(r, *p, *s));
        }
        f64::from(hit) / f64::from(all.max(1))
    };
    let image_sexual_recall = (
        sexual_recall(&|r, _, _| r.fast_flag),
        sexual_recall(&|r, p, s| decide_row_sexual(r, p, image_t, (0.0, 1.0), (s, image_ts))),
    );

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
    // Every percentile: seven fixed quantiles left the band at half its allowed reach.
    for q in (50..100).map(|i| f64::from(i) / 100.0) {
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
        if reach > cfg.chat_max_reach {
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
    let mut chat_by_source: std::collections::BTreeMap<String, Counts> = Default::default();
    for (r, p) in &chat {
        chat_by_source
            .entry(r.source.clone())
            .or_default()
            .add(r.harmful, decide_row(r, *p, chat_t, band));
    }
    let n_chat = chat.len().max(1) as f64;
    let n_benign = benign_max.len().max(1) as f64;
    let report = TrainReport {
        image_fast: fast_only(Kind::Image),
        image_cascade: image_counts(image_t, image_ts),
        image_nested,
        image_sexual_recall,
        chat_fast: fast_chat,
        chat_cascade: counts(Kind::Chat, chat_t, band),
        chat_reach: (
            rows.iter().filter(|r| inside(r)).count() as f64 / n_chat,
            rows.iter().filter(|r| !r.harmful && inside(r)).count() as f64 / n_benign,
        ),
        l2,
        chat_by_source: chat_by_source.into_iter().collect(),
    };
    let all: Vec<&Row> = rows.iter().collect();
    let ngram =
        (bits > 0).then(|| quantize_ngram(&fit_ngram_on(rows, &feats, bits, |_| true), bits));
    (
        fit_heads(&all, &z, ngram, cfg, l2, (image_t, chat_t, image_ts), band),
        report,
    )
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
            text: String::new(),
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
            .score(
                &[1.0, 0.2, 0.0, 0.0],
                &[0.0; CATEGORY_COUNT],
                Kind::Image,
                "",
            )
            .unwrap();
        let ok = h
            .score(
                &[-1.0, 0.2, 0.0, 0.0],
                &[0.0; CATEGORY_COUNT],
                Kind::Image,
                "",
            )
            .unwrap();
        assert!(harm.probability >= harm.threshold && ok.probability < ok.threshold);
        assert_eq!(harm.category, Category::Sexual);
        assert!(
            h.score(&[1.0; 3], &[0.0; CATEGORY_COUNT], Kind::Image, "")
                .is_none()
        );
        let back = Heads::from_bytes(&h.to_bytes()).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn signal_scores_and_outliers_do_not_move_the_heads() {
        let mut rows = Vec::new();
        for i in 0..100u32 {
            let h = i % 2 == 0;
            let mut r = row(
                [if h { 1.0 } else { -1.0 }, 0.0, 0.0, 0.0],
                h,
                Kind::Image,
                i % FOLDS,
            );
            r.fast[Category::Sexual.index()] = if h { 0.6 } else { 0.1 };
            rows.push(r);
        }
        let (h, _) = train(&rows, &HeadsConfig::default());
        let e = [-1.0, 0.0, 0.0, 0.0];
        let mut fast = [0.0; CATEGORY_COUNT];
        let base = h.score(&e, &fast, Kind::Image, "").unwrap().probability;
        // An obfuscation signal (filter evasion) is the rules' business, not an input.
        fast[Category::FilterEvasion.index()] = 0.45;
        assert_eq!(
            h.score(&e, &fast, Kind::Image, "").unwrap().probability,
            base
        );
        // A far-out value counts no more than INPUT_CLIP standard deviations.
        let far = h.inputs(&[1e6, 0.0, 0.0, 0.0], &fast, Kind::Image, "");
        assert!(far.iter().all(|v| v.abs() <= INPUT_CLIP));
    }

    #[test]
    fn broken_files_are_errors_not_panics() {
        // The smallest n-gram table keeps every cut below quick to try.
        let (h, _) = train(
            &[
                row([1.0, 0.0, 0.0, 0.0], true, Kind::Image, 0),
                row([-1.0, 0.0, 0.0, 0.0], false, Kind::Image, 1),
            ],
            &HeadsConfig {
                ngram_bits: 10,
                ..HeadsConfig::default()
            },
        );
        assert!(h.has_ngram());
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
            logits: [0.0; CATEGORY_COUNT],
            sexual_threshold: 2.0,
        };
        let (c, s) = at(0.3).score_under(Kind::Image, &p)[0];
        assert_eq!(c, Category::Sexual);
        assert!((s - flag).abs() < 1e-5);
        assert!(at(0.29).score_under(Kind::Image, &p)[0].1 < flag);
        assert!(at(1.0).score_under(Kind::Image, &p)[0].1 <= 1.0);
        assert_eq!(at(0.9).score_under(Kind::Image, &p).len(), 1);
    }

    #[test]
    fn the_sexual_head_flags_image_prompts_at_its_own_operating_point() {
        let p = Profile::default();
        let flag = p
            .threshold_for(Kind::Image, Category::Sexual, Action::Flag)
            .unwrap();
        let mut logits = [f32::NEG_INFINITY; CATEGORY_COUNT];
        logits[Category::Violence.index()] = 2.0;
        // sigmoid(0) = 0.5: over an operating point of 0.4, under one of 0.6.
        logits[Category::Sexual.index()] = 0.0;
        let at = |sexual_threshold| Cascade {
            probability: 0.1,
            category: Category::Violence,
            threshold: 0.8,
            logits,
            sexual_threshold,
        };
        let out = at(0.4).score_under(Kind::Image, &p);
        let sexual = out.iter().find(|(c, _)| *c == Category::Sexual).unwrap();
        assert!(sexual.1 >= flag);
        let violence = out.iter().find(|(c, _)| *c == Category::Violence).unwrap();
        assert!(p.action(Kind::Image, Category::Violence, violence.1) < Action::Flag);
        assert!(
            at(0.6)
                .score_under(Kind::Image, &p)
                .iter()
                .all(|(c, _)| *c != Category::Sexual)
        );
    }

    /// Heads without an image n-gram model, log-odds inputs or networks, as the first two
    /// formats hold.
    fn without_ngram() -> HeadsConfig {
        HeadsConfig {
            ngram_bits: 0,
            logit_inputs: false,
            image_hidden: 0,
            ..HeadsConfig::default()
        }
    }

    /// The bytes SWC4 adds after the n-gram section when there are no log-odds inputs and
    /// no networks: flags 0, hidden width 0, network count 0.
    const EMPTY_V4_TAIL: usize = 1 + 4 + 4;
    /// The bytes SWC5 adds after the SWC4 tail for mean pooling alone.
    const MEAN_POOLING_TAIL: usize = 1 + 2;

    #[test]
    fn second_format_files_load_as_heads_without_an_ngram_model() {
        let (h, _) = train(
            &[
                row([1.0, 0.0, 0.0, 0.0], true, Kind::Image, 0),
                row([-1.0, 0.0, 0.0, 0.0], false, Kind::Image, 1),
            ],
            &without_ngram(),
        );
        assert!(!h.has_ngram());
        // SWC2: the current layout without the n-gram section (one byte, 0, here), the
        // SWC4 tail and the SWC5 poolings.
        let b = h.to_bytes();
        let b = &b[..b.len() - MEAN_POOLING_TAIL - EMPTY_V4_TAIL];
        assert_eq!(b.last(), Some(&0));
        let mut old = MAGIC_V2.to_vec();
        old.extend_from_slice(&b[4..b.len() - 1]);
        assert_eq!(Heads::from_bytes(&old).unwrap(), h);
        // SWC3: the same with the n-gram section.
        let mut v3 = MAGIC_V3.to_vec();
        v3.extend_from_slice(&b[4..]);
        assert_eq!(Heads::from_bytes(&v3).unwrap(), h);
        // A second-format file cannot claim the n-gram model's extra input.
        let (with, _) = train(
            &[
                row([1.0, 0.0, 0.0, 0.0], true, Kind::Image, 0),
                row([-1.0, 0.0, 0.0, 0.0], false, Kind::Image, 1),
            ],
            &HeadsConfig {
                ngram_bits: 10,
                ..HeadsConfig::default()
            },
        );
        let b = with.to_bytes();
        let mut old = MAGIC_V2.to_vec();
        old.extend_from_slice(&b[4..]);
        assert!(Heads::from_bytes(&old).is_err());
        // Nor can a third-format file claim the log-odds inputs.
        let mut v3 = MAGIC_V3.to_vec();
        v3.extend_from_slice(&b[4..]);
        assert!(Heads::from_bytes(&v3).is_err());
    }

    #[test]
    fn the_image_ngram_model_reads_the_text_the_embedding_misses() {
        // The embeddings carry nothing; only the words tell harm from benign.
        let mut rows = Vec::new();
        for i in 0..200u32 {
            let h = i % 2 == 0;
            let mut r = row(
                [0.1 * (i % 5) as f32, 0.0, 0.0, 0.0],
                h,
                Kind::Image,
                i % FOLDS,
            );
            r.text = if h {
                format!("a purple zorblax number {i}")
            } else {
                format!("a calm garden number {i}")
            };
            rows.push(r);
        }
        let (h, report) = train(
            &rows,
            &HeadsConfig {
                ngram_bits: 12,
                ..HeadsConfig::default()
            },
        );
        assert!(h.has_ngram());
        assert!(
            report.image_cascade.f1() > 0.95,
            "{:?}",
            report.image_cascade
        );
        let p = |t: &str| {
            h.score(
                &[0.2, 0.0, 0.0, 0.0],
                &[0.0; CATEGORY_COUNT],
                Kind::Image,
                t,
            )
            .unwrap()
        };
        let (harm, ok) = (p("purple zorblax at noon"), p("calm garden at noon"));
        // Same embedding, different words: the text alone moves the head.
        assert!(harm.probability > ok.probability + 0.3, "{harm:?} {ok:?}");
        assert!(ok.probability < ok.threshold, "{ok:?}");
        let m = h.ngram.as_ref().unwrap();
        assert!(m.logit("purple zorblax") > 0.0 && m.logit("calm garden") < 0.0);
        assert_eq!(Heads::from_bytes(&h.to_bytes()).unwrap(), h);
    }

    #[test]
    fn first_format_files_still_load_with_one_head_for_both_kinds() {
        let (h, _) = train(
            &[
                row([1.0, 0.0, 0.0, 0.0], true, Kind::Image, 0),
                row([-1.0, 0.0, 0.0, 0.0], false, Kind::Image, 1),
            ],
            &without_ngram(),
        );
        // SWC1: the same layout without the chat head.
        let n = h.mean.len();
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC_V1);
        for v in [h.dim, n, h.cats.len() + 1] {
            b.extend_from_slice(&(v as u32).to_le_bytes());
        }
        let put = |b: &mut Vec<u8>, w: &[f32]| w.iter().for_each(|v| b.extend(v.to_le_bytes()));
        for v in [h.image_threshold, h.chat_threshold, h.band.0, h.band.1] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        put(&mut b, &h.mean);
        put(&mut b, &h.scale);
        b.push(ANY_HEAD);
        put(&mut b, &h.any_image);
        for (c, w) in &h.cats {
            b.push(c.index() as u8);
            put(&mut b, w);
        }
        let old = Heads::from_bytes(&b).unwrap();
        assert_eq!(old.any_chat, h.any_image);
        assert_eq!(old.any_image, h.any_image);
        // A later file without its chat head is broken, not an old file.
        for magic in [MAGIC, MAGIC_V4, MAGIC_V3, MAGIC_V2] {
            let mut cur = b.clone();
            cur[..4].copy_from_slice(magic);
            assert!(Heads::from_bytes(&cur).is_err());
        }
    }

    #[test]
    fn a_likeliest_category_the_profile_only_logs_hands_the_decision_on() {
        // Chat only logs public_figure_likeness: the any-harm decision goes to the likeliest
        // category the profile flags, not nowhere.
        let p = Profile::default();
        assert!(
            p.threshold_for(Kind::Chat, Category::PublicFigureLikeness, Action::Flag)
                .is_none()
        );
        let mut logits = [f32::NEG_INFINITY; CATEGORY_COUNT];
        logits[Category::PublicFigureLikeness.index()] = 3.0;
        logits[Category::Hate.index()] = 1.0;
        logits[Category::Violence.index()] = -1.0;
        let c = Cascade {
            probability: 0.9,
            category: Category::PublicFigureLikeness,
            threshold: 0.5,
            logits,
            sexual_threshold: 2.0,
        };
        let (cat, s) = c.score_under(Kind::Chat, &p)[0];
        assert_eq!(cat, Category::Hate);
        assert!(p.action(Kind::Chat, cat, s) >= Action::Flag);
    }

    #[test]
    fn each_kind_has_its_own_any_harm_head() {
        // Image harm lies along the first input, chat harm along the second.
        let mut rows = Vec::new();
        for i in 0..200u32 {
            let s = (i % 7) as f32 / 10.0;
            let (h, f) = (i % 2 == 0, i % FOLDS);
            let v = if h { 1.0 } else { -1.0 };
            rows.push(row([v, s, 0.0, 0.0], h, Kind::Image, f));
            rows.push(row([s, v, 0.0, 0.0], h, Kind::Chat, f));
        }
        let (h, _) = train(&rows, &HeadsConfig::default());
        let p = |e: [f32; 4], k| {
            h.score(&e, &[0.0; CATEGORY_COUNT], k, "")
                .unwrap()
                .probability
        };
        assert!(p([1.0, -1.0, 0.0, 0.0], Kind::Image) > p([-1.0, 1.0, 0.0, 0.0], Kind::Image));
        assert!(p([-1.0, 1.0, 0.0, 0.0], Kind::Chat) > p([1.0, -1.0, 0.0, 0.0], Kind::Chat));
        let back = Heads::from_bytes(&h.to_bytes()).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn the_image_networks_learn_what_the_linear_head_cannot_and_round_trip() {
        // Harm where the first two inputs agree in sign: no linear head separates it.
        let mut rows = Vec::new();
        for i in 0..200u32 {
            let a = if i % 2 == 0 { 1.0 } else { -1.0 };
            let b = if (i / 2) % 2 == 0 { 1.0 } else { -1.0 };
            let jitter = (i % 11) as f32 / 40.0;
            rows.push(row(
                [a + jitter, b - jitter, 0.0, 0.0],
                a * b > 0.0,
                Kind::Image,
                i % FOLDS,
            ));
        }
        // One network, trained longer on these few rows (five batches an epoch), keeps the
        // debug-build test quick.
        let cfg = |hidden| HeadsConfig {
            image_hidden: hidden,
            image_mlp_count: 1,
            image_mlp_epochs: 300,
            image_max_fpr: 0.1,
            l2_grid: vec![0.1],
            ..HeadsConfig::default()
        };
        let (_, alone) = train(&rows, &cfg(0));
        let (h, with) = train(&rows, &cfg(16));
        assert!(alone.image_cascade.f1() < 0.75, "{:?}", alone.image_cascade);
        assert!(with.image_cascade.f1() > 0.95, "{:?}", with.image_cascade);
        assert_eq!(h.image_mlp.len(), 1);
        let p = |e: [f32; 4]| {
            h.score(&e, &[0.0; CATEGORY_COUNT], Kind::Image, "")
                .unwrap()
                .probability
        };
        let t = h.threshold(Kind::Image);
        assert!(p([1.0, 1.0, 0.0, 0.0]) >= t && p([-1.0, -1.0, 0.0, 0.0]) >= t);
        assert!(p([1.0, -1.0, 0.0, 0.0]) < t && p([-1.0, 1.0, 0.0, 0.0]) < t);
        let back = Heads::from_bytes(&h.to_bytes()).unwrap();
        assert_eq!(back, h);
        // Deterministic: the same rows and seed give the same network.
        let (x, y): (Vec<Vec<f32>>, Vec<bool>) = rows
            .iter()
            .map(|r| (r.embedding.clone(), r.harmful))
            .unzip();
        let xs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
        let fit = || Mlp::fit(&xs, &y, 4, 1e-3, 3, MLP_SEED);
        assert_eq!(fit(), fit());
    }

    #[test]
    fn the_poolings_are_kept_in_the_file_and_fourth_format_files_mean_pool() {
        let rows = [
            row([1.0, 0.0, 0.0, 0.5], true, Kind::Image, 0),
            row([-1.0, 0.0, 0.0, -0.5], false, Kind::Image, 1),
        ];
        let two = vec![Pooling::Mean, Pooling::MeanOfLayer(3)];
        let (h, _) = train(
            &rows,
            &HeadsConfig {
                pooling: two.clone(),
                ..without_ngram()
            },
        );
        assert_eq!(h.pooling(), two.as_slice());
        let b = h.to_bytes();
        assert_eq!(&b[..4], MAGIC);
        assert_eq!(&b[b.len() - 5..], [2, 0, 0, 3, 3]);
        assert_eq!(Heads::from_bytes(&b).unwrap(), h);
        // SWC4: the same without the poolings, read as mean pooling.
        let (m, _) = train(&rows, &without_ngram());
        assert_eq!(m.pooling(), Pooling::DEFAULT);
        let b = m.to_bytes();
        let mut v4 = MAGIC_V4.to_vec();
        v4.extend_from_slice(&b[4..b.len() - MEAN_POOLING_TAIL]);
        assert_eq!(Heads::from_bytes(&v4).unwrap(), m);
        // A fifth-format file without its poolings, with an unknown one, or with a count
        // that does not divide the embedding length, is broken.
        let mut cut = MAGIC.to_vec();
        cut.extend_from_slice(&v4[4..]);
        assert!(Heads::from_bytes(&cut).is_err());
        for tail in [[1u8, 9, 0], [1, 1, 7], [3, 0, 0], [0, 0, 0]] {
            let mut bad = b.clone();
            let at = bad.len() - MEAN_POOLING_TAIL;
            bad[at..].copy_from_slice(&tail);
            assert!(Heads::from_bytes(&bad).is_err(), "{tail:?}");
        }
    }

    #[test]
    fn log_odds_inputs_follow_the_head_categories_only() {
        let mut fast = [0.0f32; CATEGORY_COUNT];
        fast[Category::Sexual.index()] = 0.99;
        fast[Category::FilterEvasion.index()] = 0.45;
        let x = raw_inputs(&[0.5, 0.5], &fast, Kind::Image, None, true);
        assert_eq!(x.len(), 2 + 2 * CATEGORY_COUNT + 1 + 1);
        let logits = &x[2 + CATEGORY_COUNT..2 + 2 * CATEGORY_COUNT];
        assert!((logits[Category::Sexual.index()] - log_odds(0.99)).abs() < 1e-6);
        // A disguise's signal score is no input, on either scale.
        assert_eq!(logits[Category::FilterEvasion.index()], 0.0);
        assert!((x[2 + 2 * CATEGORY_COUNT] - log_odds(0.99)).abs() < 1e-6);
        assert_eq!(x.last(), Some(&1.0));
        assert_eq!(
            raw_inputs(&[0.5, 0.5], &fast, Kind::Image, None, false).len(),
            2 + CATEGORY_COUNT + 1
        );
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
