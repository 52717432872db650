//! Evaluation on labelled records: confusion counts, precision/recall/F1/FPR per source,
//! recall per dataset label, and recall under each evasion transform.
//!
//! Pure: the binary reads the files and feeds records in; this module only counts. The
//! record shape is that of the development sets (`text`, `kind`, `harmful`, `source`,
//! `categories`), and the mapping of their labels onto Stormwall's categories lives here
//! too, so training and evaluation agree on it.

use std::collections::BTreeMap;

use crate::category::{Category, Kind};
use crate::evasion::Transform;
use crate::policy::{Action, Profile};
use crate::screen::Screener;

/// One labelled record.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Record {
    /// Record id (stable; seeds transforms and fold assignment).
    #[serde(default)]
    pub id: String,
    /// The text.
    pub text: String,
    /// Where it came from.
    #[serde(default)]
    pub source: String,
    /// Endpoint kind.
    #[serde(default)]
    pub kind: Kind,
    /// Ground truth.
    pub harmful: bool,
    /// Dataset labels (a list, a single string, or null).
    #[serde(default, deserialize_with = "one_or_many")]
    pub categories: Vec<String>,
    /// Attack method, if the record is an attack prompt.
    #[serde(default)]
    pub attack: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        None(()),
    }
    Ok(
        match <Option<OneOrMany> as serde::Deserialize>::deserialize(d)? {
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
            Some(OneOrMany::None(())) | None => Vec::new(),
        },
    )
}

/// FNV-1a of a record id: a stable hash for folds and transform seeds.
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Record {
    /// Which of `folds` folds this record is in.
    pub fn fold(&self, folds: u32) -> u32 {
        (stable_hash(&self.id) % u64::from(folds.max(1))) as u32
    }

    /// Stormwall categories for this record's dataset labels (empty for benign records, and
    /// for harmful records whose labels have no counterpart, such as expert advice).
    /// Copyright infringement in image prompts (a named character's likeness) counts as
    /// `public_figure_likeness`.
    pub fn mapped_categories(&self) -> Vec<Category> {
        let mut out = Vec::new();
        if !self.harmful {
            return out;
        }
        for l in &self.categories {
            let c: &[Category] = match l.as_str() {
                "nudity and sexual content" | "sexual" | "Sexual/Adult content" => {
                    &[Category::Sexual]
                }
                "sexual/minors" => &[Category::SexualMinors, Category::Sexual],
                "hate content"
                | "hate"
                | "hate/threatening"
                | "contrast_discr"
                | "contrast_historical_events" => &[Category::Hate],
                "discrimination and disinformation" | "copyright infringement" => {
                    &[Category::PublicFigureLikeness]
                }
                "physical harm and violence"
                | "violence"
                | "violence/graphic"
                | "shocking"
                | "Physical harm"
                | "contrast_homonyms"
                | "contrast_figurative_language"
                | "contrast_safe_targets"
                | "contrast_safe_contexts"
                | "contrast_definitions" => &[Category::Violence],
                "harassment" | "Harassment/Discrimination" | "abuse" => &[Category::Harassment],
                "self-harm" => &[Category::SelfHarm],
                "illegal activity" | "Malware/Hacking" | "Economic harm" | "Fraud/Deception"
                | "Privacy" | "contrast_privacy" => &[Category::Illicit],
                "jailbreak" => &[Category::Jailbreak],
                _ => &[],
            };
            out.extend_from_slice(c);
        }
        if self.attack.as_deref() == Some("JailbreakChat") {
            out.push(Category::Jailbreak);
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Confusion counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    /// Harmful, predicted harmful.
    pub tp: u64,
    /// Benign, predicted harmful.
    pub fp: u64,
    /// Benign, predicted benign.
    pub tn: u64,
    /// Harmful, predicted benign.
    pub fn_: u64,
}

/// Confusion counts with the rates derived from them (0 where a rate is undefined).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// True positives.
    pub tp: u64,
    /// False positives.
    pub fp: u64,
    /// True negatives.
    pub tn: u64,
    /// False negatives.
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// tp / (tp + fp).
    pub precision: f64,
    /// tp / (tp + fn).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// fp / (fp + tn).
    pub fpr: f64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl Confusion {
    /// Counts one prediction.
    pub fn add(&mut self, truth: bool, predicted: bool) {
        match (truth, predicted) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (false, false) => self.tn += 1,
            (true, false) => self.fn_ += 1,
        }
    }

    /// The derived metrics.
    pub fn metrics(&self) -> Metrics {
        let precision = ratio(self.tp, self.tp + self.fp);
        let recall = ratio(self.tp, self.tp + self.fn_);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Metrics {
            tp: self.tp,
            fp: self.fp,
            tn: self.tn,
            fn_: self.fn_,
            precision,
            recall,
            f1,
            fpr: ratio(self.fp, self.fp + self.tn),
        }
    }
}

/// Recall among harmful records (and false-positive rate among benign ones) for a slice.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Detection {
    /// Harmful records.
    pub positives: u64,
    /// Of those, predicted harmful.
    pub detected: u64,
    /// detected / positives.
    pub recall: f64,
    /// Benign records.
    pub negatives: u64,
    /// Of those, predicted harmful.
    pub false_positives: u64,
    /// false_positives / negatives.
    pub fpr: f64,
}

