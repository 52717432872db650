//! Follow mode for cloud logs (`[[logs]]`): folders the clouds' exports land in are polled
//! for new files and for growth of existing ones, every new record is parsed
//! (`stormwall-cloudlogs`) and judged by the cloud detectors and a data-plane engine built
//! from the same `[detect]`/`[response]` sections, and the alerts go to the gateway's alert
//! store, sink, webhook and audit through the detection task — the same path as gateway
//! traffic's alerts. Stormwall holds no cloud credentials: an action on a cloud principal is
//! a recommendation (the exact revoke command) stored on the alert and in the audit log.
//!
//! A cursor per file (device and inode, byte offset, line, a fingerprint of its first bytes)
//! is saved with the detectors' state in one checkpoint file, so a restart neither loses
//! records nor judges them twice. Two kinds of file are followed:
//! - JSON lines (Azure `PT1H.json` blobs, Bedrock invocation logs, `gcloud` sinks): read
//!   as they grow; a partial last line waits for its newline (or for the file to stay
//!   unchanged for `settle_secs`, for a writer that ends without one);
//! - whole-file containers (gzip, a JSON array, a `{"Records":[…]}` wrapper, one
//!   pretty-printed record — CloudTrail's delivery files): read once complete (they parse)
//!   or once unchanged for `settle_secs`.
//!
//! A file renamed inside the folder keeps its cursor (rotation); a truncated file or a new
//! file reusing an inode starts over; a deleted file's cursor is dropped. Records are
//! judged in event-time order within each poll; a record arriving much later than its
//! neighbours is judged against the state as it is then.
//!
//! Every record read is also kept: usage events in the event store, management calls
//! (`ControlEvent`s) in the control-event store, both idempotently by event id, so a record
//! read again (a restart that lost its cursors) is stored once.
//!
//! The cursor logic ([`reconcile`], [`take_lines`], [`mode_of`]) is pure; [`Follower`] does
//! the file I/O and [`spawn`] the task.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use stormwall_cloudlogs::sigma::{MatchedAt, Rule};
use stormwall_cloudlogs::{Record, Source};
use stormwall_detect::EngineConfig;
use stormwall_detect::cloud::{CloudRun, Finding, Snapshot};
use stormwall_types::{Alert, AlertSubject, ControlEvent, UsageEvent};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::ControlPlane;

/// One `[[logs]]` source: a folder the cloud's exports land in.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSourceConfig {
    /// Name in metrics, logs and the checkpoint (default: the folder's last component).
    #[serde(default)]
    pub name: Option<String>,
    /// Folder watched, recursively (hidden entries skipped).
    pub dir: PathBuf,
    /// `auto` (each record recognised from its content) or one source name
    /// (`cloudtrail`, `azure-diagnostics`, …) for every record.
    #[serde(default = "auto")]
    pub source: String,
    /// File-name pattern new files must match (`*` and `?`), e.g. `*.json.gz`; default any.
    /// A followed file renamed so it no longer matches (rotation) is still read to its end.
    #[serde(default)]
    pub glob: Option<String>,
}

fn auto() -> String {
    "auto".to_owned()
}

/// `[cloud_logs]`: follow-mode settings shared by every `[[logs]]` source.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudLogsConfig {
    /// Checkpoint file: every file's cursor and the detectors' state (written to
    /// `FILE.tmp`, then renamed). `stormwall serve` defaults it next to the store.
    pub state_file: Option<PathBuf>,
    /// Milliseconds between polls of the folders.
    pub poll_ms: u64,
    /// Seconds a file must stay unchanged before an incomplete last line or an unparsable
    /// whole-file container is read as it is (and its errors reported).
    pub settle_secs: u64,
    /// Most seconds between checkpoints while records arrive (a poll that raised an alert
    /// checkpoints at once).
    pub checkpoint_secs: u64,
    /// Longest line; a longer one is a bad record and skipped.
    pub max_line_bytes: usize,
    /// Largest whole-file container read (gzip, JSON array); a larger one is a bad record.
    pub max_file_bytes: u64,
    /// Sigma rules (`.yml`, `.yaml`) under this folder are evaluated over every record;
    /// matches are alerts (detector S1).
    pub sigma_dir: Option<PathBuf>,
    /// Seconds a replica holds a source's lease without renewing it: of the replicas
    /// sharing a store, one follows each `[[logs]]` source, and another takes over this
    /// long (at most a third more) after the holder stopped renewing.
    pub lease_secs: u64,
}

impl Default for CloudLogsConfig {
    fn default() -> Self {
        Self {
            state_file: None,
            poll_ms: 1_000,
            settle_secs: 30,
            checkpoint_secs: 30,
            max_line_bytes: 16 * 1024 * 1024,
            max_file_bytes: 1024 * 1024 * 1024,
            sigma_dir: None,
            lease_secs: 30,
        }
    }
}

/// Why `[[logs]]` / `[cloud_logs]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogsConfigError {
    /// A key has an unusable value.
    #[error("[[logs]] {name}: {why}")]
    Source {
        /// The source's name (or folder).
        name: String,
        /// What is wrong.
        why: String,
    },
    /// `[cloud_logs]` has an unusable value.
    #[error("[cloud_logs] {0}")]
    Settings(String),
}

/// A validated `[[logs]]` source.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Name.
    pub name: String,
    /// Folder.
    pub dir: PathBuf,
    /// Forced source, or `None` for auto.
    pub forced: Option<Source>,
    /// Pattern new files must match.
    pub glob: Option<String>,
}

/// What [`check`] gives: the sources, the usable Sigma rules, and why others were skipped.
pub type Checked = (Vec<Watched>, Vec<Rule>, Vec<String>);

/// Validates the follow-mode configuration (`config check` and start-up). Folders must
/// exist; Sigma rules that cannot be used are returned for the caller to report.
pub fn check(
    logs: &[LogSourceConfig],
    cfg: &CloudLogsConfig,
    detect_enabled: bool,
) -> Result<Checked, LogsConfigError> {
    if logs.is_empty() {
        return Ok((Vec::new(), Vec::new(), Vec::new()));
    }
    let settings = |s: &str| Err(LogsConfigError::Settings(s.to_owned()));
    if !detect_enabled {
        return settings("[[logs]] needs [detect] enabled = true");
    }
    if cfg.state_file.is_none() {
        return settings("state_file must be set when [[logs]] sources are configured");
    }
    if cfg.poll_ms < 100 {
        return settings("poll_ms must be at least 100");
    }
    if cfg.max_line_bytes < 1024 {
        return settings("max_line_bytes must be at least 1024");
    }
    if cfg.lease_secs < 2 || cfg.lease_secs.saturating_mul(1000) < cfg.poll_ms.saturating_mul(2) {
        return settings("lease_secs must be at least 2 and at least two polls (poll_ms)");
    }
    let mut out: Vec<Watched> = Vec::new();
    for l in logs {
        let name = l.name.clone().unwrap_or_else(|| {
            l.dir.file_name().map_or_else(
                || l.dir.display().to_string(),
                |n| n.to_string_lossy().into(),
            )
        });
        let bad = |why: String| LogsConfigError::Source {
            name: name.clone(),
            why,
        };
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(bad("name must be 1 to 64 printable characters".into()));
        }
        if out.iter().any(|w| w.name == name) {
            return Err(bad("two [[logs]] sources have this name".into()));
        }
        if !l.dir.is_dir() {
            return Err(bad(format!("dir {} is not a folder", l.dir.display())));
        }
        let forced = match l.source.as_str() {
            "auto" => None,
            s => Some(s.parse::<Source>().map_err(|e| bad(e.to_string()))?),
        };
        if let Some(g) = &l.glob
            && (g.is_empty() || g.contains('/'))
        {
            return Err(bad("glob is a file-name pattern (no '/')".into()));
        }
        out.push(Watched {
            name,
            dir: l.dir.clone(),
            forced,
            glob: l.glob.clone(),
        });
    }
    let (rules, skipped) = match &cfg.sigma_dir {
        Some(d) => {
            let (rules, errors) = stormwall_cloudlogs::sigma::load_dir(d).map_err(|e| {
                LogsConfigError::Settings(format!("sigma_dir {}: {e}", d.display()))
            })?;
            (rules, errors.iter().map(|e| format!("{e}")).collect())
        }
        None => (Vec::new(), Vec::new()),
    };
    Ok((out, rules, skipped))
}

