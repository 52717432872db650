//! The encoder tier's heads, trained and scored without the rest of the binary (the debug
//! build of `stormwall` runs the encoder too slowly to wait for): the same library calls as
//! `stormwall safety train --encoder-dir DIR --heads-out FILE` and `stormwall safety eval
//! --encoder-dir DIR`.
//!
//!   cargo run --release -p stormwall-safety --example cascade -- train DATA_DIR MODEL_DIR OUT
//!   cargo run --release -p stormwall-safety --example cascade -- eval MODEL_DIR [--heads FILE] [--split dev|test] [--no-evasion] [--profile NAME] FILE.jsonl...
//!
//! `train` reads the development part of the frozen split only; `eval` prints the JSON
//! report of `stormwall safety eval --json`.
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stormwall_safety::cascade::{self, HeadsConfig};
use stormwall_safety::encoder::Encoder;
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("train") if args.len() == 4 => {
            let records = read(&jsonl(Path::new(&args[1]))?, Some(Part::Dev))?;
            let encoder = Encoder::from_dir(Path::new(&args[2]))?;
            // The fast tier's own model picks the view to embed, as at screening time.
            let screener = Screener::builtin()?;
            let t0 = std::time::Instant::now();
            let mut done = 0usize;
            // Embeddings cached by the text they were computed from (EMBED_CACHE=FILE), so
            // retraining after a threshold change does not re-run the encoder.
            let cache_path = std::env::var_os("EMBED_CACHE").map(PathBuf::from);
            let mut cache = load_cache(cache_path.as_deref(), encoder.dim());
            let mut fresh = 0usize;
            let rows = cascade::rows(&records, &TrainConfig::default(), |r| {
                done += 1;
                if done.is_multiple_of(500) {
                    eprintln!("{done}/{} embedded, {:?}", records.len(), t0.elapsed());
                }
                let text = screener.encoder_text(&r.text);
                let key = stormwall_safety::eval::stable_hash(&text);
                if let Some(e) = cache.get(&key) {
                    return e.clone();
                }
                fresh += 1;
                let e = encoder
                    .embed(&text)
                    .unwrap_or_else(|_| vec![0.0; encoder.dim()]);
                cache.insert(key, e.clone());
                e
            })?;
            if let Some(p) = &cache_path
                && fresh > 0
            {
                save_cache(p, &cache)?;
            }
            let (heads, rep) = cascade::train(&rows, &HeadsConfig::default());
            let bytes = heads.to_bytes();
            std::fs::write(&args[3], &bytes)?;
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
            line("chat fast tier", &rep.chat_fast);
            line("chat cascade", &rep.chat_cascade);
            eprintln!(
                "image threshold {:.3}, chat threshold {:.3}, band {:?}, chat reach {:.3} (benign {:.3}); {} bytes -> {}",
                heads.threshold(stormwall_safety::Kind::Image),
                heads.threshold(stormwall_safety::Kind::Chat),
                heads.band(),
                rep.chat_reach.0,
                rep.chat_reach.1,
                bytes.len(),
                args[3]
            );
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
            let encoder = Arc::new(Encoder::from_dir(Path::new(&args[1]))?);
            let mut b = Screener::builder().encoder(Some(encoder));
            if let Some(h) = heads {
                b = b.heads(Some(cascade::Heads::from_bytes(&std::fs::read(h)?)?));
            }
            let screener = b.build()?;
            let profile = Profile::builtin(&profile).ok_or("unknown profile")?;
            let transforms: &[Transform] = if evasion { &Transform::ALL } else { &[] };
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
