//! The off-request-path event pipeline: the gateway hands each [`UsageEvent`] to an
//! [`EventSink`] without awaiting, and a background [`BatchWriter`] task writes them to the
//! [`EventStore`] in batches.
//!
//! The channel is bounded so a slow or stalled database costs memory up to a fixed limit
//! and never latency: when it is full, [`EventSink::record`] drops the event and counts it
//! in [`EventSinkStats::dropped`], which the gateway exports as a metric.
//!
//! Shutdown does not wait for every `EventSink` clone to be dropped (request handlers may
//! still hold some): [`BatchWriter::shutdown`] signals the task, which closes the channel,
//! writes what is queued, and exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use stormwall_types::UsageEvent;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{EventStore, EventsConfig, StoreError};

/// Attempts per batch before it may be counted as a write error (with `retry_for_secs`,
/// retries go on until that much time has passed).
const WRITE_ATTEMPTS: u32 = 4;
/// Longest wait between two retries during an outage.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Wait before the first retry; each further retry waits four times longer.
/// Event slots the writer keeps between batches while traffic is light.
const BATCH_KEEP: usize = 64;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// After the first drop, one warning per this many drops, so a stalled store cannot
/// flood the logs.
const DROP_LOG_EVERY: u64 = 10_000;

/// Counters of the event pipeline, shared by every sink clone and the writer task.
#[derive(Debug, Default)]
pub struct EventSinkStats {
    /// Events accepted into the channel.
    pub accepted: AtomicU64,
    /// Events refused because the channel was full or closed.
    pub dropped: AtomicU64,
    /// Events in batches the store committed (re-delivered duplicates included).
    pub written: AtomicU64,
    /// Batches abandoned after every retry failed.
    pub write_errors: AtomicU64,
    /// Events lost in abandoned batches (or rejected one by one as unencodable).
    pub lost: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
}

/// A point-in-time copy of [`EventSinkStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventSinkSnapshot {
    /// Events accepted into the channel.
    pub accepted: u64,
    /// Events refused because the channel was full or closed.
    pub dropped: u64,
    /// Events in batches the store committed.
    pub written: u64,
    /// Batches abandoned after every retry failed.
    pub write_errors: u64,
    /// Events lost in abandoned batches.
    pub lost: u64,
    /// Batches committed.
    pub batches: u64,
}

impl EventSinkStats {
    /// Reads every counter (each individually atomic; the set is not one snapshot).
    pub fn snapshot(&self) -> EventSinkSnapshot {
        EventSinkSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
        }
    }
}

impl EventSinkSnapshot {
    /// Accepted events neither written nor lost yet: queued or in a batch being written.
    pub fn pending(&self) -> u64 {
        self.accepted
            .saturating_sub(self.written.saturating_add(self.lost))
    }
}

/// The request path's handle on the event pipeline. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<UsageEvent>,
    stats: Arc<EventSinkStats>,
    /// The writer's wake-up for a full batch (`None`: no writer, see [`EventSink::channel`]).
    full: Option<Arc<BatchReady>>,
}

/// Wakes the writer once its batch can be filled. While it gathers a batch the writer does
/// not wait on the channel, which would wake it (and often the other worker thread) for
/// every event; it sleeps until the batch's flush time or this signal.
#[derive(Debug)]
struct BatchReady {
    /// Queued events that fill the writer's batch (the whole `batch_max` while it is idle
    /// or writing).
    at: AtomicUsize,
    notify: Notify,
}

impl EventSink {
    /// A sink whose events go to the returned receiver instead of a store (for tests of
    /// code that records events). A capacity of 0 is raised to 1.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<UsageEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sink = Self {
            tx,
            stats: Arc::new(EventSinkStats::default()),
            full: None,
        };
        (sink, rx)
    }

    /// Queues an event for writing, or counts it as dropped if the channel is full or
    /// closed. Never awaits.
    pub fn record(&self, event: UsageEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                if let Some(full) = &self.full
                    && self.queued() >= full.at.load(Ordering::SeqCst)
                {
                    full.notify.notify_one();
                }
            }
            Err(e) => {
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "channel full",
                    mpsc::error::TrySendError::Closed(_) => "channel closed",
                };
                let total = self
                    .stats
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                if total == 1 || total.is_multiple_of(DROP_LOG_EVERY) {
                    tracing::warn!(dropped_total = total, reason, "usage event dropped");
                }
            }
        }
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &Arc<EventSinkStats> {
        &self.stats
    }

    /// Events waiting in the channel right now (a gauge for metrics).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity().saturating_sub(self.tx.capacity())
    }
}

