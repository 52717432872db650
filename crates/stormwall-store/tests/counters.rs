//! The shared-counters suite: the same functions run against the in-process counters always
//! and against Redis when `STORMWALL_TEST_REDIS_URL` is set (a set variable with an
//! unreachable server fails). Redis tests are isolated by a key prefix of their own, and
//! "replicas" are independent `RedisCounters`, each with its own connection.

// The suite functions are test code too, where a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use stormwall_store::{
    BudgetDecision, BudgetPeriod, BudgetRequest, CounterError, Counters, FallbackCounters,
    KeyChange, LocalCounters, RateDecision, RateLimited, RateRequest, RedisConfig, RedisCounters,
    SlotDecision,
};
use stormwall_types::KeyId;
use time::OffsetDateTime;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// Short windows for the tests that watch usage slide out.
const SHORT_WINDOW: Duration = Duration::from_millis(1_000);
const SHORT_BUCKET: Duration = Duration::from_millis(100);

/// Fresh counters for one test, and a way to get more "replicas" sharing their state.
enum Harness {
    Local(Arc<LocalCounters>),
    Redis {
        url: String,
        prefix: String,
        short: bool,
    },
}

impl Harness {
    fn local(short: bool) -> Option<Harness> {
        let c = if short {
            LocalCounters::with_rate_window(SHORT_WINDOW, SHORT_BUCKET)
        } else {
            LocalCounters::new()
        };
        Some(Harness::Local(Arc::new(c)))
    }

    async fn redis(short: bool) -> Option<Harness> {
        let url = redis_url()?;
        let h = Harness::Redis {
            url,
            prefix: unique_prefix(),
            short,
        };
        h.replica().await; // fails the test now if the server is unreachable
        Some(h)
    }

    /// Another replica: the same state, its own connection (Redis).
    async fn replica(&self) -> Arc<dyn Counters> {
        match self {
            Harness::Local(c) => c.clone(),
            Harness::Redis { url, prefix, short } => {
                let mut config = RedisConfig::from_url(url);
                config.prefix = prefix.clone();
                // Generous: the machine may be busy building; unavailability is not under test.
                config.op_timeout_ms = 5_000;
                config.connect_timeout_ms = 5_000;
                let c = RedisCounters::connect(&config, &|_| None)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("STORMWALL_TEST_REDIS_URL is set but Redis is unusable: {e}")
                    });
                let c = if *short {
                    c.with_rate_window(SHORT_WINDOW, SHORT_BUCKET)
                } else {
                    c
                };
                Arc::new(c)
            }
        }
    }

    /// Deletes the test's keys (best effort; they all expire anyway).
    async fn cleanup(self) {
        if let Harness::Redis { url, prefix, .. } = self {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            if !keys.is_empty() {
                let _: i64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }
}

/// The test server's URL: `None` (skip) when the variable is unset.
fn redis_url() -> Option<String> {
    match std::env::var("STORMWALL_TEST_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!("skipped: STORMWALL_TEST_REDIS_URL is not set");
            None
        }
    }
}

fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "swtest:{}:{}:{nanos}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn key(n: u32) -> KeyId {
    KeyId::new(&format!("k{n:011}")).unwrap()
}

fn rate(rpm: Option<u32>, tpm: Option<u64>, tokens: u64) -> RateRequest {
    RateRequest { rpm, tpm, tokens }
}

fn budget(daily: Option<f64>, monthly: Option<f64>, reserve: f64) -> BudgetRequest {
    BudgetRequest {
        daily_usd: daily,
        monthly_usd: monthly,
        reserve_usd: reserve,
        lease: Duration::from_secs(60),
    }
}

fn at(y: i32, m: u8, d: u8) -> OffsetDateTime {
    time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d)
        .unwrap()
        .with_hms(12, 0, 0)
        .unwrap()
        .assume_utc()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn granted(d: &RateDecision) -> bool {
    matches!(d, RateDecision::Granted { .. })
}

// ---------------------------------------------------------------------------------------
// Backend-neutral suite
// ---------------------------------------------------------------------------------------

