//! The write-ahead event journal: every finished [`UsageEvent`] is appended to a local file
//! before its client receives the last byte of the answer, and shipped to the store from
//! there, so a crash or a store outage never loses an answered request.
//!
//! Data flows one way:
//! - the request path frames the event ([`format`]) and queues it ([`Journal::append`]).
//!   Whoever finds no write in progress leads: it writes everything queued with one `write`
//!   (group commit across concurrent requests) and answers that group ([`writer`]); the
//!   others wait for the leader's group. On one connection a request writes its own record
//!   without a hand-off to another thread. The returned [`Durable`] resolves once the group
//!   holding the event is written (and synced, with `fsync_interval_ms = 0`, where the
//!   writer thread leads); the gateway holds the answer's last byte until then.
//! - the writer thread syncs on a short interval and at segment close, and starts a new
//!   segment past `segment_max_bytes` or `segment_max_age_secs`.
//! - the shipper task ([`ship`]) inserts written events into the store (event id as key:
//!   replays never duplicate) and deletes a segment only once the store acknowledged all of
//!   it. It ships the events the writer just wrote from memory (up to `memory_events`),
//!   and reads segments back only for what memory does not hold: what a previous run left
//!   ([`JournalService::backlog_shipped`], after recovery by [`segments::recover`] cut off
//!   any torn tail), and what was written while memory was full (a long store outage).
//! - unshipped bytes and age are bounded: past `max_bytes` or `max_age_secs` the journal is
//!   at its bound, and the gateway follows `policy` (refuse new requests, or serve them and
//!   count the events it drops).

pub mod format;
mod segments;
mod ship;
mod writer;

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use stormwall_types::UsageEvent;
use tokio::sync::oneshot;

use crate::{EventStore, EventsConfig};

/// `[journal]`: the write-ahead event journal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// Journal events before answering (the default). When false, events go to the store
    /// from memory only and a crash loses those not yet written.
    pub enabled: bool,
    /// Directory of the segment files, one per gateway process (a lock file refuses a
    /// second). Default: beside the SQLite file (`<file>.event-journal`), or
    /// `stormwall-journal` in the working directory with PostgreSQL.
    pub dir: Option<PathBuf>,
    /// Longest time written events wait for `fsync`, in milliseconds. 0: every batch is
    /// synced before its requests are answered (survives a machine crash; slower).
    pub fsync_interval_ms: u64,
    /// A segment is closed (synced) and a new one started past this many bytes.
    pub segment_max_bytes: u64,
    /// ... or once its first record is this old, in seconds, so shipped segments are
    /// deleted promptly.
    pub segment_max_age_secs: u64,
    /// Bound on unshipped bytes on disk; at the bound `policy` applies.
    pub max_bytes: u64,
    /// Bound on the age of the oldest unshipped event, in seconds; at the bound `policy`
    /// applies.
    pub max_age_secs: u64,
    /// What the gateway does at the bound.
    pub policy: JournalPolicy,
    /// Events queued and not yet written at most; a full queue refuses events like the
    /// bound does.
    pub queue_capacity: usize,
    /// Written events kept in memory for the shipper, so it need not read them back from
    /// the segments; past it (a long store outage), newer events are shipped by reading
    /// their segments. 0: always read back.
    pub memory_events: usize,
    /// Bytes the events kept in memory for the shipper may take at most (each counted as
    /// its slot plus twice its JSON: the JSON itself and the decoded event's strings). Once
    /// half of it is waiting, the shipper stores it without waiting for its tick; past it,
    /// newer events are shipped by reading their segments back, like past `memory_events`.
    /// 0: always read back.
    pub memory_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            fsync_interval_ms: 100,
            segment_max_bytes: 8 << 20,
            segment_max_age_secs: 10,
            max_bytes: 1 << 30,
            max_age_secs: 24 * 3600,
            policy: JournalPolicy::FailClosed,
            queue_capacity: 65_536,
            memory_events: 16_384,
            memory_bytes: 1 << 20,
        }
    }
}

