//! In-process k-fold cross-validation of the safety stage, for tuning: trains one model per
//! fold exactly as `stormwall safety train --folds N --holdout K` does and scores the held-out
//! fold as `stormwall safety eval --folds N --fold K` does, without writing files.
//! `bench/safety/cv.sh` (through the binary) is the figure to quote; this is the quick loop.
//!
//! cargo run --release -p stormwall-safety --example cv -- DATA_DIR [--no-evasion]
//!     [--profile NAME] [--errors FILE]
//!
//! `--errors FILE` writes the misclassified held-out records (id, source, scores) there.

#![allow(clippy::print_stdout)] // A command-line tool: its report is its output.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use stormwall_safety::eval::{Evaluator, Record};
use stormwall_safety::model::{self, TrainConfig};
use stormwall_safety::{Action, Category, Profile, Screener, Transform};

const FOLDS: u32 = 5;

fn env_flag(k: &str) -> bool {
    std::env::var(k).is_ok_and(|v| v == "1")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut evasion = true;
    let mut profile = "default".to_owned();
    let mut errors: Option<PathBuf> = None;
    let mut only_fold: Option<u32> = None;
    let mut binary = false;
    let mut image_only = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-evasion" => evasion = false,
            "--binary" => binary = true,
            "--image-only" => image_only = true,
            "--profile" => profile = args.next().ok_or("--profile NAME")?,
            "--errors" => errors = Some(args.next().ok_or("--errors FILE")?.into()),
            "--fold" => only_fold = Some(args.next().ok_or("--fold K")?.parse()?),
            _ => dir = Some(PathBuf::from(a)),
        }
    }
    let dir = dir.ok_or("usage: cv DATA_DIR")?;
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut records = Vec::new();
    for f in &files {
        for line in fs::read_to_string(f)?.lines() {
            if !line.trim().is_empty() {
                records.push(serde_json::from_str::<Record>(line)?);
            }
        }
    }
    // Cross-validation (and the thresholds tuned with it) sees the development part only.
    let split = stormwall_safety::split::Split::frozen()?;
    records.retain(|r| split.part(&r.id) == stormwall_safety::split::Part::Dev);
    let profile = Profile::builtin(&profile)
        .or_else(|| {
            fs::read_to_string(&profile)
                .ok()
                .and_then(|t| Profile::from_toml(&t).ok())
        })
        .ok_or("unknown profile")?;
    let transforms: &[Transform] = if evasion { &Transform::ALL } else { &[] };
    let mut err_out = match &errors {
        Some(p) => Some(fs::File::create(p)?),
        None => None,
    };
    let mut reports = Vec::new();
    // (harmful, ratio of the best category score to its image flag threshold) per held-out
    // image record: how far thresholds alone could move the image figures.
    let mut image_ratio: Vec<(bool, f32)> = Vec::new();
    let mut model_only: Vec<(bool, f32)> = Vec::new();
    let mut oof: Vec<Oof> = Vec::new();
    let mut model_src: Vec<(String, bool, f32)> = Vec::new();
    for k in 0..FOLDS {
        if only_fold.is_some_and(|f| f != k) {
            continue;
        }
        let t0 = std::time::Instant::now();
        let train: Vec<&Record> = records
            .iter()
            .filter(|r| r.fold(FOLDS) != k)
            .filter(|r| !image_only || r.kind == stormwall_safety::Kind::Image)
            .collect();
        let mut examples = model::training_examples(train.iter().copied());
        let heads = if binary {
            // One head for any harm: the ceiling of a single classifier on these labels.
            let bin: Vec<Record> = train
                .iter()
                .map(|r| {
                    let mut r = (*r).clone();
                    if r.harmful {
                        r.categories = vec!["sexual".into()];
                    }
                    r
                })
                .collect();
            examples = model::training_examples(bin.iter());
            &[Category::Sexual][..]
        } else {
            model::DEFAULT_HEADS
        };
        if env_flag("CV_NOAUG") {
            examples.retain(|e| !e.augmented);
        }
        let mut cfg = TrainConfig::default();
        let env = |k: &str| std::env::var(k).ok();
        if let Some(v) = env("CV_BITS") {
            cfg.bits = v.parse()?;
        }
        if let Some(v) = env("CV_EPOCHS") {
            cfg.epochs = v.parse()?;
        }
        if let Some(v) = env("CV_LR") {
            cfg.learning_rate = v.parse()?;
        }
        if let Some(v) = env("CV_L2") {
            cfg.l2 = v.parse()?;
        }
        if let Some(v) = env("CV_CAL_FOLDS") {
            cfg.calibration_folds = v.parse()?;
        }
        let m = model::train(&examples, heads, &cfg);
        let t1 = t0.elapsed();
        let mut sc = model::Scratch::default();
        for r in records
            .iter()
            .filter(|r| r.fold(FOLDS) == k && r.kind == stormwall_safety::Kind::Image)
        {
            let mut out = [0.0f32; stormwall_safety::CATEGORY_COUNT];
            m.score_into(
                &stormwall_safety::normalize::fold(&r.text),
                &mut sc,
                &mut out,
            );
            model_only.push((r.harmful, out.iter().copied().fold(0.0, f32::max)));
            model_src.push((
                r.source.clone(),
                r.harmful,
                out.iter().copied().fold(0.0, f32::max),
            ));
        }
        let screener = Screener::builder().model(Some(m)).build()?;
        let mut ev = Evaluator::new(&screener, &profile, transforms);
        for r in records.iter().filter(|r| r.fold(FOLDS) == k) {
            ev.add(r);
            {
                let a = screener.analyze(&r.text);
                let mut sv = [0.0f32; stormwall_safety::CATEGORY_COUNT];
                for c in Category::ALL {
                    sv[c.index()] = a.score(c);
                }
                oof.push(Oof {
                    fold: k,
                    kind: r.kind,
                    harmful: r.harmful,
                    xstest: r.source == "xstest",
                    scores: sv,
                });
            }
            if r.kind == stormwall_safety::Kind::Image {
                let a = screener.analyze(&r.text);
                let best = Category::ALL
                    .iter()
                    .filter_map(|&c| {
                        let t = profile.threshold_for(r.kind, c, Action::Flag)?;
                        Some(a.score(c) / t.max(1e-3))
                    })
                    .fold(0.0f32, f32::max);
                image_ratio.push((r.harmful, best));
            }
            if let Some(out) = err_out.as_mut() {
                let text = match std::env::var("CV_TRANSFORM")
                    .ok()
                    .and_then(|t| t.parse::<Transform>().ok())
                {
                    Some(t) => t.apply(&r.text, stormwall_safety::eval::stable_hash(&r.id)),
                    None => r.text.clone(),
                };
                let a = screener.analyze(&text);
                let v = a.decide(r.kind, &profile);
                let pred = v.action >= Action::Flag;
                if pred != r.harmful {
                    let scores: BTreeMap<&str, f32> = Category::ALL
                        .iter()
                        .filter(|c| a.score(**c) >= 0.1)
                        .map(|c| (c.as_str(), (a.score(*c) * 100.0).round() / 100.0))
                        .collect();
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{:?}\t{:?}\t{}",
                        if r.harmful { "FN" } else { "FP" },
                        r.source,
                        r.kind,
                        r.categories,
                        scores,
                        r.text
                            .replace(['\n', '\t'], " ")
                            .chars()
                            .take(300)
                            .collect::<String>()
                    )?;
                }
            }
        }
        eprintln!("fold {k}: trained in {t1:?}, total {:?}", t0.elapsed());
        reports.push(ev.report());
    }
    let mut curves = vec![
        ("model only (max head, plain view)", model_only),
        ("screener", image_ratio),
    ];
    for (label, mut image_ratio) in curves.drain(..) {
        if image_ratio.is_empty() {
            continue;
        }
        println!("{label}:");
        image_ratio.sort_by(|a, b| b.1.total_cmp(&a.1));
        let pos = image_ratio.iter().filter(|x| x.0).count() as f64;
        let neg = image_ratio.len() as f64 - pos;
        let (mut tp, mut fp) = (0f64, 0f64);
        let mut best = (0.0, 0.0, 0.0, 0.0);
        let mut at = [(0.01, 0.0, 0.0), (0.02, 0.0, 0.0), (0.05, 0.0, 0.0)];
        for &(h, ratio) in &image_ratio {
            if h {
                tp += 1.0
            } else {
                fp += 1.0
            }
            let (r, f) = (tp / pos, fp / neg);
            for a in at.iter_mut() {
                if f < a.0 {
                    a.1 = r;
                    a.2 = ratio;
                }
            }
            let p = tp / (tp + fp);
            let f1 = 2.0 * p * r / (p + r);
            if f < 0.02 && f1 > best.0 {
                best = (f1, r, f, ratio as f64);
            }
        }
        println!(
            "image: best F1 with FPR<2% by scaling all flag thresholds: F1 {:.3} recall {:.3} fpr {:.3} at ratio {:.3}",
            best.0, best.1, best.2, best.3
        );
        for a in at {
            println!(
                "image: recall {:.3} at fpr < {} (ratio {:.3})",
                a.1, a.0, a.2
            );
        }
        if label.starts_with("model") {
            let mut per: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
            for (src, h, sc) in &model_src {
                let e = per.entry(src.as_str()).or_default();
                e.0 += 1;
                if (*sc as f64) >= best.3 {
                    e.1 += 1;
                }
                let _ = h;
            }
            for (src, (n, d)) in per {
                println!("   {src:22} {d}/{n} = {:.3}", d as f64 / n as f64);
            }
        }
    }
    if env_flag("CV_TUNE") {
        for (kind, cap) in [
            (stormwall_safety::Kind::Image, 0.017),
            (stormwall_safety::Kind::Chat, 0.13),
        ] {
            let scale: f32 = std::env::var(format!("CV_SCALE_{kind}"))
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1.0);
            // The rules for minors and real people stay where policy put them.
            let frozen =
                |c: Category| matches!(c, Category::SexualMinors | Category::RealPersonSexual);
            let start: [f32; stormwall_safety::CATEGORY_COUNT] = std::array::from_fn(|i| {
                let c = Category::ALL[i];
                let t = profile.threshold_for(kind, c, Action::Flag).unwrap_or(1.01);
                if frozen(c) { t } else { (t * scale).min(1.01) }
            });
            let rows: Vec<&Oof> = oof.iter().filter(|o| o.kind == kind).collect();
            let mut nested = [0u64; 4];
            for k in 0..FOLDS {
                let tr: Vec<&Oof> = rows.iter().copied().filter(|o| o.fold != k).collect();
                let te: Vec<&Oof> = rows.iter().copied().filter(|o| o.fold == k).collect();
                let t = tune(&tr, start, cap);
                let c = confusion(&te, &t);
                for i in 0..4 {
                    nested[i] += c[i];
                }
            }
            // Uniform scale of the profile's thresholds (frozen rules kept).
            let scaled = |f: f32| -> Thresholds {
                std::array::from_fn(|i| {
                    if frozen(Category::ALL[i]) {
                        start[i]
                    } else {
                        (start[i] * f).min(1.01)
                    }
                })
            };
            let pick = |rs: &[&Oof]| -> f32 {
                let mut best = (f64::MIN, 1.0f32);
                for g in 50..=250 {
                    let f = g as f32 / 100.0;
                    let o = objective(confusion(rs, &scaled(f)), cap);
                    if o > best.0 + 1e-9 {
                        best = (o, f);
                    }
                }
                best.1
            };
            let mut nested_u = [0u64; 4];
            for k in 0..FOLDS {
                let tr: Vec<&Oof> = rows.iter().copied().filter(|o| o.fold != k).collect();
                let te: Vec<&Oof> = rows.iter().copied().filter(|o| o.fold == k).collect();
                let c = confusion(&te, &scaled(pick(&tr)));
                for i in 0..4 {
                    nested_u[i] += c[i];
                }
            }
            let f = pick(&rows);
            println!(
                "{kind}: uniform scale {f:.2}: in-sample {}  nested {}",
                fmt_c(confusion(&rows, &scaled(f))),
                fmt_c(nested_u)
            );
            let t = tune(&rows, start, cap);
            let all = confusion(&rows, &t);
            println!(
                "{kind}: tuned (cap fpr {cap}) in-sample {}  nested {}",
                fmt_c(all),
                fmt_c(nested)
            );
            for c in Category::ALL {
                println!(
                    "   {:24} {:.2} -> {:.2}",
                    c.as_str(),
                    start[c.index()],
                    t[c.index()]
                );
            }
        }
    }
    // Sum the folds.
    let mut by: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for r in &reports {
        for (name, m) in r.by_source.iter().chain(r.by_kind.iter()) {
            let e = by.entry(name.clone()).or_default();
            e[0] += m.tp;
            e[1] += m.fp;
            e[2] += m.tn;
            e[3] += m.fn_;
        }
    }
    for (name, [tp, fp, tn, fn_]) in &by {
        let p = *tp as f64 / (*tp + *fp).max(1) as f64;
        let rc = *tp as f64 / (*tp + *fn_).max(1) as f64;
        let f1 = if p + rc > 0.0 {
            2.0 * p * rc / (p + rc)
        } else {
            0.0
        };
        let fpr = *fp as f64 / (*fp + *tn).max(1) as f64;
        println!(
            "{name:24} {tp:5} {fp:5} {tn:5} {fn_:5}  P {p:.3}  R {rc:.3}  F1 {f1:.3}  FPR {fpr:.3}"
        );
    }
    let mut blk = [0u64; 2];
    for r in &reports {
        if let Some(d) = r.blocked_by_source.get("xstest") {
            blk[0] += d.false_positives;
            blk[1] += d.negatives;
        }
    }
    println!("xstest safe blocked: {}/{}", blk[0], blk[1]);
    let mut ev: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for r in &reports {
        for (name, d) in &r.evasion {
            let e = ev.entry(name.clone()).or_default();
            e[0] += d.positives;
            e[1] += d.detected;
            e[2] += d.negatives;
            e[3] += d.false_positives;
        }
    }
    let clean = ev
        .get("clean")
        .map(|e| e[1] as f64 / e[0].max(1) as f64)
        .unwrap_or(0.0);
    for (name, e) in &ev {
        let rec = e[1] as f64 / e[0].max(1) as f64;
        println!(
            "{name:12} recall {rec:.3} ({:+.1} pts)  fpr {:.3}",
            (rec - clean) * 100.0,
            e[3] as f64 / e[2].max(1) as f64
        );
    }
    Ok(())
}

