//! Event summaries: the figures the console's pages show (requests per time bucket,
//! refusals, content-safety findings, spend by key, networks and clients), added up where
//! the events are — SQL `GROUP BY` in SQLite and PostgreSQL — so a page view reads a few
//! hundred rows of totals, not thousands of events. [`EventSummary::from_events`] is the
//! same sum over events in memory: the reference the backends are tested against, and the
//! default for stores without SQL.

use std::collections::BTreeMap;

use stormwall_types::safety::Action as SafetyAction;
use stormwall_types::{Decision, KeyId, UsageEvent};
use time::OffsetDateTime;

use crate::StoreError;
use crate::codec::{summable_cost, unix_ms};

/// Which optional parts of a summary to add up (each is one more query).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SummaryParts {
    /// Keys ranked by spend ([`EventSummary::top_spend`]).
    pub keys: bool,
    /// Client addresses and user agents ([`EventSummary::networks`], [`EventSummary::clients`]).
    pub networks: bool,
    /// The newest content-safety findings ([`EventSummary::recent_findings`]).
    pub findings: bool,
}

/// What to add up: the events in `[since, until)`, of one key when given, in buckets of
/// `bucket_secs` from `since`.
#[derive(Debug, Clone)]
pub struct SummaryQuery {
    /// Only events of this key.
    pub key_id: Option<KeyId>,
    /// First instant (inclusive).
    pub since: OffsetDateTime,
    /// Last instant (exclusive).
    pub until: OffsetDateTime,
    /// One bucket's span in seconds (at least 1).
    pub bucket_secs: u32,
    /// Rows in each ranked list (keys, networks, clients, recent findings).
    pub top: usize,
    /// Optional parts.
    pub parts: SummaryParts,
}

impl SummaryQuery {
    /// `(since, until, bucket)` in Unix milliseconds, and the number of buckets.
    pub(crate) fn bounds(&self) -> Result<(i64, i64, i64, usize), StoreError> {
        let since = unix_ms(self.since)?;
        let until = unix_ms(self.until)?.max(since);
        let bucket = i64::from(self.bucket_secs.max(1)) * 1000;
        let n = usize::try_from((until - since + bucket - 1) / bucket)
            .unwrap_or(0)
            .clamp(1, MAX_BUCKETS);
        Ok((since, until, bucket, n))
    }
}

/// Most buckets a summary holds (a wider span is folded into the last one).
pub const MAX_BUCKETS: usize = 1_000;

/// Requests in one time bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Allowed requests.
    pub allowed: u64,
    /// Refused requests.
    pub refused: u64,
    /// Requests with at least one content-safety block.
    pub blocked: u64,
}

/// One key's spend.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpend {
    /// Public key id.
    pub key: String,
    /// Spend in USD.
    pub usd: f64,
    /// Requests.
    pub requests: u64,
}

/// One client address.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkCount {
    /// The address, as events write it.
    pub ip: String,
    /// Autonomous system number (the largest seen, should it have changed).
    pub asn: Option<u32>,
    /// Its organisation.
    pub org: Option<String>,
    /// Country code.
    pub country: Option<String>,
    /// Requests from it.
    pub requests: u64,
    /// Its last request (millisecond precision).
    pub last: OffsetDateTime,
}

/// One content-safety finding (a block or a flag) on one event, without its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The event's id.
    pub event_id: String,
    /// The event's time (millisecond precision).
    pub at: OffsetDateTime,
    /// The event's key.
    pub key_id: Option<String>,
    /// Category name.
    pub category: String,
    /// `block` or `flag`.
    pub action: String,
    /// `input` or `output`.
    pub stage: String,
    /// Score in 0..=1.
    pub score: f32,
    /// Normalisation view, when known.
    pub view: Option<String>,
    /// Whether the event kept the screened text (shown only through an audited reveal).
    pub has_evidence: bool,
}

/// The figures of a [`SummaryQuery`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventSummary {
    /// Requests per bucket, oldest first.
    pub buckets: Vec<Bucket>,
    /// Requests in all.
    pub requests: u64,
    /// Spend in USD.
    pub spend_usd: f64,
    /// Refusals by reason (`other` for a refusal without one).
    pub refusals: BTreeMap<String, u64>,
    /// Blocks and flags by (key id, or empty for none; category; action).
    pub findings: BTreeMap<(String, String, String), u64>,
    /// Keys by spend, highest first (then by requests, then id); with `parts.keys`.
    pub top_spend: Vec<KeySpend>,
    /// Client addresses by requests, most first (then by address); with `parts.networks`.
    pub networks: Vec<NetworkCount>,
    /// User agents (`None`: none sent) by requests, most first (then by name, none first);
    /// with `parts.networks`.
    pub clients: Vec<(Option<String>, u64)>,
    /// The newest findings, newest event first; with `parts.findings`.
    pub recent_findings: Vec<Finding>,
}

