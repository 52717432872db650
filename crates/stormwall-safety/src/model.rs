//! A small linear model over hashed character n-grams and word n-grams, one head per
//! category, for vocabulary the lexicons do not spell out.
//!
//! Features are hashed (with a sign bit, so collisions cancel rather than pile up) into
//! `2^bits` buckets; each bucket holds one `i8` weight per head, interleaved so one feature
//! costs one cache line. Scoring a kilobyte is a few thousand multiply-adds. Training is
//! logistic regression with AdaGrad, deterministic for a given input order and seed, so
//! `stormwall safety train` reproduces the shipped `data/model.bin` byte for byte.

use crate::category::{CATEGORY_COUNT, Category};

/// Category byte of the any-harm head in a model file.
const ANY_HARM: u8 = 0xFF;
/// First bytes of a model file without a training-id list (still read).
pub const MAGIC: &[u8; 4] = b"SWM1";
/// First bytes of a model file that ends with the digests of its training record ids.
pub const MAGIC_V2: &[u8; 4] = b"SWM2";
/// Smallest and largest hash-table sizes accepted (log2 of the bucket count).
pub const BITS_RANGE: std::ops::RangeInclusive<u8> = 10..=22;
/// Character n-gram lengths used.
const CHAR_NGRAMS: std::ops::RangeInclusive<usize> = 3..=5;
const SEED_CHAR: u32 = 0x811c_9dc5;
const SEED_WORD: u32 = 0x9e37_79b9;
const SEED_BIGRAM: u32 = 0x7f4a_7c15;
const SEED_WORD2: u32 = 0x5bd1_e995;
const SIGN_BIT: u32 = 1 << 31;
/// Feature counts are normalised as if a text had at least this many features: a greeting
/// ("hi" has five) carries too little evidence for its few n-grams to move a head far from
/// its prior, where plain `1/sqrt(n)` let each of them weigh like a sentence's worth.
const MIN_FEATURES: usize = 128;

/// The weight of one feature in a text with `n` features.
#[inline]
fn feature_weight(n: usize) -> f32 {
    1.0 / (n.max(MIN_FEATURES) as f32).sqrt()
}

/// A model file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Not a model file, or a version this build does not read.
    #[error("model: bad magic or version")]
    Magic,
    /// The header is inconsistent or the file is cut short.
    #[error("model: {0}")]
    Corrupt(&'static str),
}

/// A trained model.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    bits: u8,
    heads: Vec<Head>,
    /// `weights[bucket * heads.len() + head]`.
    weights: Vec<i8>,
    /// [`crate::eval::stable_hash`] of each record id the model was trained on, sorted:
    /// `stormwall safety eval` warns when it scores one of them.
    training_ids: Vec<u64>,
}

/// One output of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Head {
    /// `None` for the any-harm head.
    category: Option<Category>,
    bias: f32,
    scale: f32,
    /// Probability mapped to score 0.5, so profile thresholds mean the same for every head.
    pivot: f32,
}

#[inline]
fn fnv(h: u32, b: u8) -> u32 {
    (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
}

/// Bucket and sign of a feature hash by Fibonacci hashing: one multiply, and the bucket
/// comes from the high bits, which depend on every input byte. The definition
/// [`Dedup::push`] computes inline (a test holds them equal).
#[cfg(test)]
fn bucket(h: u32, bits: u8) -> u32 {
    let x = h.wrapping_mul(0x9E37_79B1);
    let idx = x >> (32 - u32::from(bits));
    let sign = (x >> (31 - u32::from(bits))) & 1;
    idx | (sign << 31)
}

/// The bucket bitmap and feature list while one text is hashed: [`bucket`] and the
/// first-occurrence test with the shift amounts computed once and the buffers held directly,
/// not re-read through captured references for every n-gram.
struct Dedup<'a> {
    seen: &'a mut [u64],
    feats: &'a mut Vec<u32>,
    /// `32 - bits`.
    shift: u32,
}

impl Dedup<'_> {
    /// Adds the feature of hash `h` unless its bucket was seen (the same value as
    /// `bucket(h, bits)`, whose bucket index is below `2^bits`, so below bit 31).
    #[inline(always)]
    fn push(&mut self, h: u32) {
        let x = h.wrapping_mul(0x9E37_79B1);
        let idx = x >> self.shift;
        let sign = (x >> (self.shift - 1)) & 1;
        let b = idx as usize;
        if let Some(word) = self.seen.get_mut(b / 64) {
            let bit = 1u64 << (b % 64);
            if *word & bit == 0 {
                *word |= bit;
                self.feats.push(idx | (sign << 31));
            }
        }
    }
}

/// Reusable buffers for feature extraction, so scoring does not allocate per call.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    feats: Vec<u32>,
    seen: Vec<u64>,
    padded: Vec<u8>,
}

impl Scratch {
    /// The features [`features`] hashed last: bucket in the low bits, sign in bit 31.
    pub fn feats(&self) -> &[u32] {
        &self.feats
    }
}

