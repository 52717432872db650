//! The event journal's bound through the gateway: while the store refuses event writes,
//! unshipped events reach the bound (bytes or age); `/readyz` says so, and the gateway
//! follows the policy — `fail_closed` answers 503 `events_unrecordable` in the OpenAI
//! shape, `fail_open` serves and counts the events it drops. Once the store is back, the
//! journal ships, falls below its bound and the gateway serves (and records) again.

use super::*;
use stormwall_store::JournalPolicy;

/// The value of metric `name` (a line `name value`), if exported.
async fn metric(h: &Harness, name: &str) -> Option<f64> {
    let text = http_request("GET", &format!("{}/metrics", h.admin), &[], "", None)
        .await
        .unwrap()
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `/readyz` answers `status` with a text containing `has` (or, when `has`
/// starts with `!`, not containing the rest); returns the text.
async fn readyz_until(h: &Harness, status: u16, has: &str) -> String {
    let mut last = String::new();
    for _ in 0..500 {
        let r = http_request("GET", &format!("{}/readyz", h.admin), &[], "", None)
            .await
            .unwrap();
        let text = r.text();
        let matches = match has.strip_prefix('!') {
            Some(not) => !text.contains(not),
            None => text.contains(has),
        };
        if r.status == status && matches {
            return text;
        }
        last = format!("{} {text}", r.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/readyz never answered {status} with {has:?}; last: {last}");
}

/// A harness whose journal reaches its bound (bytes, or age when `by_age`) under `policy`.
async fn bounded(policy: JournalPolicy, by_age: bool) -> Harness {
    harness_with(|c| {
        c.journal.policy = policy;
        if by_age {
            c.journal.max_age_secs = 1;
        } else {
            // Any unshipped record reaches it.
            c.journal.max_bytes = 1;
        }
    })
    .await
}

/// The store goes down, one answered request leaves an unshipped event, and the journal
/// reaches its bound; returns the key.
async fn reach_the_bound(h: &Harness) -> String {
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    assert_eq!(metric(h, "stormwall_journal_at_bound").await, Some(0.0));
    h.store.events_down.store(true, Ordering::SeqCst);
    let r = h.chat(&key, "gpt-4o-mini").await;
    assert_eq!(r.status, 200, "below the bound the gateway serves");
    key
}

/// The store back: the journal ships what it held and the gateway is ready again.
async fn recover(h: &Harness) {
    h.store.events_down.store(false, Ordering::SeqCst);
    readyz_until(h, 200, "!bound").await;
    assert_eq!(metric(h, "stormwall_journal_at_bound").await, Some(0.0));
}

async fn fail_closed_refuses_at_the_bound(by_age: bool) {
    let h = bounded(JournalPolicy::FailClosed, by_age).await;
    let key = reach_the_bound(&h).await;
    readyz_until(
        &h,
        503,
        "event journal at its bound: refusing requests (fail_closed)",
    )
    .await;
    assert_eq!(metric(&h, "stormwall_journal_at_bound").await, Some(1.0));
    assert!(metric(&h, "stormwall_journal_bytes").await.unwrap() > 0.0);
    if by_age {
        assert!(
            metric(&h, "stormwall_journal_oldest_unshipped_seconds")
                .await
                .unwrap()
                >= 1.0
        );
    }
    for stream in [false, true] {
        let r = h
            .post(
                "/v1/chat/completions",
                &key,
                &chat_body("gpt-4o-mini", stream),
                None,
            )
            .await;
        assert_eq!(r.status, 503, "{}", r.text());
        let v = r.json().unwrap();
        assert_eq!(v["error"]["code"], "events_unrecordable", "{v}");
        assert_eq!(v["error"]["type"], "api_error", "{v}");
        assert!(v["error"]["param"].is_null(), "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // The refusals never reached the upstream.
    assert_eq!(h.upstream.request_count(), 1);

    recover(&h).await;
    assert_eq!(h.chat(&key, "gpt-4o-mini").await.status, 200);
    // Every answer has its record, the refusals included.
    let events = h.events(4).await;
    let codes: Vec<_> = events
        .iter()
        .map(|e| (e.status, e.error_code.as_deref()))
        .collect();
    assert_eq!(
        codes,
        [
            (200, None),
            (503, Some("events_unrecordable")),
            (503, Some("events_unrecordable")),
            (200, None),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_at_the_byte_bound_is_unready_and_refuses_with_events_unrecordable() {
    fail_closed_refuses_at_the_bound(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_at_the_age_bound_is_unready_and_refuses_with_events_unrecordable() {
    fail_closed_refuses_at_the_bound(true).await;
}

async fn fail_open_serves_and_counts_at_the_bound(by_age: bool) {
    let h = bounded(JournalPolicy::FailOpen, by_age).await;
    let key = reach_the_bound(&h).await;
    // Still ready: the gateway serves, and says what it drops.
    readyz_until(
        &h,
        200,
        "ready; event journal at its bound: events are dropped (fail_open)",
    )
    .await;
    assert_eq!(metric(&h, "stormwall_journal_at_bound").await, Some(1.0));
    let refused = "stormwall_journal_events_refused_total";
    assert_eq!(metric(&h, refused).await, Some(0.0));
    const DROPPED: usize = 5;
    for i in 0..DROPPED {
        let r = h
            .post(
                "/v1/chat/completions",
                &key,
                &chat_body("gpt-4o-mini", i % 2 == 1),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "fail_open keeps serving: {}", r.text());
    }
    assert_eq!(metric(&h, refused).await, Some(DROPPED as f64));

    recover(&h).await;
    assert_eq!(h.chat(&key, "gpt-4o-mini").await.status, 200);
    // What was journaled is stored; what was dropped (and counted) is not.
    let events = h.events(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events_after = h.store.query_events(&EventQuery::default()).await.unwrap();
    assert_eq!(events_after.len(), 2, "{events:#?}");
    assert_eq!(metric(&h, refused).await, Some(DROPPED as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_at_the_byte_bound_serves_and_counts_the_events_it_drops() {
    fail_open_serves_and_counts_at_the_bound(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_at_the_age_bound_serves_and_counts_the_events_it_drops() {
    fail_open_serves_and_counts_at_the_bound(true).await;
}
