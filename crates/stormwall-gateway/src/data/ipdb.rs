//! Client-network enrichment on the request path: a thin use of `stormwall-ipintel`. The
//! gateway holds one [`IpDb`] (the data in force behind an atomically swapped `Arc`); the
//! recorder asks it for the AS number, organisation and country of each client address,
//! without a lock, while the control plane reloads it from the files.

pub use stormwall_ipintel::{IpIntelError as IpDbError, NetworkInfo, SharedIpIntel as IpDb};
