//! The store's integration tests: a backend-neutral suite run against SQLite always and
//! against PostgreSQL when `STORMWALL_TEST_POSTGRES_URL` is set (each test in a schema of
//! its own, so tests run in parallel; a set variable with an unreachable server fails), then
//! the batch writer.

// `allow-unwrap-in-tests` covers `#[test]` functions only; the shared suite and fixtures
// here are test code too, where a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use stormwall_store::{
    AUDIT_GENESIS, ActionOutcome, ActionQuery, ActionRecord, AlertQuery, AlertStatus, AuditEntry,
    AuditQuery, AuditRecord, BatchWriter, ControlEventQuery, EventQuery, EventStore, EventsConfig,
    IncidentQuery, KeyFilter, Opened, PostgresConfig, PostgresStore, ShutdownError, SqliteStore,
    Store, StoreConfig, StoreError, StoredAlert, verify_audit,
};
use stormwall_types::safety::{Action as SafetyAction, Category};
use stormwall_types::{
    Action, ActionKind, Alert, AlertFeature, AlertSubject, ApiKey, CloudContext, CloudProvider,
    ControlAction, ControlEvent, CredentialKind, DetectorId, Incident, IncidentStatus,
    IncidentSubject, KeyHash, KeyId, KeyKind, KeyRecord, KeyScope, KeyStatus, Principal,
    RejectReason, SafetyStage, SafetyVerdict, Severity, Stage, TimelineEntry, UsageEvent,
};
use time::{OffsetDateTime, UtcOffset};

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// A base instant with sub-millisecond digits, so precision loss would show.
fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap()
}

fn ms(n: i64) -> time::Duration {
    time::Duration::milliseconds(n)
}

fn key_id(n: u32) -> KeyId {
    KeyId::new(&format!("k{n:011}")).unwrap()
}

fn key(n: u32, tenant: &str, created_at: OffsetDateTime) -> KeyRecord {
    let api = ApiKey::generate();
    KeyRecord {
        id: key_id(n),
        tenant: tenant.to_owned(),
        kind: KeyKind::Normal,
        status: KeyStatus::Active,
        hash: api.hash(),
        last4: api.last4().to_owned(),
        label: Some(format!("key {n}")),
        scope: KeyScope {
            models: vec!["gpt-4o-mini".to_owned()],
            cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            expires_at: Some(created_at + time::Duration::days(30)),
            rpm: Some(60),
            budget_daily_usd: Some(1.5),
            ..Default::default()
        },
        created_at,
        updated_at: created_at,
        status_reason: None,
        rotated_from: None,
        rotated_to: None,
    }
}

/// An event with many optional fields set, so the body round trip is exercised.
fn event(
    id: &str,
    ts: OffsetDateTime,
    key: Option<u32>,
    tenant: Option<&str>,
    cost: f64,
) -> UsageEvent {
    let mut e = UsageEvent::new(
        id.to_owned(),
        ts,
        "127.0.0.1".parse().unwrap(),
        "POST",
        "/v1/chat/completions",
    );
    e.key_id = key.map(key_id);
    e.tenant = tenant.map(str::to_owned);
    e.cost_usd = cost;
    e.status = 200;
    e.model = Some("gpt-4o-mini".to_owned());
    e.input_tokens = Some(12);
    e.output_tokens = Some(34);
    e.prompt_minhash = vec![1, 2, 3];
    e.header_names = vec!["authorization".to_owned(), "content-type".to_owned()];
    e.safety = vec![SafetyVerdict {
        category: Category::Jailbreak.into(),
        action: SafetyAction::Log,
        score: 0.25,
        stage: SafetyStage::Input,
        view: Some("leet".to_owned()),
        range: Some((4..19).into()),
        source: Some("judge".to_owned()),
        ..Default::default()
    }];
    e
}

/// A management call from a cloud log, with the optional fields set so the body round trip
/// is exercised.
fn control(
    id: &str,
    ts: OffsetDateTime,
    dataset: &str,
    action: ControlAction,
    principal: &str,
    account: Option<&str>,
) -> ControlEvent {
    ControlEvent {
        timestamp: ts,
        id: id.to_owned(),
        dataset: dataset.to_owned(),
        action,
        success: true,
        source_ip: Some("198.51.100.23".parse().unwrap()),
        user_agent: Some("python-requests/2.31".to_owned()),
        cloud: CloudContext {
            principal: Principal {
                provider: CloudProvider::Azure,
                kind: CredentialKind::AzureEntraIdentity,
                id: principal.to_owned(),
                account: account.map(str::to_owned),
                name: Some("ci-deploy".to_owned()),
            },
            operation: "MICROSOFT.COGNITIVESERVICES/ACCOUNTS/LISTKEYS/ACTION".to_owned(),
            region: Some("eastus".to_owned()),
            resource: Some("/subscriptions/s1/resourceGroups/rg/providers/x/accounts/a1".into()),
            ip_masked: false,
            ip_missing: false,
            error: None,
            bearer: false,
        },
        service: Some("Microsoft.CognitiveServices".to_owned()),
        target: None,
        scopes: vec!["model.request".to_owned()],
        loosens: false,
        count: 1,
        response_bytes: Some(512),
    }
}

