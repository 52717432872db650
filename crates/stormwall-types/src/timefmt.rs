//! Timestamps as RFC 3339 strings in every serialized form.

pub use time::OffsetDateTime;

/// Serde helpers for `OffsetDateTime` as RFC 3339.
pub mod rfc3339 {
    pub use time::serde::rfc3339::*;
}

/// Serde helpers for `Option<OffsetDateTime>` as RFC 3339.
pub mod rfc3339_opt {
    pub use time::serde::rfc3339::option::*;
}

/// Current UTC time.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Formats as RFC 3339 (never fails for years 0..=9999; falls back to the unix timestamp).
pub fn format(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses RFC 3339.
pub fn parse(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
}
