//! The journal end to end over real files and a store that can be switched off.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use stormwall_types::{KeyId, UsageEvent};
use time::OffsetDateTime;

use super::*;
use crate::{EncodedEvent, EventQuery, StoreError};

/// Events by id, insert-or-ignore like the real stores; `down` fails every write.
#[derive(Default)]
struct FakeStore {
    events: Mutex<BTreeMap<String, UsageEvent>>,
    down: AtomicBool,
    inserts: AtomicU64,
}

#[async_trait]
impl EventStore for FakeStore {
    async fn insert_events(&self, events: &[UsageEvent]) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Database("switched off".into()));
        }
        let mut map = self.events.lock().unwrap();
        for e in events {
            self.inserts.fetch_add(1, Ordering::SeqCst);
            map.entry(e.id.clone()).or_insert_with(|| e.clone());
        }
        Ok(())
    }
    async fn query_events(&self, _: &EventQuery) -> Result<Vec<UsageEvent>, StoreError> {
        Ok(self.events.lock().unwrap().values().cloned().collect())
    }
    async fn spend_since(&self, _: &KeyId, _: OffsetDateTime) -> Result<f64, StoreError> {
        Ok(0.0)
    }
    async fn count_events(&self) -> Result<u64, StoreError> {
        Ok(self.events.lock().unwrap().len() as u64)
    }
}

/// Keeps the JSON the journal hands over with each event (first one per id).
#[derive(Default)]
struct BodyStore {
    bodies: Mutex<BTreeMap<String, bytes::Bytes>>,
}

#[async_trait]
impl EventStore for BodyStore {
    async fn insert_events(&self, _: &[UsageEvent]) -> Result<(), StoreError> {
        Err(StoreError::Database(
            "the journal hands over encoded events".into(),
        ))
    }
    async fn insert_encoded_events(&self, events: &[EncodedEvent]) -> Result<(), StoreError> {
        let mut map = self.bodies.lock().unwrap();
        for e in events {
            map.entry(e.event.id.clone())
                .or_insert_with(|| e.body.clone());
        }
        Ok(())
    }
    async fn query_events(&self, _: &EventQuery) -> Result<Vec<UsageEvent>, StoreError> {
        Ok(Vec::new())
    }
    async fn spend_since(&self, _: &KeyId, _: OffsetDateTime) -> Result<f64, StoreError> {
        Ok(0.0)
    }
    async fn count_events(&self) -> Result<u64, StoreError> {
        Ok(self.bodies.lock().unwrap().len() as u64)
    }
}

fn event(i: u32) -> UsageEvent {
    let mut e = UsageEvent::new(
        format!("evt-{i:06}"),
        OffsetDateTime::UNIX_EPOCH,
        std::net::IpAddr::from([127, 0, 0, 1]),
        "POST",
        "/v1/chat/completions",
    );
    e.status = 200;
    e
}

fn config() -> JournalConfig {
    JournalConfig {
        fsync_interval_ms: 5,
        ..JournalConfig::default()
    }
}

fn events_config() -> EventsConfig {
    EventsConfig {
        batch_max: 64,
        flush_interval_ms: 10,
        ..EventsConfig::default()
    }
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

fn segment_files(dir: &Path) -> Vec<u64> {
    segments::list(dir).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_events_reach_the_store_and_durable_resolves_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    let (journal, service) =
        JournalService::start(&config(), dir.path(), store.clone(), &events_config()).unwrap();
    let durables: Vec<_> = (0..500).map(|i| journal.append(event(i))).collect();
    for d in durables {
        d.await.unwrap();
    }
    assert_eq!(journal.stats().appended.load(Ordering::SeqCst), 500);
    until("all shipped", || store.events.lock().unwrap().len() == 500).await;
    assert!(journal.backlog_shipped());
    // Shipped from memory: nothing was read back.
    assert_eq!(journal.stats().read_back.load(Ordering::SeqCst), 0);
    assert_eq!(service.shutdown(Duration::from_secs(5)).await, 0);
    // The closed, shipped segment is deleted at shutdown.
    assert!(segment_files(dir.path()).is_empty());
}

/// With `fsync_interval_ms = 0` the writer thread leads and syncs every group before it is
/// answered; appends queued meanwhile share its writes (group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_groups_are_shared_by_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    let synced = JournalConfig {
        fsync_interval_ms: 0,
        ..config()
    };
    let (journal, service) =
        JournalService::start(&synced, dir.path(), store.clone(), &events_config()).unwrap();
    let durables: Vec<_> = (0..500).map(|i| journal.append(event(i))).collect();
    for d in durables {
        d.await.unwrap();
    }
    let st = journal.stats();
    assert_eq!(st.appended.load(Ordering::SeqCst), 500);
    let writes = st.writes.load(Ordering::SeqCst);
    assert!(writes < 500, "{writes} writes");
    assert!(st.syncs.load(Ordering::SeqCst) >= writes);
    until("all shipped", || store.events.lock().unwrap().len() == 500).await;
    service.shutdown(Duration::from_secs(5)).await;
}