impl JournalConfig {
    /// The directory to use: `dir`, or the default for `store`.
    pub fn resolved_dir(&self, store: &crate::StoreConfig) -> PathBuf {
        if let Some(d) = &self.dir {
            return d.clone();
        }
        match store {
            crate::StoreConfig::Sqlite { path } => {
                // Not `<file>-journal`: SQLite's own rollback journal has that name.
                let mut name = path.file_name().unwrap_or_default().to_os_string();
                name.push(".event-journal");
                path.with_file_name(name)
            }
            crate::StoreConfig::Postgres(_) => PathBuf::from("stormwall-journal"),
        }
    }
}

/// What the gateway does while the journal is at its bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalPolicy {
    /// Refuse new requests with 503 until the journal is below its bound again (every
    /// answered request keeps its record).
    #[default]
    FailClosed,
    /// Keep serving; events that do not fit are dropped and counted.
    FailOpen,
}

/// A journal failure.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal: cannot {what} {}: {source}", .path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another process holds the directory.
    #[error("journal directory {} is in use by another process", .0.display())]
    Locked(PathBuf),
}

impl JournalError {
    fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        JournalError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The event was not journaled (write failure or full queue, under `fail_closed`): the
/// answer must not be completed as if it had been recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event not journaled")]
pub struct NotJournaled;

/// Counters of the journal, shared by the request path, the writer and the shipper.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Events written to a segment.
    pub appended: AtomicU64,
    /// Events refused: at the bound under `fail_open`, full queue, or a failed write.
    pub refused: AtomicU64,
    /// Events the store acknowledged (replays of a previous run included).
    pub shipped: AtomicU64,
    /// Store writes that failed (each retried).
    pub ship_errors: AtomicU64,
    /// Batches written (group commits).
    pub writes: AtomicU64,
    /// `fsync` calls.
    pub syncs: AtomicU64,
    /// Torn tails cut off at recovery.
    pub torn_tails: AtomicU64,
    /// Damaged records found (recovery or shipping); their bytes are kept in `.bad-*` files.
    pub corrupt: AtomicU64,
    /// Unshipped bytes on disk (gauge).
    pub unshipped_bytes: AtomicU64,
    /// Append time of the oldest unshipped event, Unix ms; 0 when none (gauge).
    pub oldest_unshipped_ms: AtomicU64,
    /// Events shipped by reading their segments back (a previous run's, or written while
    /// the shipper's memory was full) rather than from memory.
    pub read_back: AtomicU64,
}

impl JournalStats {
    /// Seconds the oldest unshipped event has waited (0 when everything is shipped).
    pub fn oldest_unshipped_seconds(&self) -> f64 {
        match self.oldest_unshipped_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            ms => now_ms().saturating_sub(ms) as f64 / 1e3,
        }
    }
}

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One segment as the writer and the shipper see it.
#[derive(Debug, Clone, Copy)]
struct Segment {
    seq: u64,
    /// Bytes written (and readable) so far.
    len: u64,
    /// No more writes: once shipped to `len`, it may be deleted.
    closed: bool,
    /// Append time of its first record.
    first_ms: Option<u64>,
}

/// What is on disk and how far it is shipped.
#[derive(Debug, Default)]
struct Ledger {
    /// Oldest first; the newest is the open one while the writer runs.
    segments: VecDeque<Segment>,
    /// Offset in the oldest segment up to which the store acknowledged.
    cursor: u64,
    /// Append time of the record at the cursor, once read.
    cursor_ms: Option<u64>,
    /// The newest segment a previous run left; the backlog is shipped once it is gone.
    backlog_last: Option<u64>,
}

/// A written event kept for the shipper, with where its record is.
struct Remembered {
    seq: u64,
    start: u64,
    end: u64,
    append_ms: u64,
    event: UsageEvent,
    /// The event's JSON as written to the segment: a slice of the written group.
    body: bytes::Bytes,
}

impl Remembered {
    /// What the event is counted as against `memory_bytes`: its slot, its JSON, and about as
    /// much again for the decoded event's strings.
    fn weight(&self) -> usize {
        std::mem::size_of::<Remembered>().saturating_add(self.body.len().saturating_mul(2))
    }
}

