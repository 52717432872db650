//! `stormwall safety train` without the rest of the binary: the same example builder, head
//! list and trainer, so a release build of this crate alone retrains `data/model.bin` (the
//! binary's debug build trains too slowly to wait for). Byte for byte the CLI's output:
//! records of the frozen test split (`data/split/test-ids.txt`) are left out.
//!
//!   cargo run --release -p stormwall-safety --example train -- ../shared/datasets/safety crates/stormwall-safety/data/model.bin
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::io::BufRead;

use stormwall_safety::eval::Record;
use stormwall_safety::model::{self, TrainConfig};
use stormwall_safety::split::{Part, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), Some(out)) = (args.next(), args.next()) else {
        return Err("usage: train DATA_DIR OUT".into());
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    // Sorted as the CLI sorts them: the same directory always trains the same model.
    files.sort();
    let split = Split::frozen()?;
    let mut records = Vec::new();
    for f in &files {
        for line in std::io::BufReader::new(std::fs::File::open(f)?).lines() {
            let line = line?;
            if !line.trim().is_empty() {
                let r = serde_json::from_str::<Record>(&line)?;
                if split.part(&r.id) == Part::Dev {
                    records.push(r);
                }
            }
        }
    }
    // SEED=N retrains with another shuffle seed: how far the calibration moves between
    // retrains of the same data (docs/safety.md, tenth cut).
    let mut cfg = TrainConfig::default();
    if let Some(seed) = std::env::var("SEED").ok().and_then(|v| v.parse().ok()) {
        cfg.seed = seed;
    }
    // CAL_FOLDS=k calibrates on out-of-fold scores (TrainConfig::calibration_folds).
    if let Some(k) = std::env::var("CAL_FOLDS").ok().and_then(|v| v.parse().ok()) {
        cfg.calibration_folds = k;
    }
    let m = model::train_on_records(&records, &cfg);
    let bytes = m.to_bytes();
    std::fs::write(&out, &bytes)?;
    eprintln!(
        "{} development records, {} training ids listed, {} bytes",
        records.len(),
        m.training_id_count(),
        bytes.len()
    );
    Ok(())
}
