//! End-to-end kill chains per cloud (filled in below).
