//! `stormwall_cloudlogs::sigma`: a Sigma rule's parser (YAML, selections, modifiers,
//! conditions) on arbitrary UTF-8, and a parsed rule matched against a record. The input is
//! the rule, then a NUL byte, then the record (raw JSON of any source).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormwall_cloudlogs::sigma::{MatchedAt, Rule};
use stormwall_cloudlogs::{Source, parse_record};
use stormwall_types::timefmt::OffsetDateTime;

fuzz_target!(|data: &[u8]| {
    let (rule, record) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (Ok(rule), Ok(record)) = (std::str::from_utf8(rule), std::str::from_utf8(record)) else {
        return;
    };
    let Ok(rule) = Rule::parse("fuzz.yml", rule) else {
        return;
    };
    let value: serde_json::Value = serde_json::from_str(record).unwrap_or_default();
    for s in Source::ALL {
        if rule.matches(s, &value, record) {
            // A match becomes an alert like any other, with or without the parsed record.
            let parsed = parse_record(s, record).ok().and_then(|mut v| v.pop());
            let at = parsed
                .as_ref()
                .map_or(OffsetDateTime::UNIX_EPOCH, |r| r.timestamp());
            let m = MatchedAt {
                source: s,
                file: "fuzz",
                line: 1,
                at,
            };
            let alert = rule.alert(m, parsed.as_ref());
            assert_eq!(alert.detector.as_str(), "S1");
            assert_eq!(alert.severity, rule.severity());
            assert!(serde_json::to_string(&alert).is_ok());
        }
    }
});