/// Whether a finding's action is one the summary counts.
fn counted(a: SafetyAction) -> bool {
    matches!(a, SafetyAction::Block | SafetyAction::Flag)
}

pub(crate) fn ms_time(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| StoreError::Corrupt("event timestamp out of range".to_owned()))
}

impl EventSummary {
    /// An empty summary with the query's buckets.
    pub(crate) fn empty(n: usize) -> Self {
        Self {
            buckets: vec![Bucket::default(); n],
            ..Self::default()
        }
    }

    /// The bucket a row's index falls in (the last for anything past it).
    pub(crate) fn bucket(&mut self, index: i64) -> Option<&mut Bucket> {
        let last = self.buckets.len().checked_sub(1)?;
        let i = usize::try_from(index).ok()?.min(last);
        self.buckets.get_mut(i)
    }

    /// Blocks and flags by (category, action), all keys together.
    pub fn findings_by_category(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for ((_, c, a), n) in &self.findings {
            *out.entry((c.clone(), a.clone())).or_default() += n;
        }
        out
    }

    /// The same figures added up from `events` in memory (those outside the query's span
    /// or key are skipped): the reference for the SQL backends.
    pub fn from_events(q: &SummaryQuery, events: &[UsageEvent]) -> Result<Self, StoreError> {
        let (since, until, bucket, n) = q.bounds()?;
        let mut s = Self::empty(n);
        let mut spend: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
        let mut nets: BTreeMap<String, NetworkCount> = BTreeMap::new();
        let mut uas: BTreeMap<Option<String>, u64> = BTreeMap::new();
        let mut findings = Vec::new();
        for e in events {
            let at = unix_ms(e.timestamp)?;
            if at < since
                || at >= until
                || q.key_id
                    .as_ref()
                    .is_some_and(|k| e.key_id.as_ref() != Some(k))
            {
                continue;
            }
            s.requests += 1;
            s.spend_usd += summable_cost(e);
            let blocked = e.safety.iter().any(|v| v.action == SafetyAction::Block);
            let refused = e.decision == Decision::Deny;
            if let Some(b) = s.bucket((at - since) / bucket) {
                if refused {
                    b.refused += 1;
                } else {
                    b.allowed += 1;
                }
                if blocked {
                    b.blocked += 1;
                }
            }
            if refused {
                let reason = e.reject_reason.map_or("other", |r| r.as_str());
                *s.refusals.entry(reason.to_owned()).or_default() += 1;
            }
            let key = e.key_id.as_ref().map_or("", KeyId::as_str);
            for v in e.safety.iter().filter(|v| counted(v.action)) {
                *s.findings
                    .entry((
                        key.to_owned(),
                        v.category.as_str().to_owned(),
                        v.action.as_str().to_owned(),
                    ))
                    .or_default() += 1;
                if q.parts.findings {
                    findings.push((
                        at,
                        e.id.clone(),
                        Finding {
                            event_id: e.id.clone(),
                            at: ms_time(at)?,
                            key_id: e.key_id.as_ref().map(|k| k.as_str().to_owned()),
                            category: v.category.as_str().to_owned(),
                            action: v.action.as_str().to_owned(),
                            stage: v.stage.as_str().to_owned(),
                            score: v.score,
                            view: v.view.clone(),
                            has_evidence: v.evidence.is_some(),
                        },
                    ));
                }
            }
            if q.parts.keys && !key.is_empty() {
                let k = spend.entry(key).or_default();
                k.0 += summable_cost(e);
                k.1 += 1;
            }
            if q.parts.networks {
                let ip = e.source_ip.to_string();
                let n = nets.entry(ip.clone()).or_insert_with(|| NetworkCount {
                    ip,
                    asn: None,
                    org: None,
                    country: None,
                    requests: 0,
                    last: e.timestamp,
                });
                n.asn = n.asn.max(e.source_asn);
                n.org = n.org.clone().max(e.source_as_org.clone());
                n.country = n.country.clone().max(e.source_country.clone());
                n.requests += 1;
                n.last = if n.requests == 1 {
                    ms_time(at)?
                } else {
                    n.last.max(ms_time(at)?)
                };
                *uas.entry(e.user_agent.clone()).or_default() += 1;
            }
        }
        let mut top: Vec<KeySpend> = spend
            .into_iter()
            .map(|(k, (usd, requests))| KeySpend {
                key: k.to_owned(),
                usd,
                requests,
            })
            .collect();
        top.sort_by(|a, b| {
            b.usd
                .total_cmp(&a.usd)
                .then(b.requests.cmp(&a.requests))
                .then(a.key.cmp(&b.key))
        });
        top.truncate(q.top);
        s.top_spend = top;
        let mut nets: Vec<NetworkCount> = nets.into_values().collect();
        nets.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.ip.cmp(&b.ip)));
        nets.truncate(q.top);
        s.networks = nets;
        let mut uas: Vec<(Option<String>, u64)> = uas.into_iter().collect();
        uas.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        uas.truncate(q.top);
        s.clients = uas;
        // Newest event first; an event's findings in the order it recorded them.
        findings.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        s.recent_findings = findings.into_iter().map(|f| f.2).take(q.top).collect();
        Ok(s)
    }
}

