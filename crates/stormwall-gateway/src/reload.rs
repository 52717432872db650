//! When a file-backed setting is read again: on a timer and on SIGHUP, the one loop behind
//! every reloading task (the proxy's TLS certificate, the IP intelligence), so both answer a
//! signal and a shutdown alike.

use std::time::Duration;

use tokio::sync::watch;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The polling interval came round: reload if the files changed.
    Timer,
    /// The process got SIGHUP: reload now.
    Hangup,
}

/// The timer and the SIGHUP stream of one reloading task.
pub struct Triggers {
    every_secs: u64,
    tick: tokio::time::Interval,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Triggers {
    /// Polls every `every_secs` (0: never; SIGHUP still counts). Needs a Tokio runtime.
    pub fn new(every_secs: u64) -> Self {
        // The first look one period from now: what was just loaded needs no second one.
        let period = Duration::from_secs(every_secs.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            every_secs,
            tick,
            #[cfg(unix)]
            hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    /// The next trigger, or `None` once `stop` changes (shutdown).
    pub async fn next(&mut self, stop: &mut watch::Receiver<bool>) -> Option<Trigger> {
        #[cfg(unix)]
        let hangup = async {
            match self.hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = self.tick.tick(), if self.every_secs > 0 => Some(Trigger::Timer),
            Some(()) = hangup => Some(Trigger::Hangup),
            _ = stop.changed() => None,
        }
    }
}