/// Appends racing from many threads (each may lead, or queue behind a leader): every
/// `Durable` settles, every record is in the segments exactly once and sound, and every
/// event reaches the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_appends_from_many_threads_are_each_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    let down = Arc::clone(&store);
    // Kept on disk (the store is down) so the segments can be checked afterwards.
    down.down.store(true, Ordering::SeqCst);
    let (journal, service) =
        JournalService::start(&config(), dir.path(), store.clone(), &events_config()).unwrap();
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                let ds: Vec<_> = (0..250)
                    .map(|i| journal.append(event(t * 1000 + i)))
                    .collect();
                ds
            })
        })
        .collect();
    for t in threads {
        for d in t.join().unwrap() {
            d.await.unwrap();
        }
    }
    assert_eq!(journal.stats().appended.load(Ordering::SeqCst), 2000);
    let left = service.shutdown(Duration::from_millis(200)).await;
    assert!(left > 0);
    let mut ids = Vec::new();
    for seq in segment_files(dir.path()) {
        let bytes = std::fs::read(segments::path(dir.path(), seq)).unwrap();
        let (records, stop) = format::scan(&bytes, format::MAGIC.len());
        assert_eq!(stop, format::Stop::End);
        for r in records {
            ids.push(serde_json::from_slice::<UsageEvent>(r.body).unwrap().id);
        }
    }
    ids.sort();
    let mut want: Vec<_> = (0..8u32)
        .flat_map(|t| (0..250).map(move |i| event(t * 1000 + i).id))
        .collect();
    want.sort();
    assert_eq!(ids, want);
    // A restart ships them all, by reading back (memory is gone).
    store.down.store(false, Ordering::SeqCst);
    let (journal, service) =
        JournalService::start(&config(), dir.path(), store.clone(), &events_config()).unwrap();
    until("backlog shipped", || journal.backlog_shipped()).await;
    assert_eq!(store.events.lock().unwrap().len(), 2000);
    assert_eq!(journal.stats().read_back.load(Ordering::SeqCst), 2000);
    service.shutdown(Duration::from_secs(5)).await;
}