mod suite {
    use super::*;

    pub async fn rate_admits_exactly_the_limit(h: &Harness) {
        let c = h.replica().await;
        for i in 1..=5u64 {
            match c.check_rate(&key(1), rate(Some(5), None, 0)).await.unwrap() {
                RateDecision::Granted {
                    requests, tokens, ..
                } => {
                    let r = requests.unwrap();
                    assert_eq!((r.limit, r.used, r.remaining()), (5, i, 5 - i));
                    assert!(r.reset_after > Duration::ZERO);
                    assert!(r.reset_after <= Duration::from_secs(61));
                    assert_eq!(tokens, None);
                }
                other => panic!("request {i} refused: {other:?}"),
            }
        }
        match c.check_rate(&key(1), rate(Some(5), None, 0)).await.unwrap() {
            RateDecision::Denied {
                limit,
                retry_after,
                requests,
                ..
            } => {
                assert_eq!(limit, RateLimited::Requests);
                assert!(retry_after > Duration::from_secs(55), "{retry_after:?}");
                assert!(retry_after <= Duration::from_secs(61), "{retry_after:?}");
                assert_eq!(requests.unwrap().used, 5);
            }
            other => panic!("sixth request: {other:?}"),
        }
        // Another key has its own window.
        assert!(granted(
            &c.check_rate(&key(2), rate(Some(5), None, 0)).await.unwrap()
        ));
    }

    pub async fn rate_tokens_reconcile(h: &Harness) {
        let c = h.replica().await;
        let RateDecision::Granted { charge, tokens, .. } = c
            .check_rate(&key(1), rate(None, Some(100), 10))
            .await
            .unwrap()
        else {
            panic!("refused");
        };
        assert_eq!(charge.tokens(), 10);
        assert_eq!(tokens.unwrap().used, 10);
        // The call really used 95: the next 10-token estimate no longer fits.
        c.reconcile_tokens(&key(1), &charge, 95).await.unwrap();
        match c
            .check_rate(&key(1), rate(None, Some(100), 10))
            .await
            .unwrap()
        {
            RateDecision::Denied { limit, tokens, .. } => {
                assert_eq!(limit, RateLimited::Tokens);
                assert_eq!(tokens.unwrap().used, 95);
            }
            other => panic!("{other:?}"),
        }
        // An overestimate is given back.
        let RateDecision::Granted { charge, .. } = c
            .check_rate(&key(2), rate(None, Some(100), 60))
            .await
            .unwrap()
        else {
            panic!("refused");
        };
        c.reconcile_tokens(&key(2), &charge, 5).await.unwrap();
        let d = c
            .check_rate(&key(2), rate(None, Some(100), 90))
            .await
            .unwrap();
        let RateDecision::Granted { tokens, .. } = d else {
            panic!("{d:?}");
        };
        assert_eq!(tokens.unwrap().used, 95);
    }

    pub async fn rate_refusal_charges_nothing(h: &Harness) {
        let c = h.replica().await;
        // Too many tokens: refused by the token window, and the request is not counted.
        let d = c
            .check_rate(&key(1), rate(Some(10), Some(100), 200))
            .await
            .unwrap();
        let RateDecision::Denied {
            limit, retry_after, ..
        } = d
        else {
            panic!("{d:?}");
        };
        assert_eq!(limit, RateLimited::Tokens);
        assert!(
            retry_after >= Duration::from_secs(60),
            "never fits: {retry_after:?}"
        );
        let d = c
            .check_rate(&key(1), rate(Some(10), Some(100), 1))
            .await
            .unwrap();
        let RateDecision::Granted {
            requests, tokens, ..
        } = d
        else {
            panic!("{d:?}");
        };
        assert_eq!(requests.unwrap().used, 1);
        assert_eq!(tokens.unwrap().used, 1);
        // No limits: granted, nothing counted.
        let d = c.check_rate(&key(3), rate(None, None, 50)).await.unwrap();
        let RateDecision::Granted {
            charge,
            requests,
            tokens,
        } = d
        else {
            panic!("{d:?}");
        };
        assert_eq!((requests, tokens, charge.tokens()), (None, None, 0));
    }

