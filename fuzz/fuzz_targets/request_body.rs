//! `request::parse` on arbitrary bytes, for every endpoint: never panics, and what it
//! returns is self-consistent.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stormwall_gateway::digest::{MINHASH_LEN, PromptDigester};
use stormwall_gateway::request::{self, BodyError};
use stormwall_types::Endpoint;

fn digester() -> &'static PromptDigester {
    static D: OnceLock<PromptDigester> = OnceLock::new();
    D.get_or_init(PromptDigester::default)
}

fuzz_target!(|data: &[u8]| {
    let mut first: Option<Result<(Option<String>, u64, u32), BodyError>> = None;
    for endpoint in Endpoint::ALL {
        let r = request::parse(data, endpoint, digester());
        if let Ok(p) = &r {
            assert_eq!(p.images.is_some(), endpoint == Endpoint::ImagesGenerations);
            assert!(p.end_user.as_ref().is_none_or(|u| u.len() <= 256));
            assert!(p.digest.minhash.is_empty() || p.digest.minhash.len() == MINHASH_LEN);
            assert_eq!(
                p.estimated_input_tokens,
                request::estimate_tokens(p.digest.chars, p.digest.messages)
            );
            assert!(p.digest.chars <= data.len() as u64 * 6 + 64, "more text than input");
            if let Some(h) = &p.digest.system_hash {
                assert_eq!(h.len(), 32);
            }
            if let Some(h) = &p.digest.simhash {
                assert_eq!(h.len(), 16);
            }
        }
        // Apart from `images`, the endpoint does not change what is read.
        let summary = r.map(|p| (p.model, p.estimated_input_tokens, p.digest.messages));
        match &first {
            None => first = Some(summary),
            Some(f) => assert_eq!(f, &summary, "{endpoint:?} parsed differently"),
        }
    }
});