/// The JSON the store gets with each event is exactly the event's JSON as written in its
/// record — shipped from memory (a slice of the group the leader wrote, groups of several
/// records from racing threads included), from a group the writer thread synced, or read
/// back from the segment: the same bytes, none cut short, none shifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_gets_each_events_json_exactly_as_written() {
    // Four threads append 600 events faster than the shipper (a task of this runtime)
    // takes them: memory gets room for all, so the "memory" cases ship every one from it.
    let roomy = JournalConfig {
        memory_bytes: 64 << 20,
        ..config()
    };
    let cases = [
        ("memory", roomy.clone()),
        (
            "read back",
            JournalConfig {
                memory_events: 0,
                ..config()
            },
        ),
        (
            "synced groups",
            JournalConfig {
                fsync_interval_ms: 0,
                ..roomy
            },
        ),
    ];
    for (what, cfg) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BodyStore::default());
        let (journal, service) =
            JournalService::start(&cfg, dir.path(), store.clone(), &events_config()).unwrap();
        // Events of varied lengths, appended from racing threads so groups hold several.
        let sized = |i: u32| {
            let mut e = event(i);
            e.error_code = Some("é".repeat(i as usize % 37));
            e
        };
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    (0..150)
                        .map(|i| journal.append(sized(t * 1000 + i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for t in threads {
            for d in t.join().unwrap() {
                d.await.unwrap();
            }
        }
        until("all shipped", || store.bodies.lock().unwrap().len() == 600).await;
        // What the segments hold, before shutdown deletes them.
        let mut written = BTreeMap::new();
        for seq in segment_files(dir.path()) {
            let bytes = std::fs::read(segments::path(dir.path(), seq)).unwrap();
            for r in format::scan(&bytes, format::MAGIC.len()).0 {
                let e: UsageEvent = serde_json::from_slice(r.body).unwrap();
                written.insert(e.id, r.body.to_vec());
            }
        }
        // One open segment, far from its size and age limits: nothing was deleted yet.
        assert_eq!(written.len(), 600, "{what}");
        let bodies = store.bodies.lock().unwrap().clone();
        for t in 0..4u32 {
            for i in 0..150 {
                let e = sized(t * 1000 + i);
                let got = &bodies[&e.id];
                assert_eq!(
                    &got[..],
                    serde_json::to_vec(&e).unwrap(),
                    "{what}: {}",
                    e.id
                );
                assert_eq!(&got[..], &written[&e.id][..], "{what}: {} as written", e.id);
            }
        }
        let st = journal.stats();
        if cfg.memory_events == 0 {
            assert_eq!(st.read_back.load(Ordering::SeqCst), 600, "{what}");
        } else {
            assert_eq!(st.read_back.load(Ordering::SeqCst), 0, "{what}");
        }
        assert_eq!(service.shutdown(Duration::from_secs(5)).await, 0, "{what}");
    }
}

/// The JSON handed to the store is the written bytes themselves, not a copy: consecutive
/// records written from one allocation are slices lying back to back in it, each after its
/// record's header and append time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_json_is_a_slice_of_the_written_group_not_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BodyStore::default());
    let (journal, service) =
        JournalService::start(&config(), dir.path(), store.clone(), &events_config()).unwrap();
    // One at a time: each append leads and writes its own group, from the same allocation.
    for i in 0..20 {
        journal.append(event(i)).await.unwrap();
    }
    until("all shipped", || store.bodies.lock().unwrap().len() == 20).await;
    let bodies = store.bodies.lock().unwrap().clone();
    let frame_extra = format::HEADER_LEN + 8;
    for i in 1..20 {
        let (a, b) = (&bodies[&event(i - 1).id], &bodies[&event(i).id]);
        assert_eq!(
            b.as_ptr() as usize,
            a.as_ptr() as usize + a.len() + frame_extra,
            "record {i} is not the next slice of the written bytes"
        );
    }
    service.shutdown(Duration::from_secs(5)).await;
}

/// A store outage of 300 events: the journal started on `cfg` with the store down, `each`
/// run after every append, then the store back and every event stored and counted as shipped.
async fn outage_of_300(
    cfg: &JournalConfig,
    each: impl Fn(&JournalService),
) -> (tempfile::TempDir, Arc<FakeStore>, Journal, JournalService) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    store.down.store(true, Ordering::SeqCst);
    let (journal, service) =
        JournalService::start(cfg, dir.path(), store.clone(), &events_config()).unwrap();
    for i in 0..300 {
        journal.append(event(i)).await.unwrap();
        each(&service);
    }
    assert!(service.journal().shared.memory().events.len() <= cfg.memory_events);
    store.down.store(false, Ordering::SeqCst);
    until("all shipped", || store.events.lock().unwrap().len() == 300).await;
    let st = journal.stats();
    until("shipped counted", || {
        st.shipped.load(Ordering::SeqCst) == 300
    })
    .await;
    (dir, store, journal, service)
}

