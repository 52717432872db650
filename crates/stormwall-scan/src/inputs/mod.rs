//! Inputs: files and directories (a parallel walk that honours `.gitignore`), archives,
//! standard input and git histories, all fed through one chunked scan so memory stays
//! bounded whatever the size of a file.
//!
//! The scanner owns no output: every finding goes to a caller-supplied sink, from any of
//! the walker's threads.

mod archive;
mod git;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::finding::{Finding, GitOrigin, Location, SourceKind, code_points, is_allowed};
use crate::matcher::Matcher;
use crate::redact::Redactor;

/// Bytes scanned per step of a stream; a file at most this large is scanned in one piece.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Bytes shared between consecutive chunks, either side, so a credential or its context
/// keyword that straddles a chunk boundary is still seen whole. Larger than any rule window.
pub const CHUNK_OVERLAP: usize = 16 * 1024;

/// Bytes inspected for a NUL to decide that a file is binary (as git and ripgrep do).
pub const BINARY_SNIFF_BYTES: usize = 8 * 1024;

/// Default cap on one file's size; larger files are skipped and counted.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// Default cap on the bytes decompressed from one archive, nested members included.
pub const DEFAULT_MAX_ARCHIVE_BYTES: u64 = 256 * 1024 * 1024;

/// Default depth of archives within archives that are opened.
pub const DEFAULT_MAX_ARCHIVE_DEPTH: u32 = 3;

/// Default cap on the members read from one archive.
pub const DEFAULT_MAX_ARCHIVE_ENTRIES: u64 = 100_000;

/// Why a scan could not run at all (per-file problems are counted, not raised).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The root path does not exist or cannot be read.
    #[error("cannot read {path}: {source}")]
    Root {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Reading a stream failed.
    #[error("reading {name}: {source}")]
    Read {
        /// Display name of the stream.
        name: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A git object database could not be opened.
    #[error("git repository {path}: {message}")]
    Git {
        /// Repository path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Knobs of a scan; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Skip files (and archive members, and blobs) larger than this.
    pub max_file_size: u64,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// Scan the whole history of git repositories found under the root.
    pub history: bool,
    /// Open zip, tar and gzip archives.
    pub archives: bool,
    /// Nesting depth of archives opened.
    pub max_archive_depth: u32,
    /// Bytes decompressed from one archive at most.
    pub max_archive_bytes: u64,
    /// Members read from one archive at most.
    pub max_archive_entries: u64,
    /// Honour `.gitignore`, `.ignore` and git's exclude files.
    pub respect_ignore: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            threads: 0,
            history: true,
            archives: true,
            max_archive_depth: DEFAULT_MAX_ARCHIVE_DEPTH,
            max_archive_bytes: DEFAULT_MAX_ARCHIVE_BYTES,
            max_archive_entries: DEFAULT_MAX_ARCHIVE_ENTRIES,
            respect_ignore: true,
        }
    }
}

/// Live counters, readable from another thread (the progress bar).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes scanned.
    pub bytes: AtomicU64,
    /// Files and archive members scanned.
    pub files: AtomicU64,
    /// Git blobs scanned.
    pub blobs: AtomicU64,
    /// Findings reported.
    pub findings: AtomicU64,
}

/// What a scan did besides finding things.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanSummary {
    /// Bytes scanned.
    pub bytes: u64,
    /// Files and archive members scanned.
    pub files: u64,
    /// Git blobs scanned.
    pub blobs: u64,
    /// Binary files skipped.
    pub skipped_binary: u64,
    /// Files over the size cap skipped.
    pub skipped_large: u64,
    /// Files that could not be read.
    pub errors: u64,
    /// Git repositories whose history was scanned.
    pub repositories: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct Counters {
    skipped_binary: AtomicU64,
    skipped_large: AtomicU64,
    errors: AtomicU64,
}

/// Where the bytes of one stream are reported to be.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub path: String,
    pub source: SourceKind,
    pub blob: Option<String>,
    pub git: Option<GitOrigin>,
}