/// Hashes the features of a folded text into `scratch`: each distinct bucket once (binary
/// features, so repeating a phrase does not inflate the score), with the sign in bit 31.
pub fn features(text: &str, bits: u8, scratch: &mut Scratch) {
    let words = (1usize << bits).div_ceil(64);
    let mask = (1u32 << bits) - 1;
    let Scratch {
        feats,
        seen,
        padded,
    } = scratch;
    if seen.len() == words {
        // Clearing the previous call's bits is cheaper than zeroing the whole bitmap.
        for &f in feats.iter() {
            let b = (f & mask) as usize;
            if let Some(word) = seen.get_mut(b / 64) {
                *word &= !(1u64 << (b % 64));
            }
        }
    } else {
        seen.clear();
        seen.resize(words, 0);
    }
    feats.clear();
    // At most three character n-grams per padded byte and four features per word, and
    // never more than there are buckets: one allocation instead of repeated growth.
    feats.reserve((5 * text.len() + 8).min(1usize << bits));
    // Duplicates are dropped as they are made, keeping first occurrences in order.
    let mut dedup = Dedup {
        seen: seen.as_mut_slice(),
        feats,
        shift: 32 - u32::from(bits),
    };
    let mut push = |h: u32| dedup.push(h);
    // Spaces around the text make word-initial and word-final n-grams.
    padded.clear();
    padded.push(b' ');
    padded.extend_from_slice(text.as_bytes());
    padded.push(b' ');
    let (lo, hi) = (*CHAR_NGRAMS.start(), *CHAR_NGRAMS.end());
    // Full windows (all but the last few positions) take an unrolled path: the same
    // hashes in the same order as the general loop below, without its per-byte branches.
    let full = if (lo, hi) == (3, 5) {
        padded.len().saturating_sub(hi - 1)
    } else {
        0
    };
    for win in padded.windows(5).take(full) {
        let h = fnv(fnv(fnv(SEED_CHAR, win[0]), win[1]), win[2]);
        push(h ^ 3);
        let h = fnv(h, win[3]);
        push(h ^ 4);
        push(fnv(h, win[4]) ^ 5);
    }
    for i in full..padded.len() {
        let Some(win) = padded.get(i..(i + hi).min(padded.len())) else {
            break;
        };
        let mut h = SEED_CHAR;
        for (k, &c) in win.iter().enumerate() {
            h = fnv(h, c);
            let n = k + 1;
            if n >= lo {
                push(h ^ n as u32);
            }
        }
    }
    let (mut prev, mut prev2): (Option<u32>, Option<u32>) = (None, None);
    let mut word = |w: &[u8]| {
        let wh = w.iter().copied().fold(SEED_WORD, fnv);
        // Each word twice under two hashes: a word weighs as much as its character
        // n-grams together do, which cross-validation preferred.
        push(wh);
        push(wh ^ SEED_WORD2);
        if let Some(p) = prev {
            push(fnv(p.wrapping_mul(31) ^ wh, 0) ^ SEED_BIGRAM);
            if let Some(p2) = prev2 {
                push(fnv(p2.wrapping_mul(961) ^ p.wrapping_mul(31) ^ wh, 1) ^ SEED_BIGRAM);
            }
        }
        prev2 = prev;
        prev = Some(wh);
    };
    if text.is_ascii() {
        // ASCII text splits the same on bytes, without decoding characters.
        for w in text
            .as_bytes()
            .split(|b| !b.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            word(w);
        }
    } else {
        for w in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            word(w.as_bytes());
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Maps a probability so that `pivot` lands on 0.5, keeping 0 and 1 in place.
fn calibrate(p: f32, pivot: f32) -> f32 {
    let pivot = pivot.clamp(1e-4, 1.0 - 1e-4);
    if p < pivot {
        0.5 * p / pivot
    } else {
        0.5 + 0.5 * (p - pivot) / (1.0 - pivot)
    }
}

impl Model {
    /// Reads a model file.
    pub fn from_bytes(b: &[u8]) -> Result<Model, ModelError> {
        let (v2, rest) = match b.strip_prefix(MAGIC_V2.as_slice()) {
            Some(rest) => (true, rest),
            None => (
                false,
                b.strip_prefix(MAGIC.as_slice()).ok_or(ModelError::Magic)?,
            ),
        };
        let (&bits, rest) = rest
            .split_first()
            .ok_or(ModelError::Corrupt("short header"))?;
        let (&nheads, mut rest) = rest
            .split_first()
            .ok_or(ModelError::Corrupt("short header"))?;
        if !BITS_RANGE.contains(&bits) {
            return Err(ModelError::Corrupt("bucket bits out of range"));
        }
        if nheads == 0 || usize::from(nheads) > CATEGORY_COUNT + 1 {
            return Err(ModelError::Corrupt("head count out of range"));
        }
        let f32_at = |rest: &mut &[u8]| -> Result<f32, ModelError> {
            let (v, r) = rest
                .split_first_chunk::<4>()
                .ok_or(ModelError::Corrupt("short head table"))?;
            *rest = r;
            Ok(f32::from_le_bytes(*v))
        };
        let mut heads = Vec::with_capacity(usize::from(nheads));
        for _ in 0..nheads {
            let (&ci, r) = rest
                .split_first()
                .ok_or(ModelError::Corrupt("short head table"))?;
            rest = r;
            let category = if ci == ANY_HARM {
                if heads.iter().any(|h: &Head| h.category.is_none()) {
                    return Err(ModelError::Corrupt("two any-harm heads"));
                }
                None
            } else {
                Some(
                    *Category::ALL
                        .get(usize::from(ci))
                        .ok_or(ModelError::Corrupt("unknown category"))?,
                )
            };
            let bias = f32_at(&mut rest)?;
            let scale = f32_at(&mut rest)?;
            let pivot = f32_at(&mut rest)?;
            if !(bias.is_finite() && scale.is_finite() && pivot.is_finite()) {
                return Err(ModelError::Corrupt("non-finite head parameter"));
            }
            heads.push(Head {
                category,
                bias,
                scale,
                pivot,
            });
        }
        let want = (1usize << bits) * heads.len();
        if rest.len() < want || (!v2 && rest.len() != want) {
            return Err(ModelError::Corrupt("weight table has the wrong length"));
        }
        let (table, mut trailer) = rest.split_at(want);
        let weights = table.iter().map(|&x| x as i8).collect();
        let mut training_ids = Vec::new();
        if v2 {
            let (n, r) = trailer
                .split_first_chunk::<4>()
                .ok_or(ModelError::Corrupt("short training-id list"))?;
            trailer = r;
            let n = u32::from_le_bytes(*n) as usize;
            if trailer.len() != n.saturating_mul(8) {
                return Err(ModelError::Corrupt("training-id list has the wrong length"));
            }
            training_ids = trailer
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            if !training_ids.windows(2).all(|w| w[0] < w[1]) {
                return Err(ModelError::Corrupt("training-id list is not sorted"));
            }
        }
        Ok(Model {
            bits,
            heads,
            weights,
            training_ids,
        })
    }

    /// Writes the model file format read by [`Model::from_bytes`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            10 + self.heads.len() * 13 + self.weights.len() + 8 * self.training_ids.len(),
        );
        out.extend_from_slice(MAGIC_V2);
        out.push(self.bits);
        out.push(self.heads.len() as u8);
        for h in &self.heads {
            out.push(h.category.map_or(ANY_HARM, |c| c.index() as u8));
            out.extend_from_slice(&h.bias.to_le_bytes());
            out.extend_from_slice(&h.scale.to_le_bytes());
            out.extend_from_slice(&h.pivot.to_le_bytes());
        }
        out.extend(self.weights.iter().map(|&w| w as u8));
        out.extend_from_slice(&(self.training_ids.len() as u32).to_le_bytes());
        for d in &self.training_ids {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out
    }

    /// Records the ids of the records this model was trained on (empty ids are skipped).
    pub fn with_training_ids<'a>(mut self, ids: impl IntoIterator<Item = &'a str>) -> Model {
        self.training_ids = ids
            .into_iter()
            .filter(|id| !id.is_empty())
            .map(crate::eval::stable_hash)
            .collect();
        self.training_ids.sort_unstable();
        self.training_ids.dedup();
        self
    }

    /// Whether a record with this id was in the model's training data (by its digest; a
    /// model file without a list says no).
    pub fn was_trained_on(&self, id: &str) -> bool {
        !id.is_empty()
            && self
                .training_ids
                .binary_search(&crate::eval::stable_hash(id))
                .is_ok()
    }

    /// This model with each head's calibration pivot replaced by the pivot of `reference`'s
    /// head for the same category (the any-harm head's by `reference`'s any-harm head);
    /// heads `reference` lacks keep their own. The pivot is the 99.8th percentile of a few
    /// hundred held-back benign texts, about their second-highest score, so it moves a lot
    /// between models trained the same way (0.876 in the shipped model, 0.34–0.48 in fold
    /// models of the same data): models that stand in for another one (the cascade's
    /// out-of-fold stacking models) must score on its scale, not on their own.
    pub fn with_pivots_of(mut self, reference: &Model) -> Model {
        for h in &mut self.heads {
            if let Some(r) = reference.heads.iter().find(|r| r.category == h.category) {
                h.pivot = r.pivot;
            }
        }
        self
    }

    /// How many training record ids the model lists.
    pub fn training_id_count(&self) -> usize {
        self.training_ids.len()
    }

    /// The categories this model scores.
    pub fn categories(&self) -> impl Iterator<Item = Category> + '_ {
        self.heads.iter().filter_map(|h| h.category)
    }

    /// Whether the model has an any-harm head (whose score goes to the likeliest category).
    pub fn has_any_harm_head(&self) -> bool {
        self.heads.iter().any(|h| h.category.is_none())
    }

    /// log2 of the bucket count.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Scores a folded text, raising `out[category]` to each head's calibrated score.
    /// `scratch` is reused across calls to avoid allocating.
    pub fn score_into(&self, text: &str, scratch: &mut Scratch, out: &mut [f32; CATEGORY_COUNT]) {
        features(text, self.bits, scratch);
        let scratch = &scratch.feats;
        if scratch.is_empty() {
            return;
        }
        let nh = self.heads.len();
        let mut acc = [0i32; CATEGORY_COUNT];
        let mask = (1u32 << self.bits) - 1;
        for &f in scratch.iter() {
            let base = (f & mask) as usize * nh;
            let Some(row) = self.weights.get(base..base + nh) else {
                continue;
            };
            if f & SIGN_BIT == 0 {
                for (a, &w) in acc.iter_mut().zip(row) {
                    *a += i32::from(w);
                }
            } else {
                for (a, &w) in acc.iter_mut().zip(row) {
                    *a -= i32::from(w);
                }
            }
        }
        let inv = feature_weight(scratch.len());
        // A text with fewer features than the floor carries that much less evidence: its
        // scores shrink towards 0 (not towards the heads' priors, which sit near the pivot).
        let evidence = (scratch.len() as f32 / MIN_FEATURES as f32).min(1.0).sqrt();
        let mut any = None;
        let mut likeliest: Option<(Category, f32)> = None;
        for (h, a) in self.heads.iter().zip(acc) {
            let p = sigmoid(h.bias + a as f32 * h.scale * inv);
            let s = calibrate(p, h.pivot) * evidence;
            match h.category {
                Some(c) => {
                    let slot = &mut out[c.index()];
                    *slot = slot.max(s);
                    if likeliest.is_none_or(|(_, best)| s > best) {
                        likeliest = Some((c, s));
                    }
                }
                None => any = Some(s),
            }
        }
        // The any-harm head says how likely harm is, the category heads what kind: its
        // score goes to the category they rate likeliest.
        if let (Some(s), Some((c, _))) = (any, likeliest) {
            let slot = &mut out[c.index()];
            *slot = slot.max(s);
        }
    }
}

