//! `stormwall safety`: screen a text (`check`), measure the screener on labelled sets
//! (`eval`), and train the small built-in model (`train`).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use stormwall_safety::encoder::{Encoder, PRECISION_ENV, PrecisionSetting};
use stormwall_safety::eval::{Evaluator, Record};
use stormwall_safety::model::{self, Model, TrainConfig};
use stormwall_safety::split::{Part, Split};
use stormwall_safety::{Action, Kind, Profile, Screener, Transform};

/// Largest text `check` reads from stdin.
const MAX_CHECK_BYTES: u64 = 16 * 1024 * 1024;
/// Safety commands.
#[derive(Debug, clap::Subcommand)]
pub enum SafetyCommand {
    /// Screen one text from stdin and print the verdict (exit 1 when it blocks).
    Check {
        /// Endpoint kind the text is for.
        #[arg(long, default_value = "chat", value_parser = parse_kind)]
        kind: Kind,
        #[command(flatten)]
        screen: ScreenArgs,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate on JSON-lines records (`text`, `kind`, `harmful`, `source`).
    Eval {
        /// Record files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        screen: ScreenArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Skip the evasion transforms (faster).
        #[arg(long)]
        no_evasion: bool,
        /// Split records into this many folds by a stable hash of their id...
        #[arg(long, requires = "fold")]
        folds: Option<u32>,
        /// ...and evaluate only this fold (held out from `train --holdout`).
        #[arg(long, requires = "folds")]
        fold: Option<u32>,
        /// Only records of this part of the frozen split (`test`: the figures to quote).
        #[arg(long, value_parser = parse_part)]
        split: Option<Part>,
    },
    /// Train the hashed n-gram model from a directory of JSON-lines records (records of the
    /// frozen test split are never used).
    Train {
        /// Directory of `*.jsonl` files.
        #[arg(long)]
        data: PathBuf,
        /// Where to write the model.
        #[arg(long)]
        out: PathBuf,
        /// log2 of the hash-table size.
        #[arg(long, default_value_t = TrainConfig::default().bits)]
        bits: u8,
        /// Passes over the data.
        #[arg(long, default_value_t = TrainConfig::default().epochs)]
        epochs: u32,
        /// Per-head false-positive rate (on held-back benign texts) that scores 0.5.
        #[arg(long, default_value_t = TrainConfig::default().target_fpr)]
        target_fpr: f32,
        /// Split records into this many folds by a stable hash of their id...
        #[arg(long, requires = "holdout")]
        folds: Option<u32>,
        /// ...and leave this fold out of training.
        #[arg(long, requires = "folds")]
        holdout: Option<u32>,
        /// Also train the cascade's heads on this encoder's embeddings (development part,
        /// 5-fold stacking; slow in a debug build).
        #[arg(long, requires = "heads_out", conflicts_with = "folds")]
        encoder_dir: Option<PathBuf>,
        /// Where to write the cascade heads (with --encoder-dir).
        #[arg(long, requires = "encoder_dir")]
        heads_out: Option<PathBuf>,
        #[command(flatten)]
        precision: PrecisionArg,
    },
    /// The encoder tier's model (`fetch`).
    #[command(subcommand)]
    Model(crate::cmd_safety_model::ModelCommand),
}

/// What the screener is built from.
#[derive(Debug, clap::Args)]
pub struct ScreenArgs {
    /// Built-in profile name (default, strict, permissive) or a profile TOML file.
    #[arg(long, default_value = "default")]
    profile: String,
    /// Person gazetteer TOML (`[[person]]` with `name` and `aliases`).
    #[arg(long)]
    gazetteer: Option<PathBuf>,
    /// Model file to use instead of the shipped one.
    #[arg(long, conflicts_with = "no_model")]
    model: Option<PathBuf>,
    /// Rules only: no statistical model.
    #[arg(long)]
    no_model: bool,
    /// The encoder tier's model directory (`stormwall safety model fetch`): the cascade
    /// runs with it, the fast tier alone without it.
    #[arg(long)]
    encoder_dir: Option<PathBuf>,
    /// Cascade heads file to use instead of the shipped one (with --encoder-dir).
    #[arg(long, requires = "encoder_dir")]
    heads: Option<PathBuf>,
    #[command(flatten)]
    precision: PrecisionArg,
}

/// `--encoder-precision`, for every command that loads the encoder.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PrecisionArg {
    /// Number format of the encoder's linear layers: auto (int8 where the processor runs a
    /// SIMD int8 kernel, f32 elsewhere), int8 or f32.
    #[arg(
        long,
        env = PRECISION_ENV,
        default_value = "auto",
        value_name = "PRECISION",
        value_parser = parse_precision
    )]
    encoder_precision: PrecisionSetting,
}

