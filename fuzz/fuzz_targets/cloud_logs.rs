//! `stormwall_cloudlogs`: every source's parser on arbitrary UTF-8, the whole-file path
//! (container detection, gzip, line numbers) on arbitrary bytes, and the parsed events
//! through the engine and the cloud detectors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormwall_cloudlogs::{Record, Source, parse_bytes, parse_record};
use stormwall_detect::EngineConfig;
use stormwall_detect::cloud::CloudRun;
use stormwall_types::UsageEvent;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for s in Source::ALL {
            if let Ok(records) = parse_record(s, text) {
                for r in &records {
                    if let Record::Usage(e) = r {
                        // A parsed event is an ordinary event: it exports and reads back.
                        let json = serde_json::to_string(e).expect("serialise");
                        let back: UsageEvent = serde_json::from_str(&json).expect("read back");
                        assert_eq!(back.id, e.id);
                        assert_eq!(back.key_id, e.key_id);
                    }
                }
            }
        }
    }
    let out = parse_bytes("fuzz", data, None);
    let lines = data.iter().filter(|b| **b == b'\n').count() + 1;
    for b in &out.bad {
        assert!(b.line <= lines, "bad record line {} past the end ({lines})", b.line);
    }
    let mut records = out.records;
    stormwall_cloudlogs::sort_by_time(&mut records);
    let mut run = CloudRun::new(EngineConfig::default());
    let mut findings = Vec::new();
    for r in records {
        match r {
            Record::Usage(e) => run.observe_usage(e, &mut findings),
            Record::Control(c) => run.observe_control(&c, &mut findings),
        }
    }
    let _ = serde_json::to_string(&run.snapshot()).expect("snapshot serialises");
});
