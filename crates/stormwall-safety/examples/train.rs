//! `stormwall safety train` without the rest of the binary: the same example builder, head
//! list and trainer, so a release build of this crate alone retrains `data/model.bin` (the
//! binary's debug build trains too slowly to wait for). Byte for byte the CLI's output.
//!
//!   cargo run --release -p stormwall-safety --example train -- ../shared/datasets/safety crates/stormwall-safety/data/model.bin
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::io::BufRead;

use stormwall_safety::eval::Record;
use stormwall_safety::model::{self, TrainConfig};

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
    let mut records = Vec::new();
    for f in &files {
        for line in std::io::BufReader::new(std::fs::File::open(f)?).lines() {
            let line = line?;
            if !line.trim().is_empty() {
                records.push(serde_json::from_str::<Record>(&line)?);
            }
        }
    }
    let examples = model::training_examples(&records);
    let m = model::train(&examples, model::DEFAULT_HEADS, &TrainConfig::default());
    let bytes = m.to_bytes();
    std::fs::write(&out, &bytes)?;
    eprintln!(
        "{} records, {} examples, {} bytes",
        records.len(),
        examples.len(),
        bytes.len()
    );
    Ok(())
}
