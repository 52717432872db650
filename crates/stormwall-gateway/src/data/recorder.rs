//! Turns each request into exactly one `UsageEvent`: started on arrival, filled in by the
//! stages, and handed to the event sink when the response ends — or when the request is
//! dropped half-way because the client went away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::HeaderMap;
use stormwall_store::Durable;
use stormwall_types::{StreamOutcome, UsageEvent};

use super::DataPlane;
use crate::error::{ProxyError, error_code};
use crate::metrics::{EndpointLabels, ReasonLabels, RequestLabels};

/// Status recorded when the client closed the connection before the response (nginx's 499).
pub const CLIENT_CLOSED: u16 = 499;

/// The event of one request in flight.
pub struct Recorder {
    state: Arc<DataPlane>,
    event: UsageEvent,
    started: Instant,
    done: bool,
}

impl Recorder {
    /// Starts an event for a request that just arrived.
    pub fn start(
        state: &Arc<DataPlane>,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Self {
        let mut event = UsageEvent::new(
            crate::ids::event_id(),
            time::OffsetDateTime::now_utc(),
            peer.ip(),
            method,
            path,
        );
        crate::data::client::describe_client(
            &mut event,
            peer,
            headers,
            &state.trusted_proxies,
            &state.ipdb,
        );
        state.metrics.inflight.inc();
        Self {
            state: Arc::clone(state),
            event,
            started: Instant::now(),
            done: false,
        }
    }

    /// The event being filled in.
    pub fn event(&mut self) -> &mut UsageEvent {
        &mut self.event
    }

    /// Moves the open event into a new recorder (for a relay that outlives the handler);
    /// this one is left finished, so it records nothing.
    pub fn take(&mut self) -> Recorder {
        let blank = UsageEvent::new(
            String::new(),
            self.event.timestamp,
            self.event.source_ip,
            "",
            "",
        );
        let moved = Recorder {
            state: Arc::clone(&self.state),
            event: std::mem::replace(&mut self.event, blank),
            started: self.started,
            done: self.done,
        };
        self.done = true;
        moved
    }

    /// The event id (also sent to the client as `x-request-id`).
    pub fn id(&self) -> &str {
        &self.event.id
    }

    /// Records why the client was refused (reason and error code), once, without finishing:
    /// every refusal is recorded here, whether the handler returns it or a later stage
    /// (an output block) answers it.
    pub fn refuse(&mut self, err: &ProxyError) {
        if let Some(reason) = err.reject_reason() {
            self.event.deny(reason);
        }
        self.event.error_code = Some(error_code(err).to_owned());
    }

    /// Records a failure and finishes; the error body's last byte waits for the returned
    /// [`Durable`] (see [`Recorder::finish`]).
    #[must_use = "the answer's last byte waits for the event to be journaled"]
    pub fn fail(mut self, err: &ProxyError, status: u16) -> Durable {
        self.refuse(err);
        self.close(status)
    }

    /// Finishes the event with the client's status and sends it to the journal (or the
    /// sink); the answer's last byte waits for the returned [`Durable`].
    #[must_use = "the answer's last byte waits for the event to be journaled"]
    pub fn finish(mut self, status: u16) -> Durable {
        self.close(status)
    }

    fn close(&mut self, status: u16) -> Durable {
        if self.done {
            return Durable::ready();
        }
        self.done = true;
        let blank = UsageEvent::new(
            String::new(),
            self.event.timestamp,
            self.event.source_ip,
            "",
            "",
        );
        let mut event = std::mem::replace(&mut self.event, blank);
        event.status = status;
        let elapsed = self.started.elapsed();
        event.duration_ms = elapsed.as_secs_f64() * 1e3;
        let m = &self.state.metrics;
        let endpoint = event.endpoint.map_or("unknown", |e| e.as_str());
        m.inflight.dec();
        m.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
        m.request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
        if let Some(reason) = event.reject_reason {
            m.rejections
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .inc();
        }
        // The journal (which keeps the event to ship it) or the sink owns the event;
        // detection gets a copy.
        if let Some(tap) = &self.state.tap {
            tap.offer(event.clone());
        }
        match &self.state.journal {
            Some(journal) => journal.append(event),
            None => {
                self.state.sink.record(event);
                Durable::ready()
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            // The handler was dropped mid-way: the client disconnected before a response.
            self.event
                .stream_outcome
                .get_or_insert(StreamOutcome::ClientDisconnected);
            self.event
                .error_code
                .get_or_insert_with(|| "client_closed_request".to_owned());
            // Nobody is left to answer: the event is journaled without anyone waiting.
            drop(self.close(CLIENT_CLOSED));
        }
    }
}

/// Where closed events go besides the store: the detection task's queue. Offering never
/// waits: a full queue drops the event for detection and counts it, so detection can never
/// slow a request down. The control plane makes the tap and owns the receiving side.
#[derive(Debug, Clone)]
pub struct EventTap {
    tx: tokio::sync::mpsc::Sender<UsageEvent>,
    dropped: Arc<AtomicU64>,
}

impl EventTap {
    /// A tap into `tx`, counting what does not fit in `dropped`.
    pub fn new(tx: tokio::sync::mpsc::Sender<UsageEvent>, dropped: Arc<AtomicU64>) -> Self {
        Self { tx, dropped }
    }

    /// Offers a closed event.
    pub fn offer(&self, event: UsageEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
