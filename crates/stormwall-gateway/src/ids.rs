//! Event ids: UUIDv7 text, strictly increasing within the process, made without a system
//! call on the request path. Both planes stamp what they record with them.

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