/// One training text and the categories it belongs to (empty for a benign text).
#[derive(Debug, Clone)]
pub struct Example {
    /// Folded text (the plain view).
    pub text: String,
    /// Its categories.
    pub labels: Vec<Category>,
    /// Made for training only (a disguised copy, or a synthetic system prompt); left out
    /// of calibration, which must reflect the labelled sets the profiles were tuned on.
    pub augmented: bool,
}

/// Categories the shipped model has a head for (what `stormwall safety train` trains).
pub const DEFAULT_HEADS: &[Category] = &[
    Category::Sexual,
    Category::Violence,
    Category::Hate,
    Category::Harassment,
    Category::SelfHarm,
    Category::Illicit,
    Category::Jailbreak,
    Category::PublicFigureLikeness,
];

/// Disguises of benign texts added as benign training examples: the plain view of an
/// encoded prompt is gibberish, and gibberish alone is not harm (the decoded views carry
/// whatever is underneath).
pub const AUGMENT: &[crate::evasion::Transform] = &[
    crate::evasion::Transform::Base64,
    crate::evasion::Transform::Rot13,
    crate::evasion::Transform::Homoglyph,
    crate::evasion::Transform::Leetspeak,
    crate::evasion::Transform::Diacritics,
    crate::evasion::Transform::Spacing,
];

