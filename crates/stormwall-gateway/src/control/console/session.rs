//! The console's sessions, pure: a table of random session ids held in memory (the cookie
//! carries the id, never a token), each with its role, its CSRF token, its expiry and a
//! one-time message (a new key's secret is handed over through it exactly once).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

/// Most sessions held at once; past it the oldest is dropped (its holder signs in again).
pub const MAX_SESSIONS: usize = 1_024;

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Signed in with the admin token: sees and changes everything.
    Admin,
    /// Signed in with the read-only token: sees everything, changes nothing.
    ReadOnly,
}

impl Role {
    /// Stable name, as the audit log and the page header show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }
}

/// A message shown once on the next page the session loads.
#[derive(Debug, Clone, PartialEq)]
pub enum Flash {
    /// A key was just created or rotated: its secret, shown this once.
    Secret {
        /// The new key's public id.
        id: String,
        /// The whole key.
        secret: String,
    },
    /// A change was made.
    Notice(String),
    /// A change was refused.
    Error(String),
}

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// What it may do.
    pub role: Role,
    /// The token every state change must carry (hidden form field or `x-csrf-token`).
    pub csrf: String,
    /// A short random name for the audit log: tells sessions apart without being the id.
    pub tag: String,
    /// When it stops working.
    pub expires: Instant,
    /// A message for the next page.
    pub flash: Option<Flash>,
    created: Instant,
}

/// Every live session, by id.
pub struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<String, Session>>,
}

/// Random bytes as lower-case hex; `None` only if the OS has no randomness to give.
pub fn random_hex(bytes: usize) -> Option<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).ok()?;
    Some(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Sessions {
    /// An empty table whose sessions last `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock cannot leave the map half-changed: recover it.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a session; returns its id (the cookie value) and the session.
    pub fn create(&self, role: Role, now: Instant) -> Option<(String, Session)> {
        let id = random_hex(32)?;
        let session = Session {
            role,
            csrf: random_hex(32)?,
            tag: random_hex(4)?,
            expires: now + self.ttl,
            flash: None,
            created: now,
        };
        let mut map = self.lock();
        map.retain(|_, s| s.expires > now);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(id.clone(), session.clone());
        Some((id, session))
    }

    /// The live session with this id (an expired one is removed), taking its flash.
    pub fn get(&self, id: &str, now: Instant, take_flash: bool) -> Option<Session> {
        let mut map = self.lock();
        let live = map.get(id).is_some_and(|s| s.expires > now);
        if !live {
            map.remove(id);
            return None;
        }
        let s = map.get_mut(id)?;
        let mut out = s.clone();
        if take_flash {
            s.flash = None;
        } else {
            out.flash = None;
        }
        Some(out)
    }

    /// Leaves a message for the session's next page.
    pub fn flash(&self, id: &str, flash: Flash) {
        if let Some(s) = self.lock().get_mut(id) {
            s.flash = Some(flash);
        }
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Sessions held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_flash_is_shown_once() {
        let t = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        let (id, s) = t.create(Role::Admin, now).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(s.csrf.len(), 64);
        assert_ne!(id, s.csrf);
        t.flash(&id, Flash::Notice("done".into()));
        // A poll does not eat the message.
        assert!(t.get(&id, now, false).unwrap().flash.is_none());
        assert_eq!(
            t.get(&id, now, true).unwrap().flash,
            Some(Flash::Notice("done".into()))
        );
        assert!(t.get(&id, now, true).unwrap().flash.is_none());
        assert!(t.get(&id, now + Duration::from_secs(61), true).is_none());
        assert!(
            t.get(&id, now, true).is_none(),
            "expired sessions are removed"
        );
        assert!(t.get("nope", now, true).is_none());
    }

    #[test]
    fn the_table_is_bounded() {
        let t = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..(MAX_SESSIONS + 5) {
            t.create(Role::ReadOnly, now + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert_eq!(t.len(), MAX_SESSIONS);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }
}
