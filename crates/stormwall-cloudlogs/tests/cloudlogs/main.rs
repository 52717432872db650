//! Parser tests on fixtures in the vendors' record shapes (synthetic records, documentation
//! addresses), the no-panic property, and the end-to-end kill-chain scenarios per cloud.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_arguments,
    missing_docs
)]

mod parsers;
mod scenario;