/// Whether a file name matches a pattern of `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// How a file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Not known yet (empty, or one unterminated line).
    #[default]
    Unknown,
    /// JSON lines, read as they grow.
    Lines,
    /// One container, read when complete.
    Whole,
}

/// How to read a file, from its first bytes (up to the first newline at least).
pub fn mode_of(prefix: &[u8]) -> Mode {
    if stormwall_cloudlogs::container::is_gzip(prefix) {
        return Mode::Whole;
    }
    let p = prefix.strip_prefix(b"\xef\xbb\xbf").unwrap_or(prefix);
    let Some(start) = p.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Mode::Unknown;
    };
    match p[start] {
        b'[' => Mode::Whole,
        b'{' => {
            let Some(nl) = memchr::memchr(b'\n', &p[start..]) else {
                return Mode::Unknown;
            };
            match serde_json::from_slice::<serde_json::Value>(&p[start..start + nl]) {
                Ok(serde_json::Value::Object(o))
                    if ["Records", "records", "data", "value"]
                        .iter()
                        .any(|k| o.get(*k).is_some_and(serde_json::Value::is_array)) =>
                {
                    Mode::Whole
                }
                Ok(_) => Mode::Lines,
                // A first line that is not a whole value: one pretty-printed document.
                Err(_) => Mode::Whole,
            }
        }
        _ => Mode::Lines,
    }
}

/// Where reading one file stands. Saved in the checkpoint.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct FileCursor {
    /// The `[[logs]]` source.
    pub source: String,
    /// Path when last seen.
    pub path: PathBuf,
    /// Device and inode: the file's identity across renames.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Bytes judged.
    pub offset: u64,
    /// Lines before `offset`.
    pub line: usize,
    /// Fingerprint of the first `head_len` bytes (tells a new file reusing an inode).
    pub head: u64,
    /// Bytes the fingerprint covers.
    pub head_len: u32,
    /// How the file is read.
    pub mode: Mode,
    /// A whole-file container was read.
    pub done: bool,
    /// Size when last seen.
    pub size: u64,
    /// Modification time when last seen (nanoseconds).
    pub mtime: i128,
    /// Wall-clock second the size or time last changed.
    pub changed_at: i64,
    /// Inside an over-long line: skip to the next newline.
    #[serde(default)]
    pub skipping: bool,
}

impl FileCursor {
    fn restart(&mut self) {
        self.offset = 0;
        self.line = 0;
        self.head = 0;
        self.head_len = 0;
        self.mode = Mode::Unknown;
        self.done = false;
        self.skipping = false;
    }
}

/// One file in a folder listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// Path.
    pub path: PathBuf,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (nanoseconds).
    pub mtime: i128,
    /// Whether its name matches the source's pattern.
    pub matches: bool,
}

/// Brings one source's cursors in line with a listing of its folder: deleted files are
/// forgotten, renamed ones keep their cursor, new matching files get one. Returns the
/// indices (into `cursors`) of files to read now: changed, new, or waiting to settle.
pub fn reconcile(
    cursors: &mut Vec<FileCursor>,
    source: &str,
    listed: &[Listed],
    now: i64,
    settle_secs: u64,
) -> Vec<usize> {
    cursors
        .retain(|c| c.source != source || listed.iter().any(|l| l.dev == c.dev && l.ino == c.ino));
    let mut todo = Vec::new();
    for l in listed {
        let found = cursors
            .iter()
            .position(|c| c.source == source && c.dev == l.dev && c.ino == l.ino);
        let i = match found {
            Some(i) => i,
            None if l.matches => {
                cursors.push(FileCursor {
                    source: source.to_owned(),
                    path: l.path.clone(),
                    dev: l.dev,
                    ino: l.ino,
                    size: u64::MAX,
                    changed_at: now,
                    ..FileCursor::default()
                });
                cursors.len() - 1
            }
            None => continue,
        };
        let c = &mut cursors[i];
        c.path.clone_from(&l.path);
        if c.size != l.size || c.mtime != l.mtime {
            c.size = l.size;
            c.mtime = l.mtime;
            c.changed_at = now;
            todo.push(i);
        } else if waiting(c) && now - c.changed_at >= i64::try_from(settle_secs).unwrap_or(0) {
            todo.push(i);
        }
    }
    todo
}

/// Whether a file has bytes not judged yet that only settling will release.
fn waiting(c: &FileCursor) -> bool {
    match c.mode {
        Mode::Whole => !c.done,
        Mode::Lines | Mode::Unknown => c.offset < c.size,
    }
}

/// Takes the complete lines of `chunk` (the file's bytes from the cursor's offset) and
/// advances the cursor past them: `f(line, text)` for each non-empty line, `bad(line,
/// why)` for an over-long one. A last line without a newline waits, unless `settled` (the
/// file stopped changing). Returns the bytes consumed.
pub fn take_lines(
    c: &mut FileCursor,
    chunk: &[u8],
    settled: bool,
    max_line: usize,
    f: &mut dyn FnMut(usize, &str),
    bad: &mut dyn FnMut(usize, String),
) -> usize {
    let mut pos = 0;
    while pos < chunk.len() {
        let rest = &chunk[pos..];
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(nl) => (&rest[..nl], pos + nl + 1),
            None if settled || rest.len() > max_line => (rest, chunk.len()),
            None => break,
        };
        let skipping = std::mem::take(&mut c.skipping);
        c.line += 1;
        if line.len() > max_line {
            if !skipping {
                bad(
                    c.line,
                    format!("line longer than {max_line} bytes; skipped"),
                );
            }
            // An over-long line without its newline yet: skip the rest when it comes.
            c.skipping = next == chunk.len() && !chunk.ends_with(b"\n") && !settled;
            if c.skipping {
                c.line -= 1;
            }
        } else if !skipping {
            let text = String::from_utf8_lossy(line);
            let t = text.trim();
            if !t.is_empty() {
                f(c.line, t);
            }
        }
        c.offset += (next - pos) as u64;
        pos = next;
    }
    pos
}

/// FNV-1a over a file's first bytes.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Bytes the fingerprint covers at most.
const HEAD: usize = 256;
/// Most bytes read from one file per read call.
const CHUNK: usize = 8 * 1024 * 1024;
/// Most bytes read per poll over all files (the rest waits for the next, immediate, poll).
const POLL_BUDGET: u64 = 64 * 1024 * 1024;
/// Bad records logged one by one per poll (all are counted).
const LOGGED_BAD: usize = 20;
/// Event-time seconds an audit recommendation for one principal is not repeated.
const RECOMMEND_EVERY: i64 = 86_400;
/// Checkpoint format version.
const VERSION: u32 = 1;

