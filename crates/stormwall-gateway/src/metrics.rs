//! Prometheus metrics served on the admin listener's `/metrics`: requests, latency
//! histograms, upstream latency, rejections by reason, in-flight requests, and the event
//! pipeline's accepted / written / dropped counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use stormwall_store::EventSinkStats;

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Endpoint name, or `unknown`.
    pub endpoint: &'static str,
    /// HTTP status the client got.
    pub status: u16,
}

/// Labels of per-endpoint histograms.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Endpoint name, or `unknown`.
    pub endpoint: &'static str,
}

/// Labels of the upstream histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Upstream name.
    pub upstream: Arc<str>,
}

/// Labels of the rejection counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Rejection reason.
    pub reason: &'static str,
}

/// Labels of the retention counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// The store table rows were deleted from (`events`, `control_events`).
    pub table: &'static str,
}

/// Labels of the alert counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// Detector id, e.g. `P1`.
    pub detector: &'static str,
    /// Severity name.
    pub severity: &'static str,
}

/// Labels of the incident notification counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IncidentLabels {
    /// `opened` or `escalated`.
    pub change: &'static str,
    /// The incident's severity after the change.
    pub severity: &'static str,
}

/// Labels of the response-action counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `alert`, `throttle`, `suspend` or `revoke`.
    pub kind: &'static str,
    /// `applied`, `already_in_effect` or `failed`.
    pub outcome: &'static str,
}

/// Detection's own counters, read at scrape time.
#[derive(Debug)]
struct DetectionCollector {
    dropped: Arc<AtomicU64>,
    webhook: Option<Arc<crate::control::webhook::WebhookStats>>,
}

impl Collector for DetectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = ConstCounter::new(self.dropped.load(Ordering::Relaxed));
        let m = encoder.encode_descriptor(
            "detect_events_dropped",
            "Events that skipped detection because its queue was full",
            None,
            c.metric_type(),
        )?;
        c.encode(m)?;
        if let Some(w) = &self.webhook {
            for (name, help, v) in [
                (
                    "webhook_delivered",
                    "Webhook notifications delivered",
                    &w.delivered,
                ),
                (
                    "webhook_retried",
                    "Webhook attempts that failed and were retried",
                    &w.retried,
                ),
                (
                    "webhook_failed",
                    "Webhook notifications given up",
                    &w.failed,
                ),
                (
                    "webhook_dropped",
                    "Webhook notifications dropped because the queue was full",
                    &w.dropped,
                ),
            ] {
                let c = ConstCounter::new(v.load(Ordering::Relaxed));
                let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
                c.encode(m)?;
            }
        }
        Ok(())
    }
}

/// The event journal's counters and gauges, read at scrape time.
#[derive(Debug)]
struct CloudLogsCollector {
    stats: Arc<crate::control::cloud_logs::FollowStats>,
}

