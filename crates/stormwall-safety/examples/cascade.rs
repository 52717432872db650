//! The encoder tier's heads, trained and scored without the rest of the binary (the debug
//! build of `stormwall` runs the encoder too slowly to wait for): the same library calls as
//! `stormwall safety train --encoder-dir DIR --heads-out FILE` and `stormwall safety eval
//! --encoder-dir DIR`.
//!
//!   cargo run --release -p stormwall-safety --example cascade -- train DATA_DIR MODEL_DIR OUT
//!   cargo run --release -p stormwall-safety --example cascade -- eval MODEL_DIR [--heads FILE] [--split dev|test] [--no-evasion] [--profile NAME] FILE.jsonl...
//!
//! `train` reads the development part of the frozen split only; `eval` prints the JSON
//! report of `stormwall safety eval --json`; MODEL_DIR `none` evaluates the fast tier alone.
//!
//! `ROWS_CACHE=FILE` keeps the stacking rows (embeddings, out-of-fold fast-tier scores) of a
//! `train` run, so the next run skips the fold models and the encoder; with `LAB=1` as well,
//! `train` writes nothing and sweeps the any-harm image head instead (inputs: embedding, fast
//! scores, their logits, fast scores alone; L2 penalties from `LAB_L2=a,b,…`; `LAB_WPOS`
//! positive weight; `LAB_ALL=1` trains on chat rows too), printing out-of-fold dev F1 at 2%
//! and 1.5% benign FPR: the sweep behind `HeadsConfig`'s defaults. `LAB=ngram` instead
//! asks whether an image-only hashed n-gram model's out-of-fold logit adds to the image head
//! (`LAB_BITS`, `LAB_EPOCHS`, `LAB_NL2`, `LAB_HL2`, `LAB_CAP`); `NGRAM_BITS=B` trains the
//! heads with such a model (`HeadsConfig::ngram_bits`, default none); `CHAT_REACH=R` lets
//! at most that share of benign dev chat into the band (`HeadsConfig::chat_max_reach`).
//! `LAB=mlp` compares the image any-harm regression with small networks and their mean,
//! with and without log-odds inputs (`LAB_H`, `LAB_WD`, `LAB_EPOCHS`, `LAB_SEEDS`,
//! `LAB_CAP`); `LOGIT=1`, `MLP_H=`, `MLP_WD=`, `MLP_COUNT=` train the heads that way
//! (`HeadsConfig::logit_inputs`, `image_hidden`, `image_mlp_wd`, `image_mlp_count`).
//!
//!   cargo run --release -p stormwall-safety --example cascade -- diag MODEL_DIR TRANSFORM FILE.jsonl...
//!
//! lists the development part's harmful records whose flag the transform (`homoglyph`,
//! `rot13`…) changes, with the fast tier's strongest score and the cascade's probability for
//! both texts. `IMAGE_FPR=F` sets the image benign false-positive cap
//! (`HeadsConfig::image_max_fpr`), `L2_GRID=a,b,…` the any-harm heads' penalties.
//!
//!   cargo run --release -p stormwall-safety --example cascade -- reach [--heads FILE] [--split dev|test] FILE...
//!
//! counts the chat prompts that would reach the encoder (fast tier and band only, no model):
//! text files (one prompt a line, such as `tests/data/ordinary-chat.txt`) or `.jsonl` records.
//! `eval` embeds every text on `WARM_THREADS` threads (default 2) before it scores them.
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stormwall_safety::cascade::{self, HeadsConfig};
use stormwall_safety::encoder::{Encoder, Pooling};
use stormwall_safety::eval::{Evaluator, Record};
use stormwall_safety::model::TrainConfig;
use stormwall_safety::split::{Part, Split};
use stormwall_safety::{Profile, Screener, Transform};

fn read(files: &[PathBuf], part: Option<Part>) -> Result<Vec<Record>, Box<dyn std::error::Error>> {
    let split = Split::frozen()?;
    let mut records = Vec::new();
    for f in files {
        for line in std::io::BufReader::new(std::fs::File::open(f)?).lines() {
            let line = line?;
            if !line.trim().is_empty() {
                let r = serde_json::from_str::<Record>(&line)?;
                if part.is_none_or(|p| split.part(&r.id) == p) {
                    records.push(r);
                }
            }
        }
    }
    Ok(records)
}

fn jsonl(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

type Cache = std::collections::HashMap<u64, Vec<f32>>;

fn load_cache(path: Option<&Path>, dim: usize) -> Cache {
    let mut c = Cache::new();
    let Some(b) = path.and_then(|p| std::fs::read(p).ok()) else {
        return c;
    };
    for rec in b.chunks_exact(8 + 4 * dim) {
        let (k, v) = rec.split_at(8);
        let key = u64::from_le_bytes(k.try_into().unwrap_or([0; 8]));
        let e = v
            .chunks_exact(4)
            .map(|x| f32::from_le_bytes(x.try_into().unwrap_or([0; 4])))
            .collect();
        c.insert(key, e);
    }
    c
}

fn save_cache(path: &Path, c: &Cache) -> std::io::Result<()> {
    let mut b = Vec::new();
    for (k, e) in c {
        b.extend_from_slice(&k.to_le_bytes());
        for x in e {
            b.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(path, b)
}

fn save_rows(path: &Path, rows: &[cascade::Row]) -> std::io::Result<()> {
    let mut out = String::new();
    for r in rows {
        let v = serde_json::json!({
            "e": r.embedding, "f": r.fast.to_vec(), "ff": r.fast_flag, "rf": r.rule_flag,
            "k": r.kind, "h": r.harmful,
            "c": r.categories.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "fold": r.fold, "s": r.source, "t": r.text,
        });
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::fs::write(path, out)
}

fn load_rows(path: &Path) -> Option<Vec<cascade::Row>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut rows = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let f32s = |k: &str| -> Option<Vec<f32>> {
            v[k].as_array()?
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32))
                .collect()
        };
        let f = f32s("f")?;
        let mut fast = [0.0f32; stormwall_safety::CATEGORY_COUNT];
        fast.copy_from_slice(f.get(..stormwall_safety::CATEGORY_COUNT)?);
        rows.push(cascade::Row {
            embedding: f32s("e")?,
            fast,
            fast_flag: v["ff"].as_bool()?,
            rule_flag: v["rf"].as_bool()?,
            kind: serde_json::from_value(v["k"].clone()).ok()?,
            harmful: v["h"].as_bool()?,
            categories: v["c"]
                .as_array()?
                .iter()
                .filter_map(|c| c.as_str()?.parse().ok())
                .collect(),
            fold: v["fold"].as_u64()? as u32,
            source: v["s"].as_str()?.to_owned(),
            text: v["t"].as_str()?.to_owned(),
        });
    }
    eprintln!("{} rows from {}", rows.len(), path.display());
    Some(rows)
}