/// Written events not yet shipped, in segment order, at most `max` events and `max_bytes`
/// counted bytes.
struct Memory {
    events: VecDeque<Remembered>,
    max: usize,
    /// Counted bytes of `events` ([`Remembered::weight`]).
    bytes: usize,
    max_bytes: usize,
    /// The shipper was woken for what waits and has not taken any of it since.
    woken: bool,
}

/// Event slots the shipper's memory keeps when it has caught up after a burst.
const MEMORY_KEEP: usize = 256;

impl Memory {
    fn new(max: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            max,
            bytes: 0,
            max_bytes,
            woken: false,
        }
    }

    /// Keeps `r` if it fits both bounds; whether it did.
    fn push(&mut self, r: Remembered) -> bool {
        let bytes = self.bytes.saturating_add(r.weight());
        if self.events.len() >= self.max || bytes > self.max_bytes {
            return false;
        }
        self.bytes = bytes;
        self.events.push_back(r);
        true
    }

    /// Takes the oldest event out.
    fn pop(&mut self) -> Option<Remembered> {
        let r = self.events.pop_front()?;
        self.bytes = self.bytes.saturating_sub(r.weight());
        Some(r)
    }

    /// Whether the shipper should be woken now: half of `max_bytes` is waiting and it has
    /// not been woken for it yet. Marks it woken.
    fn wake_due(&mut self) -> bool {
        let due = !self.woken && self.bytes > 0 && self.bytes >= self.max_bytes / 2;
        self.woken |= due;
        due
    }

    /// Gives back the room a burst left behind once the shipper has caught up: a moment of
    /// store latency must not keep thousands of event slots for the life of the process.
    /// Shrinks only below a quarter full, so the cost stays amortised.
    fn release_spare(&mut self) {
        let cap = self.events.capacity();
        if cap > MEMORY_KEEP && self.events.len() < cap / 4 {
            self.events.shrink_to(self.events.len().max(MEMORY_KEEP));
        }
    }
}

