//! The `stormwall` binary end to end: one integration test binary, one module per verb.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod detect;
mod safety;
mod scan;
mod serve;
mod simulate;