/// Past `memory_events` (a store outage), the shipper reads back what memory could not
/// hold, from the segments, and ships from memory again where memory resumes: every event
/// reaches the store once, in order of the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_memory_bound_the_shipper_reads_the_rest_back_from_disk() {
    let small = JournalConfig {
        memory_events: 50,
        segment_max_bytes: 16 << 10,
        ..config()
    };
    let (_dir, store, journal, service) = outage_of_300(&small, |_| {}).await;
    let st = journal.stats();
    // The first 50 were remembered; beyond them, only what the shipper had taken out of
    // memory (one batch it kept retrying) made room for more.
    let read_back = st.read_back.load(Ordering::SeqCst);
    assert!((200..=250).contains(&read_back), "{read_back} read back");
    // Reading back the gaps and taking the rest from memory stored each event once.
    assert_eq!(store.inserts.load(Ordering::SeqCst), 300);
    // Memory has room again: new events are shipped from it.
    for i in 300..340 {
        journal.append(event(i)).await.unwrap();
    }
    until("new ones shipped", || {
        store.events.lock().unwrap().len() == 340
    })
    .await;
    assert_eq!(st.read_back.load(Ordering::SeqCst), read_back);
    assert_eq!(service.shutdown(Duration::from_secs(5)).await, 0);
}

/// What `event(i)` counts against `memory_bytes` (its JSON is as long for every `i` below
/// a million).
fn weight_of_event() -> usize {
    std::mem::size_of::<Remembered>() + 2 * serde_json::to_vec(&event(0)).unwrap().len()
}

/// Past `memory_bytes` (a store outage), the events memory cannot hold are read back from
/// the segments, in reads no larger than the bound allows: memory stays within its bytes,
/// and every event reaches the store once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_byte_bound_the_shipper_reads_the_rest_back_from_disk() {
    let bound = 40 * weight_of_event();
    let small = JournalConfig {
        memory_bytes: bound as u64,
        segment_max_bytes: 16 << 10,
        ..config()
    };
    let (_dir, store, journal, service) = outage_of_300(&small, |service| {
        let memory = service.journal().shared.memory();
        assert!(memory.bytes <= bound, "{} bytes held", memory.bytes);
        assert!(
            memory.events.len() <= 40,
            "{} events held",
            memory.events.len()
        );
    })
    .await;
    let st = journal.stats();
    let read_back = st.read_back.load(Ordering::SeqCst);
    assert!((200..=260).contains(&read_back), "{read_back} read back");
    assert_eq!(store.inserts.load(Ordering::SeqCst), 300);
    {
        let memory = service.journal().shared.memory();
        assert_eq!(
            (memory.events.len(), memory.bytes),
            (0, 0),
            "all counted out"
        );
    }
    assert_eq!(service.shutdown(Duration::from_secs(5)).await, 0);
}

/// Half of `memory_bytes` waiting wakes the shipper before its tick: a burst is stored from
/// memory at once (nothing spills to the segments), while less than that still waits for
/// the tick. Virtual time: deterministic.
#[tokio::test(start_paused = true)]
async fn half_the_byte_bound_waiting_wakes_the_shipper_before_its_tick() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SlowStore {
        write: Duration::from_millis(5),
        inserts: Mutex::new(Vec::new()),
        stored: AtomicU64::new(0),
    });
    let events = EventsConfig {
        batch_max: 64,
        flush_interval_ms: 1_000,
        ..EventsConfig::default()
    };
    let cfg = JournalConfig {
        memory_bytes: (20 * weight_of_event()) as u64,
        ..config()
    };
    let (journal, service) =
        JournalService::start(&cfg, dir.path(), store.clone(), &events).unwrap();
    // The shipper's first round finds nothing and starts its tick.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let t0 = tokio::time::Instant::now();
    for i in 0..10 {
        journal.append(event(i)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    until("the burst shipped", || {
        store.stored.load(Ordering::SeqCst) == 10
    })
    .await;
    // Five more: under half the bound, so they wait for the tick.
    for i in 10..15 {
        journal.append(event(i)).await.unwrap();
    }
    until("the rest shipped", || {
        store.stored.load(Ordering::SeqCst) == 15
    })
    .await;
    let inserts = store.inserts.lock().unwrap().clone();
    let sizes: Vec<_> = inserts.iter().map(|&(_, n)| n).collect();
    assert_eq!(sizes, [10, 5], "{inserts:?}");
    assert!(
        inserts[0].0 - t0 <= Duration::from_millis(20),
        "woken by the bytes, not the tick: {inserts:?}"
    );
    assert!(
        inserts[1].0 - inserts[0].0 >= Duration::from_millis(1_000),
        "the rest at the next tick: {inserts:?}"
    );
    assert_eq!(journal.stats().read_back.load(Ordering::SeqCst), 0);
    service.shutdown(Duration::from_secs(5)).await;
}

/// A request whose client went away drops its `Durable` unawaited: its event is still
/// written and shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_waiter_went_away_is_still_written_and_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    for fsync_interval_ms in [0, 5] {
        let cfg = JournalConfig {
            fsync_interval_ms,
            ..config()
        };
        let (journal, service) =
            JournalService::start(&cfg, dir.path(), store.clone(), &events_config()).unwrap();
        let base = fsync_interval_ms as u32 * 100;
        for i in 0..20 {
            drop(journal.append(event(base + i)));
        }
        until("shipped", || {
            store.events.lock().unwrap().len() == 20 * (1 + usize::from(fsync_interval_ms > 0))
        })
        .await;
        service.shutdown(Duration::from_secs(5)).await;
    }
}

