//! Why a database or list cannot be loaded.

use std::path::PathBuf;

/// A database or list that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IpIntelError {
    /// The file could not be read.
    #[error("cannot read IP database {}", path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A line of a text database or list is malformed.
    #[error("IP database {} {source}", path.display())]
    Parse {
        /// File.
        path: PathBuf,
        /// The line and what is wrong with it.
        source: crate::formats::ParseError,
    },
    /// The MMDB file is invalid.
    #[error("invalid MaxMind database {}: {why}", path.display())]
    Mmdb {
        /// File.
        path: PathBuf,
        /// Cause.
        why: String,
    },
}
