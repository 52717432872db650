//! Parser tests on fixtures in the vendors' record shapes (synthetic records, documentation
//! addresses), the no-panic property, and the end-to-end kill-chain scenarios per cloud.

mod parsers;
mod scenario;