/// After shutdown began, appends are refused (under `fail_closed`, the answer is not
/// completed as recorded) instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_after_shutdown_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    let (journal, service) =
        JournalService::start(&config(), dir.path(), store.clone(), &events_config()).unwrap();
    journal.append(event(1)).await.unwrap();
    service.shutdown(Duration::from_secs(5)).await;
    assert_eq!(journal.append(event(2)).await, Err(NotJournaled));
    assert_eq!(store.events.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_events_on_disk_and_a_restart_ships_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    store.down.store(true, Ordering::SeqCst);
    let small = JournalConfig {
        segment_max_bytes: 4096,
        ..config()
    };
    let (journal, service) =
        JournalService::start(&small, dir.path(), store.clone(), &events_config()).unwrap();
    for chunk in 0..10u32 {
        let ds: Vec<_> = (chunk * 30..chunk * 30 + 30)
            .map(|i| journal.append(event(i)))
            .collect();
        for d in ds {
            d.await.unwrap();
        }
    }
    // Rotation happened, and nothing is deleted while the store has acknowledged nothing.
    // The writer thread rotates when asked and the gauges follow the ledger, so on a busy
    // machine they may still be catching up: wait (bounded) for all three.
    let stats = journal.stats();
    let settled = || {
        let files = segment_files(dir.path());
        let unshipped = stats.unshipped_bytes.load(Ordering::SeqCst);
        let oldest = stats.oldest_unshipped_ms.load(Ordering::SeqCst);
        (files, unshipped, oldest)
    };
    let mut seen = settled();
    for _ in 0..100 {
        if seen.0.len() > 2 && seen.1 > 0 && seen.2 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = settled();
    }
    let (files, unshipped, oldest) = seen;
    assert!(files.len() > 2, "{files:?}");
    assert!(unshipped > 0);
    assert!(oldest > 0);
    let left = service.shutdown(Duration::from_millis(300)).await;
    assert!(left > 0);
    // (The writer thread rotates on request, so a rotation asked for by the last writes
    // may have added a segment since.)
    let after = segment_files(dir.path());
    assert!(
        files.iter().all(|f| after.contains(f)),
        "{files:?} {after:?}"
    );
    assert!(store.events.lock().unwrap().is_empty());

    // Keep a copy of one segment to replay it later.
    let replay = std::fs::read(segments::path(dir.path(), files[0])).unwrap();

    store.down.store(false, Ordering::SeqCst);
    let (journal, service) =
        JournalService::start(&small, dir.path(), store.clone(), &events_config()).unwrap();
    until("backlog shipped", || journal.backlog_shipped()).await;
    assert_eq!(store.events.lock().unwrap().len(), 300);
    // Only the new, open segment remains.
    assert_eq!(segment_files(dir.path()).len(), 1);
    service.shutdown(Duration::from_secs(5)).await;

    // Replaying a segment already shipped stores nothing twice.
    std::fs::write(segments::path(dir.path(), 1), replay).unwrap();
    let inserts_before = store.inserts.load(Ordering::SeqCst);
    let (journal, service) =
        JournalService::start(&small, dir.path(), store.clone(), &events_config()).unwrap();
    until("replay shipped", || journal.backlog_shipped()).await;
    assert!(store.inserts.load(Ordering::SeqCst) > inserts_before);
    assert_eq!(store.events.lock().unwrap().len(), 300);
    service.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_left_by_a_crash_is_cut_counted_and_the_rest_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = format::MAGIC.to_vec();
    for i in 0..3 {
        format::frame(&mut bytes, 1, &serde_json::to_vec(&event(i)).unwrap()).unwrap();
    }
    let whole = bytes.len();
    format::frame(&mut bytes, 1, &serde_json::to_vec(&event(3)).unwrap()).unwrap();
    bytes.truncate(whole + 20); // the crash hit mid-append
    std::fs::write(segments::path(dir.path(), 7), &bytes).unwrap();
    let store = Arc::new(FakeStore::default());
    let (journal, service) =
        JournalService::start(&config(), dir.path(), store.clone(), &events_config()).unwrap();
    until("backlog shipped", || journal.backlog_shipped()).await;
    assert_eq!(journal.stats().torn_tails.load(Ordering::SeqCst), 1);
    assert_eq!(journal.stats().corrupt.load(Ordering::SeqCst), 0);
    let ids: Vec<_> = store.events.lock().unwrap().keys().cloned().collect();
    assert_eq!(ids, ["evt-000000", "evt-000001", "evt-000002"]);
    // New segments continue the numbering.
    assert_eq!(segment_files(dir.path()), [8]);
    service.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_mid_segment_is_reported_and_kept_never_skipped_silently() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = format::MAGIC.to_vec();
    let mut ends = Vec::new();
    for i in 0..3 {
        format::frame(&mut bytes, 1, &serde_json::to_vec(&event(i)).unwrap()).unwrap();
        ends.push(bytes.len());
    }
    bytes[ends[0] + format::HEADER_LEN + 20] ^= 0x10; // inside the second record
    std::fs::write(segments::path(dir.path(), 1), &bytes).unwrap();
    let store = Arc::new(FakeStore::default());
    let (journal, service) =
        JournalService::start(&config(), dir.path(), store.clone(), &events_config()).unwrap();
    until("backlog shipped", || journal.backlog_shipped()).await;
    assert_eq!(journal.stats().corrupt.load(Ordering::SeqCst), 1);
    assert_eq!(store.events.lock().unwrap().len(), 1);
    let kept = dir.path().join(format!("{:020}.swj.bad-{}", 1, ends[0]));
    assert_eq!(std::fs::read(kept).unwrap(), bytes[ends[0]..]);
    service.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_bound_fail_closed_refuses_requests_and_fail_open_drops_counted() {
    for policy in [JournalPolicy::FailClosed, JournalPolicy::FailOpen] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FakeStore::default());
        store.down.store(true, Ordering::SeqCst);
        let bounded = JournalConfig {
            max_bytes: 2000,
            policy,
            ..config()
        };
        let (journal, service) =
            JournalService::start(&bounded, dir.path(), store.clone(), &events_config()).unwrap();
        for i in 0..20 {
            journal.append(event(i)).await.unwrap();
        }
        assert!(journal.at_bound());
        match policy {
            JournalPolicy::FailClosed => {
                assert!(journal.refuses_requests());
                assert_eq!(journal.stats().refused.load(Ordering::SeqCst), 0);
            }
            JournalPolicy::FailOpen => {
                assert!(!journal.refuses_requests());
                // Past the bound, appends are refused and counted; the requests go on.
                let before = journal.stats().appended.load(Ordering::SeqCst);
                let refused = journal.stats().refused.load(Ordering::SeqCst);
                assert!(refused > 0);
                journal.append(event(99)).await.unwrap();
                assert_eq!(journal.stats().refused.load(Ordering::SeqCst), refused + 1);
                assert_eq!(journal.stats().appended.load(Ordering::SeqCst), before);
            }
        }
        // The store comes back: the journal drains below its bound.
        store.down.store(false, Ordering::SeqCst);
        until("below the bound", || !journal.at_bound()).await;
        assert!(!journal.refuses_requests());
        service.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_share_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    let (_j, service) =
        JournalService::start(&config(), dir.path(), store.clone(), &events_config()).unwrap();
    let second = JournalService::start(&config(), dir.path(), store, &events_config());
    assert!(matches!(second, Err(JournalError::Locked(_))));
    service.shutdown(Duration::from_secs(5)).await;
}