/// Counters of one source, read by `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// `[[logs]]` name.
    pub name: String,
    /// Records parsed.
    pub records: AtomicU64,
    /// Bad records.
    pub bad: AtomicU64,
    /// Files followed.
    pub files: AtomicU64,
    /// Bytes in followed files not judged yet.
    pub pending_bytes: AtomicU64,
    /// Newest event time read (unix seconds; 0: none yet).
    pub newest: AtomicI64,
    /// Alerts raised on its records.
    pub alerts: AtomicU64,
    /// Usage events written to the event store.
    pub stored: AtomicU64,
    /// Control events (management calls) written to the control-event store.
    pub control_stored: AtomicU64,
    /// This replica holds the source's lease (follows it).
    pub held: std::sync::atomic::AtomicBool,
    /// The lease's holder as last seen (this replica's name when it holds it; empty
    /// before the first look).
    pub holder: std::sync::Mutex<String>,
}

impl SourceStats {
    /// The lease's holder as last seen.
    pub fn holder(&self) -> String {
        self.holder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Seconds between now and the newest event read (0 before the first).
    pub fn lag_seconds(&self) -> i64 {
        match self.newest.load(Ordering::Relaxed) {
            0 => 0,
            t => (OffsetDateTime::now_utc().unix_timestamp() - t).max(0),
        }
    }
}

/// Every source's counters.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// Per source, in configuration order.
    pub sources: Vec<SourceStats>,
    /// This replica's name as a lease holder.
    pub replica: String,
}

impl FollowStats {
    /// One line per source for `/readyz`.
    pub fn readyz(&self) -> String {
        let mut s = String::new();
        for x in &self.sources {
            if !x.held.load(Ordering::Relaxed) {
                let holder = x.holder();
                let who = if holder.is_empty() {
                    "nobody yet"
                } else {
                    holder.as_str()
                };
                s.push_str(&format!(
                    "cloud logs {}: followed by {who}, not this replica ({})\n",
                    x.name, self.replica
                ));
                continue;
            }
            s.push_str(&format!(
                "cloud logs {}: followed by this replica ({}), {} files, {} records, {} bad, \
                 {} bytes pending, lag {}s\n",
                x.name,
                self.replica,
                x.files.load(Ordering::Relaxed),
                x.records.load(Ordering::Relaxed),
                x.bad.load(Ordering::Relaxed),
                x.pending_bytes.load(Ordering::Relaxed),
                x.lag_seconds()
            ));
        }
        s
    }
}

/// The checkpoint file's content.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    version: u32,
    files: Vec<FileCursor>,
    run: Snapshot,
    /// Principal label → event time of its last audited recommendation.
    #[serde(default)]
    recommended: BTreeMap<String, i64>,
    /// Names this saved detector state (the one handed over with the leases too).
    #[serde(default)]
    run_id: String,
}

/// What a holder leaves with a source's lease for the next holder (the lease's `state`).
/// Earlier versions left only the cursors, as a JSON array; that is still read.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Handed {
    /// The source's file cursors.
    files: Vec<FileCursor>,
    /// The detectors' state ([`HandedRun`], JSON, gzip, base64), with one held source's
    /// lease only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<String>,
    /// The lease whose state carries `run`, on the holder's other sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_with: Option<String>,
    /// Names the state `run` (or `run_with`'s) holds: the holder's last checkpoint's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_id: Option<String>,
}

impl Handed {
    /// Reads a lease's state in either format.
    fn parse(text: &str) -> Result<Self, serde_json::Error> {
        if text.trim_start().starts_with('[') {
            return Ok(Self {
                files: serde_json::from_str(text)?,
                ..Self::default()
            });
        }
        serde_json::from_str(text)
    }
}

/// The detectors' state handed over with a lease: the run (baselines, the LLMjacking
/// preamble's progress, recent event ids) and the audited recommendations.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct HandedRun {
    snapshot: Snapshot,
    recommended: BTreeMap<String, i64>,
}

fn encode_run(run: &HandedRun) -> std::io::Result<String> {
    use base64::Engine as _;
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    serde_json::to_writer(&mut gz, run).map_err(std::io::Error::other)?;
    gz.flush()?;
    Ok(base64::engine::general_purpose::STANDARD.encode(gz.finish()?))
}

fn decode_run(text: &str) -> std::io::Result<HandedRun> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(std::io::Error::other)?;
    serde_json::from_reader(flate2::read::GzDecoder::new(&bytes[..])).map_err(std::io::Error::other)
}

/// Why the follower cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The checkpoint file exists but cannot be read.
    #[error("cannot read the cloud-logs checkpoint {path}: {why}")]
    Checkpoint {
        /// Its path.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// One alert ready for the store, with its recommendation.
#[derive(Debug)]
pub struct Outgoing {
    /// The alert (a `recommended_command` subject added when there is one).
    pub finding: Finding,
    /// Index of the source whose record raised it.
    pub source: usize,
    /// The recommendation is due in the audit log (once a day per principal).
    pub audit: bool,
}

/// What one poll gave.
#[derive(Debug, Default)]
pub struct Polled {
    /// Alerts to store.
    pub out: Vec<Outgoing>,
    /// Records for the store (with the index of their source), judged or already judged
    /// before: a store write is idempotent by event id.
    pub records: Pending,
    /// The poll stopped at its byte budget: poll again at once.
    pub more: bool,
    /// Some cursor moved (a checkpoint is due).
    pub consumed: bool,
}

/// Records read but not stored yet, each with the index of its source.
#[derive(Debug, Default)]
pub struct Pending {
    /// Data-plane calls, for the event store.
    pub events: Vec<(UsageEvent, usize)>,
    /// Management calls, for the control-event store.
    pub controls: Vec<(ControlEvent, usize)>,
}

impl Pending {
    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.controls.is_empty()
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.events.len() + self.controls.len()
    }

    fn extend(&mut self, other: Pending) {
        self.events.extend(other.events);
        self.controls.extend(other.controls);
    }
}

/// What one record or match becomes before judging.
// Not boxed: items are judged and dropped within one poll; a box per record costs more.
#[allow(clippy::large_enum_variant)]
enum Item {
    Record(Record),
    Sigma(Alert),
}

/// Where this replica stands with one source's lease.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    /// The lease's term when this replica last renewed it (0: never held).
    term: u64,
    /// Held until then (this replica's clock, counted from before the renewal was sent,
    /// less a margin); `None`: not held.
    until: Option<std::time::Instant>,
}

/// The lease name of a `[[logs]]` source in the store.
pub fn lease_name(source: &str) -> String {
    format!("cloud-logs:{source}")
}

/// This process's name as a lease holder: host name (the pod's, in Kubernetes), process
/// id and a random suffix, so a restarted process is a new holder.
pub fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".to_owned());
    let mut r = [0u8; 3];
    let _ = getrandom::fill(&mut r);
    format!(
        "{host}:{}:{:02x}{:02x}{:02x}",
        std::process::id(),
        r[0],
        r[1],
        r[2]
    )
}

/// The follower: sources, cursors and the detectors; all file I/O happens here.
pub struct Follower {
    replica: String,
    held: Vec<Held>,
    sources: Vec<Watched>,
    rules: Vec<Rule>,
    cfg: CloudLogsConfig,
    state_file: PathBuf,
    cursors: Vec<FileCursor>,
    run: CloudRun,
    /// What a detector state handed over with a lease is resumed with.
    engine: EngineConfig,
    /// Names the detector state as last saved or adopted, so a replica does not adopt its
    /// own state back from a lease (a restart, a lease retaken).
    run_id: String,
    recommended: BTreeMap<String, i64>,
    intel: Option<Arc<stormwall_ipintel::SharedIpIntel>>,
    stats: Arc<FollowStats>,
}