    /// Short windows (1 s in 100 ms buckets): usage slides out and the wait is right.
    pub async fn rate_window_slides(h: &Harness) {
        let c = h.replica().await;
        for _ in 0..3 {
            assert!(granted(
                &c.check_rate(&key(1), rate(Some(3), None, 0)).await.unwrap()
            ));
        }
        let d = c.check_rate(&key(1), rate(Some(3), None, 0)).await.unwrap();
        let RateDecision::Denied { retry_after, .. } = d else {
            panic!("{d:?}");
        };
        assert!(
            retry_after <= Duration::from_millis(1_100),
            "{retry_after:?}"
        );
        assert!(retry_after >= Duration::from_millis(700), "{retry_after:?}");
        tokio::time::sleep(retry_after + Duration::from_millis(30)).await;
        assert!(granted(
            &c.check_rate(&key(1), rate(Some(3), None, 0)).await.unwrap()
        ));
    }

    /// Replicas hammering one key at once: a limit of 100 admits exactly 100.
    pub async fn rate_exact_across_replicas(h: &Harness) {
        let replicas = [
            h.replica().await,
            h.replica().await,
            h.replica().await,
            h.replica().await,
        ];
        let mut tasks = Vec::new();
        for c in &replicas {
            for _ in 0..25 {
                let c = Arc::clone(c);
                tasks.push(async move {
                    let mut admitted = 0u32;
                    for _ in 0..8 {
                        let d = c
                            .check_rate(&key(7), rate(Some(100), Some(1_000_000), 3))
                            .await
                            .unwrap();
                        admitted += u32::from(granted(&d));
                    }
                    admitted
                });
            }
        }
        let admitted: u32 = futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .sum();
        assert_eq!(admitted, 100, "800 attempts at 100/min");
    }

    pub async fn slots_limit_and_release(h: &Harness) {
        let c = h.replica().await;
        let lease = Duration::from_secs(60);
        let SlotDecision::Granted(a) = c.acquire_slot(&key(1), 2, lease).await.unwrap() else {
            panic!("first slot refused");
        };
        assert_eq!(a.inflight, 1);
        let SlotDecision::Granted(b) = c.acquire_slot(&key(1), 2, lease).await.unwrap() else {
            panic!("second slot refused");
        };
        assert_eq!(b.inflight, 2);
        assert_eq!(
            c.acquire_slot(&key(1), 2, lease).await.unwrap(),
            SlotDecision::Denied { inflight: 2 }
        );
        assert_eq!(c.inflight(&key(1)).await.unwrap(), 2);
        c.release_slot(&key(1), a.clone()).await.unwrap();
        c.release_slot(&key(1), a).await.unwrap(); // twice is harmless
        assert_eq!(c.inflight(&key(1)).await.unwrap(), 1);
        assert!(matches!(
            c.acquire_slot(&key(1), 2, lease).await.unwrap(),
            SlotDecision::Granted(_)
        ));
        assert_eq!(c.inflight(&key(2)).await.unwrap(), 0);
    }

    /// A replica that dies holding slots: its leases run out.
    pub async fn slot_leases_expire_and_renew(h: &Harness) {
        let c = h.replica().await;
        let lease = Duration::from_millis(1_000);
        let SlotDecision::Granted(held) = c.acquire_slot(&key(1), 1, lease).await.unwrap() else {
            panic!("refused");
        };
        // Renewed before it ran out: still held after the first lease would have ended.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(c.renew_slot(&key(1), &held, lease).await.unwrap());
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(matches!(
            c.acquire_slot(&key(1), 1, lease).await.unwrap(),
            SlotDecision::Denied { inflight: 1 }
        ));
        // Not renewed again: freed.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(c.inflight(&key(1)).await.unwrap(), 0);
        assert!(!c.renew_slot(&key(1), &held, lease).await.unwrap());
        assert!(matches!(
            c.acquire_slot(&key(1), 1, lease).await.unwrap(),
            SlotDecision::Granted(_)
        ));
    }

