//! The live handle: the current [`IpIntel`] behind an atomically swapped `Arc`, so a
//! request reads it without a lock while a reload builds the next one beside it. Reloads
//! are synchronous (the caller picks the thread); a failed reload keeps the current data.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::IpIntelConfig;
use crate::db::{IpIntel, Status};
use crate::error::IpIntelError;
use crate::info::{Flags, NetworkInfo};

/// A file's identity for change detection: modification time and length (`None`: absent).
type Stamp = (PathBuf, Option<(SystemTime, u64)>);

fn stamps(config: &IpIntelConfig) -> Vec<Stamp> {
    config
        .all_files()
        .map(|p| {
            let meta = std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (p.to_owned(), meta)
        })
        .collect()
}

/// The current IP intelligence, reloadable without a restart.
pub struct SharedIpIntel {
    current: ArcSwap<IpIntel>,
    config: IpIntelConfig,
    /// The stamps of the files the current data was loaded from; the lock also makes
    /// reloads one at a time.
    loaded: Mutex<Vec<Stamp>>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

impl std::fmt::Debug for SharedIpIntel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedIpIntel({:?})", self.current.load())
    }
}

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    /// Whether new data was swapped in (false: nothing had changed).
    pub reloaded: bool,
    /// What is loaded now.
    pub status: Status,
}

impl SharedIpIntel {
    /// Loads the files a config names; an error leaves nothing running.
    pub fn load(config: &IpIntelConfig) -> Result<SharedIpIntel, IpIntelError> {
        let before = stamps(config);
        let intel = IpIntel::load(config)?;
        Ok(SharedIpIntel {
            current: ArcSwap::from_pointee(intel),
            config: config.clone(),
            loaded: Mutex::new(before),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// Wraps data built in memory (tests, tools); reloads re-read an empty config.
    pub fn fixed(intel: IpIntel) -> SharedIpIntel {
        SharedIpIntel {
            current: ArcSwap::from_pointee(intel),
            config: IpIntelConfig {
                builtin_hosting_asns: false,
                reload_secs: 0,
                ..IpIntelConfig::default()
            },
            loaded: Mutex::new(Vec::new()),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The config it loads from.
    pub fn config(&self) -> &IpIntelConfig {
        &self.config
    }

    /// The data now in force (a cheap, lock-free snapshot).
    pub fn current(&self) -> Arc<IpIntel> {
        self.current.load_full()
    }

    /// AS number, organisation and country of an address (the request path).
    #[inline]
    pub fn network(&self, ip: IpAddr) -> NetworkInfo {
        self.current.load().network(ip)
    }

    /// Egress flags of an address (the detectors).
    #[inline]
    pub fn flags(&self, ip: IpAddr, asn: Option<u32>) -> Flags {
        self.current.load().flags(ip, asn)
    }

    /// Reloads every file now, whether or not it changed. On error the current data stays.
    pub fn reload(&self) -> Result<Reloaded, IpIntelError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_locked(&mut loaded)
    }

    /// Reloads if any file's modification time or length changed (or a file appeared or
    /// went) since the last load; `Ok(None)` when nothing changed.
    pub fn reload_if_changed(&self) -> Result<Option<Reloaded>, IpIntelError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if stamps(&self.config) == *loaded {
            return Ok(None);
        }
        self.reload_locked(&mut loaded).map(Some)
    }

    fn reload_locked(&self, loaded: &mut Vec<Stamp>) -> Result<Reloaded, IpIntelError> {
        let before = stamps(&self.config);
        match IpIntel::load(&self.config) {
            Ok(intel) => {
                let status = intel.status();
                self.current.store(Arc::new(intel));
                *loaded = before;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(Reloaded {
                    reloaded: true,
                    status,
                })
            }
            Err(e) => {
                // Remember the broken files' stamps so polling does not retry (and log)
                // the same broken file every tick; a fix changes the stamp again.
                *loaded = before;
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Reloads done since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reloads that failed (the data in force was kept).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// What is loaded and what is missing.
    pub fn status(&self) -> Status {
        self.current.load().status()
    }
}