/// A deterministic fuzz loop over crashes: a journal is written, cut at a pseudo-random
/// length (a crash mid-append), sometimes with a flipped bit, and recovered; every event
/// whose record was whole and undamaged is shipped exactly once, nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_random_crashes_ships_exactly_the_sound_records() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..20u32 {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = format::MAGIC.to_vec();
        let mut ends = Vec::new();
        let n = 1 + (rand() % 12) as u32;
        for i in 0..n {
            format::frame(
                &mut bytes,
                1,
                &serde_json::to_vec(&event(round * 100 + i)).unwrap(),
            )
            .unwrap();
            ends.push(bytes.len());
        }
        let cut = format::MAGIC.len() + (rand() as usize % (bytes.len() - format::MAGIC.len() + 1));
        bytes.truncate(cut);
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let flip = if rand() % 3 == 0 && cut > format::MAGIC.len() {
            let pos = format::MAGIC.len() + rand() as usize % (cut - format::MAGIC.len());
            bytes[pos] ^= 1 << (rand() % 8);
            Some(pos)
        } else {
            None
        };
        std::fs::write(segments::path(dir.path(), 1), &bytes).unwrap();
        let sound = match flip {
            Some(pos) => ends.iter().filter(|&&e| e <= pos).count().min(whole),
            None => whole,
        };
        let store = Arc::new(FakeStore::default());
        let (journal, service) =
            JournalService::start(&config(), dir.path(), store.clone(), &events_config()).unwrap();
        until("backlog shipped", || journal.backlog_shipped()).await;
        let got: Vec<_> = store.events.lock().unwrap().keys().cloned().collect();
        let want: Vec<_> = (0..sound as u32)
            .map(|i| format!("evt-{:06}", round * 100 + i))
            .collect();
        assert_eq!(got, want, "round {round}: cut {cut}, flip {flip:?}");
        assert_eq!(store.inserts.load(Ordering::SeqCst), sound as u64);
        service.shutdown(Duration::from_secs(5)).await;
    }
}