    pub async fn slots_exact_across_replicas(h: &Harness) {
        let replicas = [h.replica().await, h.replica().await, h.replica().await];
        let mut tasks = Vec::new();
        for c in &replicas {
            for _ in 0..10 {
                let c = Arc::clone(c);
                tasks.push(async move {
                    matches!(
                        c.acquire_slot(&key(3), 5, Duration::from_secs(60))
                            .await
                            .unwrap(),
                        SlotDecision::Granted(_)
                    )
                });
            }
        }
        let results = futures_util::future::join_all(tasks).await;
        assert_eq!(results.iter().filter(|g| **g).count(), 5);
        assert_eq!(replicas[0].inflight(&key(3)).await.unwrap(), 5);
    }

    pub async fn budget_reserve_and_settle(h: &Harness) {
        let c = h.replica().await;
        let now = OffsetDateTime::now_utc();
        let BudgetDecision::Granted(first) = c
            .reserve_budget(&key(1), budget(Some(1.0), None, 0.6), now)
            .await
            .unwrap()
        else {
            panic!("first reservation refused");
        };
        assert!(close(first.reserved_usd(), 0.6));
        match c
            .reserve_budget(&key(1), budget(Some(1.0), None, 0.6), now)
            .await
            .unwrap()
        {
            BudgetDecision::Denied { period, usage } => {
                assert_eq!(period, BudgetPeriod::Day);
                assert!(close(usage.day_reserved_usd, 0.6), "{usage:?}");
                assert!(close(usage.day_spent_usd, 0.0), "{usage:?}");
            }
            other => panic!("second reservation would overrun: {other:?}"),
        }
        c.settle_budget(&key(1), first, 0.9, now).await.unwrap();
        let usage = c.budget_usage(&key(1), now).await.unwrap();
        assert!(close(usage.day_spent_usd, 0.9), "{usage:?}");
        assert!(close(usage.day_reserved_usd, 0.0), "{usage:?}");
        assert!(close(usage.month_spent_usd, 0.9), "{usage:?}");
        assert!(matches!(
            c.reserve_budget(&key(1), budget(Some(1.0), None, 0.6), now)
                .await
                .unwrap(),
            BudgetDecision::Denied { .. }
        ));
        // Exactly up to the budget fits.
        assert!(matches!(
            c.reserve_budget(&key(1), budget(Some(1.0), None, 0.1), now)
                .await
                .unwrap(),
            BudgetDecision::Granted(_)
        ));
    }

    pub async fn budget_days_and_months(h: &Harness) {
        let c = h.replica().await;
        let (d1, d2, next_month) = (at(2031, 5, 1), at(2031, 5, 20), at(2031, 6, 1));
        c.add_spend(&key(1), 1.5, d1).await.unwrap();
        let req = budget(Some(1.0), Some(2.0), 0.6);
        // A new day: the daily budget is fresh, the monthly one is not.
        match c.reserve_budget(&key(1), req, d2).await.unwrap() {
            BudgetDecision::Denied { period, usage } => {
                assert_eq!(period, BudgetPeriod::Month);
                assert!(close(usage.month_spent_usd, 1.5));
                assert!(close(usage.day_spent_usd, 0.0));
            }
            other => panic!("{other:?}"),
        }
        let BudgetDecision::Granted(r) = c
            .reserve_budget(&key(1), budget(Some(1.0), Some(2.0), 0.4), d2)
            .await
            .unwrap()
        else {
            panic!("0.4 fits the month");
        };
        // Settled on the next month's first day: the reservation leaves May, the cost
        // goes to June.
        c.settle_budget(&key(1), r, 0.3, next_month).await.unwrap();
        let may = c.budget_usage(&key(1), d2).await.unwrap();
        assert!(close(may.month_spent_usd, 1.5), "{may:?}");
        assert!(close(may.month_reserved_usd, 0.0), "{may:?}");
        let june = c.budget_usage(&key(1), next_month).await.unwrap();
        assert!(close(june.month_spent_usd, 0.3), "{june:?}");
        assert!(close(june.day_spent_usd, 0.3), "{june:?}");
    }