/// Sink for findings; called from worker threads.
pub type Sink<'a> = &'a (dyn Fn(Finding) + Sync);

/// Scans inputs with one matcher; cheap to share between threads.
#[derive(Debug)]
pub struct Scanner {
    matcher: Matcher,
    redactor: Redactor,
    options: ScanOptions,
    progress: Arc<Progress>,
    counters: Counters,
}

impl Scanner {
    /// A scanner with the given matcher, fingerprint key and options.
    pub fn new(matcher: Matcher, redactor: Redactor, options: ScanOptions) -> Self {
        Self {
            matcher,
            redactor,
            options,
            progress: Arc::new(Progress::default()),
            counters: Counters::default(),
        }
    }

    /// The live counters, for a progress display.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// The matcher in use.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    fn threads(&self) -> usize {
        if self.options.threads > 0 {
            self.options.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Scans a file or a directory tree, and the history of every git repository in it
    /// (unless `history` is off).
    pub fn scan_path(&self, root: &Path, sink: Sink<'_>) -> Result<ScanSummary, ScanError> {
        let meta = std::fs::metadata(root).map_err(|source| ScanError::Root {
            path: root.to_owned(),
            source,
        })?;
        let repos = Arc::new(Mutex::new(Vec::<PathBuf>::new()));
        if meta.is_file() {
            let label = root.to_string_lossy().replace('\\', "/");
            self.scan_file(root, &label, &mut Vec::new(), sink);
        } else {
            if git::is_bare_repo(root) {
                lock(&repos).push(root.to_owned());
            }
            self.walk(root, &repos, sink);
        }
        let mut repositories = std::mem::take(&mut *lock(&repos));
        repositories.sort();
        repositories.dedup();
        if self.options.history {
            for repo in &repositories {
                let prefix = relative_display(root, repo);
                git::scan_history(self, repo, &prefix, sink)?;
            }
        }
        Ok(self.summary(repositories))
    }

    /// Scans one stream (standard input, or any reader) under a display name.
    pub fn scan_reader(
        &self,
        name: &str,
        source: SourceKind,
        reader: &mut dyn Read,
        sink: Sink<'_>,
    ) -> Result<ScanSummary, ScanError> {
        let origin = Origin {
            path: name.to_owned(),
            source,
            blob: None,
            git: None,
        };
        let mut buf = Vec::new();
        self.scan_stream(reader, &origin, &mut buf, sink)
            .map_err(|source| ScanError::Read {
                name: name.to_owned(),
                source,
            })?;
        self.progress.files.fetch_add(1, Ordering::Relaxed);
        Ok(self.summary(Vec::new()))
    }

    fn summary(&self, repositories: Vec<PathBuf>) -> ScanSummary {
        ScanSummary {
            bytes: self.progress.bytes.load(Ordering::Relaxed),
            files: self.progress.files.load(Ordering::Relaxed),
            blobs: self.progress.blobs.load(Ordering::Relaxed),
            skipped_binary: self.counters.skipped_binary.load(Ordering::Relaxed),
            skipped_large: self.counters.skipped_large.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
            repositories,
        }
    }

    fn walk(&self, root: &Path, repos: &Arc<Mutex<Vec<PathBuf>>>, sink: Sink<'_>) {
        let mut builder = ignore::WalkBuilder::new(root);
        builder
            .hidden(false)
            .follow_links(false)
            .git_ignore(self.options.respect_ignore)
            .git_exclude(self.options.respect_ignore)
            .git_global(false)
            .ignore(self.options.respect_ignore)
            .parents(self.options.respect_ignore)
            .threads(self.threads());
        let found = Arc::clone(repos);
        // `.git` is never walked as files: its objects are read as history instead, and a
        // directory holding one is recorded as a repository.
        builder.filter_entry(move |entry| {
            if entry.file_name() == ".git" {
                if let Some(parent) = entry.path().parent() {
                    lock(&found).push(parent.to_owned());
                }
                return false;
            }
            true
        });
        builder.build_parallel().run(|| {
            let mut buf = Vec::new();
            Box::new(move |entry| {
                let Ok(entry) = entry else {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    return ignore::WalkState::Continue;
                };
                if entry.file_type().is_some_and(|t| t.is_file()) {
                    let label = relative_display(root, entry.path());
                    self.scan_file(entry.path(), &label, &mut buf, sink);
                }
                ignore::WalkState::Continue
            })
        });
    }

    fn scan_file(&self, path: &Path, label: &str, buf: &mut Vec<u8>, sink: Sink<'_>) {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(path = %label, error = %e, "cannot open file");
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > self.options.max_file_size {
            self.counters.skipped_large.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.options.archives
            && let Some(kind) = archive::kind_of(label)
        {
            archive::scan(self, kind, file, label, 1, sink);
            return;
        }
        let origin = Origin {
            path: label.to_owned(),
            source: SourceKind::File,
            blob: None,
            git: None,
        };
        let mut file = file;
        match self.scan_stream(&mut file, &origin, buf, sink) {
            Ok(true) => {
                self.progress.files.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {
                self.counters.skipped_binary.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(path = %label, error = %e, "cannot read file");
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if buf.capacity() > 4 * CHUNK_BYTES {
            // One huge file must not pin its buffer for the rest of the walk.
            *buf = Vec::new();
        }
    }

    /// Scans a stream in overlapping chunks. Returns `Ok(false)` for binary content (a NUL
    /// near the start), which is skipped.
    pub(crate) fn scan_stream(
        &self,
        reader: &mut dyn Read,
        origin: &Origin,
        buf: &mut Vec<u8>,
        sink: Sink<'_>,
    ) -> io::Result<bool> {
        buf.clear();
        // Lines before buf[0], and the first byte of buf not yet reported on.
        let mut first_line: u64 = 1;
        let mut emit_from = 0usize;
        let mut first = true;
        loop {
            let want = CHUNK_BYTES + 2 * CHUNK_OVERLAP;
            let eof = fill(reader, buf, want)?;
            if first {
                first = false;
                let sniff = &buf[..buf.len().min(BINARY_SNIFF_BYTES)];
                if memchr::memchr(0, sniff).is_some() {
                    return Ok(false);
                }
            }
            let emit_to = if eof {
                buf.len()
            } else {
                buf.len() - CHUNK_OVERLAP
            };
            self.progress
                .bytes
                .fetch_add((emit_to - emit_from) as u64, Ordering::Relaxed);
            self.report(buf, emit_from..emit_to, first_line, origin, sink);
            if eof {
                return Ok(true);
            }
            // Keep CHUNK_OVERLAP bytes of context before the next region to report.
            let keep_from = emit_to - CHUNK_OVERLAP;
            first_line += memchr::memchr_iter(b'\n', &buf[..keep_from]).count() as u64;
            buf.drain(..keep_from);
            emit_from = CHUNK_OVERLAP;
        }
    }

    /// Scans an in-memory buffer as one piece (archive members, git blobs).
    pub(crate) fn scan_buffer(&self, hay: &[u8], origin: &Origin, sink: Sink<'_>) -> bool {
        let sniff = &hay[..hay.len().min(BINARY_SNIFF_BYTES)];
        if memchr::memchr(0, sniff).is_some() {
            self.counters.skipped_binary.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.progress
            .bytes
            .fetch_add(hay.len() as u64, Ordering::Relaxed);
        self.report(hay, 0..hay.len(), 1, origin, sink);
        true
    }

    fn report(
        &self,
        hay: &[u8],
        emit: std::ops::Range<usize>,
        first_line: u64,
        origin: &Origin,
        sink: Sink<'_>,
    ) {
        let matches = self.matcher.find(hay);
        if matches.is_empty() {
            return;
        }
        // Lines are counted incrementally from one match to the next.
        let mut line = first_line;
        let mut counted_to = 0usize;
        for m in matches {
            let r = m.range();
            if !emit.contains(&r.start) || is_allowed(hay, r.start) {
                continue;
            }
            line += memchr::memchr_iter(b'\n', &hay[counted_to..r.start]).count() as u64;
            counted_to = r.start;
            let line_start = memchr::memrchr(b'\n', &hay[..r.start]).map_or(0, |i| i + 1);
            let column = code_points(&hay[line_start..r.start]) + 1;
            let end_column = column + code_points(&hay[r.clone()]);
            let location = Location {
                path: origin.path.clone(),
                line,
                column,
                end_column,
                source: origin.source,
                blob: origin.blob.clone(),
                git: origin.git.clone(),
            };
            self.progress.findings.fetch_add(1, Ordering::Relaxed);
            sink(Finding::from_match(&m, hay, &self.redactor, location));
        }
    }
}

/// Reads until `buf` holds `want` bytes or the stream ends; true at end of stream.
fn fill(reader: &mut dyn Read, buf: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    while buf.len() < want {
        let need = want - buf.len();
        let got = reader.take(need as u64).read_to_end(buf)?;
        if got == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another worker panicked mid-push; the data is still a
    // valid list of paths.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `path` relative to `root`, `/`-separated; the path as given when it is not under root.
fn relative_display(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let s = rel.to_string_lossy().replace('\\', "/");
    if s.is_empty() { ".".to_owned() } else { s }
}

/// Collapses duplicates across inputs: one finding per secret and path. A working-tree
/// finding absorbs the git origin of the same secret in the same path's history, and of
/// several history findings the earliest commit wins. Output is sorted.
pub fn merge_findings(mut findings: Vec<Finding>) -> Vec<Finding> {
    use std::collections::HashMap;
    // Earliest git origin per (fingerprint, path).
    let mut earliest: HashMap<(String, String), (i64, usize)> = HashMap::new();
    for (i, f) in findings.iter().enumerate() {
        if f.location.source == SourceKind::Git
            && let Some(g) = &f.location.git
        {
            let key = (f.fingerprint.clone(), f.location.path.clone());
            let e = earliest.entry(key).or_insert((g.time, i));
            if g.time < e.0 {
                *e = (g.time, i);
            }
        }
    }
    let mut in_tree: HashMap<(String, String), ()> = HashMap::new();
    for f in &findings {
        if f.location.source == SourceKind::File {
            in_tree.insert((f.fingerprint.clone(), f.location.path.clone()), ());
        }
    }
    let origins: Vec<Option<GitOrigin>> = findings
        .iter()
        .map(|f| {
            if f.location.source != SourceKind::File {
                return None;
            }
            let key = (f.fingerprint.clone(), f.location.path.clone());
            earliest
                .get(&key)
                .and_then(|&(_, i)| findings.get(i))
                .and_then(|g| g.location.git.clone())
        })
        .collect();
    for (f, origin) in findings.iter_mut().zip(origins) {
        if origin.is_some() {
            f.location.git = origin;
        }
    }
    let mut out: Vec<Finding> = findings
        .into_iter()
        .enumerate()
        .filter(|(i, f)| {
            if f.location.source != SourceKind::Git {
                return true;
            }
            let key = (f.fingerprint.clone(), f.location.path.clone());
            !in_tree.contains_key(&key) && earliest.get(&key).is_none_or(|&(_, j)| j == *i)
        })
        .map(|(_, f)| f)
        .collect();
    out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    out.dedup_by(|a, b| {
        a.location == b.location && a.rule == b.rule && a.fingerprint == b.fingerprint
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_display_paths() {
        assert_eq!(
            relative_display(Path::new("/a/b"), Path::new("/a/b/c/d.rs")),
            "c/d.rs"
        );
        assert_eq!(relative_display(Path::new("/a/b"), Path::new("/a/b")), ".");
        assert_eq!(relative_display(Path::new("/x"), Path::new("/a/b")), "/a/b");
    }
}