impl Follower {
    /// Opens the follower, resuming from the checkpoint when there is one (the engine
    /// replays the events it kept; this may take a moment on a large state).
    pub fn open(
        sources: Vec<Watched>,
        rules: Vec<Rule>,
        cfg: CloudLogsConfig,
        engine: EngineConfig,
        intel: Option<Arc<stormwall_ipintel::SharedIpIntel>>,
    ) -> Result<Self, FollowError> {
        let state_file = cfg
            .state_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("stormwall-cloud-logs.json"));
        let cp = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice::<Checkpoint>(&bytes).map_err(|e| {
                FollowError::Checkpoint {
                    path: state_file.clone(),
                    why: e.to_string(),
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint::default(),
            Err(e) => {
                return Err(FollowError::Checkpoint {
                    path: state_file.clone(),
                    why: e.to_string(),
                });
            }
        };
        let run = if cp.version == VERSION {
            CloudRun::resume(engine.clone(), cp.run)
        } else {
            CloudRun::new(engine.clone())
        };
        let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        let mut cursors = cp.files;
        cursors.retain(|c| names.contains(&c.source.as_str()));
        let replica = replica_name();
        let stats = Arc::new(FollowStats {
            replica: replica.clone(),
            sources: sources
                .iter()
                .map(|s| SourceStats {
                    name: s.name.clone(),
                    ..SourceStats::default()
                })
                .collect(),
        });
        Ok(Self {
            replica,
            held: vec![Held::default(); sources.len()],
            sources,
            rules,
            cfg,
            state_file,
            cursors,
            run,
            engine,
            run_id: cp.run_id,
            recommended: cp.recommended,
            intel,
            stats,
        })
    }

    /// The counters `/metrics` and `/readyz` read.
    pub fn stats(&self) -> Arc<FollowStats> {
        Arc::clone(&self.stats)
    }

    /// This replica's name as a lease holder.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether this replica holds source `si`'s lease now.
    fn holds(&self, si: usize) -> bool {
        self.held
            .get(si)
            .and_then(|h| h.until)
            .is_some_and(|u| u > std::time::Instant::now())
    }

    /// What is handed over with each held source's lease: its cursors, and the detectors'
    /// state — in full with the first held source's lease, by reference with the others'.
    fn handover_texts(&self) -> Vec<(usize, String)> {
        let held: Vec<usize> = (0..self.sources.len())
            .filter(|&si| self.holds(si))
            .collect();
        let Some(&first) = held.first() else {
            return Vec::new();
        };
        let run = match encode_run(&HandedRun {
            snapshot: self.run.snapshot(),
            recommended: self.recommended.clone(),
        }) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "cloud logs: cannot encode the detector state for hand-over; handing over cursors only");
                None
            }
        };
        let first_lease = lease_name(&self.sources[first].name);
        held.into_iter()
            .filter_map(|si| {
                let name = &self.sources[si].name;
                let handed = Handed {
                    files: self
                        .cursors
                        .iter()
                        .filter(|c| &c.source == name)
                        .cloned()
                        .collect(),
                    run: if si == first { run.clone() } else { None },
                    run_with: (si != first && run.is_some()).then(|| first_lease.clone()),
                    run_id: run.is_some().then(|| self.run_id.clone()),
                };
                Some((si, serde_json::to_string(&handed).ok()?))
            })
            .collect()
    }

    /// Whether this replica follows any source now.
    fn follows_any(&self) -> bool {
        (0..self.sources.len()).any(|si| self.holds(si))
    }

    /// Continues from the detector state a previous holder handed over (replacing this
    /// replica's, which follows nothing else); audited recommendations are merged.
    fn adopt_run(&mut self, run: CloudRun, recommended: BTreeMap<String, i64>, id: String) {
        self.run = run;
        self.run_id = id;
        for (p, t) in recommended {
            let e = self.recommended.entry(p).or_insert(t);
            *e = (*e).max(t);
        }
    }

    /// Continues source `si` from cursors its previous holder handed over (replacing this
    /// replica's own, which are older).
    fn adopt(&mut self, si: usize, handed: Vec<FileCursor>) {
        let Some(name) = self.sources.get(si).map(|s| s.name.clone()) else {
            return;
        };
        self.cursors.retain(|c| c.source != name);
        self.cursors
            .extend(handed.into_iter().filter(|c| c.source == name));
    }

    /// Saves the cursors and the detectors' state (to `FILE.tmp`, then renamed), under a
    /// new state id (the leases' hand-over that follows carries the same).
    pub fn checkpoint(&mut self) -> std::io::Result<()> {
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        self.run_id = r.iter().map(|b| format!("{b:02x}")).collect();
        let cp = Checkpoint {
            version: VERSION,
            files: self.cursors.clone(),
            run: self.run.snapshot(),
            recommended: self.recommended.clone(),
            run_id: self.run_id.clone(),
        };
        let bytes = serde_json::to_vec(&cp).map_err(std::io::Error::other)?;
        let mut tmp = self.state_file.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &self.state_file)
    }

    /// Reads what is new in every folder and judges it.
    pub fn poll(&mut self) -> Polled {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut items: Vec<(Item, usize)> = Vec::new();
        let mut budget = POLL_BUDGET;
        let mut logged = 0usize;
        let mut consumed = false;
        for si in 0..self.sources.len() {
            let held = self.holds(si);
            self.stats.sources[si].held.store(held, Ordering::Relaxed);
            if !held {
                // Another replica follows it (or none may yet: the store did not answer).
                continue;
            }
            let src = self.sources[si].clone();
            let listed = list(&src);
            let todo = reconcile(
                &mut self.cursors,
                &src.name,
                &listed,
                now,
                self.cfg.settle_secs,
            );
            for i in todo {
                if budget == 0 {
                    break;
                }
                let settled = now - self.cursors[i].changed_at
                    >= i64::try_from(self.cfg.settle_secs).unwrap_or(0);
                let mut bad = Vec::new();
                let read = read_file(
                    &mut self.cursors[i],
                    &src,
                    &self.rules,
                    &self.cfg,
                    settled,
                    budget,
                    &mut |item| items.push((item, si)),
                    &mut bad,
                );
                budget = budget.saturating_sub(read);
                consumed |= read > 0;
                let st = &self.stats.sources[si];
                st.bad.fetch_add(bad.len() as u64, Ordering::Relaxed);
                for b in bad {
                    if logged < LOGGED_BAD {
                        tracing::warn!(source = %src.name, bad_record = %b, "cloud logs: bad record");
                    }
                    logged += 1;
                }
            }
            let st = &self.stats.sources[si];
            let mine = self.cursors.iter().filter(|c| c.source == src.name);
            st.files
                .store(mine.clone().count() as u64, Ordering::Relaxed);
            st.pending_bytes.store(
                mine.map(|c| c.size.saturating_sub(c.offset)).sum(),
                Ordering::Relaxed,
            );
        }
        if logged > LOGGED_BAD {
            tracing::warn!(
                more = logged - LOGGED_BAD,
                "cloud logs: more bad records (counted in metrics)"
            );
        }
        let (out, records) = self.judge(items);
        Polled {
            out,
            records,
            more: budget == 0,
            consumed,
        }
    }

    fn judge(&mut self, mut items: Vec<(Item, usize)>) -> (Vec<Outgoing>, Pending) {
        let time = |i: &Item| match i {
            Item::Record(r) => r.timestamp(),
            Item::Sigma(a) => a.at,
        };
        // Stable: a Sigma match stays before the record it is on.
        items.sort_by_key(|(i, _)| time(i));
        let mut out = Vec::new();
        let mut records = Pending::default();
        let mut findings = Vec::new();
        // Records of a re-read container judged before: their matches were reported then.
        let mut again = std::collections::HashSet::new();
        for (item, si) in items {
            findings.clear();
            let st = &self.stats.sources[si];
            if let Item::Record(r) = &item
                && self.run.judged(r.id())
            {
                again.insert(r.id().to_owned());
            }
            match item {
                Item::Record(Record::Usage(mut e)) => {
                    st.records.fetch_add(1, Ordering::Relaxed);
                    st.newest
                        .fetch_max(e.timestamp.unix_timestamp(), Ordering::Relaxed);
                    if let Some(intel) = &self.intel {
                        enrich(&mut e, intel);
                    }
                    records.events.push((e.clone(), si));
                    self.run.observe_usage(e, &mut findings);
                }
                Item::Record(Record::Control(c)) => {
                    st.records.fetch_add(1, Ordering::Relaxed);
                    st.newest
                        .fetch_max(c.timestamp.unix_timestamp(), Ordering::Relaxed);
                    self.run.observe_control(&c, &mut findings);
                    records.controls.push((c, si));
                }
                Item::Sigma(a) => {
                    if a.evidence.first().is_some_and(|id| again.contains(id)) {
                        continue;
                    }
                    self.run.observe_alert(a, &mut findings);
                }
            }
            st.alerts
                .fetch_add(findings.len() as u64, Ordering::Relaxed);
            for mut f in findings.drain(..) {
                let mut audit = false;
                if let Some(r) = &f.recommendation {
                    f.alert.subjects.push(AlertSubject {
                        kind: "recommended_command".to_owned(),
                        value: r.command.clone(),
                    });
                    audit = self.recommend_due(&r.principal, f.alert.at);
                }
                out.push(Outgoing {
                    finding: f,
                    source: si,
                    audit,
                });
            }
        }
        (out, records)
    }

    /// Whether a recommendation for this principal is due in the audit log (once a day of
    /// event time per principal); notes it as made.
    pub fn recommend_due(&mut self, principal: &str, at: OffsetDateTime) -> bool {
        let t = at.unix_timestamp();
        if self
            .recommended
            .get(principal)
            .is_some_and(|last| t - last < RECOMMEND_EVERY)
        {
            return false;
        }
        self.recommended.insert(principal.to_owned(), t);
        if self.recommended.len() > 100_000 {
            let horizon = t - RECOMMEND_EVERY;
            self.recommended.retain(|_, v| *v >= horizon);
        }
        true
    }
}