/// The SQL of each part. SQLite and PostgreSQL differ only in how they open the JSON body
/// and walk its `content_filter` array, so the statements are built from these pieces.
pub(crate) struct Dialect {
    /// Placeholder for the n-th parameter (1-based).
    pub param: fn(usize) -> String,
    /// A text field of the event body of `e` by (dotted) name.
    pub field: fn(&str) -> String,
    /// The `FROM` item walking `e`'s findings as `v`.
    pub each_finding: &'static str,
    /// A finding's position in `e`'s array, to keep an event's findings in order.
    pub ordinal: &'static str,
    /// A text field of the finding `v`.
    pub finding: fn(&str) -> String,
    /// Whether the finding `v` kept evidence.
    pub has_evidence: &'static str,
    /// The finding's score as a float.
    pub score: &'static str,
    /// The ASN as an integer.
    pub asn: &'static str,
    /// Order text bytewise (`COLLATE "C"` on PostgreSQL; SQLite's default already is).
    pub bytewise: &'static str,
    /// A cheap test that `e` has findings at all, before its JSON is opened.
    pub has_findings: &'static str,
}

/// The statements of one summary. Parameters: 1 since, 2 until, then the key when the
/// query names one, then (for all but `findings`) one more: the bucket span in ms for
/// `totals` and `blocked`, the row limit for the ranked lists.
pub(crate) struct Statements {
    pub totals: String,
    pub blocked: String,
    pub findings: String,
    pub top_spend: String,
    pub networks: String,
    pub clients: String,
    pub recent: String,
}

impl Dialect {
    pub(crate) fn statements(&self, with_key: bool) -> Statements {
        let p = self.param;
        let mut filter = format!("e.ts_unix_ms >= {} AND e.ts_unix_ms < {}", p(1), p(2));
        if with_key {
            filter.push_str(&format!(" AND e.key_id = {}", p(3)));
        }
        let extra = p(if with_key { 4 } else { 3 });
        let bucket = format!("(e.ts_unix_ms - {}) / {extra}", p(1));
        let c = self.bytewise;
        let action = (self.finding)("action");
        let counted = format!("{action} IN ('block', 'flag')");
        let ip = (self.field)("source.ip");
        let ua = (self.field)("user_agent.original");
        Statements {
            totals: format!(
                "SELECT {bucket}, e.decision, e.reject_reason, COUNT(*), SUM(e.cost_usd) \
                 FROM events e WHERE {filter} GROUP BY 1, 2, 3"
            ),
            blocked: format!(
                "SELECT {bucket}, COUNT(*) FROM events e WHERE {filter} AND {hf} AND EXISTS \
                 (SELECT 1 FROM {each} WHERE {action} = 'block') GROUP BY 1",
                hf = self.has_findings,
                each = self.each_finding,
            ),
            findings: format!(
                "SELECT COALESCE(e.key_id, ''), {cat}, {action}, COUNT(*) FROM events e, {each} \
                 WHERE {filter} AND {hf} AND {counted} GROUP BY 1, 2, 3",
                cat = (self.finding)("category"),
                hf = self.has_findings,
                each = self.each_finding,
            ),
            top_spend: format!(
                "SELECT e.key_id, SUM(e.cost_usd), COUNT(*) FROM events e \
                 WHERE {filter} AND e.key_id IS NOT NULL \
                 GROUP BY e.key_id ORDER BY 2 DESC, 3 DESC, e.key_id {c} LIMIT {extra}"
            ),
            networks: format!(
                "SELECT {ip}, MAX({asn}), MAX({org} {c}), MAX({country} {c}), COUNT(*), \
                 MAX(e.ts_unix_ms) FROM events e WHERE {filter} \
                 GROUP BY {ip} ORDER BY 5 DESC, {ip} {c} LIMIT {extra}",
                asn = self.asn,
                org = (self.field)("source.as.organization.name"),
                country = (self.field)("source.geo.country_iso_code"),
            ),
            clients: format!(
                "SELECT {ua}, COUNT(*) FROM events e WHERE {filter} \
                 GROUP BY {ua} ORDER BY 2 DESC, {ua} {c} NULLS FIRST LIMIT {extra}"
            ),
            recent: format!(
                "SELECT e.id, e.ts_unix_ms, e.key_id, {cat}, {action}, {stage}, {score}, {view}, \
                 {ev} FROM events e, {each} WHERE {filter} AND {hf} AND {counted} \
                 ORDER BY e.ts_unix_ms DESC, e.id {c} DESC, {ord} LIMIT {extra}",
                cat = (self.finding)("category"),
                stage = (self.finding)("stage"),
                score = self.score,
                view = (self.finding)("view"),
                ev = self.has_evidence,
                hf = self.has_findings,
                each = self.each_finding,
                ord = self.ordinal,
            ),
        }
    }
}

