//! The shipper task: takes written events oldest first — from memory, where the writer left
//! them, or read back from the segments for what memory does not hold — inserts them into
//! the store in batches (the store ignores an event id it already holds, so a
//! replay never duplicates), moves its cursor only when the store acknowledged, and deletes
//! a segment once it is closed and wholly acknowledged. A store outage only makes it retry
//! (with backoff) while the journal grows on disk.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use stormwall_types::UsageEvent;
use tokio::sync::watch;

use super::{Shared, format, segments};
use crate::{EncodedEvent, EventStore};

/// Most bytes read from a segment at once: `memory_bytes` within these bounds, so reading
/// back costs no more memory than shipping from memory would.
pub(super) const READ_MAX: u64 = 4 << 20;
/// Fewest bytes read from a segment at once (see [`READ_MAX`]).
pub(super) const READ_MIN: u64 = 64 << 10;
/// Longest wait between two retries while the store is down.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// What the shipper is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Ship as records are written.
    Run,
    /// The writer has stopped: ship what is left, then end.
    Drain,
}

/// The shipper's state.
pub(super) struct Shipper {
    pub(super) shared: Arc<Shared>,
    pub(super) store: Arc<dyn EventStore>,
    pub(super) batch_max: usize,
    /// Most bytes read back from a segment at once.
    pub(super) read_max: u64,
    pub(super) idle: Duration,
}

/// A batch read from the journal: events and where the cursor goes once they are stored.
struct Batch {
    seq: u64,
    end: u64,
    events: Vec<EncodedEvent>,
    next_ms: Option<u64>,
}

/// What the ledger says to do next.
enum Next {
    /// Ship these events, taken from memory.
    Memory(Batch),
    /// Read `[from, to)` of segment `seq`.
    Read { seq: u64, from: u64, to: u64 },
    /// Segment `seq` is closed and shipped: delete it.
    Delete(u64),
    /// Nothing written is unshipped.
    Idle,
}

impl Shipper {
    pub(super) async fn run(self, mut phase: watch::Receiver<Phase>) {
        loop {
            let draining = *phase.borrow() == Phase::Drain;
            self.ship_available(draining).await;
            if draining {
                break;
            }
            tokio::select! {
                changed = phase.changed() => {
                    if changed.is_err() {
                        // The service is gone without a shutdown: nothing will drain us.
                        break;
                    }
                }
                // Not woken per write: a tick gathers what many groups wrote into one
                // store transaction per `batch_max` events, as the in-memory writer does.
                () = tokio::time::sleep(self.idle) => {}
                // ... unless half of `memory_bytes` waits already: a burst is stored now,
                // rather than held in memory for the rest of the tick or read back later.
                () = self.shared.ship_now.notified() => {}
            }
            self.shared.refresh(&self.shared.ledger());
        }
    }

    /// Ships what is written: full batches, then one partial batch from memory, after which
    /// the rest waits for the next tick (see [`Shipper::run`]); while `draining`,
    /// everything.
    async fn ship_available(&self, draining: bool) {
        loop {
            let next = self.next();
            match next {
                Next::Idle => return,
                Next::Delete(seq) => self.delete(seq),
                Next::Memory(batch) => {
                    let partial = batch.events.len() < self.batch_max;
                    self.ship(&batch).await;
                    // Events keep arriving while the store writes. Chasing them would
                    // store a few events per transaction, back to back, each one a
                    // blocking-pool hand-off (thread wakes) and a commit (WAL writes):
                    // more CPU per request than the in-memory path, which gathers a
                    // batch for `flush_interval_ms`. They wait for the next tick
                    // instead; a full batch means a backlog and is followed at once.
                    if partial && !draining {
                        return;
                    }
                }
                Next::Read { seq, from, to } => {
                    let Some(batch) = self.read(seq, from, to) else {
                        continue;
                    };
                    self.shared
                        .stats
                        .read_back
                        .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                    self.ship(&batch).await;
                }
            }
        }
    }