struct Oof {
    fold: u32,
    kind: stormwall_safety::Kind,
    harmful: bool,
    #[allow(dead_code)]
    xstest: bool,
    scores: [f32; stormwall_safety::CATEGORY_COUNT],
}

type Thresholds = [f32; stormwall_safety::CATEGORY_COUNT];

fn confusion(rows: &[&Oof], t: &Thresholds) -> [u64; 4] {
    let mut c = [0u64; 4];
    for o in rows {
        let p = o.scores.iter().zip(t).any(|(s, t)| *s > 0.0 && s >= t);
        match (o.harmful, p) {
            (true, true) => c[0] += 1,
            (false, true) => c[1] += 1,
            (false, false) => c[2] += 1,
            (true, false) => c[3] += 1,
        }
    }
    c
}

fn objective(c: [u64; 4], cap: f64) -> f64 {
    let [tp, fp, tn, fn_] = c.map(|x| x as f64);
    let fpr = fp / (fp + tn).max(1.0);
    let p = tp / (tp + fp).max(1.0);
    let r = tp / (tp + fn_).max(1.0);
    let f1 = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    if fpr > cap {
        f1 - 10.0 * (fpr - cap) - 1.0
    } else {
        f1
    }
}

fn fmt_c(c: [u64; 4]) -> String {
    let [tp, fp, tn, fn_] = c.map(|x| x as f64);
    let p = tp / (tp + fp).max(1.0);
    let r = tp / (tp + fn_).max(1.0);
    let f1 = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    format!(
        "P {p:.3} R {r:.3} F1 {f1:.3} FPR {:.3}",
        fp / (fp + tn).max(1.0)
    )
}

/// Coordinate descent on per-category flag thresholds (grid of 0.01).
fn tune(rows: &[&Oof], start: Thresholds, cap: f64) -> Thresholds {
    let mut t = start;
    let mut best = objective(confusion(rows, &t), cap);
    for _ in 0..4 {
        for i in 0..t.len() {
            if matches!(
                Category::ALL[i],
                Category::SexualMinors | Category::RealPersonSexual
            ) {
                continue;
            }
            for g in 25..=101 {
                let v = g as f32 / 100.0;
                let mut cand = t;
                cand[i] = v;
                let o = objective(confusion(rows, &cand), cap);
                if o > best + 1e-9 {
                    best = o;
                    t = cand;
                }
            }
        }
    }
    t
}