/// State shared by the request path, the writer thread and the shipper task. Locks are
/// taken in the order output, pending; output, memory; output, ledger; ledger, memory.
struct Shared {
    dir: PathBuf,
    policy: JournalPolicy,
    max_bytes: u64,
    max_age_ms: u64,
    segment_max_bytes: u64,
    segment_max_age: Duration,
    queue_capacity: usize,
    /// `fsync_interval_ms = 0`: the writer thread leads, syncing each group.
    sync_each: bool,
    stats: Arc<JournalStats>,
    ledger: Mutex<Ledger>,
    pending: Mutex<writer::Pending>,
    output: Mutex<writer::Output>,
    memory: Mutex<Memory>,
    /// Wakes the shipper before its tick once half of `memory_bytes` waits, so a burst is
    /// stored from memory instead of spilling to the segments (and the shipper's memory
    /// stays bounded); a trickle never reaches it and waits for the tick.
    ship_now: tokio::sync::Notify,
    cmd: std::sync::mpsc::Sender<writer::Cmd>,
    rotate_asked: AtomicBool,
    at_bound: AtomicBool,
    backlog_shipped: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Locks `m`; a panic while holding a lock leaves plain numbers and buffers behind: keep
/// going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    fn pending(&self) -> MutexGuard<'_, writer::Pending> {
        lock(&self.pending)
    }

    fn output(&self) -> MutexGuard<'_, writer::Output> {
        lock(&self.output)
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        lock(&self.memory)
    }

    /// Sends the writer thread a command (gone only after it closed: nothing left to do).
    fn ask(&self, cmd: writer::Cmd) {
        let _ = self.cmd.send(cmd);
    }

    /// Asks the writer thread to rotate, once until it has.
    fn ask_rotate(&self) {
        if !self.rotate_asked.swap(true, Ordering::Relaxed) {
            self.ask(writer::Cmd::Rotate);
        }
    }

    /// Keeps just-written events for the shipper, while memory has room, each with its
    /// JSON as a slice of `written` (the group's bytes); records left out are read back
    /// from the segment. Returns whether the shipper should be woken ([`Memory::wake_due`]);
    /// the caller wakes it once the ledger shows these records.
    fn remember(
        &self,
        seq: u64,
        mut at: u64,
        written: &bytes::Bytes,
        records: impl Iterator<Item = writer::Queued>,
    ) -> bool {
        let mut memory = self.memory();
        for r in records {
            let end = at + u64::from(r.len);
            // The range is the record's own place in `written`; were it not, the record is
            // read back from the segment like any the memory left out.
            if r.body.start <= r.body.end && r.body.end <= written.len() {
                memory.push(Remembered {
                    seq,
                    start: at,
                    end,
                    append_ms: r.append_ms,
                    event: r.event,
                    body: written.slice(r.body),
                });
            }
            at = end;
        }
        memory.wake_due()
    }

    /// Recomputes the gauges and the bound from the ledger.
    fn refresh(&self, ledger: &Ledger) {
        let header = format::MAGIC.len() as u64;
        let mut bytes = 0u64;
        let mut oldest = None;
        for (i, s) in ledger.segments.iter().enumerate() {
            let from = if i == 0 { ledger.cursor } else { header };
            let unshipped = s.len.saturating_sub(from);
            if unshipped > 0 && oldest.is_none() {
                oldest = if i == 0 {
                    ledger.cursor_ms.or(s.first_ms)
                } else {
                    s.first_ms
                };
            }
            bytes = bytes.saturating_add(unshipped);
        }
        let oldest = if bytes == 0 { 0 } else { oldest.unwrap_or(0) };
        self.stats.unshipped_bytes.store(bytes, Ordering::Relaxed);
        self.stats
            .oldest_unshipped_ms
            .store(oldest, Ordering::Relaxed);
        let too_old = oldest != 0 && now_ms().saturating_sub(oldest) >= self.max_age_ms;
        let bound = bytes >= self.max_bytes || too_old;
        if self.at_bound.swap(bound, Ordering::Relaxed) != bound {
            if bound {
                tracing::warn!(
                    unshipped_bytes = bytes,
                    policy = ?self.policy,
                    "event journal at its bound"
                );
            } else {
                tracing::info!(
                    unshipped_bytes = bytes,
                    "event journal below its bound again"
                );
            }
        }
        if let Some(last) = ledger.backlog_last
            && ledger.segments.front().is_none_or(|s| s.seq > last)
        {
            self.backlog_shipped.store(true, Ordering::Relaxed);
        }
    }
}

/// The request path's handle on the journal. Cheap to clone; never waits for a lock held
/// across more than one `write`.
#[derive(Debug, Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

thread_local! {
    /// Each thread frames its events here before queueing them, so the queue's lock is held
    /// only for a copy.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(4096));
}