impl Detection {
    fn add(&mut self, truth: bool, predicted: bool) {
        if truth {
            self.positives += 1;
            self.detected += u64::from(predicted);
        } else {
            self.negatives += 1;
            self.false_positives += u64::from(predicted);
        }
        self.recall = ratio(self.detected, self.positives);
        self.fpr = ratio(self.false_positives, self.negatives);
    }
}

/// The evaluation report: the JSON contract of `stormwall safety eval --json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Profile applied.
    pub profile: String,
    /// Records evaluated.
    pub records: u64,
    /// Of those, records the screener's model was trained on (by its training-id list):
    /// when non-zero the figures are partly in-sample and are not quality figures.
    pub trained_on: u64,
    /// All records.
    pub overall: Metrics,
    /// Per `source`.
    pub by_source: BTreeMap<String, Metrics>,
    /// Per endpoint kind.
    pub by_kind: BTreeMap<String, Metrics>,
    /// Per dataset label, among records carrying it.
    pub by_label: BTreeMap<String, Detection>,
    /// Which categories fired on records predicted harmful (counts).
    pub predicted_categories: BTreeMap<String, u64>,
    /// `clean` and each evasion transform: recall on harmful records, FPR on benign ones.
    pub evasion: BTreeMap<String, Detection>,
    /// Per `source`, counting only blocks as predictions (the over-blocking view).
    pub blocked_by_source: BTreeMap<String, Detection>,
    /// Per endpoint kind: records whose untransformed text reached the encoder tier
    /// (empty when no encoder is loaded).
    pub encoder_reached: BTreeMap<String, Reach>,
}

/// How many records of a slice the encoder tier scored.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Reach {
    /// Records in the slice.
    pub records: u64,
    /// Of those, scored by the encoder tier.
    pub encoded: u64,
    /// Of the benign ones (a realistic mix is mostly benign), scored by the encoder tier.
    pub benign_encoded: u64,
    /// Benign records in the slice.
    pub benign: u64,
}

/// Accumulates predictions over records.
#[derive(Debug)]
pub struct Evaluator<'a> {
    screener: &'a Screener,
    profile: &'a Profile,
    transforms: Vec<Transform>,
    records: u64,
    trained_on: u64,
    overall: Confusion,
    by_source: BTreeMap<String, Confusion>,
    by_kind: BTreeMap<String, Confusion>,
    by_label: BTreeMap<String, Detection>,
    predicted_categories: BTreeMap<String, u64>,
    evasion: BTreeMap<String, Detection>,
    blocked_by_source: BTreeMap<String, Detection>,
    encoder_reached: BTreeMap<String, Reach>,
}

impl<'a> Evaluator<'a> {
    /// Starts an evaluation; `transforms` are applied to every record as well.
    pub fn new(screener: &'a Screener, profile: &'a Profile, transforms: &[Transform]) -> Self {
        Evaluator {
            screener,
            profile,
            transforms: transforms.to_vec(),
            records: 0,
            trained_on: 0,
            overall: Confusion::default(),
            by_source: BTreeMap::new(),
            by_kind: BTreeMap::new(),
            by_label: BTreeMap::new(),
            predicted_categories: BTreeMap::new(),
            evasion: BTreeMap::new(),
            blocked_by_source: BTreeMap::new(),
            encoder_reached: BTreeMap::new(),
        }
    }

