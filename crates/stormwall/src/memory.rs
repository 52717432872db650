//! Handing freed heap back to the system while the gateway serves.
//!
//! glibc keeps what a thread freed in that thread's arena for reuse and returns pages only
//! from the top of a heap, so after a burst (a key reload, a full event queue draining, an
//! hour's baselines being learned) the gateway's resident size stays at its peak although
//! the memory is free: the 10-minute soak climbed to ~150 MiB with ~25 MB live (bench/README.md,
//! "Memory"). `malloc_trim(0)` returns the free pages of every arena; run on a timer it costs
//! a walk of the arenas (well under a millisecond here) and a page fault for each page later
//! reused.

use std::time::Duration;

/// How often the allocator is asked for its free pages.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trims the allocator every [`TRIM_EVERY`] on the blocking pool; the caller aborts the
/// task at shutdown.
#[allow(clippy::disallowed_methods)] // joined: `cmd_serve` aborts it after shutdown
pub fn spawn_trimmer() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Awaited, and a trim takes well under a millisecond. A failed join only means
            // the runtime is shutting down.
            #[allow(clippy::disallowed_methods)]
            if tokio::task::spawn_blocking(release_free_heap)
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// Asks glibc to return the free pages of every arena; whether it released any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_heap() -> bool {
    // SAFETY: malloc_trim takes no pointers and touches only glibc's own free lists, under
    // the locks every allocation takes.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Elsewhere (musl, macOS) the allocator returns free memory itself: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_heap() -> bool {
    false
}