    pub async fn budget_exact_across_replicas(h: &Harness) {
        let replicas = [h.replica().await, h.replica().await, h.replica().await];
        let now = OffsetDateTime::now_utc();
        let mut tasks = Vec::new();
        for c in &replicas {
            for _ in 0..15 {
                let c = Arc::clone(c);
                tasks.push(async move {
                    matches!(
                        c.reserve_budget(&key(5), budget(Some(1.0), None, 0.1), now)
                            .await
                            .unwrap(),
                        BudgetDecision::Granted(_)
                    )
                });
            }
        }
        let results = futures_util::future::join_all(tasks).await;
        assert_eq!(results.iter().filter(|g| **g).count(), 10);
    }

    /// A replica that dies holding a reservation: the lease runs out, and settling late
    /// does not release the reservation twice.
    pub async fn budget_reservations_expire(h: &Harness) {
        let c = h.replica().await;
        let now = OffsetDateTime::now_utc();
        let short = BudgetRequest {
            lease: Duration::from_millis(500),
            ..budget(Some(1.0), None, 0.6)
        };
        let BudgetDecision::Granted(lost) = c.reserve_budget(&key(1), short, now).await.unwrap()
        else {
            panic!("refused");
        };
        assert!(matches!(
            c.reserve_budget(&key(1), short, now).await.unwrap(),
            BudgetDecision::Denied { .. }
        ));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let BudgetDecision::Granted(_second) = c
            .reserve_budget(&key(1), budget(Some(1.0), None, 0.6), now)
            .await
            .unwrap()
        else {
            panic!("the expired reservation still holds");
        };
        c.settle_budget(&key(1), lost, 0.0, now).await.unwrap();
        let usage = c.budget_usage(&key(1), now).await.unwrap();
        assert!(close(usage.day_reserved_usd, 0.6), "{usage:?}");
    }

    pub async fn budget_spend_reconciles_upwards(h: &Harness) {
        let c = h.replica().await;
        let now = OffsetDateTime::now_utc();
        c.add_spend(&key(1), 0.5, now).await.unwrap();
        c.reconcile_spend(&key(1), now, 0.3, 0.3).await.unwrap();
        let u = c.budget_usage(&key(1), now).await.unwrap();
        assert!(
            close(u.day_spent_usd, 0.5) && close(u.month_spent_usd, 0.5),
            "{u:?}"
        );
        c.reconcile_spend(&key(1), now, 0.8, 2.0).await.unwrap();
        let u = c.budget_usage(&key(1), now).await.unwrap();
        assert!(
            close(u.day_spent_usd, 0.8) && close(u.month_spent_usd, 2.0),
            "{u:?}"
        );
        // Nonsense amounts count as nothing.
        c.add_spend(&key(1), f64::NAN, now).await.unwrap();
        c.add_spend(&key(1), -3.0, now).await.unwrap();
        let again = c.budget_usage(&key(1), now).await.unwrap();
        assert_eq!(u, again);
    }