    /// Whether the profile would flag or block `text` for `kind`.
    pub fn predict(&self, text: &str, kind: Kind) -> bool {
        self.screener.screen(text, kind, self.profile).action >= Action::Flag
    }

    /// Screens one record (and its transformed variants) and counts the results.
    pub fn add(&mut self, r: &Record) {
        self.records += 1;
        if self
            .screener
            .model()
            .is_some_and(|m| m.was_trained_on(&r.id))
        {
            self.trained_on += 1;
        }
        let a = self.screener.analyze_for(&r.text, r.kind);
        if self.screener.has_encoder() {
            let reach = self
                .encoder_reached
                .entry(r.kind.as_str().to_owned())
                .or_default();
            let encoded = a.cascade().is_some();
            reach.records += 1;
            reach.encoded += u64::from(encoded);
            if !r.harmful {
                reach.benign += 1;
                reach.benign_encoded += u64::from(encoded);
            }
        }
        let v = a.decide(r.kind, self.profile);
        let predicted = v.action >= Action::Flag;
        if predicted {
            for c in v.categories.iter().filter(|c| c.action >= Action::Flag) {
                *self
                    .predicted_categories
                    .entry(c.category.as_str().to_owned())
                    .or_default() += 1;
            }
        }
        self.overall.add(r.harmful, predicted);
        self.blocked_by_source
            .entry(r.source.clone())
            .or_default()
            .add(r.harmful, v.action == Action::Block);
        self.by_source
            .entry(r.source.clone())
            .or_default()
            .add(r.harmful, predicted);
        self.by_kind
            .entry(r.kind.as_str().to_owned())
            .or_default()
            .add(r.harmful, predicted);
        for l in &r.categories {
            self.by_label
                .entry(l.clone())
                .or_default()
                .add(r.harmful, predicted);
        }
        if self.transforms.is_empty() {
            return;
        }
        self.evasion
            .entry("clean".to_owned())
            .or_default()
            .add(r.harmful, predicted);
        let seed = stable_hash(&r.id);
        for t in self.transforms.clone() {
            let p = self.predict(&t.apply(&r.text, seed), r.kind);
            self.evasion
                .entry(t.as_str().to_owned())
                .or_default()
                .add(r.harmful, p);
        }
    }

    /// The report so far.
    pub fn report(&self) -> Report {
        let m = |b: &BTreeMap<String, Confusion>| {
            b.iter().map(|(k, v)| (k.clone(), v.metrics())).collect()
        };
        Report {
            profile: self.profile.name().to_owned(),
            records: self.records,
            trained_on: self.trained_on,
            overall: self.overall.metrics(),
            by_source: m(&self.by_source),
            by_kind: m(&self.by_kind),
            by_label: self.by_label.clone(),
            predicted_categories: self.predicted_categories.clone(),
            evasion: self.evasion.clone(),
            blocked_by_source: self.blocked_by_source.clone(),
            encoder_reached: self.encoder_reached.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_finite_and_right() {
        let mut c = Confusion::default();
        let m = c.metrics();
        assert_eq!((m.precision, m.recall, m.f1, m.fpr), (0.0, 0.0, 0.0, 0.0));
        c.add(true, true);
        c.add(true, false);
        c.add(false, true);
        c.add(false, false);
        c.add(false, false);
        let m = c.metrics();
        assert_eq!((m.tp, m.fn_, m.fp, m.tn), (1, 1, 1, 2));
        assert!((m.precision - 0.5).abs() < 1e-9);
        assert!((m.recall - 0.5).abs() < 1e-9);
        assert!((m.fpr - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn labels_map() {
        let r = Record {
            id: "x".into(),
            text: String::new(),
            source: "s".into(),
            kind: Kind::Image,
            harmful: true,
            categories: vec![
                "nudity and sexual content".into(),
                "copyright infringement".into(),
            ],
            attack: None,
        };
        // Copyrighted characters are a named figure's likeness.
        assert_eq!(
            r.mapped_categories(),
            vec![Category::Sexual, Category::PublicFigureLikeness]
        );
    }
}
