//! The console's figures, pure: events and alerts in, counts per time bucket and per
//! reason, category, key, network and client out. The pages read the store; this only adds.

use std::collections::{BTreeMap, HashMap};

use stormwall_store::StoredAlert;
use stormwall_types::safety::Action as SafetyAction;
use stormwall_types::{Decision, UsageEvent};
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

/// Adds up `events` and `alerts` over `window` ending at `now`.
pub fn overview(
    events: &[UsageEvent],
    alerts: &[StoredAlert],
    window: Window,
    now: OffsetDateTime,
) -> Overview {
    let n = window.buckets();
    let mut o = Overview {
        labels: window.labels(now),
        allowed: vec![0.0; n],
        refused: vec![0.0; n],
        blocked: vec![0.0; n],
        alerts: vec![0.0; n],
        ..Overview::default()
    };
    let mut spend: HashMap<&str, (f64, u64)> = HashMap::new();
    for e in events {
        let Some(i) = window.index(now, e.timestamp) else {
            continue;
        };
        o.requests += 1;
        match e.decision {
            Decision::Allow => o.allowed[i] += 1.0,
            Decision::Deny => {
                o.refused[i] += 1.0;
                let reason = e.reject_reason.map_or("other", |r| r.as_str());
                *o.refusals.entry(reason.to_owned()).or_default() += 1;
            }
        }
        let mut blocked = false;
        for v in &e.safety {
            let entry = o.content.entry(v.category.as_str().to_owned()).or_default();
            match v.action {
                SafetyAction::Block => {
                    entry.0 += 1;
                    blocked = true;
                }
                SafetyAction::Flag => entry.1 += 1,
                _ => {}
            }
        }
        if blocked {
            o.blocked[i] += 1.0;
        }
        if let Some(k) = &e.key_id {
            let s = spend.entry(k.as_str()).or_default();
            s.0 += e.cost_usd;
            s.1 += 1;
        }
    }
    let mut top: Vec<KeyFigure> = spend
        .into_iter()
        .map(|(k, (v, c))| KeyFigure {
            key: k.to_owned(),
            value: v,
            count: c,
            worst: String::new(),
        })
        .collect();
    top.sort_by(|a, b| b.value.total_cmp(&a.value).then(b.count.cmp(&a.count)));
    top.truncate(TOP);
    o.top_spend = top;
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

/// Where a key was used from: one row per client address.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// Client address.
    pub ip: String,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// Its organisation.
    pub org: Option<String>,
    /// Country code.
    pub country: Option<String>,
    /// Requests from it.
    pub requests: u64,
    /// Last request from it.
    pub last: OffsetDateTime,
}

/// Networks and clients (user agents with their request counts) of `events`, most
/// requests first.
pub fn networks_and_clients(events: &[UsageEvent]) -> (Vec<Network>, Vec<(String, u64)>) {
    let mut nets: HashMap<String, Network> = HashMap::new();
    let mut uas: HashMap<String, u64> = HashMap::new();
    for e in events {
        let ip = e.source_ip.to_string();
        let n = nets.entry(ip.clone()).or_insert_with(|| Network {
            ip,
            asn: e.source_asn,
            org: e.source_as_org.clone(),
            country: e.source_country.clone(),
            requests: 0,
            last: e.timestamp,
        });
        n.requests += 1;
        n.last = n.last.max(e.timestamp);
        let ua = e.user_agent.clone().unwrap_or_else(|| "(none)".to_owned());
        *uas.entry(ua).or_default() += 1;
    }
    let mut nets: Vec<Network> = nets.into_values().collect();
    nets.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.ip.cmp(&b.ip)));
    let mut uas: Vec<(String, u64)> = uas.into_iter().collect();
    uas.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    (nets, uas)
}

/// Content-safety findings of `events`: by (category, action) and by (key, category,
/// action), for blocks and flags only.
pub type SafetyCounts = (
    BTreeMap<(String, String), u64>,
    BTreeMap<(String, String, String), u64>,
);

/// Counts blocks and flags by category and by key.
pub fn safety_counts(events: &[UsageEvent]) -> SafetyCounts {
    let mut by_cat = BTreeMap::new();
    let mut by_key = BTreeMap::new();
    for e in events {
        for v in &e.safety {
            if !matches!(v.action, SafetyAction::Block | SafetyAction::Flag) {
                continue;
            }
            let (cat, act) = (v.category.as_str().to_owned(), v.action.as_str().to_owned());
            *by_cat.entry((cat.clone(), act.clone())).or_default() += 1;
            let key = e
                .key_id
                .as_ref()
                .map_or_else(|| "(no key)".to_owned(), |k| k.as_str().to_owned());
            *by_key.entry((key, cat, act)).or_default() += 1;
        }
    }
    (by_cat, by_key)
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
}