/// One row of the totals statement, folded in.
pub(crate) fn add_totals(
    s: &mut EventSummary,
    index: i64,
    decision: &str,
    reason: Option<String>,
    count: i64,
    usd: f64,
) {
    let count = u64::try_from(count).unwrap_or(0);
    s.requests += count;
    s.spend_usd += usd;
    let refused = decision == "deny";
    if let Some(b) = s.bucket(index) {
        if refused {
            b.refused += count;
        } else {
            b.allowed += count;
        }
    }
    if refused {
        *s.refusals
            .entry(reason.unwrap_or_else(|| "other".to_owned()))
            .or_default() += count;
    }
}

/// SQLite's pieces: JSON1 functions over the TEXT body.
const SQLITE: Dialect = Dialect {
    param: |n| format!("?{n}"),
    field: |name| format!("json_extract(e.body_json, '$.\"{name}\"')"),
    each_finding: "json_each(e.body_json, '$.content_filter') v",
    ordinal: "v.key",
    finding: |name| format!("json_extract(v.value, '$.{name}')"),
    has_evidence: "json_extract(v.value, '$.evidence') IS NOT NULL",
    score: "json_extract(v.value, '$.score')",
    asn: "json_extract(e.body_json, '$.\"source.as.number\"')",
    bytewise: "",
    has_findings: "instr(e.body_json, '\"content_filter\"') > 0",
};

/// PostgreSQL's pieces: the TEXT body cast to `json` (not `jsonb`, which refuses the
/// escaped NUL a client may send; see the migration).
const POSTGRES: Dialect = Dialect {
    param: |n| format!("${n}"),
    field: |name| format!("(e.body_json::json ->> '{name}')"),
    each_finding: "json_array_elements(e.body_json::json -> 'content_filter') WITH ORDINALITY AS v(f, n)",
    ordinal: "v.n",
    finding: |name| format!("(v.f ->> '{name}')"),
    has_evidence: "COALESCE(json_typeof(v.f -> 'evidence') <> 'null', FALSE)",
    score: "(v.f ->> 'score')::float8",
    asn: "(e.body_json::json ->> 'source.as.number')::bigint",
    bytewise: "COLLATE \"C\"",
    has_findings: "strpos(e.body_json, '\"content_filter\"') > 0",
};

fn sqlite_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn asn(n: Option<i64>) -> Option<u32> {
    n.and_then(|n| u32::try_from(n).ok())
}

