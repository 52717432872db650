//! Group commit without a hand-off. An append queues its framed record; whoever finds no
//! write in progress becomes the leader and writes everything queued with one `write`
//! (the page cache takes it in microseconds), answers that group, and repeats while more was
//! queued meanwhile. On one connection the request writes its own record and never waits for
//! another thread; under concurrency the records queued while a leader writes form the next
//! group. The writer thread does only what may take milliseconds: `fsync` on its interval,
//! segment rotation (creating a file and syncing the directory), writes with
//! `fsync_interval_ms = 0` (each group synced before it is answered), and groups a request
//! leader hands over after [`REQUEST_ROUNDS`].

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use stormwall_types::UsageEvent;

use super::{JournalPolicy, NotJournaled, Segment, Shared, format, segments};

/// Groups a request writes as leader before it hands the rest to the writer thread, so one
/// request never carries a long backlog on its own latency.
pub(super) const REQUEST_ROUNDS: usize = 4;

/// A command to the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cmd {
    /// Lead: write what is queued (leadership was set for the thread).
    Lead,
    /// Close the open segment and start the next one.
    Rotate,
    /// Write what is queued, sync, close the segment and stop.
    Close,
}

/// One queued record: its framed length, append time and the event (kept for shipping).
pub(super) struct Queued {
    pub(super) len: u32,
    pub(super) append_ms: u64,
    pub(super) event: UsageEvent,
    /// Where the event's JSON (the tail of its frame) is in the group's buffer: the shipper
    /// gets that slice of the written bytes, not a copy.
    pub(super) body: Range<usize>,
}

/// Records framed but not yet written, and who writes them.
pub(super) struct Pending {
    /// The queued frames. A leader splits them off (the allocation is shared, not copied)
    /// and the shipper's memory keeps slices of them until shipped; later groups fill the
    /// rest of the allocation, then a new one.
    pub(super) buf: BytesMut,
    pub(super) records: Vec<Queued>,
    /// The group the queued records belong to; answered when they are written.
    pub(super) group: Arc<Group>,
    /// A leader (a request or the writer thread) is writing; appends only queue.
    pub(super) leader: bool,
    /// The journal is closing: appends are refused.
    pub(super) closed: bool,
}

impl Pending {
    pub(super) fn new() -> Self {
        Self {
            buf: BytesMut::with_capacity(GROUP_BUF),
            records: Vec::with_capacity(256),
            group: Arc::new(Group::default()),
            leader: false,
            closed: false,
        }
    }
}

/// The open segment, touched only by the leader (and by the writer thread to rotate).
pub(super) struct Output {
    pub(super) file: Arc<File>,
    pub(super) seq: u64,
    pub(super) len: u64,
    pub(super) opened: Instant,
    pub(super) first_ms: Option<u64>,
    /// Record list swapped with the queue's, so groups reuse its allocation.
    spare_records: Vec<Queued>,
}

impl Output {
    pub(super) fn new(file: File, seq: u64) -> Self {
        Self {
            file: Arc::new(file),
            seq,
            len: format::MAGIC.len() as u64,
            opened: Instant::now(),
            first_ms: None,
            spare_records: Vec::with_capacity(256),
        }
    }
}

/// The outcome of one group, awaited by every [`super::Durable`] in it.
#[derive(Debug, Default)]
pub(super) struct Group {
    /// 0: not written yet; 1: written; 2: not journaled.
    done: AtomicU8,
    wakers: Mutex<Vec<Waker>>,
}

