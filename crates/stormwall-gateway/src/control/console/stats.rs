//! The console's figures, pure: the store's event summary (added up by the store, see
//! `stormwall_store::summary`) and alerts in, the overview's series and rankings out.

use std::collections::{BTreeMap, HashMap};

use stormwall_store::{EventSummary, StoredAlert, SummaryParts, SummaryQuery};
use time::{Duration, OffsetDateTime};

/// The time span a page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last hour, in 5-minute bars.
    Hour,
    /// The last day, in hourly bars.
    Day,
    /// The last week, in 6-hour bars.
    Week,
}

impl Window {
    /// Every window, in menu order.
    pub const ALL: [Window; 3] = [Window::Hour, Window::Day, Window::Week];

    /// Reads `hour`, `day` or `week`; anything else is `default`.
    pub fn parse(s: Option<&str>, default: Window) -> Window {
        match s {
            Some("hour") => Window::Hour,
            Some("day") => Window::Day,
            Some("week") => Window::Week,
            _ => default,
        }
    }

    /// Its name in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
        }
    }

    /// How many bars.
    pub fn buckets(self) -> usize {
        match self {
            Window::Hour => 12,
            Window::Day => 24,
            Window::Week => 28,
        }
    }

    /// One bar's span.
    pub fn bucket(self) -> Duration {
        match self {
            Window::Hour => Duration::minutes(5),
            Window::Day => Duration::hours(1),
            Window::Week => Duration::hours(6),
        }
    }

    /// The first instant shown when the newest bar ends at `now`.
    pub fn start(self, now: OffsetDateTime) -> OffsetDateTime {
        now - self.bucket() * self.buckets() as i32
    }

    /// The bar `at` falls in, if it is in the window ending at `now`.
    pub fn index(self, now: OffsetDateTime, at: OffsetDateTime) -> Option<usize> {
        let start = self.start(now);
        if at < start || at > now {
            return None;
        }
        let i = ((at - start).whole_seconds() / self.bucket().whole_seconds()) as usize;
        Some(i.min(self.buckets() - 1))
    }

    /// Each bar's label: its start as `HH:MM` (UTC), with the day for a week.
    pub fn labels(self, now: OffsetDateTime) -> Vec<String> {
        let start = self.start(now);
        (0..self.buckets())
            .map(|i| {
                let t = start + self.bucket() * i as i32;
                match self {
                    Window::Week => {
                        format!("{:02}-{:02} {:02}h", u8::from(t.month()), t.day(), t.hour())
                    }
                    _ => format!("{:02}:{:02}", t.hour(), t.minute()),
                }
            })
            .collect()
    }
}

/// One key's spend or risk in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyFigure {
    /// Public key id.
    pub key: String,
    /// Spend in USD, or summed alert score.
    pub value: f64,
    /// Requests, or alerts.
    pub count: u64,
    /// Highest severity among its alerts (empty for spend).
    pub worst: String,
}

/// What the overview shows for one window.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    /// Bar labels.
    pub labels: Vec<String>,
    /// Allowed requests per bar.
    pub allowed: Vec<f64>,
    /// Refused requests per bar.
    pub refused: Vec<f64>,
    /// Requests with a content-safety block per bar.
    pub blocked: Vec<f64>,
    /// Alerts per bar.
    pub alerts: Vec<f64>,
    /// Requests in the window.
    pub requests: u64,
    /// Refusals in the window by reason.
    pub refusals: BTreeMap<String, u64>,
    /// Content-safety findings by category: (blocks, flags).
    pub content: BTreeMap<String, (u64, u64)>,
    /// Keys by spend, highest first.
    pub top_spend: Vec<KeyFigure>,
    /// Keys by risk (their alerts' scores), highest first.
    pub top_risk: Vec<KeyFigure>,
}

/// How many keys the top lists show.
pub const TOP: usize = 10;

fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 4,
        "high" => 3,
        "medium" => 2,
        "low" => 1,
        _ => 0,
    }
}

impl Window {
    /// The store query for this window ending at `now` (of one key when given).
    pub fn summary_query(
        self,
        now: OffsetDateTime,
        key_id: Option<stormwall_types::KeyId>,
        parts: SummaryParts,
    ) -> SummaryQuery {
        SummaryQuery {
            key_id,
            since: self.start(now),
            until: now,
            bucket_secs: u32::try_from(self.bucket().whole_seconds()).unwrap_or(3600),
            top: TOP_ROWS,
            parts,
        }
    }
}