    pub async fn distinct_counts(h: &Harness) {
        let a = h.replica().await;
        let b = h.replica().await;
        let t = at(2031, 5, 1);
        let next_hour = t + time::Duration::hours(1);
        a.distinct_add("networks", &key(1), t, &["10.0.0.0/24", "10.0.1.0/24"])
            .await
            .unwrap();
        b.distinct_add("networks", &key(1), t, &["10.0.0.0/24", "10.0.2.0/24"])
            .await
            .unwrap();
        b.distinct_add("networks", &key(1), next_hour, &["10.0.3.0/24"])
            .await
            .unwrap();
        a.distinct_add("asns", &key(1), t, &["AS1"]).await.unwrap();
        a.distinct_add("networks", &key(2), t, &["x"])
            .await
            .unwrap();
        a.distinct_add("networks", &key(1), t, &[]).await.unwrap();
        assert_eq!(
            a.distinct_count("networks", &key(1), t, t).await.unwrap(),
            3
        );
        assert_eq!(
            b.distinct_count("networks", &key(1), t, next_hour)
                .await
                .unwrap(),
            4
        );
        assert_eq!(
            a.distinct_count("asns", &key(1), t, next_hour)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            a.distinct_count("networks", &key(9), t, t).await.unwrap(),
            0
        );
        let week = t + time::Duration::days(8);
        assert!(matches!(
            a.distinct_count("networks", &key(1), t, week).await,
            Err(CounterError::Invalid(_))
        ));
        assert!(matches!(
            a.distinct_add("Bad Name", &key(1), t, &["x"]).await,
            Err(CounterError::Invalid(_))
        ));
        // Large sets are approximate, within a few percent.
        let items: Vec<String> = (0..5_000).map(|i| format!("net-{i}")).collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        for chunk in refs.chunks(500) {
            a.distinct_add("big", &key(1), t, chunk).await.unwrap();
        }
        let n = b.distinct_count("big", &key(1), t, t).await.unwrap() as f64;
        assert!((n - 5_000.0).abs() / 5_000.0 < 0.03, "{n}");
    }

    /// Tallies add up over replicas, per set, key and bucket, and expire.
    pub async fn tallies_add_up_across_replicas(h: &Harness) {
        let a = h.replica().await;
        let b = h.replica().await;
        let ttl = Duration::from_secs(60);
        let (k1, k2) = (key(1), key(2));
        let t = |set, key, bucket, amount| stormwall_store::Tally {
            set,
            key,
            bucket,
            amount,
        };
        assert_eq!(
            a.tally(
                &[t("usd_hour", &k1, 7, 5), t("req_minute", &k1, 70, 1)],
                ttl
            )
            .await
            .unwrap(),
            vec![5, 1]
        );
        assert_eq!(
            b.tally(
                &[
                    t("usd_hour", &k1, 7, 3),
                    t("usd_hour", &k1, 8, 2),
                    t("usd_hour", &k2, 7, 1)
                ],
                ttl
            )
            .await
            .unwrap(),
            vec![8, 2, 1]
        );
        assert_eq!(
            a.tally(&[t("usd_hour", &k1, 7, 0)], ttl).await.unwrap(),
            vec![8]
        );
        assert!(a.tally(&[], ttl).await.unwrap().is_empty());
        assert!(matches!(
            a.tally(&[t("Bad Name", &k1, 7, 1)], ttl).await,
            Err(CounterError::Invalid(_))
        ));
        // Expired counters start again.
        b.tally(&[t("short", &k1, 1, 4)], Duration::from_millis(50))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(
            a.tally(&[t("short", &k1, 1, 1)], ttl).await.unwrap(),
            vec![1]
        );
    }

    /// A change published by one replica reaches another's subscription within a second.
    pub async fn key_changes_reach_every_replica(h: &Harness) {
        let a = h.replica().await;
        let b = h.replica().await;
        let mut changes = a.subscribe_key_changes().await.unwrap();
        let started = Instant::now();
        b.publish_key_change(&key(4)).await.unwrap();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), changes.recv())
                .await
                .expect("no key change within a second")
                .expect("subscription closed");
            match next {
                KeyChange::Key(id) => {
                    assert_eq!(id, key(4));
                    break;
                }
                KeyChange::Resync => continue,
            }
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(a.health().available);
    }
}

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/// Runs every suite function against fresh counters of one backend. The opener returns
/// `None` to skip (Redis when its test variable is unset).
macro_rules! counters_suite {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;
            counters_suite!(@tests $open, false;
                rate_admits_exactly_the_limit, rate_tokens_reconcile,
                rate_refusal_charges_nothing, rate_exact_across_replicas,
                slots_limit_and_release, slot_leases_expire_and_renew,
                slots_exact_across_replicas, budget_reserve_and_settle,
                budget_days_and_months, budget_exact_across_replicas,
                budget_reservations_expire, budget_spend_reconciles_upwards,
                distinct_counts, tallies_add_up_across_replicas, key_changes_reach_every_replica);
            counters_suite!(@tests $open, true; rate_window_slides);
        }
    };
    (@tests $open:expr, $short:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(h) = $open($short).await else { return };
                suite::$name(&h).await;
                h.cleanup().await;
            }
        )*
    };
}