impl Group {
    fn result(&self) -> Option<Result<(), NotJournaled>> {
        match self.done.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Ok(())),
            _ => Some(Err(NotJournaled)),
        }
    }

    fn wakers(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Settles the group and wakes whoever waits on it.
    pub(super) fn complete(&self, outcome: Result<(), NotJournaled>) {
        let wakers = {
            let mut w = self.wakers();
            self.done
                .store(if outcome.is_ok() { 1 } else { 2 }, Ordering::Release);
            std::mem::take(&mut *w)
        };
        for w in wakers {
            w.wake();
        }
    }

    /// The outcome, or a wake-up registered for when it is known.
    pub(super) fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<(), NotJournaled>> {
        if let Some(r) = self.result() {
            return Poll::Ready(r);
        }
        let mut w = self.wakers();
        // Settled between the check and the lock: `complete` stores under the lock.
        if let Some(r) = self.result() {
            return Poll::Ready(r);
        }
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Writes what is queued, group by group, as the leader (the caller set `leader`), for at
/// most `rounds` groups; then gives leadership up, or hands it to the writer thread if more
/// is queued. `sync`: each group is synced before it is answered.
pub(super) fn lead(shared: &Shared, mut rounds: usize, sync: bool) {
    loop {
        let mut out = shared.output();
        let (buf, records, group) = {
            let mut p = shared.pending();
            if p.records.is_empty() {
                p.leader = false;
                return;
            }
            if rounds == 0 {
                // Leadership stays set: the thread takes it over.
                drop(p);
                drop(out);
                shared.ask(Cmd::Lead);
                return;
            }
            rounds -= 1;
            let buf = p.buf.split().freeze();
            if p.buf.capacity() < GROUP_BUF_MIN {
                // What is left of the allocation is too small to be worth sharing: the next
                // group starts a new one (the old goes once its slices are shipped).
                p.buf = BytesMut::with_capacity(GROUP_BUF);
            }
            let records = std::mem::replace(&mut p.records, std::mem::take(&mut out.spare_records));
            let group = std::mem::replace(&mut p.group, Arc::new(Group::default()));
            (buf, records, group)
        };
        let outcome = write_group(shared, &mut out, &buf, records, sync);
        drop(out);
        group.complete(outcome);
    }
}

/// Bytes allocated at a time for queued frames (shared by the groups written from it).
const GROUP_BUF: usize = 64 << 10;
/// Below this much room left, a new allocation is started for the next group.
const GROUP_BUF_MIN: usize = 8 << 10;

/// Writes one group to the open segment and records where its events are, for the shipper.
fn write_group(
    shared: &Shared,
    out: &mut Output,
    buf: &bytes::Bytes,
    mut records: Vec<Queued>,
    sync: bool,
) -> Result<(), NotJournaled> {
    let n = records.len() as u64;
    let mut wake = false;
    if out.len > format::MAGIC.len() as u64
        && (out.len >= shared.segment_max_bytes || out.opened.elapsed() >= shared.segment_max_age)
    {
        // Rotation syncs and creates files: the thread does it; until then the open
        // segment grows a little past its limit.
        shared.ask_rotate();
    }
    let written = (&*out.file).write_all(buf);
    let written = written.and_then(|()| {
        if sync {
            out.file.sync_data()?;
            shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    let outcome = match written {
        Ok(()) => {
            let start = out.len;
            out.len += buf.len() as u64;
            out.first_ms
                .get_or_insert_with(|| records.first().map_or_else(super::now_ms, |r| r.append_ms));
            // The events go to the shipper's memory before the ledger shows their bytes, so
            // it never reads back what it could take from here.
            wake = shared.remember(out.seq, start, buf, records.drain(..));
            let st = &shared.stats;
            st.appended.fetch_add(n, Ordering::Relaxed);
            st.writes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, events = n, segment = out.seq, "journal: write failed; events not journaled");
            // Drop what a partial write left, so the segment stays sound; the next group
            // goes to a new segment.
            let _ = out.file.set_len(out.len);
            shared.ask_rotate();
            shared.stats.refused.fetch_add(n, Ordering::Relaxed);
            records.clear();
            match shared.policy {
                JournalPolicy::FailOpen => Ok(()),
                JournalPolicy::FailClosed => Err(NotJournaled),
            }
        }
    };
    out.spare_records = records;
    let mut ledger = shared.ledger();
    if let Some(s) = ledger.segments.back_mut().filter(|s| s.seq == out.seq) {
        s.len = out.len;
        s.first_ms = s.first_ms.or(out.first_ms);
    }
    shared.refresh(&ledger);
    drop(ledger);
    if wake {
        // Now that the ledger shows them, the shipper can take them from memory.
        shared.ship_now.notify_one();
    }
    outcome
}

/// The writer thread's state.
pub(super) struct Writer {
    shared: Arc<Shared>,
    sync_every: Duration,
    /// Bytes of the open segment known synced, and which segment.
    synced: (u64, u64),
    last_sync: Instant,
    /// Next segment number to try, past any whose creation failed.
    next_seq: u64,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>, sync_every: Duration, seq: u64) -> Self {
        Self {
            shared,
            sync_every,
            synced: (seq, format::MAGIC.len() as u64),
            last_sync: Instant::now(),
            next_seq: seq + 1,
        }
    }

    /// Runs until told to close (or every handle is gone).
    pub(super) fn run(mut self, rx: Receiver<Cmd>) {
        let sync_each = self.sync_every.is_zero();
        let tick = if sync_each {
            Duration::from_secs(1)
        } else {
            self.sync_every
        };
        loop {
            let wait = tick.saturating_sub(self.last_sync.elapsed());
            match rx.recv_timeout(wait) {
                Ok(Cmd::Lead) => lead(&self.shared, usize::MAX, sync_each),
                Ok(Cmd::Rotate) => self.rotate(),
                Ok(Cmd::Close) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.last_sync.elapsed() >= tick {
                self.sync();
                self.rotate_if_old();
            }
        }
        self.close(&rx);
    }

    /// Syncs the open segment if anything was written to it since the last sync.
    fn sync(&mut self) {
        self.last_sync = Instant::now();
        let (file, seq, len) = {
            let out = self.shared.output();
            (Arc::clone(&out.file), out.seq, out.len)
        };
        if (seq, len) == self.synced {
            return;
        }
        if let Err(e) = file.sync_data() {
            tracing::error!(error = %e, segment = seq, "journal: fsync failed");
        }
        self.shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced = (seq, len);
    }

    /// Rotates an idle segment past its age, so it can be shipped and deleted.
    fn rotate_if_old(&mut self) {
        let due = {
            let out = self.shared.output();
            out.len > format::MAGIC.len() as u64
                && (out.len >= self.shared.segment_max_bytes
                    || out.opened.elapsed() >= self.shared.segment_max_age)
        };
        if due {
            self.rotate();
        }
    }

    /// Closes the open segment (synced, then marked closed so the shipper may delete it
    /// once shipped) and starts the next one.
    fn rotate(&mut self) {
        self.shared.rotate_asked.store(false, Ordering::Relaxed);
        let seq = self.next_seq.max(self.shared.output().seq + 1);
        self.next_seq = seq + 1;
        let file = match segments::create(&self.shared.dir, seq) {
            Ok(f) => f,
            Err(e) => {
                // Retried on the next tick (or the next write); meanwhile writes go on to the
                // open segment.
                tracing::error!(error = %e, "journal: cannot start a new segment");
                return;
            }
        };
        let (old, old_seq) = {
            let mut out = self.shared.output();
            let old = std::mem::replace(&mut out.file, Arc::new(file));
            let old_seq = std::mem::replace(&mut out.seq, seq);
            out.len = format::MAGIC.len() as u64;
            out.opened = Instant::now();
            out.first_ms = None;
            let mut ledger = self.shared.ledger();
            ledger.segments.push_back(Segment {
                seq,
                len: out.len,
                closed: false,
                first_ms: None,
            });
            (old, old_seq)
        };
        self.close_segment(&old, old_seq);
        self.synced = (seq, format::MAGIC.len() as u64);
    }

    /// Syncs a segment no longer written and marks it closed in the ledger.
    fn close_segment(&self, file: &File, seq: u64) {
        if let Err(e) = file.sync_data() {
            tracing::error!(error = %e, segment = seq, "journal: fsync failed");
        }
        self.shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
        let mut ledger = self.shared.ledger();
        if let Some(s) = ledger.segments.iter_mut().find(|s| s.seq == seq) {
            s.closed = true;
        }
        self.shared.refresh(&ledger);
    }

    /// Refuses further appends, writes what is queued, syncs and closes the open segment.
    fn close(&mut self, rx: &Receiver<Cmd>) {
        self.shared.pending().closed = true;
        loop {
            {
                let mut p = self.shared.pending();
                if !p.leader {
                    p.leader = true;
                    break;
                }
            }
            // A request is writing, or handed its leadership to us (a queued `Lead`).
            if let Ok(Cmd::Lead) = rx.recv_timeout(Duration::from_millis(1)) {
                lead(&self.shared, usize::MAX, self.sync_every.is_zero());
            }
        }
        lead(&self.shared, usize::MAX, self.sync_every.is_zero());
        let (file, seq) = {
            let out = self.shared.output();
            (Arc::clone(&out.file), out.seq)
        };
        self.close_segment(&file, seq);
    }
}