/// Rows of the ranked lists the store returns (keys, networks, clients, findings).
pub const TOP_ROWS: usize = 100;

/// The overview's figures from the store's `summary` of `window` and the `alerts` in it.
pub fn overview(
    summary: &EventSummary,
    alerts: &[StoredAlert],
    window: Window,
    now: OffsetDateTime,
) -> Overview {
    let n = window.buckets();
    let series = |f: fn(&stormwall_store::summary::Bucket) -> u64| -> Vec<f64> {
        let mut v: Vec<f64> = summary.buckets.iter().map(|b| f(b) as f64).collect();
        v.resize(n, 0.0);
        v
    };
    let mut o = Overview {
        labels: window.labels(now),
        allowed: series(|b| b.allowed),
        refused: series(|b| b.refused),
        blocked: series(|b| b.blocked),
        alerts: vec![0.0; n],
        requests: summary.requests,
        refusals: summary.refusals.clone(),
        ..Overview::default()
    };
    for ((cat, action), count) in summary.findings_by_category() {
        let entry = o.content.entry(cat).or_default();
        match action.as_str() {
            "block" => entry.0 += count,
            _ => entry.1 += count,
        }
    }
    o.top_spend = summary
        .top_spend
        .iter()
        .take(TOP)
        .map(|k| KeyFigure {
            key: k.key.clone(),
            value: k.usd,
            count: k.requests,
            worst: String::new(),
        })
        .collect();
    let mut in_window = Vec::new();
    for a in alerts {
        if let Some(i) = window.index(now, a.alert.at) {
            o.alerts[i] += 1.0;
            in_window.push(a);
        }
    }
    o.top_risk = risk_by_key(in_window.into_iter());
    o
}

/// Keys ranked by their alerts (false positives left out): summed score, count and worst
/// severity.
pub fn risk_by_key<'a>(alerts: impl Iterator<Item = &'a StoredAlert>) -> Vec<KeyFigure> {
    let mut by: HashMap<&str, KeyFigure> = HashMap::new();
    for a in alerts {
        if a.status == stormwall_store::AlertStatus::FalsePositive {
            continue;
        }
        let Some(k) = &a.alert.key_id else { continue };
        let f = by.entry(k.as_str()).or_insert_with(|| KeyFigure {
            key: k.as_str().to_owned(),
            value: 0.0,
            count: 0,
            worst: String::new(),
        });
        f.value += a.alert.score;
        f.count += 1;
        let sev = a.alert.severity.as_str();
        if severity_rank(sev) > severity_rank(&f.worst) {
            f.worst = sev.to_owned();
        }
    }
    let mut v: Vec<KeyFigure> = by.into_values().collect();
    v.sort_by(|a, b| {
        severity_rank(&b.worst)
            .cmp(&severity_rank(&a.worst))
            .then(b.value.total_cmp(&a.value))
            .then(a.key.cmp(&b.key))
    });
    v.truncate(TOP);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_place_instants_in_their_bar() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let w = Window::Hour;
        assert_eq!(w.index(now, now), Some(11));
        assert_eq!(w.index(now, now - Duration::minutes(60)), Some(0));
        assert_eq!(w.index(now, now - Duration::minutes(61)), None);
        assert_eq!(w.index(now, now + Duration::seconds(1)), None);
        assert_eq!(w.labels(now).len(), 12);
        assert_eq!(Window::parse(Some("week"), Window::Day), Window::Week);
        assert_eq!(Window::parse(Some("x"), Window::Day), Window::Day);
        assert_eq!(Window::Week.labels(now).len(), 28);
    }

    #[test]
    fn the_overview_reads_the_store_summary() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let q = Window::Hour.summary_query(now, None, SummaryParts::default());
        assert_eq!(q.since, now - Duration::hours(1));
        assert_eq!(q.bucket_secs, 300);
        let mut s = EventSummary {
            buckets: vec![stormwall_store::summary::Bucket {
                allowed: 2,
                refused: 1,
                blocked: 1,
            }],
            requests: 3,
            ..EventSummary::default()
        };
        s.findings
            .insert(("k".into(), "sexual".into(), "block".into()), 2);
        s.findings
            .insert(("j".into(), "sexual".into(), "flag".into()), 1);
        let o = overview(&s, &[], Window::Hour, now);
        assert_eq!(
            o.allowed.len(),
            12,
            "short summaries are padded to the window"
        );
        assert_eq!((o.allowed[0], o.refused[0], o.blocked[0]), (2.0, 1.0, 1.0));
        assert_eq!(o.content["sexual"], (2, 1));
    }
}