/// Training examples for labelled records, in record order, then the synthetic benign
/// system prompts of [`crate::benign`]: what `stormwall safety train` feeds [`train`].
/// Harmful records whose labels map to no category are left out (they would teach the model
/// that harm looks benign); benign ones are added with their [`AUGMENT`] disguises.
pub fn training_examples<'a>(
    records: impl IntoIterator<Item = &'a crate::eval::Record>,
) -> Vec<Example> {
    let mut examples = Vec::new();
    for r in records {
        let labels = r.mapped_categories();
        if r.harmful && labels.is_empty() {
            continue;
        }
        if !r.harmful {
            let seed = crate::eval::stable_hash(&r.id);
            for t in AUGMENT {
                examples.push(Example {
                    text: crate::normalize::fold(&t.apply(&r.text, seed)),
                    labels: Vec::new(),
                    augmented: true,
                });
            }
        }
        examples.push(Example {
            text: crate::normalize::fold(&r.text),
            labels,
            augmented: false,
        });
    }
    // The labelled sets hold almost no system prompts while their jailbreaks open with
    // "You are …"; without these the model reads every assistant preamble as a jailbreak.
    // They count as augmented so calibration stays on the labelled benign texts.
    // Greetings, short replies and assistant boilerplate: too few n-grams to learn from the
    // labelled sets, and the gateway sees them on every other request.
    examples.extend(crate::benign::everyday().iter().map(|t| Example {
        text: crate::normalize::fold(t),
        labels: Vec::new(),
        augmented: true,
    }));
    // Everyday requests to write or explain something: the labelled sets' requests of
    // that shape are nearly all harmful.
    examples.extend(crate::benign::requests().iter().map(|t| Example {
        text: crate::normalize::fold(t),
        labels: Vec::new(),
        augmented: true,
    }));
    examples.extend(crate::benign::system_prompts().iter().map(|t| Example {
        text: crate::normalize::fold(t),
        labels: Vec::new(),
        augmented: true,
    }));
    examples
}

