//! Failed sign-ins, limited, pure: per client address (an IPv6 address counts by its /64,
//! which one host usually holds whole) and in all. Past either limit, sign-in is refused
//! without looking at the token until the window ends, so guessing cannot go on and the
//! audit log receives a bounded number of entries however many attempts arrive.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses tracked at once; past it, entries whose window ended are dropped, and an
/// address that still finds no room counts toward the global limit only.
pub const MAX_TRACKED: usize = 4_096;

/// The limits: failures allowed per address and in all within one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failures one address may make per window (0: no per-address limit).
    pub per_address: u32,
    /// Failures all addresses together may make per window (0: no global limit).
    pub total: u32,
    /// The window, and how long a lock lasts.
    pub window: Duration,
}

/// A lock that a failure just started: which one, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// This address may not sign in for the duration.
    Address(Duration),
    /// Nobody may sign in for the duration.
    Everyone(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

impl Count {
    fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            since: now,
            locked_until: None,
        }
    }

    /// Starts a new window when the current one (and any lock) ended.
    fn roll(&mut self, now: Instant, window: Duration) {
        let lock_over = self.locked_until.is_none_or(|t| now >= t);
        if lock_over && now.duration_since(self.since) >= window {
            *self = Count::new(now);
        }
        if self.locked_until.is_some_and(|t| now >= t) {
            self.locked_until = None;
        }
    }

    /// Counts a failure; returns the lock's length when this one reached `limit`.
    fn fail(&mut self, now: Instant, limit: u32, window: Duration) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        if limit > 0 && self.failures >= limit && self.locked_until.is_none() {
            self.locked_until = Some(now + window);
            return Some(window);
        }
        None
    }

    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|t| *t > now)
            .map(|t| t.duration_since(now))
    }
}

struct State {
    total: Count,
    by_address: HashMap<IpAddr, Count>,
}

/// The failed sign-ins of the last window, by address and in all.
pub struct SignInLimiter {
    limits: Limits,
    state: Mutex<State>,
}

/// The address failures are counted under: IPv4 as is, IPv6 by its /64.
pub fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl SignInLimiter {
    /// A limiter with no failure recorded.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            state: Mutex::new(State {
                total: Count::new(now),
                by_address: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counts half-changed: recover.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(wait)` while `ip` (or everyone) may not sign in: the token is not to be checked.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let window = self.limits.window;
        let mut st = self.lock();
        st.total.roll(now, window);
        if let Some(wait) = st.total.locked(now) {
            return Err(wait);
        }
        if let Some(c) = st.by_address.get_mut(&bucket_of(ip)) {
            c.roll(now, window);
            if let Some(wait) = c.locked(now) {
                return Err(wait);
            }
        }
        Ok(())
    }

    /// Records a failed sign-in from `ip`; returns the lock it started, if it started one
    /// (the global lock first, when both start at once).
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<Lock> {
        let Limits {
            per_address,
            total,
            window,
        } = self.limits;
        let mut st = self.lock();
        st.total.roll(now, window);
        let everyone = st.total.fail(now, total, window).map(Lock::Everyone);
        let key = bucket_of(ip);
        if !st.by_address.contains_key(&key) && st.by_address.len() >= MAX_TRACKED {
            st.by_address.retain(|_, c| {
                c.locked_until.is_some_and(|t| t > now) || now.duration_since(c.since) < window
            });
        }
        let address = if st.by_address.len() < MAX_TRACKED || st.by_address.contains_key(&key) {
            let c = st.by_address.entry(key).or_insert_with(|| Count::new(now));
            c.roll(now, window);
            c.fail(now, per_address, window).map(Lock::Address)
        } else {
            None
        };
        everyone.or(address)
    }

    /// A sign-in from `ip` succeeded: its failures are forgotten.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().by_address.remove(&bucket_of(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    fn limiter(per_address: u32, total: u32, now: Instant) -> SignInLimiter {
        SignInLimiter::new(
            Limits {
                per_address,
                total,
                window: WINDOW,
            },
            now,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_locked_at_its_limit_until_the_window_ends() {
        let t = Instant::now();
        let l = limiter(3, 100, t);
        let a = ip("192.0.2.1");
        for i in 0..2 {
            assert_eq!(l.check(a, t), Ok(()));
            assert_eq!(l.failed(a, t + Duration::from_secs(i)), None);
        }
        assert_eq!(
            l.failed(a, t + Duration::from_secs(2)),
            Some(Lock::Address(WINDOW))
        );
        assert!(l.check(a, t + Duration::from_secs(3)).is_err());
        assert_eq!(
            l.check(ip("192.0.2.2"), t + Duration::from_secs(3)),
            Ok(()),
            "another address is not locked"
        );
        // Further failures while locked start no second lock.
        assert_eq!(l.failed(a, t + Duration::from_secs(4)), None);
        assert_eq!(l.check(a, t + Duration::from_secs(2) + WINDOW), Ok(()));
        assert_eq!(l.failed(a, t + Duration::from_secs(3) + WINDOW), None);
    }

    #[test]
    fn failures_from_many_addresses_lock_everyone() {
        let t = Instant::now();
        let l = limiter(5, 4, t);
        for i in 0..3 {
            assert_eq!(l.failed(ip(&format!("198.51.100.{i}")), t), None);
        }
        assert_eq!(
            l.failed(ip("198.51.100.9"), t),
            Some(Lock::Everyone(WINDOW))
        );
        assert!(
            l.check(ip("203.0.113.1"), t + Duration::from_secs(1))
                .is_err()
        );
        assert_eq!(l.check(ip("203.0.113.1"), t + WINDOW), Ok(()));
    }

    #[test]
    fn a_success_clears_the_address_and_ipv6_counts_by_64() {
        let t = Instant::now();
        let l = limiter(2, 0, t);
        assert_eq!(l.failed(ip("2001:db8:1:2::1"), t), None);
        assert_eq!(
            l.failed(ip("2001:db8:1:2::ffff"), t),
            Some(Lock::Address(WINDOW)),
            "one /64 is one address"
        );
        assert!(l.check(ip("2001:db8:1:2::7"), t).is_err());
        assert_eq!(l.check(ip("2001:db8:1:3::1"), t), Ok(()));
        let b = ip("192.0.2.7");
        assert_eq!(l.failed(b, t), None);
        l.succeeded(b);
        assert_eq!(l.failed(b, t), None, "the count started again");
        assert_eq!(bucket_of(ip("::ffff:192.0.2.7")), b);
    }

    #[test]
    fn zero_means_no_limit() {
        let t = Instant::now();
        let l = limiter(0, 0, t);
        for _ in 0..100 {
            assert_eq!(l.failed(ip("192.0.2.1"), t), None);
        }
        assert_eq!(l.check(ip("192.0.2.1"), t), Ok(()));
    }
}
