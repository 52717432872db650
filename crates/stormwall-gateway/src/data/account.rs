//! The account stage: when a response ends — whole, streamed to the end, cut, or
//! abandoned by the client — settle the admission with the real tokens and cost, fill in
//! the event's usage and outcome, and finish the event once the flag-mode classifiers have
//! annotated it. [`StreamAccount`] is how a relayed stream reaches it.

use std::sync::Arc;

use http::StatusCode;
use stormwall_store::Durable;
use stormwall_types::{RejectReason, SafetyVerdict, StreamOutcome};

use super::DataPlane;
use crate::data::admit::Grant;
use crate::data::body::{StreamEnd, StreamObserver, Usage};
use crate::data::forward::Call;
use crate::data::recorder::Recorder;
use crate::data::safety::StreamGuard;
use crate::error::ProxyError;

/// Settles one request when its response is complete.
pub struct Finisher {
    state: Arc<DataPlane>,
    rec: Recorder,
    admission: Grant,
    model: String,
    /// Images to charge for, when the request asked for images.
    pub images: Option<u32>,
    estimated_input: u64,
    success: bool,
    status: u16,
    /// Flag-mode classifiers still annotating the event.
    pending: Option<tokio::task::JoinHandle<Vec<SafetyVerdict>>>,
}

impl Finisher {
    /// Takes over a forwarded request's event and admission; `status` is the upstream's.
    pub fn new(
        state: &Arc<DataPlane>,
        rec: Recorder,
        call: Call,
        success: bool,
        status: StatusCode,
    ) -> Self {
        Self {
            state: Arc::clone(state),
            rec,
            admission: call.admission,
            model: call.model,
            images: call.parsed.images,
            estimated_input: call.parsed.estimated_input_tokens,
            success,
            status: status.as_u16(),
            pending: call.safety.and_then(|s| s.pending),
        }
    }

    /// The client gets `err` (with `status`) instead of the answer: recorded once, here.
    pub fn refuse(&mut self, err: &ProxyError, status: StatusCode) {
        self.rec.refuse(err);
        self.status = status.as_u16();
    }

    fn stream_ended(self, end: StreamEnd) -> Durable {
        let usage = end.scanner.usage.or_else(|| {
            // No usage chunk (the client did not ask for one): count content events, about
            // one token each, so TPM and spend still move.
            Some(Usage {
                prompt_tokens: Some(self.estimated_input),
                completion_tokens: Some(end.scanner.data_events.saturating_sub(2)),
                ..Usage::default()
            })
            .filter(|_| self.success)
        });
        let model = end.scanner.model;
        self.settle(usage, model, Some(end.outcome))
    }

    /// Settles the admission with the usage the answer reported and finishes the event;
    /// the answer's last byte waits for the returned [`Durable`].
    #[must_use = "the answer's last byte waits for the event to be journaled"]
    pub fn settle(
        mut self,
        usage: Option<Usage>,
        response_model: Option<String>,
        outcome: Option<StreamOutcome>,
    ) -> Durable {
        let input = usage.and_then(|u| u.input());
        let output = usage.and_then(|u| u.output());
        let images = if self.success {
            self.images.unwrap_or(0)
        } else {
            0
        };
        let cost = if self.success {
            self.state
                .pricing
                .cost(&self.model, input.unwrap_or(0), output.unwrap_or(0), images)
        } else {
            0.0
        };
        let total = match (input, output) {
            (None, None) => None,
            (i, o) => Some(i.unwrap_or(0) + o.unwrap_or(0)),
        };
        self.admission.settle(total, cost);
        let e = self.rec.event();
        e.input_tokens = input;
        e.output_tokens = output;
        e.cost_usd = cost;
        e.response_model = response_model;
        e.stream_outcome = outcome;
        if matches!(
            outcome,
            Some(StreamOutcome::UpstreamCut | StreamOutcome::IdleTimeout)
        ) {
            e.error_code = Some("upstream_stream_interrupted".to_owned());
        }
        // The request was admitted with a serving key, so the decision stays `allow`; the
        // outcome says the gateway cut it, and the code is what the client's stream ended with.
        if let Some(err) = outcome.and_then(crate::error::key_stopped_error) {
            e.error_code = Some(crate::error::error_code(&err).to_owned());
        }
        let status = if outcome == Some(StreamOutcome::ClientDisconnected) {
            crate::data::recorder::CLIENT_CLOSED
        } else {
            self.status
        };
        finish_event(self.rec, status, self.pending)
    }
}

/// Watches a relayed stream for its request: screens the output as it passes (cutting the
/// stream on a block) and settles the request when the stream ends.
pub struct StreamAccount {
    finisher: Option<Finisher>,
    guard: Option<StreamGuard>,
}

impl StreamAccount {
    /// Accounts for a stream, screening it with `guard` when outputs are screened.
    pub fn new(finisher: Finisher, guard: Option<StreamGuard>) -> Self {
        Self {
            finisher: Some(finisher),
            guard,
        }
    }
}

impl StreamObserver for StreamAccount {
    fn wants_text(&self) -> bool {
        self.guard.is_some()
    }

    fn text(&mut self, text: &str) -> Option<StreamOutcome> {
        let guard = self.guard.as_mut()?;
        guard.push(text).then_some(StreamOutcome::ContentBlocked)
    }

    fn ended(&mut self, end: StreamEnd) -> Durable {
        let Some(mut finisher) = self.finisher.take() else {
            return Durable::ready();
        };
        if let Some(guard) = &mut self.guard {
            let (verdict, notes) = guard.finish();
            let output = stormwall_types::SafetyStage::Output;
            crate::data::safety::count(&finisher.state.metrics, output, &verdict);
            finisher.rec.event().safety.extend(notes);
            if end.outcome == StreamOutcome::ContentBlocked {
                finisher
                    .rec
                    .refuse(&ProxyError::reject(RejectReason::ContentPolicy));
            }
        }
        finisher.stream_ended(end)
    }
}

/// Finishes an event once the flag-mode classifiers have annotated it. Usually they are
/// done by the time the response is; otherwise the event waits for them (each is bounded
/// by its timeout) off the response path; the answer's last byte then waits for them too,
/// since it waits for the finished event to be journaled.
#[allow(clippy::disallowed_methods)] // Handle::spawn: bounded by the classifiers' timeouts; the Recorder's Drop records the event if the runtime ends first
fn finish_event(
    mut rec: Recorder,
    status: u16,
    pending: Option<tokio::task::JoinHandle<Vec<SafetyVerdict>>>,
) -> Durable {
    use futures_util::FutureExt;
    let Some(handle) = pending else {
        return rec.finish(status);
    };
    if handle.is_finished() {
        if let Some(Ok(notes)) = handle.now_or_never() {
            rec.event().safety.extend(notes);
        }
        return rec.finish(status);
    }
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            rt.spawn(async move {
                if let Ok(notes) = handle.await {
                    rec.event().safety.extend(notes);
                }
                let _ = tx.send(rec.finish(status).await);
            });
            Durable::after(rx)
        }
        Err(_) => {
            handle.abort();
            rec.finish(status)
        }
    }
}
