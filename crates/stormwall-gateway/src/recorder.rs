//! Turns each request into exactly one `UsageEvent`: started on arrival, filled in by the
//! stages, and handed to the event sink when the response ends — or when the request is
//! dropped half-way because the client went away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use stormwall_types::{RejectReason, StreamOutcome, UsageEvent};

use crate::error::{ProxyError, error_code};
use crate::metrics::{EndpointLabels, ReasonLabels, RequestLabels};
use crate::state::AppState;

/// Status recorded when the client closed the connection before the response (nginx's 499).
pub const CLIENT_CLOSED: u16 = 499;

/// The event of one request in flight.
pub struct Recorder {
    state: Arc<AppState>,
    event: UsageEvent,
    started: Instant,
    done: bool,
}

impl Recorder {
    /// Starts an event for a request that just arrived.
    pub fn start(
        state: &Arc<AppState>,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Self {
        let mut event = UsageEvent::new(
            event_id(),
            time::OffsetDateTime::now_utc(),
            peer.ip(),
            method,
            path,
        );
        crate::client::describe_client(
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

    /// Records a failure and finishes.
    pub fn fail(mut self, err: &ProxyError, status: u16) {
        if let Some(reason) = err.reject_reason() {
            self.event.deny(reason);
        }
        self.event.error_code = Some(error_code(err).to_owned());
        self.close(status);
    }

    /// Finishes the event with the client's status and sends it to the sink.
    pub fn finish(mut self, status: u16) {
        self.close(status);
    }

    fn close(&mut self, status: u16) {
        if self.done {
            return;
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
        if let Some(d) = &self.state.detection {
            d.offer(&event);
        }
        self.state.sink.record(event);
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
            self.close(CLIENT_CLOSED);
        }
    }
}

/// A UUIDv7 event id, strictly increasing within the process (so events sort in arrival
/// order even within one millisecond): 48 bits of milliseconds, a 12-bit sequence, and 62
/// random bits from a per-thread generator seeded once from the OS — no system call on the
/// request path; ids need uniqueness and order, not secrecy.
pub fn event_id() -> String {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            // A failed OS random source still leaves thread-distinct, time-varying seeds.
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed) ^ (std::ptr::addr_of!(seed) as u64) ^ now_nanos()
        });
    }
    let now = (now_nanos() / 1_000_000) << 12;
    // ms << 12 | sequence, never going backwards (a clock step back keeps counting up).
    let stamp = match LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
        Some(now.max(last + 1))
    }) {
        Ok(last) | Err(last) => now.max(last + 1),
    };
    let random = STATE.with(splitmix);
    let mut bytes = [0u8; 10];
    bytes[..2].copy_from_slice(&((stamp & 0x0fff) as u16).to_be_bytes());
    bytes[2..].copy_from_slice(&random.to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(stamp >> 12, &bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn splitmix(state: &std::cell::Cell<u64>) -> u64 {
    let x = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
    state.set(x);
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Marks a rejection on a recorder's event (helper for stages).
pub fn deny(rec: &mut Recorder, reason: RejectReason) -> ProxyError {
    rec.event().deny(reason);
    ProxyError::reject(reason)
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_ids_are_unique_and_time_ordered() {
        let ids: Vec<String> = (0..5000).map(|_| super::event_id()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids increase even within a millisecond"
        );
        let a = &ids[0];
        let many: std::collections::HashSet<_> = (0..1000).map(|_| super::event_id()).collect();
        assert_eq!(many.len(), 1000);
        assert_eq!(uuid::Uuid::parse_str(a).unwrap().get_version_num(), 7);
    }
}