/// A precision setting; empty (`STORMWALL_ENCODER_PRECISION=` set to nothing) is `auto`,
/// as an unset variable is.
fn parse_precision(s: &str) -> Result<PrecisionSetting, String> {
    if s.trim().is_empty() {
        return Ok(PrecisionSetting::Auto);
    }
    s.parse()
}

fn parse_part(s: &str) -> Result<Part, String> {
    s.parse()
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
        .map_err(|_| format!("expected chat or image, got {s:?}"))
}

impl ScreenArgs {
    fn profile(&self) -> anyhow::Result<Profile> {
        if let Some(p) = Profile::builtin(&self.profile) {
            return Ok(p);
        }
        let path = Path::new(&self.profile);
        if !path.exists() {
            let names: Vec<_> = Profile::builtin_names().collect();
            bail!(
                "no built-in profile {:?} (have {}) and no such file",
                self.profile,
                names.join(", ")
            );
        }
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading profile {}", path.display()))?;
        Profile::from_toml(&text).with_context(|| format!("profile {}", path.display()))
    }

    /// The screener, and the kernel of its encoder when one is loaded.
    fn screener(&self) -> anyhow::Result<(Screener, Option<String>)> {
        let mut b = Screener::builder();
        if let Some(g) = &self.gazetteer {
            let text = fs::read_to_string(g)
                .with_context(|| format!("reading gazetteer {}", g.display()))?;
            b = b.gazetteer_toml(&g.display().to_string(), &text)?;
        }
        if self.no_model {
            b = b.model(None);
        } else if let Some(m) = &self.model {
            let bytes = fs::read(m).with_context(|| format!("reading model {}", m.display()))?;
            b = b.model(Some(Model::from_bytes(&bytes)?));
        }
        let mut kernel = None;
        if let Some(d) = &self.encoder_dir {
            let e = Encoder::from_dir_with(d, self.precision.encoder_precision.resolve())?;
            kernel = Some(e.kernel_name());
            b = b.encoder(Some(std::sync::Arc::new(e)));
        }
        if let Some(h) = &self.heads {
            let bytes = fs::read(h).with_context(|| format!("reading heads {}", h.display()))?;
            b = b.heads(Some(stormwall_safety::cascade::Heads::from_bytes(&bytes)?));
        }
        Ok((b.build()?, kernel))
    }
}

/// Runs a safety command.
pub fn run(cmd: SafetyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SafetyCommand::Check { kind, screen, json } => check(kind, &screen, json),
        SafetyCommand::Eval {
            files,
            screen,
            json,
            no_evasion,
            folds,
            fold,
            split,
        } => eval(&files, &screen, json, no_evasion, folds.zip(fold), split),
        SafetyCommand::Train {
            data,
            out,
            bits,
            epochs,
            target_fpr,
            folds,
            holdout,
            encoder_dir,
            heads_out,
            precision,
        } => {
            let cfg = TrainConfig {
                bits,
                epochs,
                target_fpr,
                ..TrainConfig::default()
            };
            train(
                &data,
                &out,
                &cfg,
                folds.zip(holdout),
                encoder_dir
                    .zip(heads_out)
                    .map(|(d, h)| (d, h, precision.encoder_precision)),
            )
        }
        SafetyCommand::Model(m) => crate::cmd_safety_model::run(m),
    }
}