/// Every pooling `train` computes and caches (EMBED_CACHE, ROWS_CACHE hold them side by
/// side, in this order); `POOL=a,b,…` picks the heads' inputs from them.
const FULL_POOLING: [Pooling; 5] = [
    Pooling::Mean,
    Pooling::Max,
    Pooling::First,
    Pooling::MeanOfLayer(2),
    Pooling::MeanOfLayer(4),
];

/// The poolings `POOL` asks for (default: mean, as sentence-transformers pools).
fn pool_choice() -> Result<Vec<Pooling>, Box<dyn std::error::Error>> {
    match std::env::var("POOL") {
        Ok(v) => v
            .split(',')
            .map(|p| {
                Pooling::parse(p)
                    .filter(|p| FULL_POOLING.contains(p))
                    .ok_or_else(|| format!("POOL: {p:?} is not one of the cached poolings").into())
            })
            .collect(),
        Err(_) => Ok(Pooling::DEFAULT.to_vec()),
    }
}

/// Rows whose embeddings hold every [`FULL_POOLING`] block, cut to the blocks of `pooling`.
fn select(rows: &[cascade::Row], pooling: &[Pooling]) -> Vec<cascade::Row> {
    rows.iter()
        .map(|r| {
            let dim = r.embedding.len() / FULL_POOLING.len();
            let mut r = r.clone();
            r.embedding = pooling
                .iter()
                .filter_map(|p| FULL_POOLING.iter().position(|q| q == p))
                .flat_map(|i| r.embedding[i * dim..(i + 1) * dim].to_vec())
                .collect();
            r
        })
        .collect()
}

/// Lab only (`KNN=k`): appends to each row's embedding the share of harmful rows among its
/// `k` nearest neighbours (cosine on the first pooling block) of the same kind in the other
/// folds, as the heads would meet it on unseen prompts. The heads written are not usable
/// by the screener (their width is the embedding's plus one).
fn add_knn(rows: &mut [cascade::Row], k: usize, width: usize) {
    let dim = width;
    let unit: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| {
            let v = &r.embedding[..dim];
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter().map(|x| x / n).collect()
        })
        .collect();
    let feats: Vec<f32> = (0..rows.len())
        .map(|i| {
            let mut sims: Vec<(f32, bool)> = (0..rows.len())
                .filter(|&j| rows[j].fold != rows[i].fold && rows[j].kind == rows[i].kind)
                .map(|j| {
                    let s: f32 = unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum();
                    (s, rows[j].harmful)
                })
                .collect();
            sims.sort_by(|a, b| b.0.total_cmp(&a.0));
            let top = &sims[..k.min(sims.len())];
            let (num, den) = top.iter().fold((0.0f32, 0.0f32), |(n, d), (s, h)| {
                let w = s.max(0.0);
                (n + if *h { w } else { 0.0 }, d + w)
            });
            if den > 0.0 { num / den } else { 0.0 }
        })
        .collect();
    for (r, f) in rows.iter_mut().zip(feats) {
        r.embedding.push(f);
    }
}