    /// Stores a batch, then moves the cursor past it.
    async fn ship(&self, batch: &Batch) {
        self.store_batch(batch).await;
        let mut ledger = self.shared.ledger();
        if ledger.segments.front().is_some_and(|s| s.seq == batch.seq) {
            ledger.cursor = batch.end;
            ledger.cursor_ms = batch.next_ms;
        }
        self.shared.refresh(&ledger);
    }

    fn next(&self) -> Next {
        let ledger = self.shared.ledger();
        let Some(front) = ledger.segments.front() else {
            return Next::Idle;
        };
        if ledger.cursor < front.len {
            let (seq, cursor) = (front.seq, ledger.cursor);
            let mut to = front.len.min(cursor.saturating_add(self.read_max));
            let mut memory = self.shared.memory();
            // What the cursor has passed was shipped by reading the segment.
            while memory
                .events
                .front()
                .is_some_and(|e| e.seq < seq || (e.seq == seq && e.start < cursor))
            {
                memory.pop();
            }
            match memory.events.front() {
                Some(e) if e.seq == seq && e.start == cursor => {
                    let mut events = Vec::new();
                    let mut end = cursor;
                    while events.len() < self.batch_max
                        && let Some(e) = memory.events.front()
                        && e.seq == seq
                        && e.start == end
                        && e.end <= front.len
                    {
                        end = e.end;
                        if let Some(e) = memory.pop() {
                            events.push(EncodedEvent {
                                event: e.event,
                                body: e.body,
                            });
                        }
                    }
                    memory.release_spare();
                    if events.is_empty() {
                        // Its bytes are written but not yet in the ledger: next tick (the
                        // writer wakes the shipper only after updating the ledger).
                        return Next::Idle;
                    }
                    // Taken: what gathers from here on may wake the shipper again.
                    memory.woken = false;
                    let next_ms = memory
                        .events
                        .front()
                        .filter(|e| e.seq == seq && e.start == end)
                        .map(|e| e.append_ms);
                    return Next::Memory(Batch {
                        seq,
                        end,
                        events,
                        next_ms,
                    });
                }
                // Memory resumes further on: read back only the gap.
                Some(e) if e.seq == seq => to = to.min(e.start),
                _ => {}
            }
            return Next::Read {
                seq,
                from: cursor,
                to,
            };
        }
        if front.closed {
            Next::Delete(front.seq)
        } else {
            Next::Idle
        }
    }

    fn delete(&self, seq: u64) {
        if let Err(e) = segments::remove(&self.shared.dir, seq) {
            tracing::warn!(error = %e, "journal: cannot delete a shipped segment");
        }
        let mut ledger = self.shared.ledger();
        if ledger.segments.front().is_some_and(|s| s.seq == seq) {
            ledger.segments.pop_front();
            ledger.cursor = format::MAGIC.len() as u64;
            ledger.cursor_ms = None;
        }
        self.shared.refresh(&ledger);
    }