fn check(kind: Kind, args: &ScreenArgs, json: bool) -> anyhow::Result<ExitCode> {
    let profile = args.profile()?;
    let (screener, _) = args.screener()?;
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_CHECK_BYTES + 1)
        .read_to_end(&mut buf)
        .context("reading stdin")?;
    if buf.len() as u64 > MAX_CHECK_BYTES {
        bail!("input is larger than {MAX_CHECK_BYTES} bytes");
    }
    let text = String::from_utf8_lossy(&buf);
    let verdict = screener.screen(&text, kind, &profile);
    let mut out = String::new();
    if json {
        out = serde_json::to_string(&verdict)?;
        out.push('\n');
    } else {
        out.push_str(&format!(
            "{} ({kind}, profile {})\n",
            verdict.action,
            profile.name()
        ));
        for c in &verdict.categories {
            let at = c
                .evidence
                .as_ref()
                .map(|e| {
                    format!(
                        ", {} view, bytes {}..{}",
                        e.view.as_str(),
                        e.span.start,
                        e.span.end
                    )
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<24} {:.2}  {:<5}  ({:?}{at})\n",
                c.category.as_str(),
                c.score,
                c.action.as_str(),
                c.detector
            ));
        }
    }
    // A reader that stops early (`| head -1`) is not an error: the exit code still says
    // whether the text was blocked. (`println!` would panic on the closed pipe.)
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("writing stdout");
        }
        _ => {}
    }
    Ok(if verdict.action == Action::Block {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads JSON-lines records; blank lines are skipped, a bad line is an error naming it.
fn read_records(path: &Path, mut each: impl FnMut(Record)) -> anyhow::Result<()> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        // The error names the line, never its text: records hold prompts.
        let r: Record = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {}", path.display(), i + 1, e.classify_name()))?;
        each(r);
    }
    Ok(())
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "missing or mistyped field (need text, harmful)",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

fn eval(
    files: &[PathBuf],
    args: &ScreenArgs,
    json: bool,
    no_evasion: bool,
    fold: Option<(u32, u32)>,
    part: Option<Part>,
) -> anyhow::Result<ExitCode> {
    let profile = args.profile()?;
    let (screener, kernel) = args.screener()?;
    if let Some(k) = kernel {
        // Figures depend on the precision: say which ran, on stderr beside any warning.
        eprintln!(
            "encoder: {k} kernel (--encoder-precision {})",
            args.precision.encoder_precision
        );
    }
    let split = Split::frozen()?;
    let transforms: &[Transform] = if no_evasion { &[] } else { &Transform::ALL };
    let mut ev = Evaluator::new(&screener, &profile, transforms);
    for f in files {
        read_records(f, |r| {
            if fold.is_none_or(|(n, k)| r.fold(n) == k)
                && part.is_none_or(|p| split.part(&r.id) == p)
            {
                ev.add(&r);
            }
        })?;
    }
    let report = ev.report();
    if report.trained_on > 0 {
        // Loud and on stderr, so it shows even with --json piped to a file.
        eprintln!(
            "WARNING: {} of {} records were used to train this model: these figures are \
             in-sample, not quality figures (score the frozen test part: --split test)",
            report.trained_on, report.records
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("profile {}, {} records", report.profile, report.records);
    println!(
        "{:<24} {:>5} {:>5} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6}",
        "source", "tp", "fp", "tn", "fn", "prec", "recall", "f1", "fpr"
    );
    let overall = "overall".to_owned();
    let rows = report
        .by_source
        .iter()
        .chain(report.by_kind.iter())
        .chain(std::iter::once((&overall, &report.overall)));
    for (name, m) in rows {
        println!(
            "{:<24} {:>5} {:>5} {:>5} {:>5} {:>6.3} {:>6.3} {:>6.3} {:>6.3}",
            name, m.tp, m.fp, m.tn, m.fn_, m.precision, m.recall, m.f1, m.fpr
        );
    }
    if !report.evasion.is_empty() {
        println!("\n{:<24} {:>8} {:>8}", "evasion", "recall", "fpr");
        for (name, d) in &report.evasion {
            println!("{:<24} {:>8.3} {:>8.3}", name, d.recall, d.fpr);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn train(
    dir: &Path,
    out: &Path,
    cfg: &TrainConfig,
    holdout: Option<(u32, u32)>,
    heads: Option<(PathBuf, PathBuf, PrecisionSetting)>,
) -> anyhow::Result<ExitCode> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    // Sorted so the same directory always trains the same model.
    files.sort();
    if files.is_empty() {
        bail!("no .jsonl files in {}", dir.display());
    }
    let split = Split::frozen()?;
    let mut records = Vec::new();
    let mut test = 0usize;
    for f in &files {
        read_records(f, |r| {
            if split.part(&r.id) == Part::Test {
                test += 1;
            } else if holdout.is_none_or(|(n, k)| r.fold(n) != k) {
                records.push(r);
            }
        })?;
    }
    // Reported only: `training_examples` leaves out harmful records whose labels have no
    // category (copyright, expert advice), which would teach the model that harm looks benign.
    let skipped = records
        .iter()
        .filter(|r| r.harmful && r.mapped_categories().is_empty())
        .count();
    // The crate's own example builder and head list, so `cv` and `train` cannot drift.
    let m = model::train_on_records(&records, cfg);
    let bytes = m.to_bytes();
    fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "trained on {} records ({} of the frozen test split left out, {} harmful without a mapped category skipped), {} heads, {} bytes -> {}",
        records.len() - skipped,
        test,
        skipped,
        model::DEFAULT_HEADS.len(),
        bytes.len(),
        out.display()
    );
    if let Some((dir, heads_out, precision)) = heads {
        let encoder = Encoder::from_dir_with(&dir, precision.resolve())?;
        train_heads(&records, cfg, &m, &encoder, &heads_out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The cascade's heads: out-of-fold fast-tier scores stacked with the encoder's embeddings
/// of the development records (the caller left the test part out), thresholds and band by
/// cross-validation on them; the fold models score on the scale of `runtime`, the fast model
/// just trained, which the heads will run beside.
fn train_heads(
    records: &[Record],
    cfg: &TrainConfig,
    runtime: &model::Model,
    encoder: &Encoder,
    out: &Path,
) -> anyhow::Result<()> {
    use stormwall_safety::cascade;
    let heads_cfg = cascade::HeadsConfig::default();
    let width = encoder.dim() * heads_cfg.pooling.len();
    let rows = cascade::rows(records, cfg, runtime, |text| {
        encoder
            .embed_pooled(text, &heads_cfg.pooling)
            .unwrap_or_else(|_| vec![0.0; width])
    })?;
    let (heads, rep) = cascade::train(&rows, &heads_cfg);
    let bytes = heads.to_bytes();
    fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "cascade heads ({} encoder): {} rows; dev 5-fold CV (tuning, not quality): image F1 {:.3} FPR {:.3} (fast tier {:.3} / {:.3}), image sexual recall {:.3} (fast tier {:.3}), chat F1 {:.3} (fast tier {:.3}); any-harm L2 {:?}; image threshold {:.3}, chat threshold {:.3}, band {:?}; {} bytes -> {}",
        encoder.kernel_name(),
        rows.len(),
        rep.image_cascade.f1(),
        rep.image_cascade.fpr(),
        rep.image_fast.f1(),
        rep.image_fast.fpr(),
        rep.image_sexual_recall.1,
        rep.image_sexual_recall.0,
        rep.chat_cascade.f1(),
        rep.chat_fast.f1(),
        rep.l2,
        heads.threshold(Kind::Image),
        heads.threshold(Kind::Chat),
        heads.band(),
        bytes.len(),
        out.display()
    );
    Ok(())
}