async fn open_local(short: bool) -> Option<Harness> {
    Harness::local(short)
}

counters_suite!(local, open_local);
counters_suite!(redis_backend, Harness::redis);

// ---------------------------------------------------------------------------------------
// Redis faults (no server needed) and the fallback
// ---------------------------------------------------------------------------------------

fn unreachable_redis() -> RedisConfig {
    let mut config = RedisConfig::from_env_var("REDIS_URL_FOR_TEST");
    config.connect_timeout_ms = 300;
    config.op_timeout_ms = 300;
    config.retry_interval_ms = 60_000;
    config
}

fn unreachable_env(name: &str) -> Option<String> {
    (name == "REDIS_URL_FOR_TEST").then(|| "redis://:hunter2@127.0.0.1:1/0".to_owned())
}

#[tokio::test]
async fn redis_unreachable_fails_fast_and_says_so() {
    let err = RedisCounters::connect(&unreachable_redis(), &unreachable_env)
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));

    let c = RedisCounters::new(&unreachable_redis(), &unreachable_env).unwrap();
    assert!(c.health().available, "nothing has failed yet");
    let err = c
        .check_rate(&key(1), rate(Some(1), None, 0))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let health = c.health();
    assert_eq!((health.backend, health.available), ("redis", false));
    assert!(health.failures >= 1);
    // While marked down, calls fail at once instead of waiting on the network.
    let started = Instant::now();
    for _ in 0..100 {
        assert!(c.inflight(&key(1)).await.unwrap_err().is_unavailable());
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    // Subscribing still returns (the task keeps trying in the background).
    let started = Instant::now();
    let _changes = c.subscribe_key_changes().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn redis_config_errors_name_no_secret() {
    let err = RedisCounters::new(&unreachable_redis(), &|_| None).unwrap_err();
    assert!(matches!(err, CounterError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("REDIS_URL_FOR_TEST"), "{err}");
    let mut bad = RedisConfig::from_url("redis://:hunter2@127.0.0.1:1/0");
    bad.prefix = "has space".to_owned();
    let err = RedisCounters::new(&bad, &|_| None).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn fallback_decides_locally_while_redis_is_down() {
    let redis = RedisCounters::new(&unreachable_redis(), &unreachable_env).unwrap();
    let c = FallbackCounters::new(Arc::new(redis));
    for _ in 0..2 {
        let d = c
            .check_rate(&key(1), rate(Some(2), Some(100), 10))
            .await
            .unwrap();
        let RateDecision::Granted { charge, .. } = d else {
            panic!("{d:?}");
        };
        // Settled where it was granted: locally.
        c.reconcile_tokens(&key(1), &charge, 20).await.unwrap();
    }
    assert!(matches!(
        c.check_rate(&key(1), rate(Some(2), None, 0)).await.unwrap(),
        RateDecision::Denied {
            limit: RateLimited::Requests,
            ..
        }
    ));
    let SlotDecision::Granted(slot) = c
        .acquire_slot(&key(1), 1, Duration::from_secs(60))
        .await
        .unwrap()
    else {
        panic!("refused");
    };
    assert_eq!(c.inflight(&key(1)).await.unwrap(), 1);
    c.release_slot(&key(1), slot).await.unwrap();
    assert_eq!(c.local().inflight(&key(1)).await.unwrap(), 0);
    let now = OffsetDateTime::now_utc();
    let BudgetDecision::Granted(r) = c
        .reserve_budget(&key(1), budget(Some(1.0), None, 0.5), now)
        .await
        .unwrap()
    else {
        panic!("refused");
    };
    c.settle_budget(&key(1), r, 0.25, now).await.unwrap();
    assert!(close(
        c.budget_usage(&key(1), now).await.unwrap().day_spent_usd,
        0.25
    ));
    // Bad requests are not "unavailable": they are reported, not answered locally.
    assert!(matches!(
        c.distinct_add("Bad Name", &key(1), now, &["x"]).await,
        Err(CounterError::Invalid(_))
    ));
    let health = c.health();
    assert_eq!((health.backend, health.available), ("redis+local", false));
    // Publishing cannot reach other replicas: the caller is told.
    assert!(c.publish_key_change(&key(1)).await.is_err());
}

// ---------------------------------------------------------------------------------------
// Redis: server restarts (needs the test variable, and a `redis-server` to run a private one)
// ---------------------------------------------------------------------------------------

/// Redis forgets its script cache on restart; scripts are re-sent whole.
#[tokio::test]
async fn redis_scripts_survive_a_flushed_script_cache() {
    let Some(h) = Harness::redis(false).await else {
        return;
    };
    let c = h.replica().await;
    assert!(granted(
        &c.check_rate(&key(1), rate(Some(5), None, 0)).await.unwrap()
    ));
    let Harness::Redis { url, .. } = &h else {
        unreachable!()
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let d = c.check_rate(&key(1), rate(Some(5), None, 0)).await.unwrap();
    let RateDecision::Granted { requests, .. } = d else {
        panic!("{d:?}");
    };
    assert_eq!(requests.unwrap().used, 2);
    h.cleanup().await;
}

/// A private `redis-server` stopped and started under the counters: calls fail (fast) while
/// it is down, the fallback answers, and both recover when it returns — subscription
/// included, with a `Resync` for what may have been missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived() {
    if redis_url().is_none() {
        return;
    }
    let Some(port) = free_port() else { return };
    let Some(server) = PrivateRedis::start(port) else {
        eprintln!("skipped: no redis-server binary to run a private server");
        return;
    };
    let mut config = RedisConfig::from_url(&format!("redis://127.0.0.1:{port}/"));
    config.prefix = unique_prefix();
    config.retry_interval_ms = 100;
    config.connect_timeout_ms = 500;
    config.op_timeout_ms = 500;
    let redis = Arc::new(RedisCounters::connect(&config, &|_| None).await.unwrap());
    let fallback = FallbackCounters::new(redis.clone());
    let mut changes = redis.subscribe_key_changes().await.unwrap();
    assert!(granted(
        &fallback
            .check_rate(&key(1), rate(Some(100), None, 0))
            .await
            .unwrap()
    ));

    drop(server); // kills it
    let mut local_answers = 0;
    for _ in 0..20 {
        let d = fallback
            .check_rate(&key(1), rate(Some(100), None, 0))
            .await
            .unwrap();
        assert!(granted(&d));
        local_answers += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(local_answers, 20);
    assert!(!fallback.health().available);
    assert!(
        redis
            .check_rate(&key(1), rate(Some(100), None, 0))
            .await
            .is_err()
    );

    let _server = PrivateRedis::start(port).expect("restart");
    // Back within a few retry intervals; the fresh server has an empty window.
    let mut back = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(RateDecision::Granted { requests, .. }) =
            redis.check_rate(&key(1), rate(Some(100), None, 0)).await
        {
            assert_eq!(requests.unwrap().used, 1);
            back = true;
            break;
        }
    }
    assert!(back, "Redis did not come back");
    assert!(fallback.health().available);
    // The subscription is re-established and says changes may have been missed.
    let next = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("no resync after the restart");
    assert_eq!(next, Some(KeyChange::Resync));
    redis.publish_key_change(&key(9)).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(2), changes.recv())
        .await
        .expect("no change after the restart");
    assert_eq!(next, Some(KeyChange::Key(key(9))));
}

fn free_port() -> Option<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    Some(l.local_addr().ok()?.port())
}

/// A `redis-server` of the test's own, killed on drop.
struct PrivateRedis(std::process::Child);

impl PrivateRedis {
    fn start(port: u16) -> Option<Self> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = Self(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