fn sig(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Plain L2 logistic regression (full-batch Adam) for the lab; bias last.
fn lab_fit(x: &[Vec<f32>], y: &[bool], l2: f32, steps: u32, wpos: f32) -> Vec<f32> {
    let n = x[0].len();
    let mut w = vec![0.0f32; n + 1];
    let (mut m, mut v) = (vec![0.0f32; n + 1], vec![0.0f32; n + 1]);
    let mut g = vec![0.0f32; n + 1];
    let tot: f32 = y.iter().map(|b| if *b { wpos } else { 1.0 }).sum();
    for step in 1..=steps {
        g.iter_mut().for_each(|v| *v = 0.0);
        for (xi, &yi) in x.iter().zip(y) {
            let z = w[..n].iter().zip(xi).map(|(a, b)| a * b).sum::<f32>() + w[n];
            let e = (sig(z) - if yi { 1.0 } else { 0.0 }) * if yi { wpos } else { 1.0 };
            for (gj, xj) in g.iter_mut().zip(xi) {
                *gj += e * xj;
            }
            g[n] += e;
        }
        let c1 = 1.0 - 0.9f32.powi(step as i32);
        let c2 = 1.0 - 0.999f32.powi(step as i32);
        for j in 0..=n {
            let gj = g[j] / tot + if j < n { l2 * w[j] } else { 0.0 };
            m[j] = 0.9 * m[j] + 0.1 * gj;
            v[j] = 0.999 * v[j] + 0.001 * gj * gj;
            w[j] -= 0.05 * (m[j] / c1) / ((v[j] / c2).sqrt() + 1e-8);
        }
    }
    w
}

fn lab_score(w: &[f32], x: &[f32]) -> f32 {
    let n = x.len();
    sig(w[..n].iter().zip(x).map(|(a, b)| a * b).sum::<f32>() + w[n])
}

fn standardise(x: &mut [Vec<f32>], fit_on: &[bool]) {
    let n = x[0].len();
    for j in 0..n {
        let vals: Vec<f32> = x
            .iter()
            .zip(fit_on)
            .filter(|(_, f)| **f)
            .map(|(r, _)| r[j])
            .collect();
        let mu = vals.iter().sum::<f32>() / vals.len() as f32;
        let var = vals.iter().map(|v| (v - mu).powi(2)).sum::<f32>() / vals.len() as f32;
        let s = if var > 1e-12 { 1.0 / var.sqrt() } else { 0.0 };
        for r in x.iter_mut() {
            r[j] = (r[j] - mu) * s;
        }
    }
}

/// (F1, fpr) of nested cross-validation: each fold scored at the threshold `best_at` picks on
/// the other folds' out-of-fold scores, so no fold's own labels choose its threshold.
fn nested_at(pr: &[(f32, bool, bool)], folds: &[u32], cap: f64) -> (f64, f64) {
    let mut nest = [0.0f64; 4];
    for k in 0..cascade::FOLDS {
        let tr: Vec<_> = (0..pr.len())
            .filter(|j| folds[*j] != k)
            .map(|j| pr[j])
            .collect();
        let t = best_at(&tr, cap).3;
        for j in (0..pr.len()).filter(|j| folds[*j] == k) {
            let (p, harmful, rule) = pr[j];
            nest[match (harmful, rule || p >= t) {
                (true, true) => 0,
                (false, true) => 1,
                (true, false) => 2,
                _ => 3,
            }] += 1.0;
        }
    }
    (
        2.0 * nest[0] / (2.0 * nest[0] + nest[1] + nest[2]),
        nest[1] / (nest[1] + nest[3]),
    )
}

/// (F1, recall, fpr, threshold) of the best threshold with fpr <= cap.
fn best_at(ps: &[(f32, bool, bool)], cap: f64) -> (f64, f64, f64, f32) {
    let mut best = (0.0, 0.0, 0.0, 1.0);
    for g in 1..400 {
        let t = g as f32 / 400.0;
        let (mut tp, mut fp, mut fneg, mut tn) = (0.0, 0.0, 0.0, 0.0);
        for &(p, h, rule) in ps {
            let pred = rule || p >= t;
            match (h, pred) {
                (true, true) => tp += 1.0,
                (false, true) => fp += 1.0,
                (true, false) => fneg += 1.0,
                (false, false) => tn += 1.0,
            }
        }
        let fpr = fp / (fp + tn);
        let f1 = 2.0 * tp / (2.0 * tp + fp + fneg);
        if fpr <= cap && f1 > best.0 {
            best = (f1, tp / (tp + fneg), fpr, t);
        }
    }
    best
}

fn lab(rows: &[cascade::Row]) {
    let l2s: Vec<f32> = std::env::var("LAB_L2")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![1e-3, 1e-2, 3e-2]);
    let wpos: f32 = std::env::var("LAB_WPOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let steps: u32 = std::env::var("LAB_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let image_only = std::env::var("LAB_ALL").is_err();
    let logit = |s: f32| {
        let s = s.clamp(1e-3, 1.0 - 1e-3);
        (s / (1.0 - s)).ln()
    };
    for feats in ["emb", "emb+fast", "emb+logit", "fast"] {
        for &l2 in &l2s {
            let use_row: Vec<bool> = rows
                .iter()
                .map(|r| !image_only || r.kind == stormwall_safety::Kind::Image)
                .collect();
            let mut x: Vec<Vec<f32>> = rows
                .iter()
                .map(|r| {
                    let mut v = Vec::new();
                    if feats.starts_with("emb") {
                        v.extend_from_slice(&r.embedding);
                    }
                    if feats.ends_with("fast") {
                        v.extend_from_slice(&r.fast);
                    }
                    if feats.ends_with("logit") {
                        v.extend(r.fast.iter().map(|s| logit(*s)));
                    }
                    v.push(if r.kind == stormwall_safety::Kind::Image {
                        1.0
                    } else {
                        0.0
                    });
                    v
                })
                .collect();
            standardise(&mut x, &use_row);
            let mut oof = vec![0.0f32; rows.len()];
            for k in 0..cascade::FOLDS {
                let (xt, yt): (Vec<Vec<f32>>, Vec<bool>) = rows
                    .iter()
                    .zip(&x)
                    .zip(&use_row)
                    .filter(|((r, _), u)| **u && r.fold != k)
                    .map(|((r, x), _)| (x.clone(), r.harmful))
                    .unzip();
                let w = lab_fit(&xt, &yt, l2, steps, wpos);
                for (i, r) in rows.iter().enumerate() {
                    if r.fold == k {
                        oof[i] = lab_score(&w, &x[i]);
                    }
                }
            }
            let img: Vec<usize> = (0..rows.len())
                .filter(|i| rows[*i].kind == stormwall_safety::Kind::Image)
                .collect();
            let ps: Vec<(f32, bool, bool)> = img
                .iter()
                .map(|&i| (oof[i], rows[i].harmful, false))
                .collect();
            let pr: Vec<(f32, bool, bool)> = img
                .iter()
                .map(|&i| (oof[i], rows[i].harmful, rows[i].rule_flag))
                .collect();
            let folds: Vec<u32> = img.iter().map(|&i| rows[i].fold).collect();
            let (nf1, nested_fpr) = nested_at(&ps, &folds, 0.015);
            let a = best_at(&ps, 0.02);
            let b = best_at(&ps, 0.015);
            let c = best_at(&pr, 0.02);
            println!(
                "{feats:10} l2 {l2:<6} image OOF @2%: F1 {:.3} R {:.3} FPR {:.3} t {:.3} | @1.5% F1 {:.3} | rules|| @2% F1 {:.3} | nested@1.5% F1 {:.3} FPR {:.3}",
                a.0, a.1, a.2, a.3, b.0, c.0, nf1, nested_fpr
            );
        }
    }
    let ff: Vec<(f32, bool, bool)> = rows
        .iter()
        .filter(|r| r.kind == stormwall_safety::Kind::Image)
        .map(|r| (0.0, r.harmful, r.fast_flag))
        .collect();
    println!("fast tier flag (OOF): {:?}", best_at(&ff, 1.0));
}

/// Hashed n-gram logistic regression on image prompts only (binary features, AdaGrad), for
/// the lab: `(bucket, sign)` lists in, weights (bias last) out.
fn ngram_fit(x: &[Vec<(u32, f32)>], y: &[bool], bits: u8, epochs: u32, l2: f32) -> Vec<f32> {
    let n = 1usize << bits;
    let mut w = vec![0.0f32; n + 1];
    let mut g2 = vec![0.0f32; n + 1];
    let mut order: Vec<usize> = (0..x.len()).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let pos = y.iter().filter(|b| **b).count().max(1) as f32;
    let wpos = ((x.len() as f32 - pos) / pos).sqrt().clamp(1.0, 8.0);
    for _ in 0..epochs {
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &i in &order {
            let z = ngram_z(&w, &x[i]);
            let g = if y[i] { (sig(z) - 1.0) * wpos } else { sig(z) };
            for &(b, v) in &x[i] {
                let b = b as usize;
                let gj = g * v + l2 * w[b];
                g2[b] += gj * gj;
                w[b] -= 0.4 * gj / (g2[b].sqrt() + 1e-6);
            }
            g2[n] += g * g;
            w[n] -= 0.4 * g / (g2[n].sqrt() + 1e-6);
        }
    }
    w
}

fn ngram_z(w: &[f32], x: &[(u32, f32)]) -> f32 {
    x.iter().map(|&(b, v)| w[b as usize] * v).sum::<f32>() + w[w.len() - 1]
}

/// The lab's question for the image any-harm head: does an image-only n-gram model's
/// out-of-fold logit, stacked with the embedding and the fast tier's scores, add to the
/// head? Prints out-of-fold and nested F1 at 1.7% benign FPR for each input set.
fn lab_ngram(rows: &[cascade::Row], records: &[Record]) {
    use stormwall_safety::Kind;
    let env = |k: &str, d: f32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let bits = env("LAB_BITS", 18.0) as u8;
    let epochs = env("LAB_EPOCHS", 6.0) as u32;
    let nl2 = env("LAB_NL2", 1e-6);
    let hl2 = env("LAB_HL2", 0.1);
    let cap = f64::from(env("LAB_CAP", 0.017));
    assert_eq!(rows.len(), records.len(), "rows are in record order");
    let img: Vec<usize> = (0..rows.len())
        .filter(|i| rows[*i].kind == Kind::Image)
        .collect();
    let mut scratch = stormwall_safety::model::Scratch::default();
    let feats: Vec<Vec<(u32, f32)>> = img
        .iter()
        .map(|&i| {
            let t = if std::env::var_os("LAB_RAW").is_some() {
                stormwall_safety::normalize::fold(&records[i].text)
            } else {
                rows[i].text.clone()
            };
            stormwall_safety::model::features(&t, bits, &mut scratch);
            let f = scratch.feats();
            let v = 1.0 / (f.len().max(16) as f32).sqrt();
            let mask = (1u32 << bits) - 1;
            f.iter()
                .map(|&h| (h & mask, if h >> 31 == 0 { v } else { -v }))
                .collect()
        })
        .collect();
    let ys: Vec<bool> = img.iter().map(|&i| rows[i].harmful).collect();
    let folds: Vec<u32> = img.iter().map(|&i| rows[i].fold).collect();
    let mut z = vec![0.0f32; img.len()];
    for k in 0..cascade::FOLDS {
        let (xt, yt): (Vec<Vec<(u32, f32)>>, Vec<bool>) = (0..img.len())
            .filter(|j| folds[*j] != k)
            .map(|j| (feats[j].clone(), ys[j]))
            .unzip();
        let w = ngram_fit(&xt, &yt, bits, epochs, nl2);
        for j in (0..img.len()).filter(|j| folds[*j] == k) {
            z[j] = ngram_z(&w, &feats[j]);
        }
    }
    let report = |name: &str, oof: &[f32]| {
        let pr: Vec<(f32, bool, bool)> = (0..img.len())
            .map(|j| (oof[j], ys[j], rows[img[j]].rule_flag))
            .collect();
        let a = best_at(&pr, cap);
        let (nested_f1, nested_fpr) = nested_at(&pr, &folds, cap);
        let sexual: Vec<usize> = (0..img.len())
            .filter(|j| {
                rows[img[*j]]
                    .categories
                    .contains(&stormwall_safety::Category::Sexual)
            })
            .collect();
        let sr = sexual
            .iter()
            .filter(|j| pr[**j].2 || oof[**j] >= a.3)
            .count() as f64
            / sexual.len().max(1) as f64;
        println!(
            "{name:16} OOF@{cap}: F1 {:.3} R {:.3} FPR {:.4} t {:.3} sexualR {:.3} | nested F1 {:.3} FPR {:.4}",
            a.0, a.1, a.2, a.3, sr, nested_f1, nested_fpr
        );
    };
    report(
        "ngram alone",
        &z.iter().map(|v| sig(*v)).collect::<Vec<_>>(),
    );
    for with_ngram in [false, true] {
        let mut x: Vec<Vec<f32>> = img
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                let mut v = rows[i].embedding.clone();
                v.extend_from_slice(&rows[i].fast[..]);
                if with_ngram {
                    v.push(z[j]);
                }
                v
            })
            .collect();
        let all = vec![true; x.len()];
        standardise(&mut x, &all);
        for v in x.iter_mut() {
            v.iter_mut().for_each(|a| *a = a.clamp(-8.0, 8.0));
        }
        let mut oof = vec![0.0f32; img.len()];
        for k in 0..cascade::FOLDS {
            let (xt, yt): (Vec<Vec<f32>>, Vec<bool>) = (0..img.len())
                .filter(|j| folds[*j] != k)
                .map(|j| (x[j].clone(), ys[j]))
                .unzip();
            let w = lab_fit(&xt, &yt, hl2, 300, 1.0);
            for j in (0..img.len()).filter(|j| folds[*j] == k) {
                oof[j] = lab_score(&w, &x[j]);
            }
        }
        report(
            if with_ngram {
                "emb+fast+ngram"
            } else {
                "emb+fast"
            },
            &oof,
        );
    }
}