impl Journal {
    /// Appends `event`; the answer's last byte waits for the returned [`Durable`]. The
    /// event is framed and queued; if no write is in progress, this call writes the queue
    /// (one `write` to the page cache) and the returned [`Durable`] is already settled.
    pub fn append(&self, event: UsageEvent) -> Durable {
        let shared = &self.shared;
        let open = shared.policy == JournalPolicy::FailOpen;
        if open && shared.at_bound.load(Ordering::Relaxed) {
            return self.refuse("journal at its bound");
        }
        let append_ms = now_ms();
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            let mut encoded = true;
            let mut body_at = 0;
            let framed = format::frame_with(buf, append_ms, |out| {
                body_at = out.len();
                encoded = serde_json::to_writer(&mut *out, &event).is_ok();
            });
            if framed.is_err() || !encoded {
                return self.refuse("event cannot be framed");
            }
            let Ok(len) = u32::try_from(buf.len()) else {
                return self.refuse("event cannot be framed");
            };
            let (group, lead) = {
                let mut p = shared.pending();
                if p.closed {
                    drop(p);
                    return self.refuse("journal closed");
                }
                if p.records.len() >= shared.queue_capacity {
                    drop(p);
                    return self.refuse("journal queue full");
                }
                // The JSON is the frame's tail; the store keeps that slice of the written
                // group as the row body, so the event is encoded once and never copied out.
                let at = p.buf.len();
                p.buf.extend_from_slice(buf);
                p.records.push(writer::Queued {
                    len,
                    append_ms,
                    event,
                    body: at + body_at..at + buf.len(),
                });
                let lead = !p.leader;
                p.leader = true;
                (Arc::clone(&p.group), lead)
            };
            if lead {
                if shared.sync_each {
                    shared.ask(writer::Cmd::Lead);
                } else {
                    writer::lead(shared, writer::REQUEST_ROUNDS, false);
                }
            }
            Durable(State::Group(group))
        })
    }

    fn refuse(&self, reason: &'static str) -> Durable {
        let total = self
            .shared
            .stats
            .refused
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if total == 1 || total.is_multiple_of(10_000) {
            tracing::warn!(refused_total = total, reason, "usage event not journaled");
        }
        Durable(State::Ready(match self.shared.policy {
            JournalPolicy::FailOpen => Ok(()),
            JournalPolicy::FailClosed => Err(NotJournaled),
        }))
    }

    /// Whether new requests are refused (at the bound under `fail_closed`).
    pub fn refuses_requests(&self) -> bool {
        self.shared.policy == JournalPolicy::FailClosed
            && self.shared.at_bound.load(Ordering::Relaxed)
    }

    /// Whether the journal is at its bound (bytes or age of unshipped events).
    pub fn at_bound(&self) -> bool {
        self.shared.at_bound.load(Ordering::Relaxed)
    }

    /// Whether what a previous run left is shipped (the gateway is ready after that).
    pub fn backlog_shipped(&self) -> bool {
        self.shared.backlog_shipped.load(Ordering::Relaxed)
    }

    /// The journal's counters.
    pub fn stats(&self) -> &Arc<JournalStats> {
        &self.shared.stats
    }

    /// The policy at the bound.
    pub fn policy(&self) -> JournalPolicy {
        self.shared.policy
    }
}

/// Resolves when an appended event is written (see [`Journal::append`]).
#[derive(Debug)]
pub struct Durable(State);

#[derive(Debug)]
enum State {
    Ready(Result<(), NotJournaled>),
    Waiting(oneshot::Receiver<Result<(), NotJournaled>>),
    Group(Arc<writer::Group>),
}

impl Durable {
    /// Already settled: nothing to wait for (no journal, or nothing appended).
    pub fn ready() -> Self {
        Durable(State::Ready(Ok(())))
    }

    /// Settles when `rx` does (a hand-off: the event is appended later, by whoever holds
    /// the sender); a dropped sender counts as not journaled.
    pub fn after(rx: oneshot::Receiver<Result<(), NotJournaled>>) -> Self {
        Durable(State::Waiting(rx))
    }
}

impl Future for Durable {
    type Output = Result<(), NotJournaled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let out = match &mut this.0 {
            State::Ready(r) => *r,
            State::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(r)) => r,
                // The writer ended without answering: the event's fate is unknown.
                Poll::Ready(Err(_)) => Err(NotJournaled),
            },
            State::Group(group) => match group.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            },
        };
        // Kept, so polling again (after an early wait) gives the same answer.
        this.0 = State::Ready(out);
        Poll::Ready(out)
    }
}

/// The journal's writer thread and shipper task, owned by whoever shuts them down.
#[derive(Debug)]
pub struct JournalService {
    journal: Journal,
    writer: std::thread::JoinHandle<()>,
    shipper: tokio::task::JoinHandle<()>,
    drain: tokio::sync::watch::Sender<ship::Phase>,
    _lock: std::fs::File,
}