/// Adds up a summary in SQLite.
pub(crate) fn sqlite(
    conn: &rusqlite::Connection,
    q: &SummaryQuery,
) -> Result<EventSummary, StoreError> {
    use rusqlite::types::Value;
    let (since, until, bucket, n) = q.bounds()?;
    let st = SQLITE.statements(q.key_id.is_some());
    let mut base = vec![Value::Integer(since), Value::Integer(until)];
    if let Some(k) = &q.key_id {
        base.push(Value::Text(k.as_str().to_owned()));
    }
    let with = |extra: i64| {
        let mut v = base.clone();
        v.push(Value::Integer(extra));
        v
    };
    let limit = i64::try_from(q.top).unwrap_or(i64::MAX);
    let mut s = EventSummary::empty(n);
    let run = |sql: &str,
               args: &[Value],
               f: &mut dyn FnMut(&rusqlite::Row<'_>) -> Result<(), StoreError>|
     -> Result<(), StoreError> {
        let mut stmt = conn.prepare_cached(sql).map_err(sqlite_err)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(sqlite_err)?;
        while let Some(row) = rows.next().map_err(sqlite_err)? {
            f(row)?;
        }
        Ok(())
    };
    run(&st.totals, &with(bucket), &mut |r| {
        add_totals(
            &mut s,
            r.get(0).map_err(sqlite_err)?,
            &r.get::<_, String>(1).map_err(sqlite_err)?,
            r.get(2).map_err(sqlite_err)?,
            r.get(3).map_err(sqlite_err)?,
            r.get(4).map_err(sqlite_err)?,
        );
        Ok(())
    })?;
    run(&st.blocked, &with(bucket), &mut |r| {
        let (i, c): (i64, i64) = (r.get(0).map_err(sqlite_err)?, r.get(1).map_err(sqlite_err)?);
        if let Some(b) = s.bucket(i) {
            b.blocked += count(c);
        }
        Ok(())
    })?;
    run(&st.findings, &base, &mut |r| {
        let key: (String, String, String) = (
            r.get(0).map_err(sqlite_err)?,
            r.get(1).map_err(sqlite_err)?,
            r.get(2).map_err(sqlite_err)?,
        );
        *s.findings.entry(key).or_default() += count(r.get(3).map_err(sqlite_err)?);
        Ok(())
    })?;
    if q.parts.keys {
        run(&st.top_spend, &with(limit), &mut |r| {
            s.top_spend.push(KeySpend {
                key: r.get(0).map_err(sqlite_err)?,
                usd: r.get(1).map_err(sqlite_err)?,
                requests: count(r.get(2).map_err(sqlite_err)?),
            });
            Ok(())
        })?;
    }
    if q.parts.networks {
        run(&st.networks, &with(limit), &mut |r| {
            s.networks.push(NetworkCount {
                ip: r.get(0).map_err(sqlite_err)?,
                asn: asn(r.get(1).map_err(sqlite_err)?),
                org: r.get(2).map_err(sqlite_err)?,
                country: r.get(3).map_err(sqlite_err)?,
                requests: count(r.get(4).map_err(sqlite_err)?),
                last: ms_time(r.get(5).map_err(sqlite_err)?)?,
            });
            Ok(())
        })?;
        run(&st.clients, &with(limit), &mut |r| {
            s.clients.push((
                r.get(0).map_err(sqlite_err)?,
                count(r.get(1).map_err(sqlite_err)?),
            ));
            Ok(())
        })?;
    }
    if q.parts.findings {
        run(&st.recent, &with(limit), &mut |r| {
            s.recent_findings.push(Finding {
                event_id: r.get(0).map_err(sqlite_err)?,
                at: ms_time(r.get(1).map_err(sqlite_err)?)?,
                key_id: r.get(2).map_err(sqlite_err)?,
                category: r.get(3).map_err(sqlite_err)?,
                action: r.get(4).map_err(sqlite_err)?,
                stage: r.get(5).map_err(sqlite_err)?,
                score: r.get::<_, f64>(6).map_err(sqlite_err)? as f32,
                view: r.get(7).map_err(sqlite_err)?,
                has_evidence: r.get(8).map_err(sqlite_err)?,
            });
            Ok(())
        })?;
    }
    Ok(s)
}

/// Runs one PostgreSQL summary statement with its parameters (see [`Statements`]).
async fn pg_rows(
    client: &deadpool_postgres::ClientWrapper,
    sql: &str,
    since: i64,
    until: i64,
    key: Option<&str>,
    extra: Option<i64>,
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    use tokio_postgres::types::ToSql;
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![&since, &until];
    if let Some(k) = &key {
        args.push(k);
    }
    if let Some(x) = &extra {
        args.push(x);
    }
    let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
    client.query(&stmt, &args).await.map_err(pg_err)
}

/// Adds up a summary in PostgreSQL.
pub(crate) async fn postgres(
    client: &deadpool_postgres::ClientWrapper,
    q: &SummaryQuery,
) -> Result<EventSummary, StoreError> {
    let (since, until, bucket, n) = q.bounds()?;
    let st = POSTGRES.statements(q.key_id.is_some());
    let key = q.key_id.as_ref().map(|k| k.as_str().to_owned());
    let limit = i64::try_from(q.top).unwrap_or(i64::MAX);
    let mut s = EventSummary::empty(n);
    for r in pg_rows(
        client,
        &st.totals,
        since,
        until,
        key.as_deref(),
        Some(bucket),
    )
    .await?
    {
        add_totals(
            &mut s,
            r.try_get(0).map_err(pg_err)?,
            r.try_get(1).map_err(pg_err)?,
            r.try_get(2).map_err(pg_err)?,
            r.try_get(3).map_err(pg_err)?,
            r.try_get(4).map_err(pg_err)?,
        );
    }
    for r in pg_rows(
        client,
        &st.blocked,
        since,
        until,
        key.as_deref(),
        Some(bucket),
    )
    .await?
    {
        let i: i64 = r.try_get(0).map_err(pg_err)?;
        let c: i64 = r.try_get(1).map_err(pg_err)?;
        if let Some(b) = s.bucket(i) {
            b.blocked += count(c);
        }
    }
    for r in pg_rows(client, &st.findings, since, until, key.as_deref(), None).await? {
        let key: (String, String, String) = (
            r.try_get(0).map_err(pg_err)?,
            r.try_get(1).map_err(pg_err)?,
            r.try_get(2).map_err(pg_err)?,
        );
        *s.findings.entry(key).or_default() += count(r.try_get(3).map_err(pg_err)?);
    }
    if q.parts.keys {
        for r in pg_rows(
            client,
            &st.top_spend,
            since,
            until,
            key.as_deref(),
            Some(limit),
        )
        .await?
        {
            s.top_spend.push(KeySpend {
                key: r.try_get(0).map_err(pg_err)?,
                usd: r.try_get(1).map_err(pg_err)?,
                requests: count(r.try_get(2).map_err(pg_err)?),
            });
        }
    }
    if q.parts.networks {
        for r in pg_rows(
            client,
            &st.networks,
            since,
            until,
            key.as_deref(),
            Some(limit),
        )
        .await?
        {
            s.networks.push(NetworkCount {
                ip: r.try_get(0).map_err(pg_err)?,
                asn: asn(r.try_get(1).map_err(pg_err)?),
                org: r.try_get(2).map_err(pg_err)?,
                country: r.try_get(3).map_err(pg_err)?,
                requests: count(r.try_get(4).map_err(pg_err)?),
                last: ms_time(r.try_get(5).map_err(pg_err)?)?,
            });
        }
        for r in pg_rows(
            client,
            &st.clients,
            since,
            until,
            key.as_deref(),
            Some(limit),
        )
        .await?
        {
            s.clients.push((
                r.try_get(0).map_err(pg_err)?,
                count(r.try_get(1).map_err(pg_err)?),
            ));
        }
    }
    if q.parts.findings {
        for r in pg_rows(
            client,
            &st.recent,
            since,
            until,
            key.as_deref(),
            Some(limit),
        )
        .await?
        {
            s.recent_findings.push(Finding {
                event_id: r.try_get(0).map_err(pg_err)?,
                at: ms_time(r.try_get(1).map_err(pg_err)?)?,
                key_id: r.try_get(2).map_err(pg_err)?,
                category: r.try_get(3).map_err(pg_err)?,
                action: r.try_get(4).map_err(pg_err)?,
                stage: r.try_get(5).map_err(pg_err)?,
                score: r.try_get::<_, f64>(6).map_err(pg_err)? as f32,
                view: r.try_get(7).map_err(pg_err)?,
                has_evidence: r.try_get(8).map_err(pg_err)?,
            });
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_count_buckets_and_cap_them() {
        let t = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let q = SummaryQuery {
            key_id: None,
            since: t,
            until: t + time::Duration::hours(1),
            bucket_secs: 300,
            top: 10,
            parts: SummaryParts::default(),
        };
        assert_eq!(q.bounds().unwrap().3, 12);
        let q = SummaryQuery {
            bucket_secs: 0,
            until: t + time::Duration::days(30),
            ..q
        };
        assert_eq!(q.bounds().unwrap().3, MAX_BUCKETS);
        let q = SummaryQuery { until: t, ..q };
        assert_eq!(q.bounds().unwrap().3, 1, "an empty span still has a bucket");
    }
}
