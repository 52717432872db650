//! `SseScanner::feed` with the input split at arbitrary points: never panics, and finds the
//! same usage, model and event count however the stream is chunked.
//!
//! Input layout: byte 0 = number of split points (mod 16), then that many bytes of split
//! offsets (each taken mod the stream length), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormwall_gateway::body::{SseScanner, usage_in_json};

/// The scanner's partial-event cap; beyond it, chunking legitimately changes the result.
const MAX_PARTIAL_EVENT: usize = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n % 16) as usize;
    if rest.len() < n {
        return;
    }
    let (cuts, stream) = rest.split_at(n);

    let mut whole = SseScanner::default();
    whole.feed(stream);

    let mut offsets: Vec<usize> = cuts
        .iter()
        .map(|&c| if stream.is_empty() { 0 } else { c as usize % (stream.len() + 1) })
        .collect();
    offsets.sort_unstable();
    let mut split = SseScanner::default();
    let mut at = 0;
    for o in offsets {
        split.feed(&stream[at..o]); // empty chunks included on purpose
        at = o;
    }
    split.feed(&stream[at..]);

    if stream.len() <= MAX_PARTIAL_EVENT {
        assert_eq!(whole.data_events, split.data_events, "data_events differ");
        assert_eq!(whole.usage, split.usage, "usage differs");
        assert_eq!(whole.model, split.model, "model differs");
    }

    // Byte-at-a-time is the harshest chunking.
    if stream.len() <= 512 {
        let mut bytewise = SseScanner::default();
        for b in stream.chunks(1) {
            bytewise.feed(b);
        }
        assert_eq!(whole.data_events, bytewise.data_events);
        assert_eq!(whole.usage, bytewise.usage);
        assert_eq!(whole.model, bytewise.model);
    }

    let _ = usage_in_json(stream);
});