/// Why [`BatchWriter::shutdown`] did not finish cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShutdownError {
    /// The final flush outlived the deadline; the task was aborted.
    #[error("event writer did not finish within the deadline; {unwritten} events not written")]
    Deadline {
        /// Accepted events that were neither written nor counted lost.
        unwritten: u64,
    },
    /// The writer task panicked.
    #[error("event writer task failed")]
    TaskFailed,
}

/// The background task that writes queued events to the store in batches.
#[derive(Debug)]
pub struct BatchWriter {
    close: oneshot::Sender<()>,
    task: JoinHandle<()>,
    stats: Arc<EventSinkStats>,
}

impl BatchWriter {
    /// Starts the writer task and returns the sink that feeds it. A batch is written when
    /// it reaches `batch_max` events or its first event has waited `flush_interval_ms`.
    /// Zero capacities are raised to 1. Must be called within a Tokio runtime.
    pub fn spawn(store: Arc<dyn EventStore>, config: &EventsConfig) -> (EventSink, BatchWriter) {
        let (mut sink, rx) = EventSink::channel(config.channel_capacity);
        let stats = Arc::clone(&sink.stats);
        let (close, close_rx) = oneshot::channel();
        let full = Arc::new(BatchReady {
            at: AtomicUsize::new(config.batch_max.max(1)),
            notify: Notify::new(),
        });
        sink.full = Some(Arc::clone(&full));
        let task_loop = WriterLoop {
            store,
            stats: Arc::clone(&stats),
            full,
            batch_max: config.batch_max.max(1),
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            retry_for: Duration::from_secs(config.retry_for_secs),
        };
        // A single long-lived background task started once at startup, owned and joined by
        // `BatchWriter::shutdown`: not the detached request-path spawn the lint guards against.
        #[allow(clippy::disallowed_methods)]
        let task = tokio::spawn(task_loop.run(rx, close_rx));
        (sink, BatchWriter { close, task, stats })
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &Arc<EventSinkStats> {
        &self.stats
    }

    /// Closes the channel (later `record` calls count as dropped), writes everything
    /// already queued, and waits for the task to finish, at most `deadline`.
    pub async fn shutdown(self, deadline: Duration) -> Result<EventSinkSnapshot, ShutdownError> {
        // An error means the task already ended (every sink dropped); joining is enough.
        let _ = self.close.send(());
        let mut task = self.task;
        match tokio::time::timeout(deadline, &mut task).await {
            Ok(Ok(())) => Ok(self.stats.snapshot()),
            Ok(Err(_)) => Err(ShutdownError::TaskFailed),
            Err(_) => {
                task.abort();
                let unwritten = self.stats.snapshot().pending();
                tracing::warn!(unwritten, "event writer missed its shutdown deadline");
                Err(ShutdownError::Deadline { unwritten })
            }
        }
    }
}

/// State of the writer task.
struct WriterLoop {
    store: Arc<dyn EventStore>,
    stats: Arc<EventSinkStats>,
    full: Arc<BatchReady>,
    batch_max: usize,
    flush_interval: Duration,
    retry_for: Duration,
}

impl WriterLoop {
    async fn run(self, mut rx: mpsc::Receiver<UsageEvent>, mut close: oneshot::Receiver<()>) {
        // Grown as traffic needs and shrunk again when it is light: a `batch_max` of
        // events held for the life of an idle process is most of a megabyte.
        let mut batch = Vec::new();
        // Either arm of `close` (signal sent, or the BatchWriter dropped) means shut down;
        // every path that sees it leaves this loop, so it is never polled again.
        'run: loop {
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    _ = &mut close => break 'run,
                    n = rx.recv_many(&mut batch, self.batch_max) => {
                        if n == 0 {
                            break 'run; // every sink dropped and the queue is empty
                        }
                    }
                }
            }
            let flush_at = Instant::now() + self.flush_interval;
            let mut due = false;
            loop {
                // What is queued already joins the batch without waiting.
                while batch.len() < self.batch_max {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => break 'run,
                    }
                }
                if due || batch.len() >= self.batch_max {
                    break;
                }
                let room = self.batch_max - batch.len();
                if self.full.at.swap(room, Ordering::SeqCst) != room {
                    // Sinks compare the queue with `room` from now on; an event queued
                    // while they still compared with the old figure is looked for once more.
                    continue;
                }
                tokio::select! {
                    biased;
                    _ = &mut close => break 'run,
                    () = self.full.notify.notified() => {}
                    () = tokio::time::sleep_until(flush_at) => due = true,
                }
            }
            self.full.at.store(self.batch_max, Ordering::SeqCst);
            let written = batch.len();
            self.write(&mut batch).await;
            if written < BATCH_KEEP {
                batch.shrink_to(BATCH_KEEP);
            }
        }

        // Drain: refuse new events, then write what was queued before the close.
        rx.close();
        loop {
            if batch.len() < self.batch_max {
                let room = self.batch_max - batch.len();
                rx.recv_many(&mut batch, room).await;
            }
            if batch.is_empty() {
                break;
            }
            self.write(&mut batch).await;
        }
    }

    /// Writes one batch with retries and clears it. Failures are counted and logged once
    /// per batch, with the error but never event contents.
    async fn write(&self, batch: &mut Vec<UsageEvent>) {
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        let started = Instant::now();
        loop {
            match self.store.insert_events(batch).await {
                Ok(()) => {
                    self.count_written(batch.len());
                    break;
                }
                Err(StoreError::Corrupt(_)) => {
                    // An event that cannot be encoded fails every retry; write the batch
                    // one by one so only that event is lost.
                    self.write_individually(batch).await;
                    break;
                }
                Err(e) if attempt < WRITE_ATTEMPTS || started.elapsed() < self.retry_for => {
                    if attempt == WRITE_ATTEMPTS {
                        tracing::warn!(error = %e, "event store unavailable; retrying while events queue");
                    } else {
                        tracing::debug!(error = %e, attempt, "event batch write failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(4).min(MAX_RETRY_DELAY);
                    attempt += 1;
                }
                Err(e) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .lost
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::warn!(error = %e, events = batch.len(), attempts = attempt, "event batch abandoned");
                    break;
                }
            }
        }
        batch.clear();
    }

    async fn write_individually(&self, batch: &[UsageEvent]) {
        let mut rejected = 0u64;
        for event in batch {
            match self.store.insert_events(std::slice::from_ref(event)).await {
                Ok(()) => self.count_written(1),
                Err(_) => rejected += 1,
            }
        }
        if rejected > 0 {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            self.stats.lost.fetch_add(rejected, Ordering::Relaxed);
            tracing::warn!(
                events = rejected,
                "usage events rejected by the store as unencodable"
            );
        }
    }

    fn count_written(&self, n: usize) {
        self.stats.written.fetch_add(n as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u32) -> UsageEvent {
        UsageEvent::new(
            format!("evt-{i:04}"),
            time::OffsetDateTime::UNIX_EPOCH,
            std::net::IpAddr::from([127, 0, 0, 1]),
            "POST",
            "/v1/chat/completions",
        )
    }

    #[tokio::test]
    async fn sink_counts_full_and_closed_channels() {
        let (sink, mut rx) = EventSink::channel(2);
        for i in 0..5 {
            sink.record(event(i));
        }
        assert_eq!(sink.queued(), 2);
        let s = sink.stats().snapshot();
        assert_eq!((s.accepted, s.dropped), (2, 3));
        rx.close();
        sink.record(event(9));
        assert_eq!(sink.stats().snapshot().dropped, 4);
    }

    #[test]
    fn pending_never_underflows() {
        let s = EventSinkSnapshot {
            accepted: 1,
            written: 5,
            ..Default::default()
        };
        assert_eq!(s.pending(), 0);
    }
}
