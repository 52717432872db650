//! Harm accounting: what an abuse cost and what it produced — requests, tokens, images,
//! estimated cost, time span and content-policy hits by category — the figures a victim
//! notice or a complaint needs. Accumulated event by event, merged across keys and networks.

use std::collections::BTreeMap;

use stormwall_types::pricing::Pricing;
use stormwall_types::safety::Action;
use stormwall_types::{Decision, UsageEvent, VerdictCategory};
use time::OffsetDateTime;

/// Totals over a set of events.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Harm {
    /// Requests (refused ones included).
    pub requests: u64,
    /// Requests the gateway refused.
    pub denied: u64,
    /// Input tokens (reported, else estimated).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Images requested on allowed requests.
    pub images: u64,
    /// Estimated cost in billionths of a US dollar: the event's recorded cost, or the price
    /// table's for allowed events recorded without one. Whole numbers, so a total is the
    /// same however the events were split between runs.
    pub cost_nanousd: u64,
    /// First request.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub first: Option<OffsetDateTime>,
    /// Last request.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last: Option<OffsetDateTime>,
    /// Content-policy verdicts that flagged or blocked, by category.
    pub policy_hits: BTreeMap<String, u64>,
}

impl Harm {
    /// Adds one event.
    pub fn add_event(&mut self, e: &UsageEvent, pricing: &Pricing) {
        self.requests += 1;
        let allowed = e.decision == Decision::Allow;
        if !allowed {
            self.denied += 1;
        }
        self.input_tokens += e.input_tokens.unwrap_or(e.estimated_input_tokens);
        self.output_tokens += e.output_tokens.unwrap_or(0);
        if allowed {
            let images = e.images.unwrap_or(0);
            self.images += u64::from(images);
            let cost = if e.cost_usd > 0.0 {
                e.cost_usd
            } else if let Some(model) = e.model.as_deref() {
                pricing.cost(
                    model,
                    e.input_tokens.unwrap_or(0),
                    e.output_tokens.unwrap_or(0),
                    images,
                )
            } else {
                0.0
            };
            if cost.is_finite() && cost > 0.0 {
                // Saturating float-to-int cast: an absurd price cannot wrap.
                self.cost_nanousd = self
                    .cost_nanousd
                    .saturating_add((cost * 1e9).round() as u64);
            }
        }
        for v in &e.safety {
            if matches!(v.action, Action::Flag | Action::Block)
                && matches!(v.category, VerdictCategory::Content(_))
            {
                *self
                    .policy_hits
                    .entry(v.category.as_str().to_owned())
                    .or_default() += 1;
            }
        }
        self.first = Some(self.first.map_or(e.timestamp, |f| f.min(e.timestamp)));
        self.last = Some(self.last.map_or(e.timestamp, |l| l.max(e.timestamp)));
    }

    /// Adds another total to this one.
    pub fn merge(&mut self, o: &Harm) {
        self.requests += o.requests;
        self.denied += o.denied;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.images += o.images;
        self.cost_nanousd = self.cost_nanousd.saturating_add(o.cost_nanousd);
        for (k, v) in &o.policy_hits {
            *self.policy_hits.entry(k.clone()).or_default() += v;
        }
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = match (self.last, o.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Estimated cost in US dollars.
    pub fn cost_usd(&self) -> f64 {
        self.cost_nanousd as f64 / 1e9
    }

    /// Hours between the first and last request (0 when fewer than two).
    pub fn span_hours(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) => (b - a).as_seconds_f64() / 3600.0,
            _ => 0.0,
        }
    }

    /// All content-policy hits.
    pub fn policy_hit_total(&self) -> u64 {
        self.policy_hits.values().sum()
    }
}