    /// Reads and decodes up to `batch_max` records from `[from, to)` of segment `seq`;
    /// `None` when the range held damage (reported, bytes kept, cursor moved past it).
    fn read(&self, seq: u64, from: u64, to: u64) -> Option<Batch> {
        let dir = &self.shared.dir;
        let len = usize::try_from(to - from).unwrap_or(usize::MAX);
        let mut bytes = match segments::read_range(dir, seq, from, len) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "journal: cannot read a segment");
                return self.skip_damage(seq, from, to, None);
            }
        };
        if matches!(format::read_at(&bytes, 0), Err(format::Stop::Torn { .. })) {
            // A record longer than one read: read to the end of what is written.
            let whole = self.shared.ledger().segments.front().map_or(to, |s| s.len);
            if whole > to {
                bytes = segments::read_range(
                    dir,
                    seq,
                    from,
                    usize::try_from(whole - from).unwrap_or(usize::MAX),
                )
                .ok()?;
            }
        }
        // Shared, so each event's JSON is a slice of what was read, not a copy.
        let bytes = Bytes::from(bytes);
        let (records, stop) = format::scan(&bytes, 0);
        if records.is_empty() {
            // Written, whole-sized and still not sound: damage on disk.
            let why = match stop {
                format::Stop::Corrupt { why, .. } => why,
                _ => "record unreadable",
            };
            return self.skip_damage(seq, from, to, Some((why, &bytes[..])));
        }
        let mut events = Vec::with_capacity(records.len().min(self.batch_max));
        let mut end = from;
        let mut next_ms = None;
        for r in records {
            if events.len() >= self.batch_max {
                next_ms = Some(r.append_ms);
                break;
            }
            let decoded = std::str::from_utf8(r.body)
                .map_err(|e| e.to_string())
                .and_then(|body| {
                    serde_json::from_str::<UsageEvent>(body)
                        .map(|event| EncodedEvent {
                            event,
                            body: bytes.slice_ref(r.body),
                        })
                        .map_err(|e| e.to_string())
                });
            match decoded {
                Ok(e) => events.push(e),
                Err(e) => {
                    self.shared.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(segment = seq, offset = from + r.at as u64, error = %e, "journal: a sound record does not decode as an event; it is not shipped");
                }
            }
            end = from + r.end as u64;
        }
        Some(Batch {
            seq,
            end,
            events,
            next_ms,
        })
    }

    /// Reports damage found while shipping, keeps its bytes, and moves past the segment's
    /// written part (nothing after a damaged record can be trusted to be framed).
    fn skip_damage(
        &self,
        seq: u64,
        from: u64,
        to: u64,
        found: Option<(&'static str, &[u8])>,
    ) -> Option<Batch> {
        self.shared.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        let mut ledger = self.shared.ledger();
        let front = ledger.segments.front().copied()?;
        let kept = found.as_ref().and_then(|(_, bytes)| {
            let bad = self.shared.dir.join(format!("{seq:020}.swj.bad-{from}"));
            std::fs::write(&bad, bytes).ok().map(|()| bad)
        });
        tracing::error!(
            segment = seq,
            offset = from,
            bytes = to - from,
            why = found.as_ref().map_or("read failed", |f| f.0),
            kept_in = ?kept,
            "journal: damaged records while shipping; moving past them"
        );
        if front.seq == seq {
            ledger.cursor = to;
            ledger.cursor_ms = None;
        }
        self.shared.refresh(&ledger);
        None
    }

    /// Inserts a batch, retrying until the store acknowledges it; gives up only while
    /// draining at shutdown (the batch stays in the journal for the next start).
    async fn store_batch(&self, batch: &Batch) {
        if batch.events.is_empty() {
            return;
        }
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.insert_encoded_events(&batch.events).await {
                Ok(()) => {
                    self.shared
                        .stats
                        .shipped
                        .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                    return;
                }
                Err(crate::StoreError::Corrupt(_)) => {
                    // An event the store cannot encode fails every retry: store the batch
                    // one by one, so only that event is refused (counted and logged).
                    for event in &batch.events {
                        loop {
                            match self
                                .store
                                .insert_encoded_events(std::slice::from_ref(event))
                                .await
                            {
                                Ok(()) => {
                                    self.shared.stats.shipped.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(crate::StoreError::Corrupt(_)) => {
                                    self.shared.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                                    tracing::error!(
                                        "journal: the store refused an event as unencodable; it is not shipped"
                                    );
                                }
                                Err(_) => {
                                    self.shared
                                        .stats
                                        .ship_errors
                                        .fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(MAX_RETRY_DELAY).await;
                                    continue;
                                }
                            }
                            break;
                        }
                    }
                    return;
                }
                Err(e) => {
                    let n = self
                        .shared
                        .stats
                        .ship_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() || n == 0 {
                        tracing::warn!(error = %e, events = batch.events.len(), "journal: store write failed; retrying while the journal holds the events");
                    }
                    tokio::time::sleep(delay).await;
                    self.shared.refresh(&self.shared.ledger());
                    delay = delay.saturating_mul(2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }
}