/// A one-hidden-layer network (tanh) for the lab, trained by mini-batch Adam with weight
/// decay; weights `[w1 (h×n), b1 (h), w2 (h), b2]`.
struct Mlp {
    n: usize,
    h: usize,
    w: Vec<f32>,
}

impl Mlp {
    fn forward(&self, x: &[f32], hid: &mut [f32]) -> f32 {
        let (n, h) = (self.n, self.h);
        let (w1, rest) = self.w.split_at(h * n);
        let (b1, rest) = rest.split_at(h);
        let (w2, b2) = rest.split_at(h);
        let mut z = b2[0];
        for j in 0..h {
            let a = w1[j * n..(j + 1) * n]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum::<f32>()
                + b1[j];
            hid[j] = a.tanh();
            z += w2[j] * hid[j];
        }
        z
    }

    fn fit(x: &[Vec<f32>], y: &[bool], h: usize, wd: f32, epochs: u32, seed: u64) -> Mlp {
        let n = x[0].len();
        let len = h * n + h + h + 1;
        let mut rng = seed | 1;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut w = vec![0.0f32; len];
        let s1 = (1.0 / n as f64).sqrt();
        for v in w[..h * n].iter_mut() {
            *v = ((next() * 2.0 - 1.0) * s1 * 1.7) as f32;
        }
        let s2 = (1.0 / h as f64).sqrt();
        for v in w[h * n + h..h * n + 2 * h].iter_mut() {
            *v = ((next() * 2.0 - 1.0) * s2 * 1.7) as f32;
        }
        let mut net = Mlp { n, h, w };
        let (mut m, mut v) = (vec![0.0f32; len], vec![0.0f32; len]);
        let mut g = vec![0.0f32; len];
        let mut hid = vec![0.0f32; h];
        let mut order: Vec<usize> = (0..x.len()).collect();
        let batch = 32usize;
        let lr = 1e-3f32;
        let mut t = 0i32;
        for _ in 0..epochs {
            for i in (1..order.len()).rev() {
                let j = (next() * (i + 1) as f64) as usize;
                order.swap(i, j.min(i));
            }
            for chunk in order.chunks(batch) {
                g.iter_mut().for_each(|v| *v = 0.0);
                for &i in chunk {
                    let z = net.forward(&x[i], &mut hid);
                    let e = sig(z) - if y[i] { 1.0 } else { 0.0 };
                    let (gw1, rest) = g.split_at_mut(h * n);
                    let (gb1, rest) = rest.split_at_mut(h);
                    let (gw2, gb2) = rest.split_at_mut(h);
                    gb2[0] += e;
                    let w2 = &net.w[h * n + h..h * n + 2 * h];
                    for j in 0..h {
                        gw2[j] += e * hid[j];
                        let d = e * w2[j] * (1.0 - hid[j] * hid[j]);
                        gb1[j] += d;
                        for (gk, xk) in gw1[j * n..(j + 1) * n].iter_mut().zip(&x[i]) {
                            *gk += d * xk;
                        }
                    }
                }
                t += 1;
                let inv = 1.0 / chunk.len() as f32;
                let (c1, c2) = (1.0 - 0.9f32.powi(t), 1.0 - 0.999f32.powi(t));
                for k in 0..len {
                    let is_bias = (h * n..h * n + h).contains(&k) || k == len - 1;
                    let gk = g[k] * inv + if is_bias { 0.0 } else { wd * net.w[k] };
                    m[k] = 0.9 * m[k] + 0.1 * gk;
                    v[k] = 0.999 * v[k] + 0.001 * gk * gk;
                    net.w[k] -= lr * (m[k] / c1) / ((v[k] / c2).sqrt() + 1e-8);
                }
            }
        }
        net
    }