/// Adds the client network's ASN and country (cloud logs carry only addresses), unless the
/// source masked the address.
fn enrich(e: &mut UsageEvent, intel: &stormwall_ipintel::SharedIpIntel) {
    if e.cloud.as_deref().is_some_and(|c| c.ip_missing)
        || (e.source_asn.is_some() && e.source_country.is_some())
    {
        return;
    }
    let net = intel.network(e.source_ip);
    if e.source_asn.is_none() {
        e.source_asn = net.asn;
        if e.source_as_org.is_none() {
            e.source_as_org = net.as_org.map(|s| s.to_string());
        }
    }
    if e.source_country.is_none() {
        e.source_country = net.country.map(|c| c.as_str().to_owned());
    }
}

/// Every file under a source's folder (recursively, hidden entries skipped). An unreadable
/// folder lists nothing (logged once per poll at debug level).
fn list(src: &Watched) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut stack = vec![src.dir.clone()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(dir = %d.display(), error = %e, "cloud logs: cannot list");
                continue;
            }
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
                continue;
            }
            if !m.is_file() {
                continue;
            }
            let (dev, ino) = identity(&m, &e.path());
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128);
            out.push(Listed {
                path: e.path(),
                dev,
                ino,
                size: m.len(),
                mtime,
                matches: src.glob.as_deref().is_none_or(|g| glob_match(g, &name)),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(unix)]
fn identity(m: &std::fs::Metadata, _path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn identity(_m: &std::fs::Metadata, path: &Path) -> (u64, u64) {
    // Without inodes a file is its path: a rename reads as a new file.
    (0, fingerprint(path.to_string_lossy().as_bytes()))
}

fn read_at(f: &mut std::fs::File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len.min(CHUNK));
    f.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Reads what is new in one file; returns the bytes read.
#[allow(clippy::too_many_arguments)]
fn read_file(
    c: &mut FileCursor,
    src: &Watched,
    rules: &[Rule],
    cfg: &CloudLogsConfig,
    settled: bool,
    budget: u64,
    emit: &mut dyn FnMut(Item),
    bad: &mut Vec<String>,
) -> u64 {
    let file_name = c.path.display().to_string();
    let mut f = match std::fs::File::open(&c.path) {
        Ok(f) => f,
        // Gone between the listing and now: the next listing forgets it.
        Err(_) => return 0,
    };
    // The same file as before? A new file reusing the inode, or a truncated one, starts over.
    if c.head_len > 0 {
        let head = read_at(&mut f, 0, c.head_len as usize).unwrap_or_default();
        if head.len() < c.head_len as usize || fingerprint(&head) != c.head || c.size < c.offset {
            c.restart();
        }
    } else if c.size < c.offset {
        c.restart();
    }
    if c.mode == Mode::Whole && c.done {
        // A container that changed after it was read: read it again (events already
        // judged are skipped by their ids).
        c.restart();
    }
    if c.head_len == 0 {
        let head = read_at(&mut f, 0, HEAD).unwrap_or_default();
        if !head.is_empty() {
            c.head = fingerprint(&head);
            c.head_len = head.len() as u32;
        }
    }
    if c.mode == Mode::Unknown {
        let prefix = read_at(&mut f, 0, 1024 * 1024).unwrap_or_default();
        c.mode = match mode_of(&prefix) {
            Mode::Unknown if settled && !prefix.iter().all(u8::is_ascii_whitespace) => Mode::Whole,
            m => m,
        };
    }
    let mut long = Vec::new();
    let mut one = |line: usize, text: &str| {
        judge_text(src, rules, &file_name, line, text, emit, bad);
    };
    match c.mode {
        Mode::Unknown => 0,
        Mode::Lines => {
            let mut read = 0u64;
            while c.offset < c.size && read < budget {
                let want = usize::try_from((c.size - c.offset).min(CHUNK as u64)).unwrap_or(CHUNK);
                let chunk = match read_at(&mut f, c.offset, want) {
                    Ok(b) if !b.is_empty() => b,
                    _ => break,
                };
                let last = c.offset + chunk.len() as u64 >= c.size;
                let mut bad_line = |line: usize, why: String| {
                    long.push(format!("{file_name}:{line}: {why}"));
                };
                let used = take_lines(
                    c,
                    &chunk,
                    settled && last,
                    cfg.max_line_bytes,
                    &mut one,
                    &mut bad_line,
                );
                read += chunk.len() as u64;
                if used == 0 {
                    // Only a partial line is left: it waits for its newline.
                    break;
                }
            }
            bad.append(&mut long);
            read
        }
        Mode::Whole => {
            if c.size > cfg.max_file_bytes {
                bad.push(format!(
                    "{file_name}:0: file larger than max_file_bytes ({}); skipped",
                    cfg.max_file_bytes
                ));
                c.done = true;
                c.offset = c.size;
                return 0;
            }
            let bytes = match read_at(&mut f, 0, usize::try_from(c.size).unwrap_or(usize::MAX)) {
                Ok(b) => b,
                Err(_) => return 0,
            };
            if !settled && !complete(&bytes) {
                // Still being written (or broken: reported once it stops changing).
                return 0;
            }
            let r = stormwall_cloudlogs::container::records(&bytes, &mut one);
            if let Err(e) = r {
                bad.push(format!(
                    "{file_name}:{}: unreadable file: {}",
                    e.line, e.message
                ));
            }
            c.done = true;
            c.offset = c.size;
            c.line = 1 + memchr::memchr_iter(b'\n', &bytes).count();
            bytes.len() as u64
        }
    }
}

/// Whether a whole-file container is complete: it decompresses and parses.
fn complete(bytes: &[u8]) -> bool {
    if stormwall_cloudlogs::container::is_gzip(bytes) {
        return stormwall_cloudlogs::container::gunzip(bytes).is_ok_and(|b| complete(&b));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// Parses one record's text into items: its events, and the Sigma rules it matches.
fn judge_text(
    src: &Watched,
    rules: &[Rule],
    file: &str,
    line: usize,
    text: &str,
    emit: &mut dyn FnMut(Item),
    bad: &mut Vec<String>,
) {
    let Some(source) = src.forced.or_else(|| stormwall_cloudlogs::sniff(text)) else {
        bad.push(format!(
            "{file}:{line}: {}",
            stormwall_cloudlogs::ParseError::Unrecognised
        ));
        return;
    };
    let mut records = match stormwall_cloudlogs::parse_record(source, text) {
        Ok(r) => r,
        Err(e) => {
            bad.push(format!("{file}:{line}: {e}"));
            Vec::new()
        }
    };
    records.iter_mut().for_each(namespace);
    let mut matched = Vec::new();
    if rules.iter().any(|r| r.sources.contains(&source))
        && let Ok(value) = serde_json::from_str::<serde_json::Value>(text)
    {
        let first = records.first();
        for r in rules.iter().filter(|r| r.matches(source, &value, text)) {
            let m = MatchedAt {
                source,
                file,
                line,
                at: first.map_or_else(OffsetDateTime::now_utc, Record::timestamp),
            };
            matched.push(r.alert(m, first));
        }
    }
    // The record before its matches (stable sort): its event names the principal fully.
    for r in records {
        emit(Item::Record(r));
    }
    for a in matched {
        emit(Item::Sigma(a));
    }
}

/// Gives a record the id it is judged and stored under: its dataset, then its own id (the
/// vendor's event id, or one derived from the record's text). The same record read again —
/// after a restart without a checkpoint, or by another replica — is the same event, and
/// two sources' ids never meet each other's or the gateway's.
pub fn namespace(r: &mut Record) {
    let (dataset, id) = match r {
        Record::Usage(e) => (&e.dataset, &mut e.id),
        Record::Control(c) => (&c.dataset, &mut c.id),
    };
    *id = format!("{dataset}:{id}");
}

/// Usage or control events written to the store per batch.
const STORE_BATCH: usize = 1_000;

/// Runs the follower until shutdown: polls, writes the usage events to the event store
/// (where investigation and the console read them) and the control events to the
/// control-event store (`/admin/control-events`), sends alerts to the detection task,
/// records recommendations in the audit log, checkpoints. A checkpoint is written only
/// once every event it covers is stored: while the store refuses writes, no more is read,
/// and a restart reads again from the last checkpoint (ids make the writes idempotent).
/// Returns after a last checkpoint.
#[allow(clippy::disallowed_methods)] // background task owned by RunningGateway, not the request path
pub fn spawn(
    state: Arc<ControlPlane>,
    follower: Follower,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let poll_every = Duration::from_millis(follower.cfg.poll_ms.max(100));
        let checkpoint_every = Duration::from_secs(follower.cfg.checkpoint_secs);
        let ttl = Duration::from_secs(follower.cfg.lease_secs.max(2));
        let names: Vec<String> = follower.sources.iter().map(|s| s.name.clone()).collect();
        let stats = follower.stats();
        let follower = Arc::new(std::sync::Mutex::new(follower));
        let mut dirty = false;
        let mut last_checkpoint = tokio::time::Instant::now();
        let mut last_lease: Option<tokio::time::Instant> = None;
        let mut again = false;
        let mut pending = Pending::default();
        loop {
            if !again {
                tokio::select! {
                    _ = tokio::time::sleep(poll_every) => {}
                    _ = shutdown.changed() => break,
                }
            }
            if last_lease.is_none_or(|t| t.elapsed() >= ttl / 3) {
                // Renewed every third of the lease: the holder keeps it while it runs, and
                // another replica takes over within a lease and a third once it stops.
                lease_round(&state, &follower, ttl).await;
                last_lease = Some(tokio::time::Instant::now());
            }
            if !store_events(&state, &stats, &mut pending).await {
                // The store refuses writes: read nothing more until it takes these.
                again = false;
                continue;
            }
            let f = Arc::clone(&follower);
            let polled = tokio::task::spawn_blocking(move || {
                f.lock().unwrap_or_else(|e| e.into_inner()).poll()
            })
            .await;
            let Ok(polled) = polled else {
                tracing::error!("cloud logs: a poll failed; follow mode stopped");
                return;
            };
            again = polled.more;
            let alerted = !polled.out.is_empty();
            dirty |= polled.consumed;
            pending.extend(polled.records);
            let stored = store_events(&state, &stats, &mut pending).await;
            for o in polled.out {
                deliver(&state, &names, o).await;
            }
            if stored && dirty && (alerted || last_checkpoint.elapsed() >= checkpoint_every) {
                checkpoint(&follower).await;
                hand_over(&state, &follower).await;
                dirty = false;
                last_checkpoint = tokio::time::Instant::now();
            }
        }
        if store_events(&state, &stats, &mut pending).await {
            checkpoint(&follower).await;
            hand_over(&state, &follower).await;
            release(&state, &follower).await;
        } else {
            tracing::warn!(
                events = pending.len(),
                "cloud logs: the event store refused the last events; not checkpointing, \
                 they are read again at the next start"
            );
        }
    })
}

/// Takes, renews or learns the holder of every source's lease. A source this replica takes
/// (or takes back after another held it) continues from the cursors its last holder saved
/// with the lease; with none saved (the first holder ever) it keeps its own.
async fn lease_round(
    state: &ControlPlane,
    follower: &Arc<std::sync::Mutex<Follower>>,
    ttl: Duration,
) {
    let lock = || {
        follower
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let (replica, names, stats, following) = {
        let f = lock();
        let names: Vec<String> = f.sources.iter().map(|s| s.name.clone()).collect();
        (f.replica.clone(), names, f.stats(), f.follows_any())
    };
    // A replica that followed nothing continues the detector state handed over with the
    // first source it takes; one already following keeps its own (its baselines are of
    // the sources it follows).
    let mut may_adopt = !following;
    for (si, name) in names.iter().enumerate() {
        let key = lease_name(name);
        let sent = std::time::Instant::now();
        let lease = match state.store.acquire_lease(&key, &replica, ttl).await {
            Ok(l) => l,
            Err(e) => {
                // Held until the last renewal's deadline; then this replica stops reading.
                tracing::warn!(source = %name, error = %e, "cloud logs: cannot renew the lease");
                continue;
            }
        };
        let st = &stats.sources[si];
        *st.holder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = lease.holder.clone();
        if !lease.held_by(&replica) {
            let mut f = lock();
            if f.held[si].until.is_some() {
                tracing::warn!(source = %name, holder = %lease.holder, "cloud logs: another replica follows this source now");
            }
            f.held[si].until = None;
            st.held.store(false, Ordering::Relaxed);
            continue;
        }
        let known = lock().held[si].term;
        if known != lease.term {
            let handed = match state.store.lease_state(&key).await {
                Ok(Some(text)) => match Handed::parse(&text) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::warn!(source = %name, error = %e, "cloud logs: the handed-over cursors are unreadable; continuing from this replica's own");
                        None
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "cloud logs: cannot read the handed-over cursors; retrying");
                    continue;
                }
            };
            if let Some(h) = handed {
                let (run, run_with, run_id) = (h.run, h.run_with, h.run_id);
                lock().adopt(si, h.files);
                if may_adopt && run_id.as_ref().is_some_and(|id| *id != lock().run_id) {
                    may_adopt =
                        !adopt_handed_run(state, follower, name, run, run_with, run_id).await;
                }
            }
            tracing::info!(source = %name, replica = %replica, term = lease.term, "cloud logs: this replica follows the source");
        }
        let mut f = lock();
        // A tenth of the lease as margin for the request's time and clock rates.
        f.held[si] = Held {
            term: lease.term,
            until: Some(sent + ttl - ttl / 10),
        };
        st.held.store(true, Ordering::Relaxed);
    }
}

/// Resumes the detector state a source's previous holder handed over (`run`, or the state
/// of the lease `run_with` names) and makes it this replica's; whether it did.
#[allow(clippy::disallowed_methods)] // awaited; decoding and replaying the state is CPU work
async fn adopt_handed_run(
    state: &ControlPlane,
    follower: &Arc<std::sync::Mutex<Follower>>,
    source: &str,
    run: Option<String>,
    run_with: Option<String>,
    run_id: Option<String>,
) -> bool {
    let text = match (run, run_with) {
        (Some(t), _) => t,
        (None, Some(other)) => match state.store.lease_state(&other).await {
            Ok(Some(t)) => match Handed::parse(&t) {
                // Only the state the reference was written beside (the other lease's
                // holder may have saved a newer one since: its own, not this source's).
                Ok(h) if h.run_id == run_id => match h.run {
                    Some(r) => r,
                    None => return false,
                },
                _ => return false,
            },
            _ => return false,
        },
        (None, None) => return false,
    };
    let engine = follower
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .engine
        .clone();
    let resumed = tokio::task::spawn_blocking(move || {
        decode_run(&text).map(|h| (CloudRun::resume(engine, h.snapshot), h.recommended))
    })
    .await;
    match resumed {
        Ok(Ok((run, recommended))) => {
            follower
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .adopt_run(run, recommended, run_id.unwrap_or_default());
            tracing::info!(source = %source, "cloud logs: continuing the detector state handed over with the lease");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(source = %source, error = %e, "cloud logs: the handed-over detector state is unreadable; keeping this replica's own");
            false
        }
        Err(e) => {
            tracing::warn!(source = %source, error = %e, "cloud logs: resuming the handed-over detector state failed; keeping this replica's own");
            false
        }
    }
}

/// Saves each held source's cursors with its lease for the next holder, and the
/// detectors' state (with the first held source's lease); a source whose lease was lost
/// meanwhile is no longer followed.
#[allow(clippy::disallowed_methods)] // awaited; encoding the state is CPU work
async fn hand_over(state: &ControlPlane, follower: &Arc<std::sync::Mutex<Follower>>) {
    let lock = || {
        follower
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let f = Arc::clone(follower);
    let Ok((replica, todo)) = tokio::task::spawn_blocking(move || {
        let f = f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let todo: Vec<(usize, String, String)> = f
            .handover_texts()
            .into_iter()
            .map(|(si, text)| (si, lease_name(&f.sources[si].name), text))
            .collect();
        (f.replica.clone(), todo)
    })
    .await
    else {
        tracing::error!("cloud logs: preparing the hand-over failed");
        return;
    };
    for (si, key, text) in todo {
        match state.store.save_lease_state(&key, &replica, &text).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(lease = %key, "cloud logs: the lease was lost; another replica takes the source over");
                let mut f = lock();
                f.held[si].until = None;
                f.stats.sources[si].held.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(lease = %key, error = %e, "cloud logs: cannot save the cursors with the lease")
            }
        }
    }
}

