//! Writes the synthetic credential corpus, or plants synthetic credentials into an existing
//! tree, for the scan benchmark (`bench/scan/run.sh`).
//!
//! ```text
//! gen_corpus synthetic DIR [SEED]            full corpus (files, archives, git history)
//! gen_corpus plant DIR COUNT MANIFEST [SEED]  COUNT keys as new files under DIR/planted
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::process::ExitCode;

use stormwall_scan::synth::{SynthOptions, generate, plant, write_manifest};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seed = |i: usize| args.get(i).and_then(|s| s.parse().ok());
    let result = match args.first().map(String::as_str) {
        Some("synthetic") if args.len() >= 2 => {
            let dir = Path::new(&args[1]);
            let options = SynthOptions {
                seed: seed(2).unwrap_or(SynthOptions::default().seed),
                ..SynthOptions::default()
            };
            generate(dir, &options).and_then(|c| {
                write_manifest(&dir.join("manifest.jsonl"), &c.planted)?;
                println!(
                    "{} keys planted, {} decoy files, {} files",
                    c.planted.len(),
                    c.decoys,
                    c.files
                );
                Ok(())
            })
        }
        Some("plant") if args.len() >= 4 => {
            let count: usize = args[2].parse().unwrap_or(130);
            plant(Path::new(&args[1]), "planted", count, seed(4).unwrap_or(7)).and_then(|p| {
                write_manifest(Path::new(&args[3]), &p)?;
                println!("{} keys planted", p.len());
                Ok(())
            })
        }
        _ => {
            eprintln!(
                "usage: gen_corpus synthetic DIR [SEED] | gen_corpus plant DIR COUNT MANIFEST [SEED]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
