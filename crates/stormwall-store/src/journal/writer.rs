//! The writer thread: group commit. It takes everything queued, writes it with one `write`
//! to the open segment, answers the waiting requests, syncs on the configured interval (or
//! before answering, with an interval of 0), and rotates segments by size and age.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{JournalConfig, JournalPolicy, Msg, NotJournaled, Segment, Shared, format, segments};

/// Most records written in one group.
const GROUP_MAX: usize = 4096;

/// The writer thread's state.
pub(super) struct Writer {
    shared: Arc<Shared>,
    file: Option<File>,
    seq: u64,
    len: u64,
    opened: Instant,
    first_ms: Option<u64>,
    dirty: bool,
    last_sync: Instant,
    sync_every: Duration,
    segment_max_bytes: u64,
    segment_max_age: Duration,
    buf: Vec<u8>,
    acks: Vec<oneshot::Sender<Result<(), NotJournaled>>>,
}

impl Writer {
    /// A writer appending to `file`, the freshly created segment `seq`.
    pub(super) fn new(shared: Arc<Shared>, config: &JournalConfig, file: File, seq: u64) -> Self {
        Self {
            shared,
            file: Some(file),
            seq,
            len: format::MAGIC.len() as u64,
            opened: Instant::now(),
            first_ms: None,
            dirty: false,
            last_sync: Instant::now(),
            sync_every: Duration::from_millis(config.fsync_interval_ms),
            segment_max_bytes: config.segment_max_bytes.max(1),
            segment_max_age: Duration::from_secs(config.segment_max_age_secs.max(1)),
            buf: Vec::with_capacity(1 << 20),
            acks: Vec::with_capacity(GROUP_MAX),
        }
    }

    /// Runs until told to close (or every handle is gone).
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let first = if self.dirty {
                let wait = self.sync_every.saturating_sub(self.last_sync.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        self.sync();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            let mut closing = self.take(first);
            while !closing && self.acks.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(m) => closing = self.take(m),
                    Err(_) => break,
                }
            }
            self.commit();
            if closing {
                break;
            }
        }
        self.close_segment();
    }

    /// Adds a message to the group; true when it asks to close.
    fn take(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Append(bytes, ack) => {
                self.buf.extend_from_slice(&bytes);
                self.acks.push(ack);
                false
            }
            Msg::Close => true,
        }
    }

    /// Writes the group, answers its requests.
    fn commit(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let n = self.acks.len() as u64;
        let now_ms = super::now_ms();
        if self.file.is_none() {
            self.rotate();
        }
        if self.len > format::MAGIC.len() as u64
            && (self.len >= self.segment_max_bytes || self.opened.elapsed() >= self.segment_max_age)
        {
            self.rotate();
        }
        let result = self.write_group();
        let outcome = match result {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.dirty = true;
                if self.sync_every.is_zero() {
                    self.sync();
                }
                self.first_ms.get_or_insert(now_ms);
                let st = &self.shared.stats;
                st.appended.fetch_add(n, Ordering::Relaxed);
                st.writes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, events = n, segment = self.seq, "journal: write failed; events not journaled");
                self.shared.stats.refused.fetch_add(n, Ordering::Relaxed);
                match self.shared.policy {
                    JournalPolicy::FailOpen => Ok(()),
                    JournalPolicy::FailClosed => Err(NotJournaled),
                }
            }
        };
        {
            let mut ledger = self.shared.ledger();
            if let Some(s) = ledger.segments.back_mut().filter(|s| s.seq == self.seq) {
                s.len = self.len;
                s.first_ms = s.first_ms.or(self.first_ms);
            }
            self.shared.refresh(&ledger);
        }
        for ack in self.acks.drain(..) {
            // A request that went away no longer waits; nothing to tell it.
            let _ = ack.send(outcome);
        }
        self.buf.clear();
        if self.dirty && self.last_sync.elapsed() >= self.sync_every {
            self.sync();
        }
    }

    fn write_group(&mut self) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("no open segment"));
        };
        if let Err(e) = file.write_all(&self.buf) {
            // Drop what a partial write left, so the segment stays sound; then move on to a
            // new segment for the next group.
            let _ = file.set_len(self.len);
            self.rotate();
            return Err(e);
        }
        Ok(())
    }

    fn sync(&mut self) {
        if let Some(file) = &self.file
            && let Err(e) = file.sync_data()
        {
            tracing::error!(error = %e, segment = self.seq, "journal: fsync failed");
        }
        self.shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    /// Syncs and closes the open segment (the shipper may delete it once shipped).
    fn close_segment(&mut self) {
        if self.file.is_some() {
            self.sync();
        }
        self.file = None;
        let mut ledger = self.shared.ledger();
        if let Some(s) = ledger.segments.back_mut().filter(|s| s.seq == self.seq) {
            s.len = self.len;
            s.closed = true;
        }
        self.shared.refresh(&ledger);
        drop(ledger);
    }

    /// Closes the open segment and starts the next one.
    fn rotate(&mut self) {
        self.close_segment();
        let next = self.seq + 1;
        match segments::create(&self.shared.dir, next) {
            Ok(file) => {
                self.file = Some(file);
                self.seq = next;
                self.len = format::MAGIC.len() as u64;
                self.opened = Instant::now();
                self.first_ms = None;
                let mut ledger = self.shared.ledger();
                ledger.segments.push_back(Segment {
                    seq: next,
                    len: self.len,
                    closed: false,
                    first_ms: None,
                });
            }
            Err(e) => {
                // Retried at the next group; meanwhile appends fail and are counted.
                tracing::error!(error = %e, "journal: cannot start a new segment");
                self.seq = next;
            }
        }
    }
}