/// Trains the shipped kind of model on labelled records: [`training_examples`] with
/// [`DEFAULT_HEADS`], and the model lists the ids of the records that gave examples (so
/// `stormwall safety eval` can warn when it scores them). `stormwall safety train` and the
/// `train` example both call this.
pub fn train_on_records(records: &[crate::eval::Record], cfg: &TrainConfig) -> Model {
    let examples = training_examples(records);
    train(&examples, DEFAULT_HEADS, cfg).with_training_ids(
        records
            .iter()
            .filter(|r| !(r.harmful && r.mapped_categories().is_empty()))
            .map(|r| r.id.as_str()),
    )
}

/// Training settings; the defaults produce the shipped model.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// log2 of the bucket count.
    pub bits: u8,
    /// Passes over the data.
    pub epochs: u32,
    /// AdaGrad base learning rate.
    pub learning_rate: f32,
    /// L2 penalty on touched weights.
    pub l2: f32,
    /// Shuffle seed.
    pub seed: u64,
    /// False-positive rate on held-back benign texts that calibrates each head to score 0.5.
    pub target_fpr: f32,
    /// Share of examples held back (by position after a seeded shuffle) for calibration.
    pub calibration_share: f32,
    /// Adds a head for "any category" whose score goes to the likeliest category: harm is
    /// easier to tell from benign than one kind of harm from the rest.
    pub any_harm_head: bool,
    /// Calibrates on out-of-fold scores of every example instead of one held-back share:
    /// with `k ≥ 2`, `k` models each fitted without one `k`-th of the examples score it, and
    /// each pivot is the quantile over all of them. 0 (the default) keeps the held-back
    /// share, whose pivot — the 99.8th percentile of ~1,600 texts, about their third
    /// highest — moves with every retrain (docs/safety.md, tenth cut).
    pub calibration_folds: u32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            bits: 15,
            epochs: 8,
            learning_rate: 0.4,
            l2: 1e-6,
            seed: 0x5eed_5a22,
            target_fpr: 0.002,
            calibration_share: 0.2,
            any_harm_head: true,
            calibration_folds: 0,
        }
    }
}

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn shuffle<T>(v: &mut [T], rng: &mut Xorshift) {
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

struct Dense {
    bits: u8,
    heads: Vec<Option<Category>>,
    w: Vec<f32>,
    g2: Vec<f32>,
    bias: Vec<f32>,
    bias_g2: Vec<f32>,
}

impl Dense {
    fn new(bits: u8, heads: &[Option<Category>]) -> Dense {
        let n = (1usize << bits) * heads.len();
        Dense {
            bits,
            heads: heads.to_vec(),
            w: vec![0.0; n],
            g2: vec![0.0; n],
            bias: vec![0.0; heads.len()],
            bias_g2: vec![0.0; heads.len()],
        }
    }

    fn logits(&self, feats: &[u32], out: &mut [f32]) {
        let nh = self.heads.len();
        let mask = (1u32 << self.bits) - 1;
        let inv = feature_weight(feats.len());
        out.copy_from_slice(&self.bias);
        for &f in feats {
            let base = (f & mask) as usize * nh;
            let sign = if f & SIGN_BIT == 0 { inv } else { -inv };
            for (o, w) in out.iter_mut().zip(&self.w[base..base + nh]) {
                *o += sign * w;
            }
        }
    }

    fn step(&mut self, feats: &[u32], labels: u32, pos_weight: &[f32], cfg: &TrainConfig) {
        let nh = self.heads.len();
        let mut z = vec![0.0f32; nh];
        self.logits(feats, &mut z);
        let grads: Vec<f32> = (0..nh)
            .map(|h| {
                let y = labels >> h & 1 == 1;
                let p = sigmoid(z[h]);
                if y { (p - 1.0) * pos_weight[h] } else { p }
            })
            .collect();
        let mask = (1u32 << self.bits) - 1;
        let inv = feature_weight(feats.len());
        for &f in feats {
            let base = (f & mask) as usize * nh;
            let sign = if f & SIGN_BIT == 0 { inv } else { -inv };
            for (h, &gh) in grads.iter().enumerate() {
                let i = base + h;
                let g = gh * sign + cfg.l2 * self.w[i];
                self.g2[i] += g * g;
                self.w[i] -= cfg.learning_rate * g / (self.g2[i].sqrt() + 1e-6);
            }
        }
        for (h, &g) in grads.iter().enumerate() {
            self.bias_g2[h] += g * g;
            self.bias[h] -= cfg.learning_rate * g / (self.bias_g2[h].sqrt() + 1e-6);
        }
    }
}

fn label_mask(labels: &[Category], heads: &[Option<Category>]) -> u32 {
    heads
        .iter()
        .enumerate()
        .filter(|(_, h)| match h {
            Some(c) => labels.contains(c),
            None => !labels.is_empty(),
        })
        .fold(0, |m, (i, _)| m | 1 << i)
}

fn fit(data: &[(Vec<u32>, u32)], heads: &[Option<Category>], cfg: &TrainConfig) -> Dense {
    let mut d = Dense::new(cfg.bits, heads);
    let pos_weight: Vec<f32> = (0..heads.len())
        .map(|h| {
            let pos = data.iter().filter(|(_, m)| m >> h & 1 == 1).count().max(1) as f32;
            let neg = (data.len() as f32 - pos).max(1.0);
            (neg / pos).sqrt().clamp(1.0, 8.0)
        })
        .collect();
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut rng = Xorshift(cfg.seed | 1);
    for _ in 0..cfg.epochs {
        shuffle(&mut order, &mut rng);
        for &i in &order {
            let (f, m) = &data[i];
            d.step(f, *m, &pos_weight, cfg);
        }
    }
    d
}

/// Trains a model with one head per category in `heads`.
///
/// Each head is calibrated on a held-back share of the examples (its score is 0.5 at
/// `target_fpr` on the held-back texts without that label), then the model is refitted on
/// every example.
pub fn train(examples: &[Example], heads: &[Category], cfg: &TrainConfig) -> Model {
    let bits = cfg.bits.clamp(*BITS_RANGE.start(), *BITS_RANGE.end());
    let cfg = TrainConfig {
        bits,
        ..cfg.clone()
    };
    let mut heads: Vec<Option<Category>> = heads
        .iter()
        .copied()
        .take(CATEGORY_COUNT)
        .map(Some)
        .collect();
    if cfg.any_harm_head && !heads.is_empty() {
        heads.push(None);
    }
    let mut data: Vec<(Vec<u32>, u32, bool)> = examples
        .iter()
        .map(|e| {
            let mut sc = Scratch::default();
            features(&e.text, bits, &mut sc);
            (sc.feats, label_mask(&e.labels, &heads), e.augmented)
        })
        .collect();
    let mut rng = Xorshift(cfg.seed.rotate_left(17) | 1);
    shuffle(&mut data, &mut rng);
    if cfg.calibration_folds >= 2 {
        let pivots = out_of_fold_pivots(&data, &heads, &cfg);
        let all: Vec<(Vec<u32>, u32)> = data.into_iter().map(|(f, m, _)| (f, m)).collect();
        return quantize(&fit(&all, &heads, &cfg), &pivots);
    }
    let (data, calibration_len): (Vec<(Vec<u32>, u32)>, usize) = {
        let cut = ((data.len() as f32) * cfg.calibration_share.clamp(0.0, 0.9)) as usize;
        // Held-back examples first; augmented ones among them only train the final fit.
        let mut held: Vec<(Vec<u32>, u32)> = Vec::new();
        let mut rest: Vec<(Vec<u32>, u32)> = Vec::new();
        let mut extra: Vec<(Vec<u32>, u32)> = Vec::new();
        for (i, (f, m, aug)) in data.into_iter().enumerate() {
            match (i < cut, aug) {
                (true, false) => held.push((f, m)),
                (true, true) => extra.push((f, m)),
                (false, _) => rest.push((f, m)),
            }
        }
        let n_held = held.len();
        held.extend(rest);
        held.extend(extra);
        (held, n_held)
    };
    let (held, fit_part) = data.split_at(calibration_len);
    let pivots: Vec<f32> = if held.is_empty() {
        vec![0.5; heads.len()]
    } else {
        let d = fit(fit_part, &heads, &cfg);
        let mut z = vec![0.0f32; heads.len()];
        let mut neg: Vec<Vec<f32>> = vec![Vec::new(); heads.len()];
        for (f, m) in held {
            d.logits(f, &mut z);
            for h in 0..heads.len() {
                if m >> h & 1 == 0 {
                    neg[h].push(sigmoid(z[h]));
                }
            }
        }
        pivots_at(neg, cfg.target_fpr)
    };
    let d = fit(&data, &heads, &cfg);
    quantize(&d, &pivots)
}

/// Per head, the score at `1 − target_fpr` of the texts without its label (0.5 when there
/// are none), kept within [0.05, 0.95].
fn pivots_at(neg: Vec<Vec<f32>>, target_fpr: f32) -> Vec<f32> {
    neg.into_iter()
        .map(|mut v| {
            if v.is_empty() {
                return 0.5;
            }
            v.sort_by(f32::total_cmp);
            let k = ((v.len() as f32) * (1.0 - target_fpr)) as usize;
            v[k.min(v.len() - 1)].clamp(0.05, 0.95)
        })
        .collect()
}

/// Pivots from out-of-fold scores ([`TrainConfig::calibration_folds`]): the shuffled
/// examples are dealt into folds by position; each fold's model trains on the others
/// (augmented examples included) and scores the fold's original examples (augmented ones are
/// disguised copies, not texts a benign user sends).
fn out_of_fold_pivots(
    data: &[(Vec<u32>, u32, bool)],
    heads: &[Option<Category>],
    cfg: &TrainConfig,
) -> Vec<f32> {
    let k = cfg.calibration_folds.max(2) as usize;
    let mut neg: Vec<Vec<f32>> = vec![Vec::new(); heads.len()];
    let mut z = vec![0.0f32; heads.len()];
    for fold in 0..k {
        let train: Vec<(Vec<u32>, u32)> = data
            .iter()
            .enumerate()
            .filter(|(i, _)| i % k != fold)
            .map(|(_, (f, m, _))| (f.clone(), *m))
            .collect();
        let d = fit(&train, heads, cfg);
        for (_, (f, m, _)) in data
            .iter()
            .enumerate()
            .filter(|(i, (_, _, aug))| i % k == fold && !aug)
        {
            d.logits(f, &mut z);
            for (h, zh) in z.iter().enumerate() {
                if m >> h & 1 == 0 {
                    neg[h].push(sigmoid(*zh));
                }
            }
        }
    }
    pivots_at(neg, cfg.target_fpr)
}

const QUANT_QUANTILE: f64 = 0.999;

fn quantize(d: &Dense, pivots: &[f32]) -> Model {
    let nh = d.heads.len();
    // Per head, the scale maps a high quantile of |w| (not the maximum) to 127: a few
    // outlying weights clip, and the bulk keeps its resolution.
    let scale: Vec<f32> = (0..nh)
        .map(|h| {
            let mut a: Vec<f32> =
                d.w.iter()
                    .skip(h)
                    .step_by(nh)
                    .map(|w| w.abs())
                    .filter(|w| *w > 0.0)
                    .collect();
            if a.is_empty() {
                return 1e-9;
            }
            a.sort_by(f32::total_cmp);
            let q = a[((a.len() as f64 * QUANT_QUANTILE) as usize).min(a.len() - 1)];
            if q > 0.0 { q / 127.0 } else { 1e-9 }
        })
        .collect();
    let weights =
        d.w.iter()
            .enumerate()
            .map(|(i, w)| (w / scale[i % nh]).round().clamp(-127.0, 127.0) as i8)
            .collect();
    let heads = d
        .heads
        .iter()
        .enumerate()
        .map(|(h, &category)| Head {
            category,
            bias: d.bias[h],
            scale: scale[h],
            pivot: pivots.get(h).copied().unwrap_or(0.5),
        })
        .collect();
    Model {
        bits: d.bits,
        heads,
        weights,
        training_ids: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_buckets_as_bucket_does_at_every_size() {
        for bits in BITS_RANGE {
            let mut seen = vec![0u64; (1usize << bits).div_ceil(64)];
            let mut feats = Vec::new();
            let mut d = Dedup {
                seen: &mut seen,
                feats: &mut feats,
                shift: 32 - u32::from(bits),
            };
            let mut want = Vec::new();
            let mut marked = std::collections::HashSet::new();
            let mut h = 0x1234_5678u32;
            for _ in 0..5000 {
                h = fnv(h, (h >> 7) as u8) ^ 0x9e37;
                d.push(h);
                let f = bucket(h, bits);
                if marked.insert(f & ((1u32 << bits) - 1)) {
                    want.push(f);
                }
            }
            assert_eq!(feats, want, "bits {bits}");
        }
    }

    fn toy() -> Vec<Example> {
        let mut v = Vec::new();
        for i in 0..60 {
            v.push(Example {
                text: format!("a purple zorblax number {i}"),
                labels: vec![Category::Violence],
                augmented: false,
            });
            v.push(Example {
                text: format!("a calm garden number {i}"),
                labels: vec![],
                augmented: false,
            });
        }
        v
    }

    #[test]
    fn trains_separates_and_round_trips() {
        let cfg = TrainConfig {
            bits: 12,
            ..TrainConfig::default()
        };
        let m = train(&toy(), &[Category::Violence], &cfg);
        let mut scratch = Scratch::default();
        let mut hot = [0.0; CATEGORY_COUNT];
        m.score_into("purple zorblax", &mut scratch, &mut hot);
        let mut cold = [0.0; CATEGORY_COUNT];
        m.score_into("calm garden", &mut scratch, &mut cold);
        let v = Category::Violence.index();
        assert!(hot[v] > 0.5 && cold[v] < 0.5, "{} {}", hot[v], cold[v]);
        // Repetition does not inflate a score.
        let mut rep = [0.0; CATEGORY_COUNT];
        m.score_into(&"calm garden ".repeat(500), &mut scratch, &mut rep);
        assert!((rep[v] - cold[v]).abs() < 0.2, "{} {}", rep[v], cold[v]);
        let bytes = m.to_bytes();
        assert_eq!(Model::from_bytes(&bytes).unwrap(), m);
        // The training-id list round-trips and answers membership.
        let listed = m.clone().with_training_ids(["b", "a", "a", ""]);
        let back = Model::from_bytes(&listed.to_bytes()).unwrap();
        assert_eq!(back.training_id_count(), 2);
        assert!(back.was_trained_on("a") && back.was_trained_on("b"));
        assert!(!back.was_trained_on("c") && !back.was_trained_on(""));
        // A version-1 file (no list) still reads.
        let mut v1 = bytes[..bytes.len() - 4].to_vec();
        v1[..4].copy_from_slice(MAGIC);
        assert_eq!(Model::from_bytes(&v1).unwrap(), m);
        // Deterministic: the same data and seed give the same bytes.
        assert_eq!(train(&toy(), &[Category::Violence], &cfg).to_bytes(), bytes);
    }

    #[test]
    fn out_of_fold_calibration_separates_and_is_deterministic() {
        let cfg = TrainConfig {
            bits: 12,
            calibration_folds: 5,
            ..TrainConfig::default()
        };
        let m = train(&toy(), &[Category::Violence], &cfg);
        let mut scratch = Scratch::default();
        let (mut hot, mut cold) = ([0.0; CATEGORY_COUNT], [0.0; CATEGORY_COUNT]);
        m.score_into("purple zorblax", &mut scratch, &mut hot);
        m.score_into("calm garden", &mut scratch, &mut cold);
        let v = Category::Violence.index();
        assert!(hot[v] > 0.5 && cold[v] < 0.5, "{} {}", hot[v], cold[v]);
        assert_eq!(
            train(&toy(), &[Category::Violence], &cfg).to_bytes(),
            m.to_bytes()
        );
        // Every original example is scored once out of fold: the benign ones calibrate the
        // violence head (60 of them), the pivot is one of their scores within the clamp.
        let heads = [Some(Category::Violence), None];
        let data: Vec<(Vec<u32>, u32, bool)> = toy()
            .iter()
            .map(|e| {
                let mut sc = Scratch::default();
                features(&e.text, 12, &mut sc);
                (sc.feats, label_mask(&e.labels, &heads), e.augmented)
            })
            .collect();
        let p = out_of_fold_pivots(&data, &heads, &cfg);
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|p| (0.05..=0.95).contains(p)), "{p:?}");
    }

    #[test]
    fn pivots_taken_from_a_reference_put_scores_on_its_scale() {
        let cfg = TrainConfig {
            bits: 12,
            ..TrainConfig::default()
        };
        let m = train(&toy(), &[Category::Violence], &cfg);
        assert!(m.has_any_harm_head());
        // The same weights under other pivots: the stand-in scores exactly as the reference.
        let mut reference = m.clone();
        for (h, pivot) in reference.heads.iter_mut().zip([0.9, 0.2]) {
            h.pivot = pivot;
        }
        let aligned = m.clone().with_pivots_of(&reference);
        assert_eq!(aligned, reference);
        let mut scratch = Scratch::default();
        let (mut a, mut b, mut own) = (
            [0.0; CATEGORY_COUNT],
            [0.0; CATEGORY_COUNT],
            [0.0; CATEGORY_COUNT],
        );
        aligned.score_into("a purple zorblax", &mut scratch, &mut a);
        reference.score_into("a purple zorblax", &mut scratch, &mut b);
        m.score_into("a purple zorblax", &mut scratch, &mut own);
        assert_eq!(a, b);
        assert_ne!(a, own);
        // A head the reference lacks keeps its own pivot.
        let other = train(&toy(), &[Category::Sexual], &cfg);
        let kept = m.clone().with_pivots_of(&other);
        assert_eq!(kept.heads[0].pivot, m.heads[0].pivot);
        assert_eq!(kept.heads[1].pivot, other.heads[1].pivot);
    }

    #[test]
    fn rejects_corrupt_files() {
        assert_eq!(Model::from_bytes(b"nope"), Err(ModelError::Magic));
        assert!(Model::from_bytes(b"SWM1\x10\x01").is_err());
        assert!(Model::from_bytes(b"SWM1\x30\x01").is_err());
        let m = train(
            &toy(),
            &[Category::Violence],
            &TrainConfig {
                bits: 10,
                ..Default::default()
            },
        );
        let mut b = m.to_bytes();
        b.pop();
        assert!(Model::from_bytes(&b).is_err());
    }
}