/// Gives up every held lease at shutdown, so another replica takes the sources at once.
async fn release(state: &ControlPlane, follower: &Arc<std::sync::Mutex<Follower>>) {
    let (replica, keys) = {
        let f = follower
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys: Vec<String> = (0..f.sources.len())
            .filter(|&si| f.holds(si))
            .map(|si| lease_name(&f.sources[si].name))
            .collect();
        (f.replica.clone(), keys)
    };
    for key in keys {
        if let Err(e) = state.store.release_lease(&key, &replica).await {
            tracing::warn!(lease = %key, error = %e, "cloud logs: cannot release the lease; it expires by itself");
        }
    }
}

/// Writes pending usage events to the event store and control events to the control-event
/// store, in batches; `false` (the rest kept) when the store refuses them.
async fn store_events(state: &ControlPlane, stats: &FollowStats, pending: &mut Pending) -> bool {
    while !pending.events.is_empty() {
        let events = &mut pending.events;
        let n = events.len().min(STORE_BATCH);
        let batch: Vec<UsageEvent> = events[..n].iter().map(|(e, _)| e.clone()).collect();
        if let Err(e) = state.store.insert_events(&batch).await {
            tracing::warn!(error = %e, events = events.len(), "cloud logs: cannot store events; retrying");
            return false;
        }
        for (_, si) in events.drain(..n) {
            if let Some(s) = stats.sources.get(si) {
                s.stored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    while !pending.controls.is_empty() {
        let controls = &mut pending.controls;
        let n = controls.len().min(STORE_BATCH);
        let batch: Vec<ControlEvent> = controls[..n].iter().map(|(e, _)| e.clone()).collect();
        if let Err(e) = state.store.insert_control_events(&batch).await {
            tracing::warn!(error = %e, events = controls.len(), "cloud logs: cannot store control events; retrying");
            return false;
        }
        for (_, si) in controls.drain(..n) {
            if let Some(s) = stats.sources.get(si) {
                s.control_stored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    true
}

#[allow(clippy::disallowed_methods)] // awaited; one file write the size of the saved state
async fn checkpoint(follower: &Arc<std::sync::Mutex<Follower>>) {
    let f = Arc::clone(follower);
    let r = tokio::task::spawn_blocking(move || {
        let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
        f.checkpoint().map_err(|e| (e, f.state_file.clone()))
    })
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err((e, path))) => {
            tracing::error!(error = %e, path = %path.display(), "cloud logs: cannot write the checkpoint");
        }
        Err(e) => tracing::error!(error = %e, "cloud logs: the checkpoint task failed"),
    }
}

/// Stores and announces one alert (through the detection task) and audits its
/// recommendation.
async fn deliver(state: &ControlPlane, names: &[String], o: Outgoing) {
    let Outgoing {
        finding,
        source,
        audit,
    } = o;
    let Finding {
        alert,
        action,
        recommendation,
    } = finding;
    if let Some(r) = recommendation.as_ref().filter(|_| audit) {
        super::audit::record(
            state,
            super::audit::DETECTION,
            "cloud.revoke_recommended",
            Some(&r.principal),
            alert.tenant.as_deref(),
            serde_json::json!({
                "alert_id": alert.id,
                "detector": alert.detector.as_str(),
                "severity": alert.severity.as_str(),
                "source": names.get(source),
                "policy_action": action.as_ref().map(|a| a.kind.as_str()),
                "command": r.command,
                "note": r.note,
            }),
        )
        .await;
    }
    match &state.detection {
        Some(d) => d.external(alert).await,
        None => {
            tracing::warn!(alert_id = %alert.id, "cloud logs: detection is off; alert not stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> FileCursor {
        FileCursor {
            source: "s".into(),
            mode: Mode::Lines,
            ..FileCursor::default()
        }
    }

    fn take(c: &mut FileCursor, chunk: &[u8], settled: bool) -> (Vec<(usize, String)>, Vec<usize>) {
        let (mut lines, mut bad) = (Vec::new(), Vec::new());
        take_lines(
            c,
            chunk,
            settled,
            16,
            &mut |l, t| lines.push((l, t.to_owned())),
            &mut |l, _| bad.push(l),
        );
        (lines, bad)
    }

    #[test]
    fn a_partial_last_line_waits_for_its_newline() {
        let mut c = cursor();
        let (lines, _) = take(&mut c, b"{\"a\":1}\n{\"a\":", false);
        assert_eq!(lines, vec![(1, "{\"a\":1}".to_owned())]);
        assert_eq!(c.offset, 8);
        // The rest arrives: read from the cursor on.
        let (lines, _) = take(&mut c, b"{\"a\":2}\r\n\n{\"a\":3}\n", false);
        assert_eq!(
            lines,
            vec![(2, "{\"a\":2}".to_owned()), (4, "{\"a\":3}".to_owned())]
        );
        assert_eq!(c.offset, 8 + 18);
        // A writer that ends without a newline: the line counts once the file settles.
        let (lines, _) = take(&mut c, b"{\"a\":4}", false);
        assert!(lines.is_empty());
        let (lines, _) = take(&mut c, b"{\"a\":4}", true);
        assert_eq!(lines, vec![(5, "{\"a\":4}".to_owned())]);
    }

    #[test]
    fn an_over_long_line_is_one_bad_record_and_skipped_to_its_end() {
        let mut c = cursor();
        let (lines, bad) = take(&mut c, b"0123456789abcdefXYZ", false);
        assert!(lines.is_empty());
        assert_eq!(bad, vec![1]);
        assert!(c.skipping);
        let (lines, bad) = take(&mut c, b"still the same line\n{\"ok\":1}\n", false);
        assert!(bad.is_empty(), "reported once");
        assert_eq!(lines, vec![(2, "{\"ok\":1}".to_owned())]);
    }

    #[test]
    fn the_first_bytes_say_how_a_file_is_read() {
        assert_eq!(mode_of(b""), Mode::Unknown);
        assert_eq!(mode_of(b"{\"a\":1}"), Mode::Unknown);
        assert_eq!(mode_of(b"{\"a\":1}\n{\"a\""), Mode::Lines);
        assert_eq!(mode_of(b"{\"Records\":[{\"a\":1}]}\n"), Mode::Whole);
        assert_eq!(mode_of(b"{\n  \"Records\": ["), Mode::Whole);
        assert_eq!(mode_of(b"[{\"a\":1}"), Mode::Whole);
        assert_eq!(mode_of(&[0x1f, 0x8b, 8, 0]), Mode::Whole);
        assert_eq!(mode_of(b"garbage\n"), Mode::Lines);
    }

    fn listed(path: &str, ino: u64, size: u64, mtime: i128) -> Listed {
        Listed {
            path: path.into(),
            dev: 1,
            ino,
            size,
            mtime,
            matches: !path.ends_with(".1"),
        }
    }

    #[test]
    fn cursors_follow_renames_forget_deleted_files_and_wait_to_settle() {
        let mut cs = Vec::new();
        let todo = reconcile(&mut cs, "s", &[listed("a.log", 7, 10, 1)], 100, 30);
        assert_eq!(todo, vec![0]);
        cs[0].mode = Mode::Lines;
        cs[0].offset = 10;
        // Unchanged and fully read: nothing to do.
        assert!(reconcile(&mut cs, "s", &[listed("a.log", 7, 10, 1)], 101, 30).is_empty());
        // Rotated: renamed out of the pattern, a new file in its place. The old one keeps
        // its cursor (its tail is still read); the new one starts at 0.
        let l = [listed("a.log.1", 7, 12, 2), listed("a.log", 8, 3, 3)];
        let todo = reconcile(&mut cs, "s", &l, 102, 30);
        assert_eq!(todo.len(), 2);
        assert_eq!(cs[0].path, PathBuf::from("a.log.1"));
        assert_eq!(cs[0].offset, 10);
        assert_eq!((cs[1].ino, cs[1].offset), (8, 0));
        // A partial line in the new file: re-read only once it settles.
        cs[1].mode = Mode::Lines;
        cs[1].offset = 1;
        cs[0].offset = 12;
        assert!(reconcile(&mut cs, "s", &l, 110, 30).is_empty());
        assert_eq!(reconcile(&mut cs, "s", &l, 133, 30), vec![1]);
        // Deleted: forgotten. Other sources' cursors are left alone.
        cs.push(FileCursor {
            source: "other".into(),
            ino: 7,
            ..FileCursor::default()
        });
        reconcile(&mut cs, "s", &[listed("a.log", 8, 3, 3)], 140, 30);
        assert_eq!(cs.len(), 2);
        assert!(cs.iter().any(|c| c.source == "other"));
        // A file not matching the pattern is never picked up new.
        let todo = reconcile(&mut cs, "s", &[listed("b.log.1", 9, 3, 3)], 150, 30);
        assert!(todo.is_empty());
    }

    #[test]
    fn globs_match_file_names() {
        assert!(glob_match("*.json.gz", "x_CloudTrail_us-east-1.json.gz"));
        assert!(!glob_match("*.json.gz", "x.json"));
        assert!(glob_match("PT1H.json", "PT1H.json"));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "acbc"));
    }

    #[test]
    fn config_check_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CloudLogsConfig {
            state_file: Some(dir.path().join("s.json")),
            ..CloudLogsConfig::default()
        };
        let src = |dir: &Path, source: &str| LogSourceConfig {
            name: Some("aws".into()),
            dir: dir.to_owned(),
            source: source.into(),
            glob: None,
        };
        let (w, _, _) = check(&[src(dir.path(), "cloudtrail")], &cfg, true).unwrap();
        assert_eq!(w[0].forced, Some(Source::Cloudtrail));
        let e = check(&[src(dir.path(), "cloudtrial")], &cfg, true).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("[[logs]] aws: unknown log source"),
            "{e}"
        );
        let e = check(&[src(&dir.path().join("nope"), "auto")], &cfg, true).unwrap_err();
        assert!(e.to_string().contains("is not a folder"), "{e}");
        let two = [src(dir.path(), "auto"), src(dir.path(), "auto")];
        assert!(check(&two, &cfg, true).is_err());
        assert!(check(&[src(dir.path(), "auto")], &cfg, false).is_err());
    }
}