#[test]
fn the_shippers_memory_gives_back_a_bursts_room_once_it_has_caught_up() {
    let mut memory = Memory::new(16_384, usize::MAX);
    for i in 0..4_000u32 {
        memory.push(Remembered {
            seq: 1,
            start: u64::from(i),
            end: u64::from(i) + 1,
            append_ms: 0,
            event: event(i),
            body: bytes::Bytes::from_static(b"{}"),
        });
    }
    let burst = memory.events.capacity();
    // Still busy: nothing is given back while the queue is more than a quarter full.
    memory.release_spare();
    assert_eq!(memory.events.capacity(), burst);
    while memory.events.len() > 10 {
        memory.pop();
    }
    memory.release_spare();
    assert!(
        memory.events.capacity() <= MEMORY_KEEP.max(memory.events.len()) * 2,
        "{} slots kept after a burst of {burst}",
        memory.events.capacity()
    );
    let left: Vec<u64> = memory.events.iter().map(|r| r.start).collect();
    assert_eq!(
        left,
        (3_990..4_000).collect::<Vec<u64>>(),
        "nothing lost, order kept"
    );
}

/// Each insert takes `write` of (virtual) time and is logged with its start and size.
struct SlowStore {
    write: Duration,
    inserts: Mutex<Vec<(tokio::time::Instant, usize)>>,
    stored: AtomicU64,
}

#[async_trait]
impl EventStore for SlowStore {
    async fn insert_events(&self, _: &[UsageEvent]) -> Result<(), StoreError> {
        Err(StoreError::Database(
            "the journal hands over encoded events".into(),
        ))
    }
    async fn insert_encoded_events(&self, events: &[EncodedEvent]) -> Result<(), StoreError> {
        self.inserts
            .lock()
            .unwrap()
            .push((tokio::time::Instant::now(), events.len()));
        tokio::time::sleep(self.write).await;
        self.stored.fetch_add(events.len() as u64, Ordering::SeqCst);
        Ok(())
    }
    async fn query_events(&self, _: &EventQuery) -> Result<Vec<UsageEvent>, StoreError> {
        Ok(Vec::new())
    }
    async fn spend_since(&self, _: &KeyId, _: OffsetDateTime) -> Result<f64, StoreError> {
        Ok(0.0)
    }
    async fn count_events(&self) -> Result<u64, StoreError> {
        Ok(self.stored.load(Ordering::SeqCst))
    }
}

