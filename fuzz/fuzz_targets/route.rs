//! `route::classify` on a method, path and query derived from the input: never panics, and
//! every route it returns is well-formed.
//!
//! Input layout: byte 0 picks the method (a standard one, or a custom token taken from the
//! input), the rest is UTF-8 `path[?query]`.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use stormwall_gateway::route::classify;
use stormwall_types::ApiFlavor;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let (method, s) = match m % 9 {
        0 => (Method::GET, s),
        1 => (Method::POST, s),
        2 => (Method::PUT, s),
        3 => (Method::PATCH, s),
        4 => (Method::DELETE, s),
        5 => (Method::HEAD, s),
        6 => (Method::OPTIONS, s),
        _ => {
            // Custom method: the text up to the first space.
            let (tok, tail) = s.split_once(' ').unwrap_or((s, ""));
            match Method::from_bytes(tok.as_bytes()) {
                Ok(m) => (m, tail),
                Err(_) => return,
            }
        }
    };
    let (path, query) = match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    };
    let Some(r) = classify(&method, path, query) else {
        return;
    };
    // One trailing slash is ignored.
    if !path.ends_with('/') {
        let slashed = format!("{path}/");
        assert_eq!(classify(&method, &slashed, query), Some(r.clone()));
    }
    assert!(method == Method::GET || method == Method::POST, "{method} routed");
    match r.flavor {
        ApiFlavor::Openai => {
            assert!(path.starts_with("/v1/"));
            assert!(r.deployment.is_none() && r.api_version.is_none());
        }
        ApiFlavor::Azure => {
            assert!(path.starts_with("/openai/"));
            if let Some(d) = &r.deployment {
                assert!(!d.is_empty() && d.len() <= 64);
                assert!(
                    d.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
                    "bad deployment {d:?}"
                );
            }
            if let Some(v) = &r.api_version {
                assert!(v.len() <= 32);
                assert!(
                    v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                );
                assert!(query.is_some_and(|q| q.contains(&format!("api-version={v}"))));
            }
        }
    }
});