fn control_ids(events: &[ControlEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

fn denied(id: &str, ts: OffsetDateTime) -> UsageEvent {
    let mut e = event(id, ts, None, None, 0.0);
    e.deny(RejectReason::UnknownKey);
    e.status = 401;
    e
}

/// An alert with every optional field set, so the body round trip is exercised.
fn alert(
    id: &str,
    detector: DetectorId,
    at: OffsetDateTime,
    key: Option<u32>,
    tenant: Option<&str>,
) -> Alert {
    Alert {
        id: id.to_owned(),
        detector,
        stage: detector.stage(),
        severity: Severity::High,
        at,
        key_id: key.map(key_id),
        tenant: tenant.map(str::to_owned),
        source_ip: Some("2001:db8::7".parse().unwrap()),
        features: vec![
            AlertFeature {
                name: "distinct_asns_hour".to_owned(),
                value: 7.0,
                threshold: Some(3.5),
            },
            AlertFeature {
                name: "first_seen".to_owned(),
                value: 1.0,
                threshold: None,
            },
        ],
        subjects: vec![AlertSubject {
            kind: "asn".to_owned(),
            value: "64502".to_owned(),
        }],
        explanation: format!("{detector} fired on {id}"),
        evidence: vec![format!("{id}-e1"), format!("{id}-e2")],
        score: 42.5,
    }
}

/// An incident about key `key` (or a network when `None`) opened at `at`, with one timeline
/// entry per alert id.
fn incident(id: &str, key: Option<u32>, severity: Severity, at: OffsetDateTime) -> Incident {
    Incident {
        id: id.to_owned(),
        subject: match key {
            Some(k) => IncidentSubject::Key(key_id(k).as_str().to_owned()),
            None => IncidentSubject::Network("203.0.113.0/24".to_owned()),
        },
        tenant: Some("acme".to_owned()),
        opened_at: at,
        updated_at: at,
        severity,
        stages: vec![Stage::Validation, Stage::Proxy],
        risk_score: 31.25,
        reasons: vec!["strongest signal: P3 high".to_owned()],
        timeline: vec![TimelineEntry {
            at,
            alert_id: format!("{id}-a1"),
            detector: DetectorId::P3,
            stage: Stage::Proxy,
            severity,
            summary: "P3 fired.".to_owned(),
            action: Some(ActionKind::Suspend),
        }],
        evidence: vec!["e1".to_owned(), "e2".to_owned()],
        action: Some(ActionKind::Suspend),
        status: IncidentStatus::Open,
        revision: 1,
    }
}

fn alert_ids(alerts: &[StoredAlert]) -> Vec<&str> {
    alerts.iter().map(|a| a.alert.id.as_str()).collect()
}

/// An action record with every optional field set.
fn action(
    id: &str,
    key: u32,
    alert_id: &str,
    contributing: &[&str],
    applied_at: OffsetDateTime,
) -> ActionRecord {
    ActionRecord {
        id: id.to_owned(),
        action: Action {
            kind: ActionKind::Throttle,
            key_id: key_id(key),
            tenant: Some("acme".to_owned()),
            at: applied_at - ms(250),
            throttle_rpm: Some(10),
            alert_id: alert_id.to_owned(),
            contributing_alerts: contributing.iter().map(|s| (*s).to_owned()).collect(),
            risk_score: 71.25,
            kill_chain: true,
            reason: format!("risk 71 from {alert_id}"),
        },
        outcome: ActionOutcome::Applied,
        message: None,
        applied_at,
    }
}

fn action_ids(actions: &[ActionRecord]) -> Vec<&str> {
    actions.iter().map(|a| a.id.as_str()).collect()
}

fn audit_entry(action: &str, target: Option<&str>, at: OffsetDateTime) -> AuditEntry {
    AuditEntry {
        at,
        actor: "admin".to_owned(),
        action: action.to_owned(),
        target: target.map(str::to_owned),
        tenant: Some("acme".to_owned()),
        // A float, a nested object and keys out of order: all must hash the same when read.
        detail: serde_json::json!({"reason": "rotation", "share": 0.1, "z": {"b": 2, "a": [1.5]}}),
    }
}

fn seqs(records: &[AuditRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn ids(events: &[UsageEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

/// Polls `check` until it holds; the generous limit only matters when something is broken.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..1_000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

// ---------------------------------------------------------------------------------------
// Backend-neutral suite: every function takes a fresh, empty store.
// ---------------------------------------------------------------------------------------

mod suite {
    use super::*;

    pub async fn key_insert_get(store: Arc<dyn Store>) {
        let utc = key(1, "acme", t0());
        // A non-UTC offset must come back as the same instant.
        let offset = key(
            2,
            "acme",
            t0().to_offset(UtcOffset::from_hms(5, 30, 0).unwrap()),
        );
        store.insert_key(&utc).await.unwrap();
        store.insert_key(&offset).await.unwrap();
        assert_eq!(store.get_key(&utc.id).await.unwrap(), Some(utc.clone()));
        let got = store.get_key(&offset.id).await.unwrap().unwrap();
        assert_eq!(got, offset);
        // KeyRecord's PartialEq covers the hash too, but say it explicitly.
        assert!(got.hash.ct_eq(&offset.hash));
        assert_eq!(store.get_key(&key_id(99)).await.unwrap(), None);
    }

    pub async fn key_duplicate(store: Arc<dyn Store>) {
        let first = key(1, "acme", t0());
        store.insert_key(&first).await.unwrap();
        let mut again = key(1, "other", t0() + ms(5));
        again.label = None;
        let err = store.insert_key(&again).await.unwrap_err();
        assert!(matches!(err, StoreError::Duplicate), "{err:?}");
        assert_eq!(store.get_key(&first.id).await.unwrap(), Some(first));
    }

    pub async fn key_list(store: Arc<dyn Store>) {
        // Inserted out of creation order; one creation time has no fractional second so
        // text ordering of timestamps would be wrong if they were not fixed-width.
        let whole_second = OffsetDateTime::from_unix_timestamp(1_700_000_001).unwrap();
        let a = key(3, "acme", t0());
        let b = key(1, "beta", whole_second);
        let c = key(2, "acme", t0() + ms(500));
        for k in [&b, &c, &a] {
            store.insert_key(k).await.unwrap();
        }
        let all = store.list_keys(&KeyFilter::default()).await.unwrap();
        assert_eq!(all, vec![a.clone(), c.clone(), b.clone()]);
        let acme = store
            .list_keys(&KeyFilter {
                tenant: Some("acme".to_owned()),
            })
            .await
            .unwrap();
        assert_eq!(acme, vec![a, c]);
        let none = store
            .list_keys(&KeyFilter {
                tenant: Some("nobody".to_owned()),
            })
            .await
            .unwrap();
        assert!(none.is_empty());
    }

    pub async fn key_bulk_insert(store: Arc<dyn Store>) {
        let batch: Vec<KeyRecord> = (1..=50)
            .map(|n| key(n, "acme", t0() + ms(n.into())))
            .collect();
        store.insert_keys(&batch).await.unwrap();
        let all = store.list_keys(&KeyFilter::default()).await.unwrap();
        assert_eq!(all, batch);
        // All or none: one duplicate id leaves nothing of its batch behind.
        let clash = vec![key(51, "acme", t0()), key(7, "acme", t0())];
        let err = store.insert_keys(&clash).await.unwrap_err();
        assert!(matches!(err, StoreError::Duplicate), "{err:?}");
        assert_eq!(store.get_key(&key_id(51)).await.unwrap(), None);
        store.insert_keys(&[]).await.unwrap();
    }

    pub async fn key_list_pages(store: Arc<dyn Store>) {
        // Ids in byte order, whatever the database's collation would say: `Z` < `a`.
        let ids = [
            "AAAAAAAAAAA1",
            "Zzzzzzzzzzzz",
            "aaaaaaaaaaaa",
            "k00000000001",
            "zzzzzzzzzzzz",
        ];
        let mut records = Vec::new();
        for (n, id) in ids.iter().enumerate().rev() {
            let mut r = key(0, "acme", t0() + ms(i64::try_from(n).unwrap()));
            r.id = KeyId::new(id).unwrap();
            store.insert_key(&r).await.unwrap();
            records.push(r);
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        let mut seen = Vec::new();
        let mut after: Option<KeyId> = None;
        loop {
            let page = store.list_keys_page(after.as_ref(), 2).await.unwrap();
            assert!(page.len() <= 2);
            after = page.last().map(|r| r.id.clone());
            let last = page.len() < 2;
            seen.extend(page);
            if last {
                break;
            }
        }
        assert_eq!(seen, records);
        let tail = store
            .list_keys_page(Some(&KeyId::new("Zzzzzzzzzzzz").unwrap()), 10)
            .await
            .unwrap();
        let tail_ids: Vec<&str> = tail.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(tail_ids, ["aaaaaaaaaaaa", "k00000000001", "zzzzzzzzzzzz"]);
    }

    pub async fn key_update(store: Arc<dyn Store>) {
        let original = key(1, "acme", t0());
        let successor = key(2, "acme", t0() + ms(10));
        store.insert_key(&original).await.unwrap();
        store.insert_key(&successor).await.unwrap();

        let mut changed = original.clone();
        changed.status = KeyStatus::Suspended;
        changed.status_reason = Some("detector: credential stuffing".to_owned());
        changed.scope.models.push("gpt-4o".to_owned());
        changed.scope.rpm = None;
        changed.label = None;
        changed.rotated_to = Some(successor.id.clone());
        changed.updated_at = t0() + time::Duration::hours(1);
        store.update_key(&changed).await.unwrap();
        assert_eq!(
            store.get_key(&original.id).await.unwrap(),
            Some(changed.clone())
        );

        // Identity fields are not "mutable fields": an update leaves them alone.
        let mut tampered = changed.clone();
        tampered.tenant = "evil".to_owned();
        tampered.kind = KeyKind::Canary;
        tampered.hash = KeyHash([7; 32]);
        tampered.created_at = t0() - time::Duration::days(1);
        store.update_key(&tampered).await.unwrap();
        assert_eq!(store.get_key(&original.id).await.unwrap(), Some(changed));

        let missing = key(9, "acme", t0());
        let err = store.update_key(&missing).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "{err:?}");
    }

    pub async fn event_round_trip_and_order(store: Arc<dyn Store>) {
        // Ids deliberately do not sort like timestamps: order must be (timestamp, id).
        let events = vec![
            event("c", t0() + ms(20), Some(1), Some("acme"), 0.5),
            event("z", t0(), Some(1), Some("acme"), 0.25),
            denied("a", t0() + ms(20)),
            event("m", t0() + ms(10), Some(2), Some("beta"), 1.0),
        ];
        store.insert_events(&events).await.unwrap();
        store.insert_events(&[]).await.unwrap();
        assert_eq!(store.count_events().await.unwrap(), 4);
        let all = store.query_events(&EventQuery::default()).await.unwrap();
        assert_eq!(ids(&all), ["z", "m", "a", "c"]);
        // The body round trip is exact, nanoseconds included.
        let by_id = |id: &str| events.iter().find(|e| e.id == id).unwrap().clone();
        for got in &all {
            assert_eq!(got, &by_id(&got.id));
        }
    }

    /// Events whose JSON the journal already made: stored with that body, found by their
    /// columns, and a replay stores nothing twice.
    pub async fn encoded_events(store: Arc<dyn Store>) {
        let events = vec![
            event("c1", t0(), Some(1), Some("acme"), 0.5),
            denied("c2", t0() + ms(5)),
        ];
        let encoded: Vec<stormwall_store::EncodedEvent> = events
            .iter()
            .map(|e| stormwall_store::EncodedEvent {
                event: e.clone(),
                body: serde_json::to_string(e).unwrap().into(),
            })
            .collect();
        store.insert_encoded_events(&encoded).await.unwrap();
        store.insert_encoded_events(&encoded).await.unwrap();
        assert_eq!(store.count_events().await.unwrap(), 2);
        let got = store.query_events(&EventQuery::default()).await.unwrap();
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            serde_json::to_value(&events).unwrap()
        );
        let by_key = store
            .query_events(&EventQuery {
                key_id: Some(key_id(1)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(ids(&by_key), ["c1"]);
        let spent = store.spend_since(&key_id(1), t0()).await.unwrap();
        assert!((spent - 0.5).abs() < 1e-9, "{spent}");
        // A body that is not UTF-8 is refused as unencodable (the journal then stores its
        // batch one by one), and nothing of its batch is stored.
        let sound = event("c3", t0() + ms(9), Some(1), None, 0.25);
        let mut broken = serde_json::to_vec(&denied("c4", t0() + ms(10))).unwrap();
        broken.insert(1, 0xff);
        let batch = vec![
            stormwall_store::EncodedEvent {
                body: serde_json::to_string(&sound).unwrap().into(),
                event: sound,
            },
            stormwall_store::EncodedEvent {
                event: denied("c4", t0() + ms(10)),
                body: broken.into(),
            },
        ];
        let err = store.insert_encoded_events(&batch).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert_eq!(store.count_events().await.unwrap(), 2);
    }

    pub async fn event_filters(store: Arc<dyn Store>) {
        let events = vec![
            event("e1", t0(), Some(1), Some("acme"), 0.1),
            event("e2", t0() + ms(10), Some(2), Some("acme"), 0.2),
            event("e3", t0() + ms(20), Some(1), Some("acme"), 0.3),
            event("e4", t0() + ms(30), Some(3), Some("beta"), 0.4),
            denied("e5", t0() + ms(40)),
        ];
        store.insert_events(&events).await.unwrap();
        let q = |query: EventQuery| {
            let store = Arc::clone(&store);
            async move { store.query_events(&query).await.unwrap() }
        };

        let by_key = q(EventQuery {
            key_id: Some(key_id(1)),
            ..Default::default()
        })
        .await;
        assert_eq!(ids(&by_key), ["e1", "e3"]);
        let by_tenant = q(EventQuery {
            tenant: Some("acme".to_owned()),
            ..Default::default()
        })
        .await;
        assert_eq!(ids(&by_tenant), ["e1", "e2", "e3"]);
        // `since` is inclusive, `until` exclusive.
        let window = q(EventQuery {
            since: Some(t0() + ms(10)),
            until: Some(t0() + ms(30)),
            ..Default::default()
        })
        .await;
        assert_eq!(ids(&window), ["e2", "e3"]);
        let since = q(EventQuery {
            since: Some(t0() + ms(30)),
            ..Default::default()
        })
        .await;
        assert_eq!(ids(&since), ["e4", "e5"]);
        let until = q(EventQuery {
            until: Some(t0() + ms(10)),
            ..Default::default()
        })
        .await;
        assert_eq!(ids(&until), ["e1"]);
        let combined = q(EventQuery {
            key_id: Some(key_id(1)),
            tenant: Some("acme".to_owned()),
            since: Some(t0() + ms(5)),
            until: Some(t0() + ms(100)),
            limit: Some(10),
            ..Default::default()
        })
        .await;
        assert_eq!(ids(&combined), ["e3"]);
        let nothing = q(EventQuery {
            tenant: Some("nobody".to_owned()),
            ..Default::default()
        })
        .await;
        assert!(nothing.is_empty());
    }

    pub async fn event_paging(store: Arc<dyn Store>) {
        // Ids in reverse time order, two sharing a timestamp: a cursor that compared ids
        // alone would skip or repeat events.
        let events: Vec<UsageEvent> = (0..10)
            .map(|i| {
                event(
                    &format!("id{:02}", 20 - i),
                    t0() + ms(i64::from(i / 2) * 10),
                    Some(1),
                    Some("acme"),
                    0.0,
                )
            })
            .collect();
        store.insert_events(&events).await.unwrap();
        let all = store.query_events(&EventQuery::default()).await.unwrap();
        assert_eq!(all.len(), 10);

        let mut paged = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .query_events(&EventQuery {
                    after_id: cursor.clone(),
                    limit: Some(3),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            cursor = Some(last.id.clone());
            paged.extend(page);
        }
        assert_eq!(ids(&paged), ids(&all));

        // Paging composes with filters.
        let filtered = store
            .query_events(&EventQuery {
                key_id: Some(key_id(1)),
                after_id: Some(all[4].id.clone()),
                limit: Some(2),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(ids(&filtered), ids(&all[5..7]));

        let zero = store
            .query_events(&EventQuery {
                limit: Some(0),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(zero.is_empty());

        // An unknown cursor falls back to id order.
        let unknown = store
            .query_events(&EventQuery {
                after_id: Some("id185".to_owned()),
                ..Default::default()
            })
            .await
            .unwrap();
        let expected: Vec<&str> = ids(&all).into_iter().filter(|id| *id > "id185").collect();
        assert_eq!(expected, ["id19", "id20"]);
        assert_eq!(ids(&unknown), expected);
    }

    pub async fn event_reinsert_is_idempotent(store: Arc<dyn Store>) {
        let batch = vec![
            event("e1", t0(), Some(1), Some("acme"), 1.0),
            event("e2", t0() + ms(1), Some(1), Some("acme"), 2.0),
        ];
        store.insert_events(&batch).await.unwrap();
        store.insert_events(&batch).await.unwrap();
        assert_eq!(store.count_events().await.unwrap(), 2);
        // An overlapping batch adds only what is new, and the first copy wins.
        let mut changed = batch[1].clone();
        changed.cost_usd = 100.0;
        let overlap = vec![
            changed,
            event("e3", t0() + ms(2), Some(1), Some("acme"), 3.0),
        ];
        store.insert_events(&overlap).await.unwrap();
        assert_eq!(store.count_events().await.unwrap(), 3);
        let spent = store.spend_since(&key_id(1), t0()).await.unwrap();
        assert!((spent - 6.0).abs() < 1e-9, "{spent}");
    }

    pub async fn retention(store: Arc<dyn Store>) {
        // Events and control events older than the cutoff go, oldest first, at most `limit`
        // per call; the cutoff itself and newer rows stay.
        let events: Vec<_> = (0..7)
            .map(|i| event(&format!("r{i}"), t0() + ms(i), Some(1), Some("acme"), 1.0))
            .collect();
        store.insert_events(&events).await.unwrap();
        let act = "azure.activity";
        let list = ControlAction::ListKeys;
        let controls: Vec<_> = (0..5)
            .map(|i| control(&format!("k{i}"), t0() + ms(i), act, list, "oid:a", None))
            .collect();
        store.insert_control_events(&controls).await.unwrap();
        let cutoff = t0() + ms(5);
        assert_eq!(store.delete_events_before(cutoff, 3).await.unwrap(), 3);
        let left = store.query_events(&EventQuery::default()).await.unwrap();
        assert_eq!(ids(&left), ["r3", "r4", "r5", "r6"]);
        assert_eq!(store.delete_events_before(cutoff, 3).await.unwrap(), 2);
        assert_eq!(store.delete_events_before(cutoff, 3).await.unwrap(), 0);
        let left = store.query_events(&EventQuery::default()).await.unwrap();
        assert_eq!(ids(&left), ["r5", "r6"]);
        assert_eq!(store.count_events().await.unwrap(), 2);

        let cutoff = t0() + ms(2);
        assert_eq!(
            store
                .delete_control_events_before(cutoff, 100)
                .await
                .unwrap(),
            2
        );
        let left = store
            .query_control_events(&ControlEventQuery::default())
            .await
            .unwrap();
        let left: Vec<&str> = left.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(left, ["k2", "k3", "k4"]);
        // The usage events are untouched by the control-event sweep, and vice versa.
        assert_eq!(store.count_events().await.unwrap(), 2);
    }

    pub async fn control_events(store: Arc<dyn Store>) {
        let (list, regen) = (ControlAction::ListKeys, ControlAction::RegenerateKey);
        let act = "azure.activity";
        // A NUL in a logged name cannot go into a PostgreSQL text column; the row is kept
        // all the same and its body keeps the name as read.
        let odd = "oid:odd\0name";
        let batch = vec![
            control("c3", t0() + ms(2), act, list, "oid:alice", Some("sub1")),
            control("c1", t0(), act, list, "oid:alice", Some("sub1")),
            control("c2", t0() + ms(1), act, regen, "oid:bob", Some("sub1")),
            control("c4", t0() + ms(2), "aws.cloudtrail", list, odd, None),
        ];
        assert_eq!(store.insert_control_events(&batch).await.unwrap(), 4);
        // Read again (a replay, a restart that lost its cursors): nothing is stored twice,
        // and in an overlapping batch only the new event is, its first copy kept.
        assert_eq!(store.insert_control_events(&batch).await.unwrap(), 0);
        let mut changed = batch[0].clone();
        changed.success = false;
        let c5 = control("c5", t0() + ms(3), act, list, "oid:carol", Some("sub2"));
        let overlap = vec![changed, c5.clone(), c5];
        assert_eq!(store.insert_control_events(&overlap).await.unwrap(), 1);
        assert_eq!(store.insert_control_events(&[]).await.unwrap(), 0);

        let q = |f: fn(&mut ControlEventQuery)| {
            let mut q = ControlEventQuery::default();
            f(&mut q);
            let store = Arc::clone(&store);
            async move { store.query_control_events(&q).await.unwrap() }
        };
        let all = q(|_| {}).await;
        assert_eq!(control_ids(&all), ["c1", "c2", "c3", "c4", "c5"]);
        assert_eq!(all[0], batch[1], "the body round-trips");
        assert_eq!(all[2], batch[0], "the first copy is kept");
        assert_eq!(all[3].cloud.principal.id, odd);
        let by = |f| async move { control_ids(&q(f).await).join(",") };
        assert_eq!(
            by(|q| q.dataset = Some("aws.cloudtrail".into())).await,
            "c4"
        );
        assert_eq!(
            by(|q| q.action = Some(ControlAction::RegenerateKey)).await,
            "c2"
        );
        assert_eq!(
            by(|q| q.action = Some(ControlAction::ListKeys)).await,
            "c1,c3,c4,c5"
        );
        assert_eq!(
            by(|q| q.principal = Some("oid:alice".into())).await,
            "c1,c3"
        );
        assert_eq!(by(|q| q.account = Some("sub1".into())).await, "c1,c2,c3");
        assert_eq!(by(|q| q.account = Some("nobody".into())).await, "");
        let bob = batch[2].cloud.principal.key_id();
        let mut kq = ControlEventQuery {
            key_id: Some(bob),
            ..Default::default()
        };
        assert_eq!(
            control_ids(&store.query_control_events(&kq).await.unwrap()),
            ["c2"]
        );
        kq.key_id = Some(key_id(1));
        assert!(store.query_control_events(&kq).await.unwrap().is_empty());
        // Time bounds: since inclusive, until exclusive, at millisecond precision.
        assert_eq!(
            by(|q| {
                q.since = Some(t0() + ms(1));
                q.until = Some(t0() + ms(3));
            })
            .await,
            "c2,c3,c4"
        );
        // Combined filters.
        assert_eq!(
            by(|q| {
                q.principal = Some("oid:alice".into());
                q.since = Some(t0() + ms(1));
            })
            .await,
            "c3"
        );
        // Paging by (time, id): pages neither skip nor repeat events of the same instant.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .query_control_events(&ControlEventQuery {
                    after_id: after.clone(),
                    limit: Some(2),
                    ..Default::default()
                })
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|e| e.id.clone());
            seen.extend(page.into_iter().map(|e| e.id));
        }
        assert_eq!(seen, ["c1", "c2", "c3", "c4", "c5"]);
        // A cursor the store does not hold reads as "ids after it".
        assert_eq!(by(|q| q.after_id = Some("c35".into())).await, "c4,c5");
        // `newest` keeps the latest matches under a limit, still in time order; without a
        // limit it changes nothing.
        assert_eq!(
            by(|q| {
                q.newest = true;
                q.limit = Some(2);
            })
            .await,
            "c4,c5"
        );
        assert_eq!(
            by(|q| {
                q.newest = true;
                q.limit = Some(2);
                q.principal = Some("oid:alice".into());
            })
            .await,
            "c1,c3"
        );
        assert_eq!(by(|q| q.newest = true).await, "c1,c2,c3,c4,c5");
        // Control events are not usage events.
        assert_eq!(store.count_events().await.unwrap(), 0);
    }

    pub async fn spend_since(store: Arc<dyn Store>) {
        let events = vec![
            event("e1", t0(), Some(1), Some("acme"), 0.5),
            event("e2", t0() + ms(10), Some(1), Some("acme"), 0.25),
            event("e3", t0() + ms(20), Some(1), Some("acme"), 0.125),
            event("e4", t0() + ms(20), Some(2), Some("acme"), 8.0),
            event("e5", t0() + ms(30), Some(1), Some("acme"), f64::NAN),
        ];
        store.insert_events(&events).await.unwrap();
        let spent = |key: u32, since: OffsetDateTime| {
            let store = Arc::clone(&store);
            async move { store.spend_since(&key_id(key), since).await.unwrap() }
        };
        assert!((spent(1, t0()).await - 0.875).abs() < 1e-9);
        assert!((spent(1, t0() + ms(10)).await - 0.375).abs() < 1e-9);
        assert!((spent(2, t0()).await - 8.0).abs() < 1e-9);
        assert_eq!(spent(1, t0() + ms(1_000)).await, 0.0);
        assert_eq!(spent(7, t0()).await, 0.0);
    }

    /// The store's summaries (SQL `GROUP BY`) equal the same sums over the events in
    /// memory, and those are checked by hand: buckets, refusals, findings, spend, networks,
    /// clients and the newest findings, for all keys and for one.
    pub async fn event_summaries(store: Arc<dyn Store>) {
        let finding = |category: Category, action: SafetyAction, evidence: bool| SafetyVerdict {
            category: category.into(),
            action,
            score: 0.75,
            stage: SafetyStage::Input,
            view: Some("text".to_owned()),
            evidence: evidence.then(|| "kept screened text".to_owned()),
            ..Default::default()
        };
        let at = |secs: i64| t0() + time::Duration::seconds(secs);
        let mut events = Vec::new();
        for (i, (secs, key, cost, ip, ua)) in [
            (5, 1, 0.5, "192.0.2.1", Some("curl/8")),
            (70, 1, 0.25, "192.0.2.1", Some("curl/8")),
            (70, 2, 2.0, "198.51.100.7", None),
            (130, 2, 0.125, "2001:db8::1", Some("python-httpx")),
            (179, 3, 0.0, "192.0.2.9", Some("curl/8")),
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = event(&format!("s{i}"), at(secs), Some(key), Some("acme"), cost);
            e.source_ip = ip.parse().unwrap();
            e.source_asn = (!ip.starts_with("2001")).then_some(64_500 + key);
            e.source_as_org = Some(format!("Org {key}"));
            e.source_country = Some(if key == 2 { "DE" } else { "FR" }.to_owned());
            e.user_agent = ua.map(str::to_owned);
            events.push(e);
        }
        // Two blocks on one request count as one blocked request and two findings.
        events[1].safety = vec![
            finding(Category::Jailbreak, SafetyAction::Block, true),
            finding(Category::Sexual, SafetyAction::Block, false),
            finding(Category::Sexual, SafetyAction::Log, false),
        ];
        events[3].safety = vec![finding(Category::Sexual, SafetyAction::Flag, false)];
        let mut refused = denied("s9", at(100));
        refused.source_ip = "203.0.113.5".parse().unwrap();
        events.push(refused);
        let mut no_reason = event("s8", at(110), Some(1), None, 0.0);
        no_reason.decision = stormwall_types::Decision::Deny;
        events.push(no_reason);
        // Outside the span: before it, and at its (exclusive) end.
        events.push(event("s7", at(-1), Some(1), None, 64.0));
        events.push(event("s6", at(180), Some(1), None, 64.0));
        store.insert_events(&events).await.unwrap();

        let all = stormwall_store::SummaryParts {
            keys: true,
            networks: true,
            findings: true,
        };
        let q = stormwall_store::SummaryQuery {
            key_id: None,
            since: t0(),
            until: at(180),
            bucket_secs: 60,
            top: 10,
            parts: all,
        };
        let want = stormwall_store::EventSummary::from_events(&q, &events).unwrap();
        let b = |allowed, refused, blocked| stormwall_store::summary::Bucket {
            allowed,
            refused,
            blocked,
        };
        assert_eq!(want.buckets, [b(1, 0, 0), b(2, 2, 1), b(2, 0, 0)]);
        assert_eq!(want.requests, 7);
        assert_eq!(want.spend_usd, 2.875);
        assert_eq!(
            want.refusals
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect::<Vec<_>>(),
            [("other", 1), ("unknown_key", 1)]
        );
        let k = |n: u32| key_id(n).as_str().to_owned();
        assert_eq!(want.findings.len(), 3, "{:?}", want.findings);
        assert_eq!(
            want.findings[&(k(2), "sexual".to_owned(), "flag".to_owned())],
            1
        );
        assert_eq!(
            want.top_spend
                .iter()
                .map(|s| (s.key.clone(), s.usd, s.requests))
                .collect::<Vec<_>>(),
            [(k(2), 2.125, 2), (k(1), 0.75, 3), (k(3), 0.0, 1)]
        );
        let nets: Vec<(&str, u64, Option<u32>)> = want
            .networks
            .iter()
            .map(|n| (n.ip.as_str(), n.requests, n.asn))
            .collect();
        assert_eq!(
            nets,
            [
                ("192.0.2.1", 2, Some(64_501)),
                ("127.0.0.1", 1, None),
                ("192.0.2.9", 1, Some(64_503)),
                ("198.51.100.7", 1, Some(64_502)),
                ("2001:db8::1", 1, None),
                ("203.0.113.5", 1, None),
            ]
        );
        assert_eq!(want.networks[0].country.as_deref(), Some("FR"));
        assert_eq!(want.networks[0].org.as_deref(), Some("Org 1"));
        // Millisecond precision, as stored.
        assert_eq!(
            want.networks[0].last,
            at(70) - time::Duration::nanoseconds(456_789)
        );
        assert_eq!(
            want.clients,
            [
                (None, 3),
                (Some("curl/8".to_owned()), 3),
                (Some("python-httpx".to_owned()), 1)
            ]
        );
        let recent: Vec<(&str, &str, &str, bool)> = want
            .recent_findings
            .iter()
            .map(|f| {
                (
                    f.event_id.as_str(),
                    f.category.as_str(),
                    f.action.as_str(),
                    f.has_evidence,
                )
            })
            .collect();
        assert_eq!(
            recent,
            [
                ("s3", "sexual", "flag", false),
                ("s1", "jailbreak", "block", true),
                ("s1", "sexual", "block", false),
            ]
        );
        assert_eq!(store.summarize_events(&q).await.unwrap(), want);

        // One key, no optional parts, a short list.
        for q in [
            stormwall_store::SummaryQuery {
                key_id: Some(key_id(1)),
                ..q.clone()
            },
            stormwall_store::SummaryQuery {
                parts: Default::default(),
                ..q.clone()
            },
            stormwall_store::SummaryQuery {
                top: 1,
                bucket_secs: 3600,
                ..q.clone()
            },
        ] {
            let want = stormwall_store::EventSummary::from_events(&q, &events).unwrap();
            assert_eq!(store.summarize_events(&q).await.unwrap(), want, "{q:?}");
        }
        let one = stormwall_store::SummaryQuery {
            key_id: Some(key_id(1)),
            ..q.clone()
        };
        let mine = store.summarize_events(&one).await.unwrap();
        assert_eq!(mine.requests, 3);
        assert_eq!(mine.networks.len(), 2);

        // Events by id: those stored, in time order.
        let got = store
            .events_by_id(&["s3".to_owned(), "nope".to_owned(), "s0".to_owned()])
            .await
            .unwrap();
        assert_eq!(ids(&got), ["s0", "s3"]);
        assert_eq!(got[1], events[3]);
    }

    /// Batches are atomic: a reader running beside the writer sees whole batches only.
    pub async fn reads_while_writing(store: Arc<dyn Store>) {
        let writer = {
            let store = Arc::clone(&store);
            async move {
                for b in 0..20 {
                    let batch: Vec<UsageEvent> = (0..200)
                        .map(|i| {
                            event(
                                &format!("b{b:02}-{i:03}"),
                                t0() + ms(i64::from(b)),
                                Some(1),
                                Some("acme"),
                                0.01,
                            )
                        })
                        .collect();
                    store.insert_events(&batch).await.unwrap();
                }
            }
        };
        let reader = {
            let store = Arc::clone(&store);
            async move {
                let mut last = 0;
                for _ in 0..50 {
                    let n = store.count_events().await.unwrap();
                    assert_eq!(n % 200, 0);
                    assert!(n >= last);
                    last = n;
                }
            }
        };
        tokio::join!(writer, reader);
        assert_eq!(store.count_events().await.unwrap(), 4_000);
    }

    pub async fn alert_insert_get(store: Arc<dyn Store>) {
        let full = alert("a1", DetectorId::P3, t0(), Some(1), Some("acme"));
        let before = OffsetDateTime::now_utc();
        assert!(store.insert_alert(&full, "P3:k1:h0").await.unwrap());
        let after = OffsetDateTime::now_utc();
        let got = store.get_alert("a1").await.unwrap().unwrap();
        assert_eq!(got.alert, full);
        assert_eq!(got.status, AlertStatus::Open);
        assert_eq!(got.note, None);
        assert!(before <= got.created_at && got.created_at <= after);
        assert_eq!(got.updated_at, got.created_at);

        // Every optional field empty, and a non-UTC offset that must come back as the same
        // instant.
        let bare = Alert {
            key_id: None,
            tenant: None,
            source_ip: None,
            features: Vec::new(),
            subjects: Vec::new(),
            evidence: Vec::new(),
            severity: Severity::Info,
            ..alert(
                "a2",
                DetectorId::E1,
                t0().to_offset(UtcOffset::from_hms(-3, 0, 0).unwrap()),
                None,
                None,
            )
        };
        assert!(store.insert_alert(&bare, "E1:h0").await.unwrap());
        assert_eq!(store.get_alert("a2").await.unwrap().unwrap().alert, bare);
        assert_eq!(store.get_alert("nope").await.unwrap(), None);
    }

    pub async fn alert_duplicates(store: Arc<dyn Store>) {
        let first = alert("a1", DetectorId::R3, t0(), Some(1), Some("acme"));
        assert!(store.insert_alert(&first, "R3:k1:h0").await.unwrap());
        // The same id under another incident.
        let mut same_id = first.clone();
        same_id.explanation = "a replay".to_owned();
        assert!(!store.insert_alert(&same_id, "R3:k1:h1").await.unwrap());
        // Another id for the same incident (another replica's alert).
        let same_incident = alert("a2", DetectorId::R3, t0() + ms(3), Some(1), Some("acme"));
        assert!(
            !store
                .insert_alert(&same_incident, "R3:k1:h0")
                .await
                .unwrap()
        );
        let all = store.list_alerts(&AlertQuery::default()).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].alert, first);
        assert_eq!(store.get_alert("a2").await.unwrap(), None);

        // An escalation of the incident within its window is stored; after it, a replica that
        // saw less and raises the same detector lower (or as high) again adds nothing.
        let mut critical = alert("a3", DetectorId::R3, t0() + ms(5), Some(1), Some("acme"));
        critical.severity = Severity::Critical;
        assert!(store.insert_alert(&critical, "R3:k1:h0").await.unwrap());
        for (id, severity) in [
            ("a4", Severity::Medium),
            ("a5", Severity::High),
            ("a6", Severity::Critical),
        ] {
            let mut lower = alert(id, DetectorId::R3, t0() + ms(7), Some(1), Some("acme"));
            lower.severity = severity;
            assert!(
                !store.insert_alert(&lower, "R3:k1:h0").await.unwrap(),
                "{severity:?} after critical"
            );
        }
        // A lower severity first, then higher ones, are each stored.
        let mut low = alert("b1", DetectorId::R3, t0(), Some(3), None);
        low.severity = Severity::Low;
        assert!(store.insert_alert(&low, "R3:k3:h0").await.unwrap());
        let mut medium = alert("b2", DetectorId::R3, t0(), Some(3), None);
        medium.severity = Severity::Medium;
        assert!(store.insert_alert(&medium, "R3:k3:h0").await.unwrap());
        // Another incident is not affected by this one's severities.
        let mut other = alert("b3", DetectorId::R3, t0(), Some(3), None);
        other.severity = Severity::Low;
        assert!(store.insert_alert(&other, "R3:k3:h1").await.unwrap());
        let all = store.list_alerts(&AlertQuery::default()).await.unwrap();
        let mut ids = alert_ids(&all);
        ids.sort_unstable();
        assert_eq!(ids, ["a1", "a3", "b1", "b2", "b3"]);

        // Replicas racing on one incident: exactly one stores it.
        let racers = (0..8).map(|i| {
            let store = Arc::clone(&store);
            async move {
                let a = alert(&format!("race{i}"), DetectorId::P1, t0(), Some(2), None);
                store.insert_alert(&a, "P1:k2:h0").await.unwrap()
            }
        });
        let won = futures_util::future::join_all(racers).await;
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        let k2 = store
            .list_alerts(&AlertQuery {
                key_id: Some(key_id(2)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(k2.len(), 1);
    }

    /// Records neither backend can store faithfully are refused, and nothing is stored.
    pub async fn alert_refuses_unstorable(store: Arc<dyn Store>) {
        let mut nan = alert("a1", DetectorId::R5, t0(), Some(1), None);
        nan.features[0].value = f64::NAN;
        let err = store.insert_alert(&nan, "R5:k1").await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        let ok = alert("a2", DetectorId::R5, t0(), Some(1), None);
        let err = store.insert_alert(&ok, "R5\0k1").await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(
            store
                .list_alerts(&AlertQuery::default())
                .await
                .unwrap()
                .is_empty()
        );
        let mut bad = action("r1", 1, "a1", &[], t0());
        bad.action.risk_score = f64::INFINITY;
        let err = store.record_action(&bad).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(
            store
                .list_actions(&ActionQuery::default())
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn alert_list_filters(store: Arc<dyn Store>) {
        let a1 = alert("a1", DetectorId::P3, t0(), Some(1), Some("acme"));
        let a2 = alert("a2", DetectorId::R3, t0() + ms(10), Some(2), Some("acme"));
        let a3 = alert("a3", DetectorId::P3, t0() + ms(20), Some(3), Some("beta"));
        // Same event time as a3: the tie goes to the larger id first.
        let a4 = alert("a4", DetectorId::P3, t0() + ms(20), Some(1), Some("acme"));
        let a5 = alert("a5", DetectorId::E1, t0() + ms(30), None, None);
        for a in [&a3, &a1, &a5, &a2, &a4] {
            assert!(
                store
                    .insert_alert(a, &format!("inc-{}", a.id))
                    .await
                    .unwrap()
            );
        }
        store
            .set_alert_status("a2", AlertStatus::Acknowledged, None, t0() + ms(99))
            .await
            .unwrap();
        let list = |q: AlertQuery| {
            let store = Arc::clone(&store);
            async move {
                let got = store.list_alerts(&q).await.unwrap();
                alert_ids(&got)
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            list(AlertQuery::default()).await,
            ["a5", "a4", "a3", "a2", "a1"]
        );
        assert_eq!(
            list(AlertQuery {
                key_id: Some(key_id(1)),
                ..Default::default()
            })
            .await,
            ["a4", "a1"]
        );
        assert_eq!(
            list(AlertQuery {
                tenant: Some("acme".to_owned()),
                ..Default::default()
            })
            .await,
            ["a4", "a2", "a1"]
        );
        assert_eq!(
            list(AlertQuery {
                detector: Some(DetectorId::P3),
                ..Default::default()
            })
            .await,
            ["a4", "a3", "a1"]
        );
        assert_eq!(
            list(AlertQuery {
                status: Some(AlertStatus::Open),
                ..Default::default()
            })
            .await,
            ["a5", "a4", "a3", "a1"]
        );
        assert_eq!(
            list(AlertQuery {
                status: Some(AlertStatus::Acknowledged),
                ..Default::default()
            })
            .await,
            ["a2"]
        );
        // Bounds compare at millisecond precision: `since` at an alert's own instant (with
        // sub-millisecond digits) includes it, `until` there excludes it.
        assert_eq!(
            list(AlertQuery {
                since: Some(a2.at),
                ..Default::default()
            })
            .await,
            ["a5", "a4", "a3", "a2"]
        );
        assert_eq!(
            list(AlertQuery {
                until: Some(a3.at),
                ..Default::default()
            })
            .await,
            ["a2", "a1"]
        );
        assert_eq!(
            list(AlertQuery {
                since: Some(a2.at),
                until: Some(a5.at),
                ..Default::default()
            })
            .await,
            ["a4", "a3", "a2"]
        );
        // Filters are AND-ed.
        assert_eq!(
            list(AlertQuery {
                key_id: Some(key_id(1)),
                tenant: Some("acme".to_owned()),
                detector: Some(DetectorId::P3),
                status: Some(AlertStatus::Open),
                since: Some(t0() + ms(1)),
                until: Some(t0() + ms(25)),
                limit: None,
            })
            .await,
            ["a4"]
        );
        assert_eq!(
            list(AlertQuery {
                tenant: Some("beta".to_owned()),
                detector: Some(DetectorId::R3),
                ..Default::default()
            })
            .await,
            Vec::<String>::new()
        );
        assert_eq!(
            list(AlertQuery {
                limit: Some(2),
                ..Default::default()
            })
            .await,
            ["a5", "a4"]
        );
        assert_eq!(
            list(AlertQuery {
                tenant: Some("acme".to_owned()),
                limit: Some(1),
                ..Default::default()
            })
            .await,
            ["a4"]
        );
        assert!(
            list(AlertQuery {
                limit: Some(0),
                ..Default::default()
            })
            .await
            .is_empty()
        );
    }

    pub async fn alert_status(store: Arc<dyn Store>) {
        let a = alert("a1", DetectorId::P5, t0(), Some(1), Some("acme"));
        store.insert_alert(&a, "P5:k1").await.unwrap();
        let created = store.get_alert("a1").await.unwrap().unwrap().created_at;
        // A non-UTC offset and sub-millisecond digits: wall-clock times keep nanoseconds.
        let at = (t0() + time::Duration::hours(2)).to_offset(UtcOffset::from_hms(2, 0, 0).unwrap());
        let acked = store
            .set_alert_status("a1", AlertStatus::Acknowledged, Some("seen, paging"), at)
            .await
            .unwrap();
        assert_eq!(acked.alert, a);
        assert_eq!(acked.status, AlertStatus::Acknowledged);
        assert_eq!(acked.note.as_deref(), Some("seen, paging"));
        assert_eq!(acked.created_at, created);
        assert_eq!(acked.updated_at, at);
        assert_eq!(store.get_alert("a1").await.unwrap(), Some(acked));

        // A later change replaces the note, clearing it when none is given.
        let fp = store
            .set_alert_status("a1", AlertStatus::FalsePositive, None, at + ms(1))
            .await
            .unwrap();
        assert_eq!(
            (fp.status, fp.note.as_deref()),
            (AlertStatus::FalsePositive, None)
        );
        assert_eq!(fp.updated_at, at + ms(1));
        assert_eq!(store.get_alert("a1").await.unwrap(), Some(fp));

        let err = store
            .set_alert_status("missing", AlertStatus::Acknowledged, None, at)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "{err:?}");
        let err = store
            .set_alert_status("a1", AlertStatus::Open, Some("bad\0note"), at)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }

    pub async fn incident_upsert_list_status(store: Arc<dyn Store>) {
        let ids = |v: &[String]| v.to_vec();
        let i1 = incident("inc-1", Some(1), Severity::Medium, t0());
        let stored = store
            .upsert_incident(&i1, &["a1".to_owned()], false)
            .await
            .unwrap();
        assert_eq!(stored.incident, i1, "the body round-trips");
        assert_eq!(stored.alert_ids, ["a1"]);
        assert_eq!(stored.note, None);
        assert_eq!(store.get_incident("inc-1").await.unwrap(), Some(stored));
        assert_eq!(store.get_incident("missing").await.unwrap(), None);

        // A joining alert replaces the content and adds its id; a repeated id is kept once.
        let mut i1b = i1.clone();
        i1b.updated_at = t0() + ms(60_000);
        i1b.severity = Severity::High;
        i1b.revision = 2;
        let stored = store
            .upsert_incident(&i1b, &["a2".to_owned(), "a1".to_owned()], true)
            .await
            .unwrap();
        assert_eq!(stored.incident, i1b);
        assert_eq!(ids(&stored.alert_ids), ["a1", "a2"]);

        // Operators' status and note survive an update that is not an escalation...
        let at = t0() + time::Duration::hours(1);
        let acked = store
            .set_incident_status("inc-1", IncidentStatus::Acknowledged, Some("on it"), at)
            .await
            .unwrap();
        assert_eq!(acked.incident.status, IncidentStatus::Acknowledged);
        assert_eq!(acked.note.as_deref(), Some("on it"));
        assert_eq!(acked.changed_at, at);
        let kept = store
            .upsert_incident(&i1b, &["a3".to_owned()], false)
            .await
            .unwrap();
        assert_eq!(kept.incident.status, IncidentStatus::Acknowledged);
        assert_eq!(kept.note.as_deref(), Some("on it"));
        assert_eq!(kept.alert_ids.len(), 3);
        // ...an escalation reopens it, but never a false positive.
        let reopened = store.upsert_incident(&i1b, &[], true).await.unwrap();
        assert_eq!(reopened.incident.status, IncidentStatus::Open);
        store
            .set_incident_status("inc-1", IncidentStatus::FalsePositive, None, at)
            .await
            .unwrap();
        let fp = store.upsert_incident(&i1b, &[], true).await.unwrap();
        assert_eq!(fp.incident.status, IncidentStatus::FalsePositive);
        assert_eq!(fp.note, None);

        // Filters: status, least severity, key, tenant, alert, since; latest first.
        let i2 = incident("inc-2", Some(2), Severity::Low, t0() + ms(120_000));
        store
            .upsert_incident(&i2, &["b1".to_owned()], false)
            .await
            .unwrap();
        let i3 = incident("inc-3", None, Severity::Critical, t0() + ms(180_000));
        store
            .upsert_incident(&i3, &["c1".to_owned()], false)
            .await
            .unwrap();
        let list = |q: IncidentQuery| {
            let store = Arc::clone(&store);
            async move {
                store
                    .list_incidents(&q)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|i| i.incident.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            list(IncidentQuery::default()).await,
            ["inc-3", "inc-2", "inc-1"]
        );
        let q = IncidentQuery {
            status: Some(IncidentStatus::Open),
            ..Default::default()
        };
        assert_eq!(list(q).await, ["inc-3", "inc-2"]);
        let q = IncidentQuery {
            min_severity: Some(Severity::High),
            ..Default::default()
        };
        assert_eq!(list(q).await, ["inc-3", "inc-1"]);
        let q = IncidentQuery {
            key_id: Some(key_id(2)),
            ..Default::default()
        };
        assert_eq!(list(q).await, ["inc-2"]);
        let q = IncidentQuery {
            tenant: Some("other".to_owned()),
            ..Default::default()
        };
        assert!(list(q).await.is_empty());
        let q = IncidentQuery {
            alert_id: Some("a2".to_owned()),
            ..Default::default()
        };
        assert_eq!(list(q).await, ["inc-1"]);
        let q = IncidentQuery {
            since: Some(t0() + ms(120_000)),
            limit: Some(1),
            ..Default::default()
        };
        assert_eq!(list(q).await, ["inc-3"]);
        // A source network's incident is found by its subject.
        let q = IncidentQuery {
            subject: Some("network:203.0.113.0/24".to_owned()),
            ..Default::default()
        };
        assert_eq!(list(q).await, ["inc-3"]);
        let q = IncidentQuery {
            subject: Some(format!("key:{}", key_id(2).as_str())),
            ..Default::default()
        };
        assert_eq!(list(q).await, ["inc-2"]);

        // Episodes that ended are closed: only open incidents quiet since before the cut.
        let closed = store
            .close_quiet_incidents(t0() + ms(150_000), at)
            .await
            .unwrap();
        assert_eq!(closed, 1);
        let status = |id: &'static str| {
            let store = Arc::clone(&store);
            async move {
                let s = store.get_incident(id).await.unwrap().unwrap();
                (s.incident.status, s.changed_at)
            }
        };
        assert_eq!(status("inc-2").await, (IncidentStatus::Closed, at));
        assert_eq!(status("inc-3").await.0, IncidentStatus::Open);
        assert_eq!(status("inc-1").await.0, IncidentStatus::FalsePositive);
        assert_eq!(
            store
                .close_quiet_incidents(t0() + ms(150_000), at)
                .await
                .unwrap(),
            0,
            "closing twice changes nothing"
        );
        // A closed incident that escalates is open again.
        let reopened = store.upsert_incident(&i2, &[], true).await.unwrap();
        assert_eq!(reopened.incident.status, IncidentStatus::Open);

        // Unknown ids and unstorable notes or ids are refused.
        let err = store
            .set_incident_status("missing", IncidentStatus::Resolved, None, at)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "{err:?}");
        let err = store
            .set_incident_status("inc-2", IncidentStatus::Resolved, Some("bad\0"), at)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        let mut bad = incident("inc-4", Some(4), Severity::Low, t0());
        bad.risk_score = f64::NAN;
        assert!(store.upsert_incident(&bad, &[], false).await.is_err());
        assert_eq!(store.get_incident("inc-4").await.unwrap(), None);
    }

    pub async fn actions_record_list(store: Arc<dyn Store>) {
        let r1 = action("r1", 1, "a1", &["a0", "a1"], t0());
        let mut r2 = action("r2", 1, "a2", &["a1", "a2"], t0() + ms(10));
        r2.outcome = ActionOutcome::AlreadyInEffect;
        r2.action.kind = ActionKind::Suspend;
        r2.action.throttle_rpm = None;
        let mut r3 = action("r3", 2, "a3", &[], t0() + ms(20));
        r3.outcome = ActionOutcome::Failed;
        r3.message = Some("key not found".to_owned());
        r3.action.tenant = None;
        for r in [&r2, &r3, &r1] {
            store.record_action(r).await.unwrap();
        }
        let list = |q: ActionQuery| {
            let store = Arc::clone(&store);
            async move { store.list_actions(&q).await.unwrap() }
        };
        // Newest first, and every field survives.
        assert_eq!(
            list(ActionQuery::default()).await,
            vec![r3.clone(), r2.clone(), r1.clone()]
        );
        let by_key = |k: u32| ActionQuery {
            key_id: Some(key_id(k)),
            ..Default::default()
        };
        let by_alert = |a: &str| ActionQuery {
            alert_id: Some(a.to_owned()),
            ..Default::default()
        };
        assert_eq!(action_ids(&list(by_key(1)).await), ["r2", "r1"]);
        assert_eq!(action_ids(&list(by_key(2)).await), ["r3"]);
        assert!(list(by_key(9)).await.is_empty());
        // By the causing alert or by a contributing one.
        assert_eq!(action_ids(&list(by_alert("a1")).await), ["r2", "r1"]);
        assert_eq!(action_ids(&list(by_alert("a0")).await), ["r1"]);
        assert_eq!(action_ids(&list(by_alert("a2")).await), ["r2"]);
        assert_eq!(action_ids(&list(by_alert("a3")).await), ["r3"]);
        assert!(list(by_alert("a9")).await.is_empty());
        assert_eq!(
            action_ids(
                &list(ActionQuery {
                    key_id: Some(key_id(1)),
                    alert_id: Some("a2".to_owned()),
                    limit: None,
                })
                .await
            ),
            ["r2"]
        );
        assert!(
            list(ActionQuery {
                key_id: Some(key_id(2)),
                alert_id: Some("a1".to_owned()),
                limit: None,
            })
            .await
            .is_empty()
        );
        assert_eq!(
            action_ids(
                &list(ActionQuery {
                    limit: Some(1),
                    ..Default::default()
                })
                .await
            ),
            ["r3"]
        );
        assert_eq!(
            action_ids(
                &list(ActionQuery {
                    alert_id: Some("a1".to_owned()),
                    limit: Some(1),
                    ..Default::default()
                })
                .await
            ),
            ["r2"]
        );
        // Recording an id again (a retry) keeps the first copy.
        let mut retried = r1.clone();
        retried.outcome = ActionOutcome::Failed;
        retried.action.contributing_alerts = vec!["a7".to_owned()];
        store.record_action(&retried).await.unwrap();
        assert_eq!(list(by_alert("a0")).await, vec![r1]);
        assert!(list(by_alert("a7")).await.is_empty());
        assert_eq!(list(ActionQuery::default()).await.len(), 3);
    }

    pub async fn audit_append_list(store: Arc<dyn Store>) {
        let list = |q: AuditQuery| {
            let store = Arc::clone(&store);
            async move { store.list_audit(&q).await.unwrap() }
        };
        assert!(list(AuditQuery::default()).await.is_empty());
        let entries = [
            audit_entry("key.create", Some("k1"), t0()),
            // A non-UTC offset is kept as given (it is part of the hashed text).
            audit_entry(
                "key.suspend",
                Some("k2"),
                (t0() + ms(1)).to_offset(UtcOffset::from_hms(5, 30, 0).unwrap()),
            ),
            audit_entry("events.import", None, t0() + ms(2)),
            audit_entry("key.revoke", Some("k1"), t0() + ms(3)),
            audit_entry("key.rotate", Some("k1"), t0() + ms(4)),
        ];
        let mut appended = Vec::new();
        for e in &entries {
            appended.push(store.append_audit(e).await.unwrap());
        }
        assert_eq!(seqs(&appended), [1, 2, 3, 4, 5]);
        assert_eq!(appended[0].prev_hash, AUDIT_GENESIS);
        for (r, e) in appended.iter().zip(&entries) {
            // Stored at millisecond precision, everything else as given.
            let mut want = e.clone();
            want.at = e.at.replace_millisecond(e.at.millisecond()).unwrap();
            assert_eq!(r.entry, want);
            assert_eq!(r.entry.at.offset(), e.at.offset());
        }
        let all = list(AuditQuery::default()).await;
        assert_eq!(all, appended);
        assert_eq!(verify_audit(&all, 0, AUDIT_GENESIS), Ok(()));

        let after = list(AuditQuery {
            after_seq: Some(2),
            ..Default::default()
        })
        .await;
        assert_eq!(seqs(&after), [3, 4, 5]);
        // A tail verifies from the record before it.
        assert_eq!(verify_audit(&after, 2, &all[1].hash), Ok(()));
        let k1 = list(AuditQuery {
            target: Some("k1".to_owned()),
            ..Default::default()
        })
        .await;
        assert_eq!(seqs(&k1), [1, 4, 5]);
        let page = list(AuditQuery {
            target: Some("k1".to_owned()),
            after_seq: Some(1),
            limit: Some(1),
        })
        .await;
        assert_eq!(seqs(&page), [4]);
        assert_eq!(
            seqs(
                &list(AuditQuery {
                    limit: Some(2),
                    ..Default::default()
                })
                .await
            ),
            [1, 2]
        );
        assert!(
            list(AuditQuery {
                after_seq: Some(u64::MAX),
                ..Default::default()
            })
            .await
            .is_empty()
        );
        assert!(
            list(AuditQuery {
                target: Some("nope".to_owned()),
                ..Default::default()
            })
            .await
            .is_empty()
        );

        // Entries PostgreSQL cannot store are refused by both backends, and take no seq.
        let mut nul = audit_entry("key.create", Some("k\0"), t0());
        let err = store.append_audit(&nul).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        nul.target = None;
        nul.actor = "ad\0min".to_owned();
        assert!(matches!(
            store.append_audit(&nul).await,
            Err(StoreError::Corrupt(_))
        ));
        // NUL inside the JSON detail is escaped and fine.
        nul.actor = "admin".to_owned();
        nul.detail = serde_json::json!({"note": "a\u{0}b"});
        assert_eq!(store.append_audit(&nul).await.unwrap().seq, 6);
        let all = list(AuditQuery::default()).await;
        assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6]);
        assert_eq!(verify_audit(&all, 0, AUDIT_GENESIS), Ok(()));
    }

    /// Appends from several handles on one database at once form one gap-free chain.
    pub async fn audit_concurrent_appends(stores: Vec<Arc<dyn Store>>) {
        let tasks: Vec<_> = (0..16usize)
            .map(|i| {
                let store = Arc::clone(&stores[i % stores.len()]);
                let e = audit_entry("key.create", Some(&format!("k{i}")), t0() + ms(i as i64));
                #[allow(clippy::disallowed_methods)]
                tokio::spawn(async move { store.append_audit(&e).await.unwrap() })
            })
            .collect();
        let mut returned = Vec::new();
        for t in tasks {
            returned.push(t.await.unwrap());
        }
        returned.sort_by_key(|r| r.seq);
        assert_eq!(seqs(&returned), (1..=16).collect::<Vec<_>>());
        for store in &stores {
            let all = store.list_audit(&AuditQuery::default()).await.unwrap();
            assert_eq!(all, returned);
            assert_eq!(verify_audit(&all, 0, AUDIT_GENESIS), Ok(()));
        }
    }

    /// One holder at a time: others see who holds it; the holder renews without a new term;
    /// a released or expired lease goes to the next taker with a new term; only the holder
    /// writes the hand-over state, which outlives the holder.
    pub async fn leases(store: Arc<dyn Store>) {
        let long = Duration::from_secs(60);
        let a = store
            .acquire_lease("cloud-logs:aws", "gw-a", long)
            .await
            .unwrap();
        assert!(a.held_by("gw-a"));
        assert_eq!(a.term, 1);
        assert!(a.expires_unix_ms > a.since_unix_ms);
        let b = store
            .acquire_lease("cloud-logs:aws", "gw-b", long)
            .await
            .unwrap();
        assert!(!b.held_by("gw-b"));
        assert_eq!((b.holder.as_str(), b.term), ("gw-a", 1));
        // Another name is another lease.
        let other = store
            .acquire_lease("cloud-logs:azure", "gw-b", long)
            .await
            .unwrap();
        assert!(other.held_by("gw-b"));
        // Renewal keeps term and start.
        let again = store
            .acquire_lease("cloud-logs:aws", "gw-a", long)
            .await
            .unwrap();
        assert_eq!((again.term, again.since_unix_ms), (1, a.since_unix_ms));
        assert!(again.expires_unix_ms >= a.expires_unix_ms);

        assert_eq!(store.lease_state("cloud-logs:aws").await.unwrap(), None);
        assert!(
            store
                .save_lease_state("cloud-logs:aws", "gw-a", "[1]")
                .await
                .unwrap()
        );
        assert!(
            !store
                .save_lease_state("cloud-logs:aws", "gw-b", "[2]")
                .await
                .unwrap()
        );
        assert_eq!(
            store
                .lease_state("cloud-logs:aws")
                .await
                .unwrap()
                .as_deref(),
            Some("[1]")
        );

        // Released: the next taker gets it at once, with a new term and the state kept.
        store.release_lease("cloud-logs:aws", "gw-b").await.unwrap(); // not the holder: no-op
        assert!(
            !store
                .acquire_lease("cloud-logs:aws", "gw-b", long)
                .await
                .unwrap()
                .held_by("gw-b")
        );
        store.release_lease("cloud-logs:aws", "gw-a").await.unwrap();
        assert!(
            !store
                .save_lease_state("cloud-logs:aws", "gw-a", "[3]")
                .await
                .unwrap()
        );
        let b = store
            .acquire_lease("cloud-logs:aws", "gw-b", long)
            .await
            .unwrap();
        assert!(b.held_by("gw-b"));
        assert_eq!(b.term, 2);
        assert_eq!(
            store
                .lease_state("cloud-logs:aws")
                .await
                .unwrap()
                .as_deref(),
            Some("[1]")
        );
        assert!(
            !store
                .acquire_lease("cloud-logs:aws", "gw-a", long)
                .await
                .unwrap()
                .held_by("gw-a")
        );

        // Expired (a holder that died): taken by the next one after the ttl, not before.
        let short = Duration::from_millis(300);
        let c = store
            .acquire_lease("cloud-logs:gcp", "gw-c", short)
            .await
            .unwrap();
        assert!(c.held_by("gw-c"));
        assert!(
            !store
                .acquire_lease("cloud-logs:gcp", "gw-a", short)
                .await
                .unwrap()
                .held_by("gw-a")
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(
            !store
                .save_lease_state("cloud-logs:gcp", "gw-c", "late")
                .await
                .unwrap()
        );
        let a = store
            .acquire_lease("cloud-logs:gcp", "gw-a", long)
            .await
            .unwrap();
        assert!(a.held_by("gw-a"));
        assert_eq!(a.term, 2);
        // The old holder coming back finds it taken.
        let c = store
            .acquire_lease("cloud-logs:gcp", "gw-c", long)
            .await
            .unwrap();
        assert_eq!((c.holder.as_str(), c.term), ("gw-a", 2));
    }

    /// Replicas racing for free or expired leases: each round has exactly one winner, and
    /// every replica agrees who it is.
    pub async fn lease_races(stores: Vec<Arc<dyn Store>>) {
        for round in 0..5u32 {
            let name = format!("race-{round}");
            let tasks: Vec<_> = (0..8usize)
                .map(|i| {
                    let store = Arc::clone(&stores[i % stores.len()]);
                    let name = name.clone();
                    #[allow(clippy::disallowed_methods)]
                    tokio::spawn(async move {
                        let me = format!("gw-{i}");
                        let l = store
                            .acquire_lease(&name, &me, Duration::from_secs(60))
                            .await
                            .unwrap();
                        (me, l)
                    })
                })
                .collect();
            let mut winners = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            for t in tasks {
                let (me, l) = t.await.unwrap();
                seen.insert(l.holder.clone());
                if l.held_by(&me) {
                    winners.push(me);
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
            assert_eq!(seen.len(), 1, "round {round}: {seen:?}");
        }
    }

    /// Replicas whose first alerts on one key arrive together each open an incident (their
    /// own ids) at once: exactly one is stored, and every other opener is handed that one
    /// to join. Another key's incident is no conflict; once the episode ended (the holder
    /// quiet for longer than the gap, or closed) the next incident opens anew.
    pub async fn incident_open_races(stores: Vec<Arc<dyn Store>>) {
        const GAP: u32 = 3600;
        for round in 0..4u32 {
            let at = t0() + time::Duration::hours(i64::from(round) * 24);
            let tasks: Vec<_> = (0..8usize)
                .map(|i| {
                    let store = Arc::clone(&stores[i % stores.len()]);
                    let mut inc =
                        incident(&format!("inc-r{round}-{i}"), Some(7), Severity::High, at);
                    inc.opened_at = at + ms(i as i64);
                    #[allow(clippy::disallowed_methods)]
                    tokio::spawn(async move {
                        let alert = format!("alert-r{round}-{i}");
                        store.open_incident(&inc, &[alert], GAP).await.unwrap()
                    })
                })
                .collect();
            let mut new = Vec::new();
            let mut running = std::collections::BTreeSet::new();
            for t in tasks {
                match t.await.unwrap() {
                    Opened::New(s) => new.push(s.incident.id),
                    Opened::Running(s) => {
                        running.insert(s.incident.id);
                    }
                }
            }
            assert_eq!(new.len(), 1, "round {round}: {new:?} opened");
            assert!(
                running.iter().all(|id| *id == new[0]),
                "round {round}: {running:?} against {new:?}"
            );
            let q = IncidentQuery {
                key_id: Some(key_id(7)),
                since: Some(at),
                ..Default::default()
            };
            let stored = stores[0].list_incidents(&q).await.unwrap();
            assert_eq!(stored.len(), 1, "round {round}");
        }
        // Another subject opens its own while key 7's episode runs.
        let at = t0() + time::Duration::hours(72) + ms(30);
        let other = incident("inc-other", Some(8), Severity::High, at);
        assert!(matches!(
            stores[0].open_incident(&other, &[], GAP).await.unwrap(),
            Opened::New(_)
        ));
        // Within the gap of key 7's latest incident: joined; after a close, a new one.
        let near = incident("inc-near", Some(7), Severity::High, at);
        assert!(matches!(
            stores[0].open_incident(&near, &[], GAP).await.unwrap(),
            Opened::Running(s) if s.incident.id.starts_with("inc-r3-")
        ));
        let closed = stores[0]
            .close_quiet_incidents(at + time::Duration::seconds(1), t0())
            .await
            .unwrap();
        assert!(closed >= 1);
        assert!(matches!(
            stores[0].open_incident(&near, &[], GAP).await.unwrap(),
            Opened::New(s) if s.incident.id == "inc-near"
        ));
    }

    /// Rows changed or removed behind the store's back (`exec` runs SQL on the database
    /// directly) fail verification at the record concerned.
    pub async fn audit_tampering_is_detected<F, Fut>(store: Arc<dyn Store>, exec: F)
    where
        F: Fn(&'static str) -> Fut,
        Fut: Future<Output = ()>,
    {
        for i in 0..5 {
            store
                .append_audit(&audit_entry("key.suspend", Some("k1"), t0() + ms(i)))
                .await
                .unwrap();
        }
        let verify = || {
            let store = Arc::clone(&store);
            async move {
                let all = store.list_audit(&AuditQuery::default()).await.unwrap();
                verify_audit(&all, 0, AUDIT_GENESIS)
            }
        };
        assert_eq!(verify().await, Ok(()));
        exec(
            "UPDATE audit SET body_json = REPLACE(body_json, '\"actor\":\"admin\"', \
             '\"actor\":\"mallory\"') WHERE seq = 3",
        )
        .await;
        let err = verify().await.unwrap_err();
        assert_eq!(err.seq, 3, "{err}");
        assert!(err.reason.contains("changed"), "{err}");
        // Reads return the forged content as stored: only the chain tells.
        let forged = store
            .list_audit(&AuditQuery {
                after_seq: Some(2),
                limit: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(forged[0].entry.actor, "mallory");

        // A removed row is a gap, reported at the first record after it.
        exec("DELETE FROM audit WHERE seq = 3").await;
        let err = verify().await.unwrap_err();
        assert_eq!(err.seq, 4, "{err}");
        assert!(err.reason.contains("missing"), "{err}");
        // The records before the damage still verify on their own.
        let head = store
            .list_audit(&AuditQuery {
                limit: Some(2),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(verify_audit(&head, 0, AUDIT_GENESIS), Ok(()));
    }

    /// Data written through one store handle is there after closing and reopening.
    pub async fn reopen_persists<F, Fut>(open: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Arc<dyn Store>>,
    {
        let k = key(1, "acme", t0());
        let e = event("e1", t0(), Some(1), Some("acme"), 0.5);
        {
            let store = open().await;
            store.insert_key(&k).await.unwrap();
            store.insert_events(std::slice::from_ref(&e)).await.unwrap();
            store
                .append_audit(&audit_entry("key.create", Some("k1"), t0()))
                .await
                .unwrap();
        }
        for round in 0..2 {
            let store = open().await;
            // The chain goes on where the last handle left it.
            store
                .append_audit(&audit_entry("key.suspend", Some("k1"), t0()))
                .await
                .unwrap();
            let audit = store.list_audit(&AuditQuery::default()).await.unwrap();
            assert_eq!(audit.len(), round + 2);
            assert_eq!(verify_audit(&audit, 0, AUDIT_GENESIS), Ok(()));
            assert_eq!(store.get_key(&k.id).await.unwrap(), Some(k.clone()));
            assert_eq!(
                store.query_events(&EventQuery::default()).await.unwrap(),
                vec![e.clone()]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/// A fresh store for one test, and how to clean up after it.
struct Backend {
    store: Arc<dyn Store>,
    /// PostgreSQL: (URL, schema) to drop when the test passed.
    schema: Option<(String, String)>,
}

impl Backend {
    async fn cleanup(self) {
        drop(self.store);
        if let Some((url, schema)) = self.schema {
            drop_schema(&url, &schema).await;
        }
    }
}

async fn drop_schema(url: &str, schema: &str) {
    pg_admin(url)
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
}

/// Runs every suite function that takes a fresh store against one backend. The opener
/// returns `None` to skip (a backend whose test variable is unset).
macro_rules! backend_suite {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;
            backend_suite!(@tests $open;
                key_insert_get, key_duplicate, key_list, key_update, key_bulk_insert,
                key_list_pages,
                event_round_trip_and_order, event_filters, event_paging,
                event_reinsert_is_idempotent, encoded_events, control_events, retention, spend_since, reads_while_writing, event_summaries,
                alert_insert_get, alert_duplicates, alert_refuses_unstorable,
                alert_list_filters, alert_status, actions_record_list, audit_append_list,
                incident_upsert_list_status, leases);
        }
    };
    (@tests $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let dir = tempfile::tempdir().unwrap();
                let Some(backend): Option<Backend> = $open(dir.path()).await else {
                    return;
                };
                suite::$name(Arc::clone(&backend.store)).await;
                backend.cleanup().await;
            }
        )*
    };
}

async fn open_sqlite(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(&dir.join("stormwall.db")).await.unwrap())
}

async fn sqlite_backend(dir: &Path) -> Option<Backend> {
    Some(Backend {
        store: open_sqlite(dir).await,
        schema: None,
    })
}

backend_suite!(sqlite, sqlite_backend);

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

/// The test server's URL: `None` (skip) when the variable is unset.
fn pg_url() -> Option<String> {
    match std::env::var("STORMWALL_TEST_POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!("skipped: STORMWALL_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A direct connection for set-up and clean-up. Panics (fails the test) when the server
/// named by the variable cannot be reached: a set variable is a promise of a server.
async fn pg_admin(url: &str) -> tokio_postgres::Client {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .unwrap_or_else(|_| {
            panic!("STORMWALL_TEST_POSTGRES_URL is set but PostgreSQL did not answer")
        })
        .unwrap_or_else(|e| {
            panic!("STORMWALL_TEST_POSTGRES_URL is set but PostgreSQL is unreachable: {e}")
        });
    // The connection task ends when the client is dropped.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(connection);
    client
}

/// A schema name no other test (or test process) uses.
fn unique_schema() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "swt_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn pg_config(url: &str, schema: &str) -> PostgresConfig {
    let mut config = PostgresConfig::from_url(url);
    config.schema = Some(schema.to_owned());
    config.pool_size = 4;
    config
}

async fn open_pg(url: &str, schema: &str) -> Arc<dyn Store> {
    let store = PostgresStore::open(&pg_config(url, schema))
        .await
        .unwrap_or_else(|e| {
            panic!("STORMWALL_TEST_POSTGRES_URL is set but the store does not open: {e}")
        });
    Arc::new(store)
}

async fn postgres_backend(_dir: &Path) -> Option<Backend> {
    let url = pg_url()?;
    pg_admin(&url).await; // fail loudly if unreachable
    let schema = unique_schema();
    Some(Backend {
        store: open_pg(&url, &schema).await,
        schema: Some((url, schema)),
    })
}

backend_suite!(postgres, postgres_backend);

#[tokio::test]
async fn postgres_reopen_persists() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema();
    suite::reopen_persists(|| open_pg(&url, &schema)).await;
    drop_schema(&url, &schema).await;
}

/// Four replicas (four pools on one schema) appending at once extend one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_audit_concurrent_appends() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(open_pg(&url, &schema).await);
    }
    suite::audit_concurrent_appends(stores).await;
    drop_schema(&url, &schema).await;
}

/// Eight replicas (four pools on one schema) racing for leases: one winner each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lease_races_have_one_winner() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(open_pg(&url, &schema).await);
    }
    suite::lease_races(stores).await;
    drop_schema(&url, &schema).await;
}

/// Eight replicas (four pools on one schema) opening one key's incident at once: one opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_incident_open_races_open_one() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(open_pg(&url, &schema).await);
    }
    suite::incident_open_races(stores).await;
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_incident_open_races_open_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stormwall.db");
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..2 {
        stores.push(Arc::new(SqliteStore::open(&path).await.unwrap()));
    }
    suite::incident_open_races(stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lease_races_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stormwall.db");
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..2 {
        stores.push(Arc::new(SqliteStore::open(&path).await.unwrap()));
    }
    suite::lease_races(stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_audit_tampering_is_detected() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema();
    let store = open_pg(&url, &schema).await;
    let admin = pg_admin(&url).await;
    let exec = |sql: &'static str| {
        let (admin, schema) = (&admin, &schema);
        async move {
            admin
                .batch_execute(&format!("SET search_path TO {schema}; {sql}"))
                .await
                .unwrap();
        }
    };
    suite::audit_tampering_is_detected(store, exec).await;
    drop(admin);
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_migrations_apply_once() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema();
    let config = StoreConfig::Postgres(pg_config(&url, &schema));
    let env = |_: &str| None;
    // Replicas starting at once: every run succeeds, and each migration is applied once.
    let runs =
        futures_util::future::join_all((0..4).map(|_| stormwall_store::migrate(&config, &env)))
            .await;
    let mut applied = Vec::new();
    for run in runs {
        let report = run.unwrap();
        assert_eq!(report.backend, "postgres");
        assert_eq!(report.version, stormwall_store::postgres::SCHEMA_VERSION);
        applied.extend(report.applied);
    }
    assert_eq!(
        applied.len(),
        stormwall_store::postgres::SCHEMA_VERSION as usize,
        "{applied:?}"
    );
    let again = stormwall_store::migrate(&config, &env).await.unwrap();
    assert!(again.applied.is_empty());
    let admin = pg_admin(&url).await;
    let rows = admin
        .query_one(
            &format!("SELECT COUNT(*) FROM {schema}.stormwall_migrations"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rows.get::<_, i64>(0),
        i64::from(stormwall_store::postgres::SCHEMA_VERSION)
    );
    let store = PostgresStore::open(&pg_config(&url, &schema))
        .await
        .unwrap();
    assert_eq!(
        store.schema_version().await.unwrap(),
        stormwall_store::postgres::SCHEMA_VERSION
    );
    drop(store);
    drop_schema(&url, &schema).await;
}

/// A database at 0001 (written by an older build) gets 0002 and 0003 only, once, keeping its
/// rows.
#[tokio::test]
async fn postgres_upgrade_from_0001_applies_0002_once() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema();
    let admin = pg_admin(&url).await;
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path TO {schema};
             {init}
             CREATE TABLE stormwall_migrations (
                 version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
             INSERT INTO stormwall_migrations (version, name) VALUES (1, '0001_init');
             INSERT INTO events (id, ts_unix_ms, decision, status, cost_usd, body_json)
                 VALUES ('old', 1, 'allow', 200, 0, '{{}}');",
            init = include_str!("../migrations/postgres/0001_init.sql"),
        ))
        .await
        .unwrap();
    let config = StoreConfig::Postgres(pg_config(&url, &schema));
    let report = stormwall_store::migrate(&config, &|_| None).await.unwrap();
    assert_eq!(
        report.applied,
        [
            "0002_alerts",
            "0003_audit",
            "0004_incidents",
            "0005_leases",
            "0006_control_events",
            "0007_incident_episodes"
        ]
    );
    assert_eq!(report.version, stormwall_store::postgres::SCHEMA_VERSION);
    let again = stormwall_store::migrate(&config, &|_| None).await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    let store = open_pg(&url, &schema).await;
    assert_eq!(store.count_events().await.unwrap(), 1);
    let a = alert("a1", DetectorId::H1, t0(), Some(1), Some("acme"));
    assert!(store.insert_alert(&a, "H1:k1").await.unwrap());
    drop(store);
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn postgres_without_migrate_on_start_refuses_an_old_schema() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema();
    let mut config = pg_config(&url, &schema);
    config.migrate_on_start = false;
    let err = PostgresStore::open(&config).await.unwrap_err();
    assert!(matches!(err, StoreError::Open(_)), "{err:?}");
    assert!(err.to_string().contains("stormwall migrate"), "{err}");
    // `stormwall migrate` then lets it open.
    stormwall_store::migrate(&StoreConfig::Postgres(config.clone()), &|_| None)
        .await
        .unwrap();
    let store = PostgresStore::open(&config).await.unwrap();
    assert_eq!(store.count_events().await.unwrap(), 0);
    drop(store);
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batch_writer_commits_what_it_counts() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema();
    let store = open_pg(&url, &schema).await;
    let (sink, writer) = BatchWriter::spawn(store.clone(), &events_config(1_000, 64, 20));
    for i in 0..500 {
        sink.record(numbered(i));
    }
    let stats = writer.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!((stats.written, stats.lost), (500, 0));
    // Read back through a separate connection: what the writer counted is committed.
    let admin = pg_admin(&url).await;
    let n: i64 = admin
        .query_one(&format!("SELECT COUNT(*) FROM {schema}.events"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 500);
    drop(store);
    drop_schema(&url, &schema).await;
}

/// Needs no server: an unreachable database is an error naming no secret, within the
/// connect timeout.
#[tokio::test]
async fn postgres_unreachable_is_an_error_without_secrets() {
    let mut config = PostgresConfig::from_env_var("PG_URL_FOR_TEST");
    config.connect_timeout_secs = 2;
    let env = |name: &str| {
        (name == "PG_URL_FOR_TEST").then(|| "postgres://sw:hunter2@127.0.0.1:1/db".to_owned())
    };
    let started = std::time::Instant::now();
    let err = PostgresStore::open_with_env(&config, &env)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(err, StoreError::Open(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    // An unset variable is named in the error.
    let err = PostgresStore::open_with_env(&config, &|_| None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PG_URL_FOR_TEST"), "{err}");
}

#[tokio::test]
async fn sqlite_reopen_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    suite::reopen_persists(|| open_sqlite(&path)).await;
}

#[tokio::test]
async fn sqlite_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stormwall.db");
    for _ in 0..3 {
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            stormwall_store::sqlite::SCHEMA_VERSION
        );
    }
    // The same through the config entry point.
    let store = stormwall_store::open(&stormwall_store::StoreConfig::Sqlite { path })
        .await
        .unwrap();
    assert_eq!(store.count_events().await.unwrap(), 0);
}

#[tokio::test]
async fn sqlite_migrate_reports_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::Sqlite {
        path: dir.path().join("stormwall.db"),
    };
    let first = stormwall_store::migrate(&config, &|_| None).await.unwrap();
    assert_eq!(first.backend, "sqlite");
    assert_eq!(
        first.applied,
        [
            "0001_init",
            "0002_alerts",
            "0003_audit",
            "0004_incidents",
            "0005_leases",
            "0006_control_events",
            "0007_incident_episodes"
        ]
    );
    assert_eq!(first.version, stormwall_store::sqlite::SCHEMA_VERSION);
    for _ in 0..2 {
        let again = stormwall_store::migrate(&config, &|_| None).await.unwrap();
        assert!(again.applied.is_empty(), "{again:?}");
        assert_eq!(again.version, stormwall_store::sqlite::SCHEMA_VERSION);
    }
    let store = stormwall_store::open(&config).await.unwrap();
    let a = alert("a1", DetectorId::H1, t0(), Some(1), Some("acme"));
    assert!(store.insert_alert(&a, "H1:k1").await.unwrap());
}

/// Four handles on one file (as four processes would open it) appending at once extend one
/// chain; opening them at once also runs the migrations concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_audit_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let stores = futures_util::future::join_all((0..4).map(|_| open_sqlite(dir.path()))).await;
    suite::audit_concurrent_appends(stores).await;
}

/// Many openers of one fresh file at once (replicas starting together, or the four handles
/// above): every open succeeds and sees the whole schema. SQLite converts a fresh file to WAL
/// by writing its header from inside a read transaction and returns "database is locked" at
/// once, without waiting, when another connection holds the file meanwhile; the open path
/// retries that switch. Fresh files over several rounds, so the race is met, not hoped for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_many_openers_of_one_fresh_file_all_succeed() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stormwall.db");
        // Each open runs on the blocking pool: twelve at once.
        let opens = (0..12).map(|_| SqliteStore::open(&path));
        for (i, opened) in futures_util::future::join_all(opens)
            .await
            .into_iter()
            .enumerate()
        {
            let store = opened.unwrap_or_else(|e| panic!("round {round}, opener {i}: {e}"));
            assert_eq!(
                store.schema_version().await.unwrap(),
                stormwall_store::sqlite::SCHEMA_VERSION
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_audit_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stormwall.db");
    let store = open_sqlite(dir.path()).await;
    let exec = |sql: &'static str| {
        let path = path.clone();
        async move {
            rusqlite::Connection::open(&path)
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        }
    };
    suite::audit_tampering_is_detected(store, exec).await;
}

#[tokio::test]
async fn sqlite_in_memory_works() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    assert_eq!(
        store.schema_version().await.unwrap(),
        stormwall_store::sqlite::SCHEMA_VERSION
    );
    suite::event_filters(Arc::new(store)).await;
}

/// The connections' page caches are capped (sqlite.rs); an in-memory database lives in that
/// cache, so it must keep everything past the cap all the same.
#[tokio::test]
async fn sqlite_in_memory_keeps_more_than_its_page_cache() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let t0 = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let padding = "x".repeat(2_000);
    let mut total = 0u64;
    for batch in 0..8u32 {
        let events: Vec<UsageEvent> = (0..500u32)
            .map(|i| {
                let n = batch * 500 + i;
                let mut e = event(&format!("evt-mem-{n:05}"), t0, Some(n % 7), None, 0.0);
                e.path = format!("/v1/chat/completions/{padding}");
                e
            })
            .collect();
        store.insert_events(&events).await.unwrap();
        total += events.len() as u64;
    }
    // 4,000 events of over 2 KB each: several megabytes, past any cache limit.
    assert_eq!(store.count_events().await.unwrap(), total);
}

#[tokio::test]
async fn sqlite_open_reports_bad_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(&dir.path().join("missing/dir/x.db"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    suite::reads_while_writing(open_sqlite(dir.path()).await).await;
}

// ---------------------------------------------------------------------------------------
// Batch writer
// ---------------------------------------------------------------------------------------

fn events_config(
    channel_capacity: usize,
    batch_max: usize,
    flush_interval_ms: u64,
) -> EventsConfig {
    EventsConfig {
        channel_capacity,
        batch_max,
        flush_interval_ms,
        // Give up after the minimum attempts, so tests of abandonment finish quickly.
        retry_for_secs: 0,
        ..EventsConfig::default()
    }
}

fn numbered(n: u32) -> UsageEvent {
    event(
        &format!("evt{n:05}"),
        t0() + ms(i64::from(n)),
        Some(1),
        Some("acme"),
        0.0,
    )
}

#[tokio::test]
async fn batch_events_reach_the_store_after_flush() {
    // Held the way the gateway holds it: the writer takes it upcast to `dyn EventStore`.
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    let (sink, writer) = BatchWriter::spawn(store.clone(), &events_config(1_000, 10, 20));
    for i in 0..25 {
        sink.clone().record(numbered(i));
    }
    // The writer counts a batch after the store returns, so wait for both.
    eventually("25 events stored and counted", || {
        let store = Arc::clone(&store);
        let stats = Arc::clone(sink.stats());
        async move { store.count_events().await.unwrap() == 25 && stats.snapshot().written == 25 }
    })
    .await;
    let stats = sink.stats().snapshot();
    assert_eq!((stats.accepted, stats.written, stats.dropped), (25, 25, 0));
    assert!(stats.batches >= 3, "{stats:?}");
    let stored = store.query_events(&EventQuery::default()).await.unwrap();
    assert_eq!(stored.len(), 25);
    assert_eq!(stored[0], numbered(0));
    writer.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn batch_shutdown_flushes_everything_queued() {
    let store = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    // An hour-long flush interval: only shutdown can write these.
    let (sink, writer) = BatchWriter::spawn(store.clone(), &events_config(1_000, 7, 3_600_000));
    let held_by_gateway = sink.clone();
    for i in 0..50 {
        sink.record(numbered(i));
    }
    let stats = writer.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        (stats.accepted, stats.written, stats.lost, stats.pending()),
        (50, 50, 0, 0)
    );
    assert_eq!(store.count_events().await.unwrap(), 50);
    // Sinks that outlive the writer count their events as dropped instead of queueing.
    held_by_gateway.record(numbered(99));
    assert_eq!(held_by_gateway.stats().snapshot().dropped, 1);
}

#[tokio::test]
async fn batch_writer_ends_when_every_sink_is_dropped() {
    let store = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    let (sink, writer) = BatchWriter::spawn(store.clone(), &events_config(100, 100, 3_600_000));
    sink.record(numbered(1));
    drop(sink);
    let stats = writer.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(stats.written, 1);
    assert_eq!(store.count_events().await.unwrap(), 1);
}

/// An event store whose writes wait on a gate, fail on demand, and keep what they get.
struct FakeStore {
    gate: tokio::sync::Semaphore,
    calls: AtomicU64,
    fail_next: AtomicU32,
    reject_id: Option<String>,
    events: Mutex<Vec<UsageEvent>>,
}

impl FakeStore {
    /// A store whose gate is shut: every write waits until permits are added.
    fn stalled() -> Self {
        Self {
            gate: tokio::sync::Semaphore::new(0),
            calls: AtomicU64::new(0),
            fail_next: AtomicU32::new(0),
            reject_id: None,
            events: Mutex::new(Vec::new()),
        }
    }

    /// A store whose writes go straight through.
    fn open() -> Self {
        let s = Self::stalled();
        s.gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS);
        s
    }

    fn stored(&self) -> usize {
        self.events.lock().unwrap().len()
    }
}

#[async_trait]
impl EventStore for FakeStore {
    async fn insert_events(&self, events: &[UsageEvent]) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let _permit = self
            .gate
            .acquire()
            .await
            .map_err(|_| StoreError::Database("gate closed".into()))?;
        if self.fail_next.load(Ordering::SeqCst) > 0 {
            self.fail_next.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Database("disk on fire".into()));
        }
        if let Some(bad) = &self.reject_id
            && events.iter().any(|e| &e.id == bad)
        {
            return Err(StoreError::Corrupt("unencodable".into()));
        }
        self.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }

    async fn query_events(&self, _query: &EventQuery) -> Result<Vec<UsageEvent>, StoreError> {
        Ok(self.events.lock().unwrap().clone())
    }

    async fn spend_since(
        &self,
        _key_id: &KeyId,
        _since: OffsetDateTime,
    ) -> Result<f64, StoreError> {
        Ok(0.0)
    }

    async fn count_events(&self) -> Result<u64, StoreError> {
        Ok(self.stored() as u64)
    }
}

#[tokio::test]
async fn batch_full_channel_counts_drops_instead_of_blocking() {
    let store = Arc::new(FakeStore::stalled()); // gate closed: every write stalls
    let (sink, writer) = BatchWriter::spawn(store.clone(), &events_config(4, 1, 1));
    for i in 0..10 {
        sink.record(numbered(i));
    }
    // The writer takes an event and stalls in the store; the channel then fills.
    eventually("writer stalled in the store", || {
        let store = Arc::clone(&store);
        async move { store.calls.load(Ordering::SeqCst) >= 1 }
    })
    .await;
    for i in 10..1_000 {
        sink.record(numbered(i));
    }
    let stats = sink.stats().snapshot();
    assert_eq!(stats.accepted + stats.dropped, 1_000);
    assert!(stats.dropped >= 990, "{stats:?}");
    assert!(stats.accepted <= 10, "{stats:?}");

    store.gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS);
    let stats = writer.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(stats.written, stats.accepted);
    assert_eq!(store.stored() as u64, stats.accepted);
}

#[tokio::test]
async fn batch_shutdown_gives_up_at_the_deadline() {
    let store = Arc::new(FakeStore::stalled()); // never opens
    let (sink, writer) = BatchWriter::spawn(store.clone(), &events_config(16, 4, 1));
    for i in 0..3 {
        sink.record(numbered(i));
    }
    let err = writer
        .shutdown(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err, ShutdownError::Deadline { unwritten: 3 });
}

#[tokio::test]
async fn batch_write_retries_transient_errors() {
    let store = Arc::new(FakeStore::open());
    store.fail_next.store(2, Ordering::SeqCst);
    let (sink, writer) = BatchWriter::spawn(store.clone(), &events_config(16, 16, 1));
    for i in 0..3 {
        sink.record(numbered(i));
    }
    let stats = writer.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!((stats.written, stats.write_errors, stats.lost), (3, 0, 0));
    assert_eq!(store.stored(), 3);
}

#[tokio::test(start_paused = true)]
async fn batch_write_keeps_retrying_through_an_outage() {
    // The store fails for a while, then recovers: nothing is lost, as long as the outage is
    // shorter than `retry_for_secs`.
    let store = Arc::new(FakeStore::open());
    store.fail_next.store(6, Ordering::SeqCst);
    let config = EventsConfig {
        retry_for_secs: 60,
        ..events_config(16, 16, 1)
    };
    let (sink, writer) = BatchWriter::spawn(store.clone(), &config);
    for i in 0..3 {
        sink.record(numbered(i));
    }
    let stats = writer.shutdown(Duration::from_secs(600)).await.unwrap();
    assert_eq!((stats.written, stats.write_errors, stats.lost), (3, 0, 0));
    assert_eq!(store.stored(), 3);
}

#[tokio::test(start_paused = true)]
async fn batch_write_gives_up_after_retries() {
    let store = Arc::new(FakeStore::open());
    store.fail_next.store(u32::MAX, Ordering::SeqCst);
    let (sink, writer) = BatchWriter::spawn(store.clone(), &events_config(16, 16, 1));
    for i in 0..3 {
        sink.record(numbered(i));
    }
    let stats = writer.shutdown(Duration::from_secs(600)).await.unwrap();
    assert_eq!((stats.written, stats.write_errors, stats.lost), (0, 1, 3));
    assert!(store.calls.load(Ordering::SeqCst) > 1, "no retry happened");
}

#[tokio::test]
async fn batch_isolates_an_unencodable_event() {
    let store = Arc::new(FakeStore {
        reject_id: Some(numbered(1).id),
        ..FakeStore::open()
    });
    let (sink, writer) = BatchWriter::spawn(store.clone(), &events_config(16, 16, 1));
    for i in 0..3 {
        sink.record(numbered(i));
    }
    let stats = writer.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!((stats.written, stats.write_errors, stats.lost), (2, 1, 1));
    assert_eq!(store.stored(), 2);
}

/// Copies the stored alert `template` as alert `id` of `incident` at `severity`, the row a
/// replica's insert writes, so a test can hold it uncommitted in a transaction of its own.
fn copy_alert_sql(placeholder: impl Fn(usize) -> String) -> String {
    format!(
        "INSERT INTO alerts (id, incident, detector, severity, key_id, tenant, at_unix_ms, \
         status, note, created_at, updated_at, body_json) SELECT {}, {}, detector, {}, key_id, \
         tenant, at_unix_ms, status, note, created_at, updated_at, body_json FROM alerts \
         WHERE id = {}",
        placeholder(1),
        placeholder(2),
        placeholder(3),
        placeholder(4)
    )
}

/// Stores the template alert and returns a lower-severity alert of incident `R3:k9:h0`.
async fn racing_alerts(store: &Arc<dyn Store>) -> Alert {
    let template = alert("tmpl", DetectorId::R3, t0(), Some(9), None);
    assert!(
        store
            .insert_alert(&template, "R3:k9:template")
            .await
            .unwrap()
    );
    let mut low = alert("low", DetectorId::R3, t0() + ms(1), Some(9), None);
    low.severity = Severity::Low;
    low
}

/// A replica storing a low alert of an incident while another replica's high alert of it is
/// being inserted (uncommitted) waits for it and stores nothing: one arriving after a higher
/// one is a copy, even at the same instant. Fails without the incident lock on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alert_lower_severity_racing_higher_is_a_copy() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema();
    let store = open_pg(&url, &schema).await;
    let low = racing_alerts(&store).await;
    let mut other = pg_admin(&url).await;
    other
        .batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .unwrap();
    let tx = other.transaction().await.unwrap();
    // The other replica's insert, as the store makes it: the incident's lock, then the row.
    tx.execute(
        "SELECT pg_advisory_xact_lock(1398227276, hashtext($1::text))",
        &[&"R3:k9:h0"],
    )
    .await
    .unwrap();
    let high_incident = format!("R3:k9:h0#{}", Severity::High.rank());
    tx.execute(
        &copy_alert_sql(|i| format!("${i}::text")),
        &[&"high", &high_incident, &Severity::High.as_str(), &"tmpl"],
    )
    .await
    .unwrap();
    let racer = {
        let store = Arc::clone(&store);
        // Awaited below: the test ends with it.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move { store.insert_alert(&low, "R3:k9:h0").await.unwrap() })
    };
    // Long enough for the racer's insert to run if nothing made it wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.unwrap();
    assert!(
        !racer.await.unwrap(),
        "a low alert stored beside a high one"
    );
    assert_eq!(store.get_alert("low").await.unwrap(), None);
    drop_schema(&url, &schema).await;
}

/// The SQLite twin: the database's write lock makes the racer wait for the other writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_alert_lower_severity_racing_higher_is_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stormwall.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let low = racing_alerts(&store).await;
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let high_incident = format!("R3:k9:h0#{}", Severity::High.rank());
    other
        .execute(
            &copy_alert_sql(|i| format!("?{i}")),
            rusqlite::params!["high", high_incident, Severity::High.as_str(), "tmpl"],
        )
        .unwrap();
    let racer = {
        let store = Arc::clone(&store);
        // Awaited below: the test ends with it.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move { store.insert_alert(&low, "R3:k9:h0").await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    other.execute_batch("COMMIT").unwrap();
    assert!(
        !racer.await.unwrap(),
        "a low alert stored beside a high one"
    );
    assert_eq!(store.get_alert("low").await.unwrap(), None);
}