/// A shipper tick of 100 ms, batches of 64, and a store that takes 5 ms per insert.
fn slow_shipper(dir: &Path) -> (Arc<SlowStore>, Journal, JournalService) {
    let store = Arc::new(SlowStore {
        write: Duration::from_millis(5),
        inserts: Mutex::new(Vec::new()),
        stored: AtomicU64::new(0),
    });
    let events = EventsConfig {
        batch_max: 64,
        flush_interval_ms: 100,
        ..EventsConfig::default()
    };
    let (journal, service) = JournalService::start(&config(), dir, store.clone(), &events).unwrap();
    (store, journal, service)
}

/// Events that arrive one by one while the store writes wait for the shipper's next tick
/// and go in one transaction, as with the in-memory writer; chasing them would store a
/// handful per transaction, back to back. Virtual time: deterministic.
#[tokio::test(start_paused = true)]
async fn a_trickle_of_events_is_shipped_once_a_tick_not_chased_per_insert() {
    let dir = tempfile::tempdir().unwrap();
    let (store, journal, service) = slow_shipper(dir.path());
    for i in 0..300 {
        journal.append(event(i)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let last_append = tokio::time::Instant::now();
    until("all shipped", || store.stored.load(Ordering::SeqCst) == 300).await;
    let inserts = store.inserts.lock().unwrap().clone();
    // Ticks every ~105 ms (the tick starts after the last insert); one that finds more
    // than 64 events ships a full batch and follows it at once.
    assert!(
        inserts.len() <= 8,
        "one partial batch a tick, got {} inserts: {inserts:?}",
        inserts.len()
    );
    for pair in inserts.windows(2) {
        let ((at, n), (next, _)) = (pair[0], pair[1]);
        if n < 64 {
            assert!(
                next - at >= Duration::from_millis(100),
                "a partial batch is followed only at the next tick: {inserts:?}"
            );
        } else {
            assert_eq!(next - at, Duration::from_millis(5), "{inserts:?}");
        }
    }
    // Prompt all the same: the last event is shipped within one tick and its inserts.
    let (last_insert, _) = *inserts.last().unwrap();
    assert!(
        last_insert - last_append <= Duration::from_millis(100 + 5 * 8),
        "shipped {:?} after the last append",
        last_insert - last_append
    );
    service.shutdown(Duration::from_secs(5)).await;
}

/// A backlog (more than a batch waiting) is shipped batch after batch without waiting for
/// ticks in between; only the partial remainder ends the round.
#[tokio::test(start_paused = true)]
async fn a_burst_is_shipped_in_full_batches_back_to_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, journal, service) = slow_shipper(dir.path());
    let durables: Vec<_> = (0..200).map(|i| journal.append(event(i))).collect();
    for d in durables {
        d.await.unwrap();
    }
    until("all shipped", || store.stored.load(Ordering::SeqCst) == 200).await;
    let inserts = store.inserts.lock().unwrap().clone();
    let sizes: Vec<_> = inserts.iter().map(|&(_, n)| n).collect();
    assert_eq!(sizes, [64, 64, 64, 8]);
    assert_eq!(
        inserts[3].0 - inserts[0].0,
        Duration::from_millis(15),
        "{inserts:?}"
    );
    service.shutdown(Duration::from_secs(5)).await;
}

/// At shutdown the shipper drains everything, partial batches included, before it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ships_every_partial_batch_left() {
    let dir = tempfile::tempdir().unwrap();
    let (store, journal, service) = slow_shipper(dir.path());
    for i in 0..10 {
        journal.append(event(i)).await.unwrap();
    }
    assert_eq!(service.shutdown(Duration::from_secs(5)).await, 0);
    assert_eq!(store.stored.load(Ordering::SeqCst), 10);
    assert!(segment_files(dir.path()).is_empty());
}