impl Collector for CloudLogsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::control::cloud_logs::SourceStats;
        type Read = fn(&SourceStats) -> u64;
        let counters: [(&str, &str, Read); 5] = [
            ("cloud_logs_records", "Cloud-log records parsed", |s| {
                s.records.load(Ordering::Relaxed)
            }),
            (
                "cloud_logs_bad_records",
                "Cloud-log records that could not be used (file and line in the log)",
                |s| s.bad.load(Ordering::Relaxed),
            ),
            (
                "cloud_logs_alerts",
                "Alerts raised on cloud-log records",
                |s| s.alerts.load(Ordering::Relaxed),
            ),
            (
                "cloud_logs_events_stored",
                "Cloud-log usage events written to the event store",
                |s| s.stored.load(Ordering::Relaxed),
            ),
            (
                "cloud_logs_control_events_stored",
                "Cloud-log control events (management calls) written to the store",
                |s| s.control_stored.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in counters {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &self.stats.sources {
                let labels = [("source", s.name.as_str())];
                ConstCounter::new(read(s)).encode(m.encode_family(&labels)?)?;
            }
        }
        type GaugeRead = fn(&SourceStats) -> i64;
        let gauges: [(&str, &str, GaugeRead); 3] = [
            ("cloud_logs_files", "Cloud-log files followed", |s| {
                i64::try_from(s.files.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
            }),
            (
                "cloud_logs_pending_bytes",
                "Bytes of followed cloud-log files not judged yet",
                |s| i64::try_from(s.pending_bytes.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            ),
            (
                "cloud_logs_lag_seconds",
                "Seconds between now and the newest cloud-log record read",
                SourceStats::lag_seconds,
            ),
        ];
        for (name, help, read) in gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &self.stats.sources {
                let labels = [("source", s.name.as_str())];
                ConstGauge::new(read(s)).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "cloud_logs_lease_held",
            "1 when this replica holds the source's lease (follows it); holder: the holder last seen",
            None,
            MetricType::Gauge,
        )?;
        for s in &self.stats.sources {
            let holder = s.holder();
            let labels = [("source", s.name.as_str()), ("holder", holder.as_str())];
            let held = i64::from(s.held.load(Ordering::Relaxed));
            ConstGauge::new(held).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct JournalCollector {
    journal: stormwall_store::Journal,
}

impl Collector for JournalCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.journal.stats();
        for (name, help, v) in [
            (
                "journal_events_appended",
                "Events written to the journal",
                &st.appended,
            ),
            (
                "journal_events_shipped",
                "Journaled events the store acknowledged (replays included)",
                &st.shipped,
            ),
            (
                "journal_events_refused",
                "Events not journaled: at the bound under fail_open, a full queue, or a failed write",
                &st.refused,
            ),
            (
                "journal_events_read_back",
                "Journaled events shipped by reading their segments (a previous run's, or past the shipper's memory)",
                &st.read_back,
            ),
            (
                "journal_ship_errors",
                "Store writes from the journal that failed and were retried",
                &st.ship_errors,
            ),
            (
                "journal_torn_tails",
                "Torn segment tails cut off at start (a crash interrupted an append)",
                &st.torn_tails,
            ),
            (
                "journal_corrupt_records",
                "Damaged journal records found (kept in .bad files, not shipped)",
                &st.corrupt,
            ),
        ] {
            let c = ConstCounter::new(v.load(Ordering::Relaxed));
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        let bytes = st.unshipped_bytes.load(Ordering::Relaxed);
        let g = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
        let m = encoder.encode_descriptor(
            "journal_bytes",
            "Unshipped journal bytes on disk",
            None,
            g.metric_type(),
        )?;
        g.encode(m)?;
        let g = ConstGauge::new(st.oldest_unshipped_seconds());
        let m = encoder.encode_descriptor(
            "journal_oldest_unshipped_seconds",
            "Age of the oldest journaled event the store has not acknowledged",
            None,
            g.metric_type(),
        )?;
        g.encode(m)?;
        let g = ConstGauge::new(i64::from(self.journal.at_bound()));
        let m = encoder.encode_descriptor(
            "journal_at_bound",
            "Whether the journal is at its bound (bytes or age); the policy applies",
            None,
            g.metric_type(),
        )?;
        g.encode(m)?;
        Ok(())
    }
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by endpoint and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request duration by endpoint.
    pub request_duration: Family<EndpointLabels, Histogram>,
    /// Upstream time to response headers by upstream.
    pub upstream_duration: Family<UpstreamLabels, Histogram>,
    /// Rejections by reason.
    pub rejections: Family<ReasonLabels, Counter>,
    /// Requests in flight through the proxy.
    pub inflight: Gauge,
    /// Upstream failures (unreachable, timeout, cut).
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    /// Content-safety counters.
    pub safety: Arc<SafetyMetrics>,
    /// Alerts stored (after de-duplication), by detector and severity.
    pub alerts: Family<AlertLabels, Counter>,
    /// Incidents opened and escalated (what is notified), by change and severity.
    pub incidents: Family<IncidentLabels, Counter>,
    /// Response actions, by kind and outcome.
    pub actions: Family<ActionLabels, Counter>,
    /// Audit entries that could not be written.
    pub audit_failures: Counter,
    /// Rows deleted by retention (`[events] retention_days`), by table.
    pub retention_deleted: Family<TableLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~105 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

struct EventPipelineCollector {
    stats: Arc<EventSinkStats>,
    keys_cached: Arc<AtomicU64>,
    counters: Option<(Arc<dyn stormwall_store::Counters>, Arc<AtomicU64>)>,
}

impl std::fmt::Debug for EventPipelineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventPipelineCollector")
    }
}

impl Collector for EventPipelineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = [
            (
                "events_accepted",
                "Events queued for the store",
                &self.stats.accepted,
            ),
            (
                "events_dropped",
                "Events dropped because the event channel was full or closed",
                &self.stats.dropped,
            ),
            (
                "events_written",
                "Events written to the store",
                &self.stats.written,
            ),
            (
                "events_write_errors",
                "Events lost to store write errors after retries",
                &self.stats.write_errors,
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value.load(Ordering::Relaxed));
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        let g = ConstGauge::new(self.keys_cached.load(Ordering::Relaxed) as i64);
        let m = encoder.encode_descriptor(
            "keys_cached",
            "Keys held in the gateway's key cache",
            None,
            g.metric_type(),
        )?;
        g.encode(m)?;
        if let Some((counters, settle_dropped)) = &self.counters {
            let h = counters.health();
            let up = ConstGauge::new(i64::from(h.available));
            let m = encoder.encode_descriptor(
                "counters_up",
                "Whether the shared counters backend answered its last call (0: local limits in force)",
                None,
                up.metric_type(),
            )?;
            up.encode(m)?;
            let failures = ConstCounter::new(h.failures);
            let m = encoder.encode_descriptor(
                "counters_failures",
                "Calls to the shared counters that failed because the backend was unavailable",
                None,
                failures.metric_type(),
            )?;
            failures.encode(m)?;
            let dropped = ConstCounter::new(settle_dropped.load(Ordering::Relaxed));
            let m = encoder.encode_descriptor(
                "counters_settlements_dropped",
                "Settlements dropped because their queue was full (leases expire them)",
                None,
                dropped.metric_type(),
            )?;
            dropped.encode(m)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Registers every metric; `keys_cached` is read at scrape time.
    pub fn new(
        stats: Arc<EventSinkStats>,
        keys_cached: Arc<AtomicU64>,
        counters: Option<(Arc<dyn stormwall_store::Counters>, Arc<AtomicU64>)>,
    ) -> Self {
        let mut registry = Registry::with_prefix("stormwall");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let upstream_duration = Family::<UpstreamLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let rejections = Family::<ReasonLabels, Counter>::default();
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        let inflight = Gauge::default();
        registry.register(
            "requests",
            "Proxy requests by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request arrival to the last byte of the response",
            request_duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response headers",
            upstream_duration.clone(),
        );
        registry.register(
            "rejections",
            "Requests refused by the gateway, by reason",
            rejections.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures: unreachable, timed out, or cut",
            upstream_errors.clone(),
        );
        registry.register(
            "inflight_requests",
            "Proxy requests in flight",
            inflight.clone(),
        );
        let alerts = Family::<AlertLabels, Counter>::default();
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "alerts",
            "Alerts raised (one per detector, subject and cooldown window), by detector and severity",
            alerts.clone(),
        );
        let incidents = Family::<IncidentLabels, Counter>::default();
        registry.register(
            "incidents",
            "Incidents opened and escalated, by change and severity",
            incidents.clone(),
        );
        registry.register(
            "actions",
            "Response actions on keys, by kind and outcome",
            actions.clone(),
        );
        let safety = Arc::new(SafetyMetrics::register(&mut registry));
        let audit_failures = Counter::default();
        registry.register(
            "audit_write_failures",
            "Audit-log entries that could not be written (the change itself was made)",
            audit_failures.clone(),
        );
        let retention_deleted = Family::<TableLabels, Counter>::default();
        registry.register(
            "retention_deleted",
            "Store rows deleted because they were older than their retention",
            retention_deleted.clone(),
        );
        registry.register_collector(Box::new(EventPipelineCollector {
            stats,
            keys_cached,
            counters,
        }));
        Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            rejections,
            inflight,
            upstream_errors,
            safety,
            alerts,
            incidents,
            actions,
            audit_failures,
            retention_deleted,
        }
    }

    /// Adds detection's scrape-time counters (queue drops, webhook deliveries).
    pub fn register_detection(
        &mut self,
        dropped: Arc<AtomicU64>,
        webhook: Option<Arc<crate::control::webhook::WebhookStats>>,
    ) {
        self.registry
            .register_collector(Box::new(DetectionCollector { dropped, webhook }));
    }

    /// Adds the event journal's scrape-time counters and gauges.
    pub fn register_journal(&mut self, journal: stormwall_store::Journal) {
        self.registry
            .register_collector(Box::new(JournalCollector { journal }));
    }

    /// Adds the cloud-log follower's counters (per `[[logs]]` source).
    pub fn register_cloud_logs(&mut self, stats: Arc<crate::control::cloud_logs::FollowStats>) {
        self.registry
            .register_collector(Box::new(CloudLogsCollector { stats }));
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Labels of the safety screening counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `input` or `output`.
    pub stage: &'static str,
}

/// Labels of the safety action counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SafetyActionLabels {
    /// `input` or `output`.
    pub stage: &'static str,
    /// Category name.
    pub category: &'static str,
    /// `log`, `flag` or `block`.
    pub action: &'static str,
}

/// Labels of the classifier counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassifierLabels {
    /// Classifier name.
    pub classifier: Arc<str>,
    /// `ok`, `cached`, `timeout` or `error`.
    pub result: &'static str,
}

/// Content-safety counters: texts screened per stage, actions per stage and category,
/// classifier calls by result.
#[derive(Debug)]
pub struct SafetyMetrics {
    /// Texts screened, by stage.
    pub screened: Family<StageLabels, Counter>,
    /// Categories acted on (log, flag, block), by stage, category and action.
    pub actions: Family<SafetyActionLabels, Counter>,
    /// External classifier calls, by classifier and result.
    pub classifier_calls: Family<ClassifierLabels, Counter>,
}

impl SafetyMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = SafetyMetrics {
            screened: Family::default(),
            actions: Family::default(),
            classifier_calls: Family::default(),
        };
        registry.register(
            "safety_screened",
            "Texts screened by the content-safety stage, by stage (input, output)",
            m.screened.clone(),
        );
        registry.register(
            "safety_actions",
            "Categories the content policy acted on, by stage, category and action (log, flag, block)",
            m.actions.clone(),
        );
        registry.register(
            "safety_classifier_calls",
            "External classifier results, by classifier and result (ok, cached, timeout, error)",
            m.classifier_calls.clone(),
        );
        m
    }

    /// Counts one screened text.
    pub fn screened(&self, stage: &'static str) {
        self.screened.get_or_create(&StageLabels { stage }).inc();
    }

    /// Counts one category acted on.
    pub fn action(&self, stage: &'static str, category: &'static str, action: &'static str) {
        self.actions
            .get_or_create(&SafetyActionLabels {
                stage,
                category,
                action,
            })
            .inc();
    }

    /// Counts one classifier result.
    pub fn classifier_call(
        &self,
        classifier: &Arc<str>,
        outcome: &crate::data::classify::Outcome,
        cached: bool,
    ) {
        let result = match outcome {
            Ok(_) if cached => "cached",
            Ok(_) => "ok",
            Err(crate::data::classify::Failure::Timeout) => "timeout",
            Err(crate::data::classify::Failure::Error(_)) => "error",
        };
        self.classifier_calls
            .get_or_create(&ClassifierLabels {
                classifier: Arc::clone(classifier),
                result,
            })
            .inc();
    }
}