    fn prob(&self, x: &[f32]) -> f32 {
        let mut hid = vec![0.0f32; self.h];
        sig(self.forward(x, &mut hid))
    }
}

/// The lab's question for the image any-harm head: does a small network, or extra inputs,
/// beat the logistic regression? Out-of-fold and nested F1 at `LAB_CAP` (default 1.9%)
/// benign FPR, the rules' flags or'ed in, on the development rows' image prompts.
fn lab_mlp(rows: &[cascade::Row]) {
    use stormwall_safety::Kind;
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let cap = env("LAB_CAP", 0.019);
    let img: Vec<usize> = (0..rows.len())
        .filter(|i| rows[*i].kind == Kind::Image)
        .collect();
    let ys: Vec<bool> = img.iter().map(|&i| rows[i].harmful).collect();
    let folds: Vec<u32> = img.iter().map(|&i| rows[i].fold).collect();
    let heads: Vec<usize> = cascade::CASCADE_HEADS.iter().map(|c| c.index()).collect();
    let logit = |s: f32| {
        let s = s.clamp(1e-3, 1.0 - 1e-3);
        (s / (1.0 - s)).ln()
    };
    let build = |with_logit: bool| {
        let mut x: Vec<Vec<f32>> = img
            .iter()
            .map(|&i| {
                let r = &rows[i];
                let mut v = r.embedding.clone();
                v.extend(heads.iter().map(|&c| r.fast[c]));
                if with_logit {
                    v.extend(heads.iter().map(|&c| logit(r.fast[c])));
                    v.push(logit(r.fast.iter().copied().fold(0.0, f32::max)));
                }
                v
            })
            .collect();
        let all = vec![true; x.len()];
        standardise(&mut x, &all);
        for v in x.iter_mut() {
            v.iter_mut().for_each(|a| *a = a.clamp(-8.0, 8.0));
        }
        x
    };
    let report = |name: &str, oof: &[f32]| {
        let pr: Vec<(f32, bool, bool)> = (0..img.len())
            .map(|j| (oof[j], ys[j], rows[img[j]].rule_flag))
            .collect();
        let a = best_at(&pr, cap);
        let (nested_f1, nested_fpr) = nested_at(&pr, &folds, cap);
        println!(
            "{name:28} OOF@{cap}: F1 {:.3} R {:.3} FPR {:.4} t {:.3} | nested F1 {:.3} FPR {:.4}",
            a.0, a.1, a.2, a.3, nested_f1, nested_fpr
        );
    };
    let hidden: Vec<usize> = std::env::var("LAB_H")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![32]);
    let wds: Vec<f32> = std::env::var("LAB_WD")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![1e-3, 1e-2]);
    let epochs = env("LAB_EPOCHS", 20.0) as u32;
    let seeds = env("LAB_SEEDS", 1.0) as u64;
    for with_logit in [false, true] {
        let x = build(with_logit);
        let tag = if with_logit { "+logit" } else { "" };
        let mut lr_oof = vec![0.0f32; img.len()];
        for k in 0..cascade::FOLDS {
            let (xt, yt): (Vec<Vec<f32>>, Vec<bool>) = (0..img.len())
                .filter(|j| folds[*j] != k)
                .map(|j| (x[j].clone(), ys[j]))
                .unzip();
            let w = lab_fit(&xt, &yt, 0.1, 300, 1.0);
            for j in (0..img.len()).filter(|j| folds[*j] == k) {
                lr_oof[j] = lab_score(&w, &x[j]);
            }
        }
        report(&format!("lr 0.1{tag}"), &lr_oof);
        for &h in &hidden {
            for &wd in &wds {
                let mut oof = vec![0.0f32; img.len()];
                for k in 0..cascade::FOLDS {
                    let (xt, yt): (Vec<Vec<f32>>, Vec<bool>) = (0..img.len())
                        .filter(|j| folds[*j] != k)
                        .map(|j| (x[j].clone(), ys[j]))
                        .unzip();
                    let nets: Vec<Mlp> = (0..seeds)
                        .map(|s| Mlp::fit(&xt, &yt, h, wd, epochs, 0x5eed + s * 7919))
                        .collect();
                    for j in (0..img.len()).filter(|j| folds[*j] == k) {
                        oof[j] =
                            nets.iter().map(|m| m.prob(&x[j])).sum::<f32>() / nets.len() as f32;
                    }
                }
                report(&format!("mlp h{h} wd{wd}{tag}"), &oof);
                let avg: Vec<f32> = oof
                    .iter()
                    .zip(&lr_oof)
                    .map(|(a, b)| 0.5 * (a + b))
                    .collect();
                report(&format!("  avg(lr, mlp h{h} wd{wd}){tag}"), &avg);
            }
        }
    }
}

