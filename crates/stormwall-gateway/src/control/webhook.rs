//! Incident (or, with `[alerts] notify = "alerts"`, alert and action) notifications to an
//! operator's webhook: JSON bodies signed with
//! HMAC-SHA256 (`x-stormwall-signature: t=<unix seconds>,v1=<hex>` over `"<t>.<body>"`, so a
//! receiver can reject replays and forgeries), delivered off the request path and retried
//! with exponential backoff when the receiver fails or is unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use stormwall_store::ActionRecord;
use stormwall_types::{Alert, Severity};
use tokio::sync::{Semaphore, mpsc};

use crate::control::alerts::AlertsConfig;
use crate::upstream::HttpClient;

/// Deliveries waiting to be sent; past this, new ones are dropped (counted).
const QUEUE: usize = 1_024;
/// Deliveries in flight at once (each may be backing off).
const PARALLEL: usize = 8;
/// Most of a receiver's reply read (it is discarded).
const MAX_REPLY: usize = 64 * 1024;
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why the webhook cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    /// The URL does not parse or is not http(s).
    #[error("[alerts] webhook_url must be an http:// or https:// URL")]
    Url,
    /// The secret's environment variable is unset or empty.
    #[error("[alerts] webhook_secret_env names {0}, which is not set")]
    Secret(String),
}

/// Delivery counters, for the metrics.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Deliveries the receiver accepted.
    pub delivered: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Deliveries given up after the last attempt or a permanent refusal.
    pub failed: AtomicU64,
    /// Deliveries dropped because the queue was full.
    pub dropped: AtomicU64,
}

struct Delivery {
    kind: &'static str,
    body: Bytes,
}

/// The sending side, held by the gateway state.
#[derive(Debug)]
pub struct Webhook {
    tx: mpsc::Sender<Delivery>,
    min_severity: Severity,
    stats: Arc<WebhookStats>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)
    }
}

/// Everything a delivery task needs.
struct Target {
    client: HttpClient,
    url: http::Uri,
    secret: SecretString,
    timeout: Duration,
    max_attempts: u32,
    first_backoff: Duration,
    stats: Arc<WebhookStats>,
}

/// The webhook's URL and signing secret from `[alerts]` (`None` without a URL): what
/// `stormwall config check` validates and [`Webhook::start`] uses.
pub fn parse_config(
    config: &AlertsConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(http::Uri, SecretString)>, WebhookConfigError> {
    let Some(url) = &config.webhook_url else {
        return Ok(None);
    };
    let url: http::Uri = url.parse().map_err(|_| WebhookConfigError::Url)?;
    if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
        return Err(WebhookConfigError::Url);
    }
    let secret = match &config.webhook_secret_env {
        Some(name) => env(name)
            .filter(|s| !s.is_empty())
            .map(SecretString::from)
            .ok_or_else(|| WebhookConfigError::Secret(name.clone()))?,
        None => SecretString::from(String::new()),
    };
    Ok(Some((url, secret)))
}