impl JournalService {
    /// Opens the journal in `dir` (recovering what a previous run left), starts the writer
    /// thread and the shipper task (which ships the backlog first). Must be called within
    /// a Tokio runtime.
    pub fn start(
        config: &JournalConfig,
        dir: &Path,
        store: Arc<dyn EventStore>,
        events: &EventsConfig,
    ) -> Result<(Journal, JournalService), JournalError> {
        let lock = segments::lock(dir)?;
        let stats = Arc::new(JournalStats::default());
        let mut ledger = Ledger::default();
        let seqs = segments::list(dir)?;
        for (i, &seq) in seqs.iter().enumerate() {
            let r = segments::recover(dir, seq, i + 1 == seqs.len())?;
            if r.torn_bytes > 0 {
                stats.torn_tails.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    segment = seq,
                    torn_bytes = r.torn_bytes,
                    records = r.records,
                    "journal: torn tail cut off (a crash interrupted an append)"
                );
            }
            if let Some((at, why, bad)) = &r.corrupt {
                stats.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    segment = seq,
                    offset = at,
                    why,
                    kept_in = %bad.display(),
                    records_before = r.records,
                    "journal: damaged record; the records before it are shipped, the bytes from it on are kept for inspection"
                );
            }
            ledger.segments.push_back(Segment {
                seq,
                len: r.len,
                closed: true,
                first_ms: r.first_ms,
            });
        }
        ledger.cursor = format::MAGIC.len() as u64;
        ledger.backlog_last = seqs.last().copied();
        if !seqs.is_empty() {
            tracing::info!(
                segments = seqs.len(),
                "journal: shipping what a previous run left"
            );
        }
        let next_seq = seqs.last().map_or(1, |s| s + 1);
        let file = segments::create(dir, next_seq)?;
        ledger.segments.push_back(Segment {
            seq: next_seq,
            len: format::MAGIC.len() as u64,
            closed: false,
            first_ms: None,
        });
        let (cmd, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            policy: config.policy,
            max_bytes: config.max_bytes.max(1),
            max_age_ms: config.max_age_secs.max(1).saturating_mul(1000),
            segment_max_bytes: config.segment_max_bytes.max(1),
            segment_max_age: Duration::from_secs(config.segment_max_age_secs.max(1)),
            queue_capacity: config.queue_capacity.max(1),
            sync_each: config.fsync_interval_ms == 0,
            stats,
            ledger: Mutex::new(ledger),
            pending: Mutex::new(writer::Pending::new()),
            output: Mutex::new(writer::Output::new(file, next_seq)),
            memory: Mutex::new(Memory::new(
                config.memory_events,
                usize::try_from(config.memory_bytes).unwrap_or(usize::MAX),
            )),
            ship_now: tokio::sync::Notify::new(),
            cmd,
            rotate_asked: AtomicBool::new(false),
            at_bound: AtomicBool::new(false),
            backlog_shipped: AtomicBool::new(seqs.is_empty()),
        });
        shared.refresh(&shared.ledger());
        let writer = writer::Writer::new(
            Arc::clone(&shared),
            Duration::from_millis(config.fsync_interval_ms),
            next_seq,
        );
        let writer = std::thread::Builder::new()
            .name("stormwall-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| JournalError::io("start writer thread for", dir, e))?;
        let (drain, phase) = tokio::sync::watch::channel(ship::Phase::Run);
        let shipper = ship::Shipper {
            shared: Arc::clone(&shared),
            store,
            batch_max: events.batch_max.max(1),
            read_max: config.memory_bytes.clamp(ship::READ_MIN, ship::READ_MAX),
            idle: Duration::from_millis(events.flush_interval_ms.clamp(10, 1000)),
        };
        // One long-lived task started at startup, joined by `JournalService::shutdown`.
        #[allow(clippy::disallowed_methods)]
        let shipper = tokio::spawn(shipper.run(phase));
        let journal = Journal { shared };
        Ok((
            journal.clone(),
            JournalService {
                journal,
                writer,
                shipper,
                drain,
                _lock: lock,
            },
        ))
    }

    /// The request path's handle.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Writes and syncs what is queued, closes the segment, then ships what is left until
    /// `deadline`; what the store has not acknowledged by then stays on disk for the next
    /// start. Returns the unshipped bytes left.
    pub async fn shutdown(self, deadline: Duration) -> u64 {
        let end = tokio::time::Instant::now() + deadline;
        self.journal.shared.ask(writer::Cmd::Close);
        while !self.writer.is_finished() && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = self.drain.send(ship::Phase::Drain);
        let mut shipper = self.shipper;
        if tokio::time::timeout_at(end, &mut shipper).await.is_err() {
            shipper.abort();
        }
        let left = self.journal.stats().unshipped_bytes.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(
                unshipped_bytes = left,
                "journal: events left unshipped; they are shipped at the next start"
            );
        }
        left
    }
}

#[cfg(test)]
mod tests;