fn finish(rows: &[cascade::Row], out: &str) -> Result<(), Box<dyn std::error::Error>> {
    let pooling = pool_choice()?;
    let mut rows = select(rows, &pooling);
    if let Some(k) = std::env::var("KNN").ok().and_then(|v| v.parse().ok()) {
        let d = rows[0].embedding.len() / pooling.len();
        add_knn(&mut rows, k, d);
    }
    let rows = &rows[..];
    let mut cfg = HeadsConfig {
        pooling,
        ..HeadsConfig::default()
    };
    if let Some(r) = std::env::var("CHAT_REACH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.chat_max_reach = r;
    }
    if let Some(r) = std::env::var("IMAGE_FPR").ok().and_then(|v| v.parse().ok()) {
        cfg.image_max_fpr = r;
    }
    if let Ok(g) = std::env::var("L2_GRID") {
        cfg.l2_grid = g.split(',').filter_map(|x| x.parse().ok()).collect();
    }
    if let Some(b) = std::env::var("NGRAM_BITS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.ngram_bits = b;
    }
    if let Ok(v) = std::env::var("LOGIT") {
        cfg.logit_inputs = v != "0";
    }
    if let Some(h) = std::env::var("MLP_H").ok().and_then(|v| v.parse().ok()) {
        cfg.image_hidden = h;
    }
    if let Some(w) = std::env::var("MLP_WD").ok().and_then(|v| v.parse().ok()) {
        cfg.image_mlp_wd = w;
    }
    if let Some(c) = std::env::var("MLP_COUNT").ok().and_then(|v| v.parse().ok()) {
        cfg.image_mlp_count = c;
    }
    let (heads, rep) = cascade::train(rows, &cfg);
    let bytes = heads.to_bytes();
    std::fs::write(out, &bytes)?;
    let line = |name: &str, c: &cascade::Counts| {
        eprintln!(
            "{name:28} tp {:5} fp {:5} tn {:5} fn {:5}  R {:.3}  F1 {:.3}  FPR {:.3}",
            c.tp,
            c.fp,
            c.tn,
            c.fn_,
            c.recall(),
            c.f1(),
            c.fpr()
        );
    };
    eprintln!(
        "{} development records; dev 5-fold CV (tuning figures, not quality figures):",
        rows.len()
    );
    line("image fast tier", &rep.image_fast);
    line("image cascade", &rep.image_cascade);
    line("image cascade, nested", &rep.image_nested);
    eprintln!(
        "image sexual recall: fast tier {:.3}, cascade {:.3}",
        rep.image_sexual_recall.0, rep.image_sexual_recall.1
    );
    line("chat fast tier", &rep.chat_fast);
    line("chat cascade", &rep.chat_cascade);
    for (source, c) in &rep.chat_by_source {
        line(&format!("  {source}"), c);
    }
    eprintln!(
        "image threshold {:.3}, chat threshold {:.3}, band {:?}, chat reach {:.3} (benign {:.3}), l2 {:?}; {} bytes -> {}",
        heads.threshold(stormwall_safety::Kind::Image),
        heads.threshold(stormwall_safety::Kind::Chat),
        heads.band(),
        rep.chat_reach.0,
        rep.chat_reach.1,
        rep.l2,
        bytes.len(),
        out
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("train") if args.len() == 4 => {
            let records = read(&jsonl(Path::new(&args[1]))?, Some(Part::Dev))?;
            let encoder = Encoder::from_dir(Path::new(&args[2]))?;
            let t0 = std::time::Instant::now();
            let mut done = 0usize;
            // Embeddings cached by the text they were computed from (EMBED_CACHE=FILE), so
            // retraining after a threshold change does not re-run the encoder.
            let cache_path = std::env::var_os("EMBED_CACHE").map(PathBuf::from);
            let mut cache = load_cache(cache_path.as_deref(), encoder.dim() * FULL_POOLING.len());
            let mut fresh = 0usize;
            // Stacking rows cached whole (ROWS_CACHE=FILE): the fold models take minutes.
            let rows_path = std::env::var_os("ROWS_CACHE").map(PathBuf::from);
            if let Some(mut rows) = rows_path.as_deref().and_then(load_rows) {
                if std::env::var("LAB").is_ok() {
                    rows = select(&rows, &pool_choice()?);
                }
                match std::env::var("LAB").as_deref() {
                    Ok("ngram") => {
                        lab_ngram(&rows, &records);
                        return Ok(());
                    }
                    Ok("mlp") => {
                        lab_mlp(&rows);
                        return Ok(());
                    }
                    Ok(_) => {
                        lab(&rows);
                        return Ok(());
                    }
                    Err(_) => {}
                }
                return finish(&rows, &args[3]);
            }
            // The fold models score on the shipped model's scale: it is the one the heads
            // run beside.
            let runtime = stormwall_safety::screen::builtin_model()?
                .ok_or("no shipped fast model to align the fold models with")?;
            let rows = cascade::rows(&records, &TrainConfig::default(), &runtime, |text| {
                done += 1;
                if done.is_multiple_of(500) {
                    eprintln!("{done}/{} embedded, {:?}", records.len(), t0.elapsed());
                }
                let key = stormwall_safety::eval::stable_hash(text);
                if let Some(e) = cache.get(&key) {
                    return e.clone();
                }
                fresh += 1;
                let e = encoder
                    .embed_pooled(text, &FULL_POOLING)
                    .unwrap_or_else(|_| vec![0.0; encoder.dim() * FULL_POOLING.len()]);
                cache.insert(key, e.clone());
                e
            })?;
            if let Some(p) = &cache_path
                && fresh > 0
            {
                save_cache(p, &cache)?;
            }
            if let Some(p) = &rows_path {
                save_rows(p, &rows)?;
            }
            finish(&rows, &args[3])
        }
        Some("pivots") if args.len() == 2 => {
            // Each head's calibration pivot, for the shipped model and the five fold models
            // the heads' stacking rows come from: how far the fast tier's scale moves
            // between models trained the same way.
            let records = read(&jsonl(Path::new(&args[1]))?, Some(Part::Dev))?;
            let show = |name: &str, b: &[u8]| {
                let n = usize::from(b[5]);
                let mut line = format!("{name:8}");
                for h in 0..n {
                    let at = 6 + h * 13;
                    let pivot = f32::from_le_bytes(b[at + 9..at + 13].try_into().unwrap_or([0; 4]));
                    line.push_str(&format!(" {:>3}:{pivot:.3}", b[at]));
                }
                println!("{line}");
            };
            if let Some(m) = stormwall_safety::screen::builtin_model()? {
                show("shipped", &m.to_bytes());
            }
            for k in 0..cascade::FOLDS {
                let train: Vec<Record> = records
                    .iter()
                    .filter(|r| r.fold(cascade::FOLDS) != k)
                    .cloned()
                    .collect();
                let m = stormwall_safety::model::train_on_records(&train, &TrainConfig::default());
                show(&format!("fold {k}"), &m.to_bytes());
            }
            Ok(())
        }
        Some("diag") if args.len() >= 4 => {
            // Development records only: harmful ones the default profile flags in clean text
            // but not under a transform (or the reverse), with what each tier said: a
            // diagnosis aid, not figures.
            let transform = Transform::ALL
                .into_iter()
                .find(|t| t.as_str() == args[2])
                .ok_or("unknown transform")?;
            let files: Vec<PathBuf> = args[3..].iter().map(PathBuf::from).collect();
            let records = read(&files, Some(Part::Dev))?;
            let encoder = Some(Arc::new(Encoder::from_dir(Path::new(&args[1]))?));
            let screener = Screener::builder().encoder(encoder).build()?;
            let profile = Profile::builtin("default").ok_or("no default profile")?;
            let (mut lost, mut won, mut n) = (0, 0, 0);
            for r in records.iter().filter(|r| r.harmful) {
                let seed = stormwall_safety::eval::stable_hash(&r.id);
                let t = transform.apply(&r.text, seed);
                let a = screener.analyze_for(&r.text, r.kind);
                let b = screener.analyze_for(&t, r.kind);
                let fa = a.decide(r.kind, &profile).action >= stormwall_safety::Action::Flag;
                let fb = b.decide(r.kind, &profile).action >= stormwall_safety::Action::Flag;
                n += 1;
                if fa != fb {
                    if fa {
                        lost += 1;
                    } else {
                        won += 1;
                    }
                    let p = |a: &stormwall_safety::Analysis| {
                        a.cascade().map(|c| (c.probability, c.threshold))
                    };
                    println!(
                        "{} {} clean max {:.3} cascade {:?} | {} max {:.3} cascade {:?}",
                        if fa { "LOST" } else { "WON " },
                        r.source,
                        a.max_score(),
                        p(&a),
                        transform.as_str(),
                        b.max_score(),
                        p(&b),
                    );
                }
            }
            println!("harmful {n}: lost {lost}, won {won}");
            Ok(())
        }
        Some("chat") if args.len() >= 3 => {
            // The default profile's verdict on everyday chat prompts (one a line, `#`
            // comments, `\n` joins turns) through the full cascade: each flagged one, with why.
            // MODEL_DIR `none`: the fast tier alone; `--model FILE` another fast model.
            let encoder = match args[1].as_str() {
                "none" => None,
                dir => Some(Arc::new(Encoder::from_dir(Path::new(dir))?)),
            };
            let mut b = Screener::builder().encoder(encoder);
            let mut files = Vec::new();
            let mut it = args[2..].iter();
            while let Some(a) = it.next() {
                if a == "--heads" {
                    let h = it.next().ok_or("--heads FILE")?;
                    b = b.heads(Some(cascade::Heads::from_bytes(&std::fs::read(h)?)?));
                } else if a == "--model" {
                    let m = it.next().ok_or("--model FILE")?;
                    b = b.model(Some(stormwall_safety::model::Model::from_bytes(
                        &std::fs::read(m)?,
                    )?));
                } else {
                    files.push(a.clone());
                }
            }
            let screener = b.build()?;
            let profile = Profile::default();
            let (mut n, mut flagged) = (0usize, 0usize);
            for f in files {
                for t in std::fs::read_to_string(&f)?
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                    .map(|l| l.replace("\\n", "\n"))
                {
                    n += 1;
                    let v = screener
                        .analyze_for(&t, stormwall_safety::Kind::Chat)
                        .decide(stormwall_safety::Kind::Chat, &profile);
                    if v.action >= stormwall_safety::Action::Flag {
                        flagged += 1;
                        let why: Vec<String> = v
                            .categories
                            .iter()
                            .filter(|c| c.action >= stormwall_safety::Action::Flag)
                            .map(|c| format!("{} {:.2} {:?}", c.category.as_str(), c.score, c.detector))
                            .collect();
                        println!("FLAGGED {t:?}: {why:?}");
                    }
                }
            }
            println!("flagged {flagged}/{n}");
            Ok(())
        }
        Some("reach") if args.len() >= 2 => {
            // Which chat prompts would reach the encoder (fast tier and band only, no
            // model needed): one text a line (`#` comments; `\n` joins system and user
            // turns), or records (`.jsonl`, chat ones, optionally `--split dev|test`).
            let heads = match args.iter().position(|a| a == "--heads") {
                Some(i) => cascade::Heads::from_bytes(&std::fs::read(
                    args.get(i + 1).ok_or("--heads FILE")?,
                )?)?,
                None => cascade::Heads::builtin()?.ok_or("no shipped heads")?,
            };
            let part = args.iter().position(|a| a == "--split").map(|i| {
                if args.get(i + 1).map(String::as_str) == Some("test") {
                    Part::Test
                } else {
                    Part::Dev
                }
            });
            let screener = Screener::builtin()?;
            let (mut n, mut reached) = (0usize, 0usize);
            let mut by: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
            let mut skip = false;
            for a in &args[1..] {
                if skip || a == "--heads" || a == "--split" {
                    skip = !skip && (a == "--heads" || a == "--split");
                    continue;
                }
                let texts: Vec<(String, String)> = if a.ends_with(".jsonl") {
                    read(&[PathBuf::from(a)], part)?
                        .into_iter()
                        .filter(|r| r.kind == stormwall_safety::Kind::Chat)
                        .map(|r| (format!("{} harmful={}", r.source, r.harmful), r.text))
                        .collect()
                } else {
                    std::fs::read_to_string(a)?
                        .lines()
                        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                        .map(|l| (a.clone(), l.replace("\\n", "\n")))
                        .collect()
                };
                for (group, t) in texts {
                    let m = screener.analyze(&t).max_score();
                    let hit = heads.wants(stormwall_safety::Kind::Chat, m);
                    n += 1;
                    reached += usize::from(hit);
                    let e = by.entry(group).or_default();
                    e.0 += 1;
                    e.1 += usize::from(hit);
                }
            }
            for (g, (all, hit)) in &by {
                println!("{g}: {hit}/{all} reach the encoder");
            }
            println!("all: {reached}/{n}; band {:?}", heads.band());
            Ok(())
        }
        Some("eval") if args.len() >= 3 => {
            let mut files = Vec::new();
            let (mut heads, mut part, mut evasion, mut profile) =
                (None, None, true, "default".to_owned());
            let mut it = args[2..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--heads" => heads = it.next().cloned(),
                    "--split" => {
                        part = Some(match it.next().map(String::as_str) {
                            Some("test") => Part::Test,
                            _ => Part::Dev,
                        })
                    }
                    "--no-evasion" => evasion = false,
                    "--profile" => profile = it.next().cloned().ok_or("--profile NAME")?,
                    f => files.push(PathBuf::from(f)),
                }
            }
            let records = read(&files, part)?;
            let encoder = match args[1].as_str() {
                "none" => None,
                dir => Some(Arc::new(Encoder::from_dir(Path::new(dir))?)),
            };
            // Every embedding is kept, so the warm-up below computes each once.
            let mut b = Screener::builder()
                .encoder(encoder)
                .embedding_cache(1 << 18);
            if let Some(h) = heads {
                b = b.heads(Some(cascade::Heads::from_bytes(&std::fs::read(h)?)?));
            }
            let screener = b.build()?;
            let profile = Profile::builtin(&profile).ok_or("unknown profile")?;
            let transforms: &[Transform] = if evasion { &Transform::ALL } else { &[] };
            // The encoder dominates: embed every text (and disguised text) the evaluator will
            // screen on WARM_THREADS threads (default 2) first; the evaluation itself then
            // finds each embedding in the cache and gives the same figures.
            if screener.has_encoder() {
                let threads: usize = std::env::var("WARM_THREADS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2);
                let next = std::sync::atomic::AtomicUsize::new(0);
                std::thread::scope(|s| {
                    for _ in 0..threads.max(1) {
                        s.spawn(|| {
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(r) = records.get(i) else { break };
                                screener.analyze_for(&r.text, r.kind);
                                let seed = stormwall_safety::eval::stable_hash(&r.id);
                                for t in transforms {
                                    screener.analyze_for(&t.apply(&r.text, seed), r.kind);
                                }
                            }
                        });
                    }
                });
            }
            let mut ev = Evaluator::new(&screener, &profile, transforms);
            for r in &records {
                ev.add(r);
            }
            println!("{}", serde_json::to_string_pretty(&ev.report())?);
            Ok(())
        }
        _ => Err("usage: cascade train DATA_DIR MODEL_DIR OUT | cascade eval MODEL_DIR [--heads FILE] [--split dev|test] [--no-evasion] FILE.jsonl...".into()),
    }
}