impl Webhook {
    /// Starts the delivery task when `[alerts] webhook_url` is set.
    #[allow(clippy::disallowed_methods)] // delivery task lives as long as the gateway state
    pub fn start(
        config: &AlertsConfig,
        client: HttpClient,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, WebhookConfigError> {
        let Some((url, secret)) = parse_config(config, env)? else {
            return Ok(None);
        };
        let stats = Arc::new(WebhookStats::default());
        let target = Arc::new(Target {
            client,
            url,
            secret,
            timeout: Duration::from_millis(config.webhook_timeout_ms.max(1)),
            max_attempts: config.webhook_max_attempts.max(1),
            first_backoff: Duration::from_millis(config.webhook_backoff_ms.max(1)),
            stats: Arc::clone(&stats),
        });
        let (tx, mut rx) = mpsc::channel::<Delivery>(QUEUE);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(PARALLEL));
            while let Some(d) = rx.recv().await {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let target = Arc::clone(&target);
                tokio::spawn(async move {
                    target.deliver(d).await;
                    drop(permit);
                });
            }
        });
        Ok(Some(Self {
            tx,
            min_severity: config.webhook_min_severity,
            stats,
        }))
    }

    /// Delivery counters.
    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.stats
    }

    /// Queues an alert notification (if severe enough).
    pub fn send_alert(&self, alert: &Alert) {
        if alert.severity < self.min_severity {
            return;
        }
        self.queue(
            "alert",
            &serde_json::json!({ "type": "alert", "alert": alert }),
        );
    }

    /// Queues an incident notification (opened or escalated), if the incident is severe
    /// enough: `{"type":"incident","change":…,"incident":…}`.
    pub fn send_incident(&self, change: &'static str, stored: &stormwall_store::StoredIncident) {
        if stored.incident.severity < self.min_severity {
            return;
        }
        self.queue(
            "incident",
            &serde_json::json!({ "type": "incident", "change": change, "incident": stored }),
        );
    }

    /// Queues an action notification.
    pub fn send_action(&self, record: &ActionRecord) {
        self.queue(
            "action",
            &serde_json::json!({ "type": "action", "action": record }),
        );
    }

    fn queue(&self, kind: &'static str, body: &serde_json::Value) {
        let Ok(body) = serde_json::to_vec(body) else {
            return;
        };
        let d = Delivery {
            kind,
            body: Bytes::from(body),
        };
        if self.tx.try_send(d).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(kind, "webhook queue full; notification dropped");
        }
    }
}

/// `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &[u8], unix: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(unix.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = format!("t={unix},v1=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    Retry(String),
    GiveUp(String),
}

impl Target {
    async fn deliver(&self, d: Delivery) {
        let delivery_id = crate::ids::event_id();
        let mut backoff = self.first_backoff;
        for attempt in 1..=self.max_attempts {
            match self.attempt(&d, &delivery_id).await {
                Attempt::Delivered => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Attempt::GiveUp(why) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(kind = d.kind, %delivery_id, reason = %why, "webhook refused the notification; not retrying");
                    return;
                }
                Attempt::Retry(why) if attempt < self.max_attempts => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(kind = d.kind, %delivery_id, attempt, reason = %why, "webhook delivery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Attempt::Retry(why) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(kind = d.kind, %delivery_id, attempts = attempt, reason = %why, "webhook delivery failed; giving up");
                }
            }
        }
    }

    async fn attempt(&self, d: &Delivery, delivery_id: &str) -> Attempt {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let sig = signature(self.secret.expose_secret().as_bytes(), now, &d.body);
        let req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "stormwall-webhook")
            .header("x-stormwall-event", d.kind)
            .header("x-stormwall-delivery", delivery_id)
            .header("x-stormwall-signature", sig)
            .body(Full::new(d.body.clone()));
        let Ok(req) = req else {
            return Attempt::GiveUp("cannot build the request".into());
        };
        let call = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            // Read the (small) body so the connection can be reused; cap what we accept.
            let _ = crate::http::read_capped(resp.into_body(), MAX_REPLY, None).await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Attempt::Retry("timed out".into()),
            Ok(Err(e)) => Attempt::Retry(format!("unreachable: {e}")),
            Ok(Ok(s)) if s.is_success() => Attempt::Delivered,
            Ok(Ok(s)) if s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429 => {
                Attempt::Retry(format!("status {}", s.as_u16()))
            }
            Ok(Ok(s)) => Attempt::GiveUp(format!("status {}", s.as_u16())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Expected value from Python's hmac module, as a receiver would compute it.
        assert_eq!(
            signature(b"whsec", 1_700_000_000, br#"{"type":"alert"}"#),
            "t=1700000000,v1=a174aa77016e8bcbfae687bbb500c85bc436039cbcb4edd5ba54567455268e55"
        );
        assert_ne!(signature(b"whsec", 1, b"x"), signature(b"whsed", 1, b"x"));
    }
}
