//! Made the frozen test split once (`data/split/test-ids.txt`); kept so the file's making is
//! on record, not to be re-run (a new list is a new split, see `stormwall_safety::split`).
//!
//!   cargo run -p stormwall-safety --example split -- ../shared/datasets/safety > crates/stormwall-safety/data/split/test-ids.txt
#![allow(clippy::print_stdout, missing_docs)]

use std::collections::BTreeMap;

use stormwall_safety::eval::Record;
use stormwall_safety::split::{TEST_PERCENT, assign_test};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os().nth(1).ok_or("usage: split DATA_DIR")?;
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut ids = Vec::new();
    // (source, harmful) -> (test, all): printed in the header so the list says what it holds.
    let mut counts: BTreeMap<(String, bool), (u32, u32)> = BTreeMap::new();
    for f in &files {
        for line in std::fs::read_to_string(f)?.lines() {
            if line.trim().is_empty() {
                continue;
            }
            let r: Record = serde_json::from_str(line)?;
            let t = assign_test(&r.id);
            let c = counts.entry((r.source.clone(), r.harmful)).or_default();
            c.0 += u32::from(t);
            c.1 += 1;
            if t {
                ids.push(r.id);
            }
        }
    }
    ids.sort();
    ids.dedup();
    println!(
        "# Frozen test part of ../shared/datasets/safety (issue 12). Never train or tune on these ids."
    );
    println!(
        "# {TEST_PERCENT}% of each source by a salted hash of the id (stormwall_safety::split::assign_test)."
    );
    println!(
        "# Pinned by SHA-256 in src/split.rs: do not edit. Per source (harmful/benign): test of all"
    );
    for ((source, harmful), (t, n)) in &counts {
        let label = if *harmful { "harmful" } else { "benign" };
        println!("#   {source} {label}: {t} of {n}");
    }
    for id in ids {
        println!("{id}");
    }
    Ok(())
}
