//! Each source's fixtures parse into the expected events, awkward cases included.

use std::path::PathBuf;

use proptest::prelude::*;
use stormwall_cloudlogs::{ParseError, Record, Source, parse_bytes, sniff};
use stormwall_types::{ControlAction, ControlEvent, CredentialKind, Endpoint, UsageEvent};

fn fixture(name: &str) -> (String, Vec<u8>) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (name.to_owned(), bytes)
}

fn parse(name: &str) -> stormwall_cloudlogs::Parsed {
    let (n, b) = fixture(name);
    parse_bytes(&n, &b, None)
}

fn usage(r: &Record) -> &UsageEvent {
    match r {
        Record::Usage(e) => e,
        Record::Control(c) => panic!("expected usage, got control {c:?}"),
    }
}

fn control(r: &Record) -> &ControlEvent {
    match r {
        Record::Control(c) => c,
        Record::Usage(e) => panic!("expected control, got usage {e:?}"),
    }
}

#[test]
fn azure_diagnostics_object_and_string_properties_masked_ip_negative_duration() {
    let out = parse("azure-diagnostics.jsonl");
    // Line 6 has an unusable resultSignature but is still a record; line 7 has no time.
    assert_eq!(out.bad.len(), 1, "{:?}", out.bad);
    assert_eq!(out.bad[0].line, 7);
    assert_eq!(out.bad[0].error, ParseError::Missing("time"));
    assert_eq!(out.records.len(), 6);
    let img = usage(&out.records[0]);
    assert_eq!(img.endpoint, Some(Endpoint::ImagesGenerations));
    assert_eq!(img.status, 400);
    assert_eq!(img.source_ip.to_string(), "203.0.113.0");
    let c = img.cloud.as_deref().unwrap();
    assert!(c.ip_masked);
    assert_eq!(c.principal.kind, CredentialKind::AzureResourceKey);
    assert!(c.principal.id.ends_with("/accounts/contoso-aoai#key"));
    assert_eq!(
        c.principal.account.as_deref(),
        Some("00000000-1111-2222-3333-444444444444")
    );
    assert_eq!(img.model.as_deref(), Some("dalle3-prod"));
    assert_eq!(img.api_version.as_deref(), Some("2024-02-01"));
    // properties as a JSON string; Entra identity; negative duration read as 0.
    let chat = usage(&out.records[1]);
    assert_eq!(chat.endpoint, Some(Endpoint::ChatCompletions));
    assert_eq!(chat.duration_ms, 0.0);
    assert!(chat.stream);
    assert_eq!(chat.response_model.as_deref(), Some("gpt-4o"));
    let c = chat.cloud.as_deref().unwrap();
    assert_eq!(c.principal.kind, CredentialKind::AzureEntraIdentity);
    assert_eq!(c.principal.id, "oid:9a8b7c6d-1111-4e5f-8a9b-0c1d2e3f4a5b");
    assert_eq!(control(&out.records[2]).action, ControlAction::ListKeys);
    assert_eq!(
        control(&out.records[3]).action,
        ControlAction::RegenerateKey
    );
    // Trace is kept as a generic event.
    assert_eq!(control(&out.records[4]).action, ControlAction::Other);
    assert_eq!(usage(&out.records[5]).status, 200);
}

#[test]
fn azure_apim_gateway_logs_bodies_and_filters() {
    let out = parse("azure-apim.json");
    assert!(out.bad.is_empty(), "{:?}", out.bad);
    assert_eq!(out.records.len(), 2);
    let a = usage(&out.records[0]);
    assert_eq!(a.endpoint, Some(Endpoint::ChatCompletions));
    assert_eq!(a.error_code.as_deref(), Some("content_filter"));
    assert_eq!(a.max_tokens, Some(800));
    assert!(a.system_prompt_hash.is_some());
    assert!(
        a.safety
            .iter()
            .any(|v| v.category == stormwall_types::VerdictCategory::RoleplayMarkers)
    );
    assert_eq!(a.model.as_deref(), Some("gpt4o-prod"));
    assert_eq!(a.api_version.as_deref(), Some("2024-06-01"));
    assert_eq!(a.source_ip.to_string(), "198.51.100.7");
    let c = a.cloud.as_deref().unwrap();
    assert_eq!(c.principal.kind, CredentialKind::AzureApimSubscription);
    assert!(c.principal.id.ends_with("#sub:sub-support-bot"));
    // Resource-specific table columns, response body as a string.
    let b = usage(&out.records[1]);
    assert_eq!(b.input_tokens, Some(21));
    assert_eq!(b.output_tokens, Some(40));
    assert_eq!(b.safety.len(), 1, "output filtered, prompt not");
    assert_eq!(
        b.cloud.as_deref().unwrap().principal.key_id(),
        a.cloud.as_deref().unwrap().principal.key_id(),
        "the same subscription in both shapes is one principal"
    );
}

#[test]
fn azure_activity_both_shapes() {
    let out = parse("azure-activity.jsonl");
    assert!(out.bad.is_empty(), "{:?}", out.bad);
    let acts: Vec<(ControlAction, bool)> = out
        .records
        .iter()
        .map(|r| (control(r).action, control(r).loosens))
        .collect();
    assert_eq!(
        acts,
        vec![
            (ControlAction::ListKeys, false),
            (ControlAction::GuardrailUpdate, true),
            (ControlAction::NetworkChange, true),
            (ControlAction::DeleteLogging, false),
            (ControlAction::DeploymentWrite, false),
            (ControlAction::RegenerateKey, false),
        ]
    );
    let first = control(&out.records[0]);
    assert_eq!(
        first.cloud.principal.id,
        "oid:11111111-aaaa-bbbb-cccc-000000000001"
    );
    assert_eq!(
        first.cloud.principal.name.as_deref(),
        Some("ops@example.com")
    );
    assert_eq!(first.source_ip.unwrap().to_string(), "203.0.113.50");
    let second = control(&out.records[1]);
    assert_eq!(second.source_ip.unwrap().to_string(), "198.51.100.99");
}

#[test]
fn cloudtrail_records_key_kinds_bearer_errors_generic() {
    let out = parse("cloudtrail.json");
    assert_eq!(out.bad.len(), 1, "{:?}", out.bad);
    assert_eq!(out.bad[0].line, 9, "the broken record's own line");
    let r = &out.records;
    assert_eq!(r.len(), 7);
    let probe = usage(&r[0]);
    assert_eq!(probe.status, 400);
    assert_eq!(
        probe.prompt_chars, 0,
        "a malformed-input refusal is a probe"
    );
    assert_eq!(probe.error_code.as_deref(), Some("ValidationException"));
    let c = probe.cloud.as_deref().unwrap();
    assert_eq!(c.principal.kind, CredentialKind::AwsLongTermKey);
    assert_eq!(c.principal.id, "AKIAEXAMPLE7Q2R4T6Y8");
    assert_eq!(c.region.as_deref(), Some("us-east-1"));
    let uc = control(&r[1]);
    assert_eq!(uc.action, ControlAction::ModelUseCase);
    assert_eq!(uc.cloud.principal.kind, CredentialKind::AwsSessionKey);
    assert_eq!(
        uc.cloud.principal.id,
        "arn:aws:sts::111122223333:assumed-role/ml-role/session-1"
    );
    assert_eq!(
        uc.cloud.principal.name.as_deref(),
        Some("arn:aws:iam::111122223333:role/ml-role")
    );
    let del = control(&r[2]);
    assert_eq!(del.action, ControlAction::DeleteLogging);
    assert!(del.cloud.bearer);
    assert_eq!(del.cloud.principal.kind, CredentialKind::AwsBedrockApiKey);
    let denied = usage(&r[3]);
    assert_eq!(denied.status, 403);
    assert_eq!(denied.endpoint, Some(Endpoint::Embeddings));
    assert!(denied.stream);
    assert!(
        denied.cloud.as_deref().unwrap().ip_missing,
        "a service name is not an address"
    );
    assert_eq!(control(&r[4]).action, ControlAction::Other);
    let ck = control(&r[5]);
    assert_eq!(ck.action, ControlAction::CreateKey);
    assert_eq!(ck.target.as_deref(), Some("BedrockAPIKey-x1y2"));
    assert_eq!(usage(&r[6]).endpoint, Some(Endpoint::Models));
}

#[test]
fn cloudtrail_as_lines_array_and_gzip_give_the_same_events() {
    let (_, bytes) = fixture("cloudtrail.json");
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let recs = v["Records"].as_array().unwrap();
    let array = serde_json::to_vec(recs).unwrap();
    let lines: Vec<u8> = recs
        .iter()
        .flat_map(|r| {
            let mut l = serde_json::to_vec(r).unwrap();
            l.push(b'\n');
            l
        })
        .collect();
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&bytes).unwrap();
    let gz = enc.finish().unwrap();
    let base = parse_bytes("a", &bytes, None).records;
    assert_eq!(parse_bytes("b", &array, None).records, base);
    assert_eq!(parse_bytes("c", &lines, None).records, base);
    assert_eq!(parse_bytes("d.gz", &gz, None).records, base);
    let forced = parse_bytes("e", &lines, Some(Source::Cloudtrail));
    assert_eq!(forced.records, base);
    // Forcing the wrong source makes every record bad, never a panic.
    let wrong = parse_bytes("f", &lines, Some(Source::OpenaiUsage));
    assert!(wrong.records.is_empty());
    assert_eq!(wrong.bad.len(), recs.len());
}

#[test]
fn bedrock_invocation_logs() {
    let out = parse("bedrock-invocation.jsonl");
    assert!(out.bad.is_empty(), "{:?}", out.bad);
    let a = usage(&out.records[0]);
    assert_eq!(a.input_tokens, Some(7412));
    assert_eq!(a.max_tokens, Some(1));
    assert!(a.system_prompt_hash.is_some());
    assert!(
        a.safety
            .iter()
            .any(|v| v.category == stormwall_types::VerdictCategory::RoleplayMarkers)
    );
    assert!(
        a.safety
            .iter()
            .any(|v| v.category.as_str() == "guardrail_intervened")
    );
    assert_eq!(
        a.cloud.as_deref().unwrap().region.as_deref(),
        Some("us-west-2")
    );
    let b = usage(&out.records[1]);
    assert_eq!(b.endpoint, Some(Endpoint::Embeddings));
    assert_eq!(
        b.cloud.as_deref().unwrap().principal.kind,
        CredentialKind::AwsSessionKey
    );
    assert_eq!(
        b.prompt_chars, 48,
        "no body logged: judged by its token count"
    );
}

#[test]
fn openai_audit_and_usage() {
    let out = parse("openai-audit.json");
    assert_eq!(out.bad.len(), 1, "{:?}", out.bad);
    assert_eq!(out.bad[0].error, ParseError::Missing("type"));
    let created = control(&out.records[0]);
    assert_eq!(created.action, ControlAction::CreateKey);
    assert_eq!(created.scopes, vec!["all".to_owned()]);
    assert_eq!(created.target.as_deref(), Some("key_EXAMPLEabc"));
    assert_eq!(created.cloud.principal.kind, CredentialKind::OpenaiSession);
    assert_eq!(created.source_ip.unwrap().to_string(), "192.0.2.44");
    let allow = control(&out.records[1]);
    assert_eq!(allow.action, ControlAction::NetworkChange);
    assert!(allow.loosens);
    assert_eq!(allow.cloud.principal.id, "key_ADMINexample");
    assert_eq!(control(&out.records[2]).action, ControlAction::Other);

    let out = parse("openai-usage.jsonl");
    assert!(out.bad.is_empty(), "{:?}", out.bad);
    assert_eq!(
        out.records.len(),
        3,
        "one event per result row; an empty bucket gives none"
    );
    let img = usage(&out.records[0]);
    assert_eq!(img.endpoint, Some(Endpoint::ImagesGenerations));
    assert_eq!(img.images, Some(48));
    assert_eq!(img.cloud.as_deref().unwrap().principal.id, "key_EXAMPLEabc");
    let chat = usage(&out.records[1]);
    assert_eq!(chat.input_tokens, Some(5000));
    assert_ne!(out.records[1].id(), out.records[2].id());
}

#[test]
fn vertex_audit() {
    let out = parse("vertex.jsonl");
    assert!(out.bad.is_empty(), "{:?}", out.bad);
    let a = usage(&out.records[0]);
    assert_eq!(a.model.as_deref(), Some("claude-3-5-sonnet"));
    assert_eq!(a.user_agent.as_deref(), Some("axios/1.6.8"));
    let c = a.cloud.as_deref().unwrap();
    assert_eq!(c.principal.kind, CredentialKind::GcpServiceAccountKey);
    assert_eq!(
        c.principal.id,
        "ml-runner@example-proj.iam.gserviceaccount.com/keys/0123abcd"
    );
    assert_eq!(c.region.as_deref(), Some("us-east5"));
    let d = usage(&out.records[1]);
    assert_eq!(d.status, 403);
    assert_eq!(
        d.cloud.as_deref().unwrap().principal.kind,
        CredentialKind::GcpPrincipal
    );
    assert_eq!(
        control(&out.records[2]).action,
        ControlAction::DeploymentWrite
    );
}

#[test]
fn every_fixture_is_recognised_as_its_source() {
    for (file, source) in [
        ("azure-diagnostics.jsonl", Source::AzureDiagnostics),
        ("azure-apim.json", Source::AzureApim),
        ("azure-activity.jsonl", Source::AzureActivity),
        ("cloudtrail.json", Source::Cloudtrail),
        ("bedrock-invocation.jsonl", Source::BedrockInvocation),
        ("openai-audit.json", Source::OpenaiAudit),
        ("openai-usage.jsonl", Source::OpenaiUsage),
        ("vertex.jsonl", Source::VertexAudit),
    ] {
        let out = parse(file);
        assert_eq!(
            out.per_source.keys().copied().collect::<Vec<_>>(),
            vec![source],
            "{file}"
        );
    }
    assert_eq!(sniff("{\"hello\":1}"), None);
}

#[test]
fn unrecognised_and_garbage_records_are_counted_with_lines() {
    let out = parse_bytes(
        "x.jsonl",
        b"{\"hello\":1}\nnot json at all\n\n{\"eventSource\":1,\"eventName\":2}\n",
        None,
    );
    assert!(out.records.is_empty());
    let lines: Vec<usize> = out.bad.iter().map(|b| b.line).collect();
    assert_eq!(lines, vec![1, 2, 4]);
    assert!(out.bad[0].to_string().starts_with("x.jsonl:1: "));
}

/// All fixture records, as seeds for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        v.push(std::fs::read(entry.unwrap().path()).unwrap());
    }
    v
}

#[test]
fn deterministic_fuzz_loop_never_panics() {
    // Byte flips, truncations and splices of every fixture, under every source: no panic,
    // and every record either parses or is counted.
    let seeds = seeds();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let s = &seeds[round % seeds.len()];
        let mut b = s.clone();
        match next() % 4 {
            0 => {
                for _ in 0..(next() % 8 + 1) {
                    let i = (next() as usize) % b.len().max(1);
                    if let Some(c) = b.get_mut(i) {
                        *c = (next() & 0xff) as u8;
                    }
                }
            }
            1 => b.truncate((next() as usize) % (b.len() + 1)),
            2 => {
                let o = &seeds[(next() as usize) % seeds.len()];
                let cut = (next() as usize) % (o.len() + 1);
                b.extend_from_slice(&o[..cut]);
            }
            _ => {
                let i = (next() as usize) % (b.len() + 1);
                b.insert(i.min(b.len()), b"{}[]\"\\:,*"[(next() % 9) as usize]);
            }
        }
        let forced = match next() % 10 {
            n @ 0..=7 => Some(Source::ALL[n as usize]),
            _ => None,
        };
        let _ = parse_bytes("fuzz", &b, forced);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn no_record_makes_a_parser_panic(text in ".{0,400}") {
        for s in Source::ALL {
            let _ = stormwall_cloudlogs::parse_record(s, &text);
        }
        let _ = parse_bytes("p", text.as_bytes(), None);
    }

    #[test]
    fn json_shaped_records_never_panic(
        keys in proptest::collection::vec(
            prop_oneof![
                Just("eventTime"), Just("eventSource"), Just("eventName"), Just("userIdentity"),
                Just("time"), Just("category"), Just("properties"), Just("operationName"),
                Just("protoPayload"), Just("schemaType"), Just("effective_at"), Just("type"),
                Just("results"), Just("start_time"), Just("callerIpAddress"), Just("resultSignature"),
            ], 0..8),
        vals in proptest::collection::vec(
            prop_oneof![
                Just("null".to_owned()), Just("1".to_owned()), Just("-1e99".to_owned()),
                Just("\"2025-03-04T02:14:09Z\"".to_owned()), Just("{}".to_owned()), Just("[]".to_owned()),
                Just("\"81.2.69.***\"".to_owned()), Just("\"RequestResponse\"".to_owned()),
                Just("\"ModelInvocationLog\"".to_owned()), Just("[{}]".to_owned()), ".{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            ], 8),
    ) {
        let body: Vec<String> = keys.iter().zip(vals.iter()).map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let text = format!("{{{}}}", body.join(","));
        for s in Source::ALL {
            let _ = stormwall_cloudlogs::parse_record(s, &text);
        }
    }
}

#[test]
fn the_shipped_sigma_rules_all_load_and_name_sources() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sigma");
    let (rules, errors) = stormwall_cloudlogs::sigma::load_dir(&dir).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(rules.len(), 9);
    assert!(rules.iter().all(|r| !r.sources.is_empty()));
}

/// Matches `rule` against every fixture record under every source, turning a match into
/// its alert (the path follow mode and `detect --logs --sigma` take).
fn match_all(rule: &stormwall_cloudlogs::sigma::Rule, records: &[String]) -> usize {
    let mut n = 0;
    for raw in records {
        let value: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
        for s in Source::ALL {
            if rule.matches(s, &value, raw) {
                let parsed = stormwall_cloudlogs::parse_record(s, raw)
                    .ok()
                    .and_then(|mut v| v.pop());
                let at = parsed
                    .as_ref()
                    .map_or(time::OffsetDateTime::UNIX_EPOCH, Record::timestamp);
                let m = stormwall_cloudlogs::sigma::MatchedAt {
                    source: s,
                    file: "f",
                    line: 1,
                    at,
                };
                let a = rule.alert(m, parsed.as_ref());
                assert_eq!(a.detector.as_str(), "S1");
                assert_eq!(a.severity, rule.severity());
                n += 1;
            }
        }
    }
    n
}

/// One record per line of every fixture (arrays and wrappers unpacked).
fn fixture_records() -> Vec<String> {
    let mut v = Vec::new();
    for seed in seeds() {
        let text = String::from_utf8_lossy(&seed);
        for line in text.lines() {
            let line = line.trim().trim_end_matches(',');
            if line.starts_with('{') && line.ends_with('}') {
                v.push(line.to_owned());
            }
        }
    }
    v
}

#[test]
fn deterministic_sigma_fuzz_loop_never_panics() {
    // The Sigma rule parser sees files an operator drops in a folder: byte flips,
    // truncations, splices and inserted YAML/condition tokens of every shipped rule must
    // neither panic at parse nor at match, and a rule that parses still matches records.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sigma");
    let mut rules: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    rules.sort();
    let records = fixture_records();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const TOKENS: [&str; 16] = [
        " and ",
        " or ",
        " not ",
        "(",
        ")",
        "1 of ",
        "all of ",
        " them",
        "|contains",
        "|re",
        "|cidr",
        "|all",
        "|startswith",
        "*",
        ": ",
        "\n  - ",
    ];
    let mut parsed = 0;
    for round in 0..1500 {
        let mut b = rules[round % rules.len()].clone();
        match next() % 4 {
            0 => {
                for _ in 0..(next() % 4 + 1) {
                    let i = (next() as usize) % b.len().max(1);
                    if let Some(c) = b.get_mut(i) {
                        *c = b" \n:-|*()'\"a0"[(next() % 12) as usize];
                    }
                }
            }
            1 => b.truncate((next() as usize) % (b.len() + 1)),
            2 => {
                let o = &rules[(next() as usize) % rules.len()];
                let cut = (next() as usize) % (o.len() + 1);
                b.extend_from_slice(&o[cut..]);
            }
            _ => {
                let i = (next() as usize) % (b.len() + 1);
                let t = TOKENS[(next() as usize) % TOKENS.len()];
                let tail = b.split_off(i);
                b.extend_from_slice(t.as_bytes());
                b.extend(tail);
            }
        }
        let Ok(text) = std::str::from_utf8(&b) else {
            continue;
        };
        if let Ok(rule) = stormwall_cloudlogs::sigma::Rule::parse("f.yml", text) {
            parsed += 1;
            match_all(&rule, &records);
        }
    }
    // Most mutations keep a parsable rule: the loop does reach the matcher.
    assert!(parsed > 300, "only {parsed} mutated rules parsed");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn no_sigma_rule_makes_the_parser_or_matcher_panic(
        field in prop_oneof![Just("eventName".to_owned()), Just("userIdentity.accessKeyId".to_owned()), Just("a.b.c".to_owned()), "[a-z.]{0,12}"],
        modifiers in proptest::collection::vec(
            prop_oneof![Just("contains".to_owned()), Just("startswith".to_owned()), Just("endswith".to_owned()), Just("re".to_owned()),
                Just("cidr".to_owned()), Just("all".to_owned()), Just("exists".to_owned()), Just("cased".to_owned()), Just("base64".to_owned()), "[a-z]{0,6}"], 0..3),
        values in proptest::collection::vec(
            prop_oneof![Just("*".to_owned()), Just("?".to_owned()), Just("10.0.0.0/8".to_owned()),
                Just("(a|b".to_owned()), Just("true".to_owned()), Just("null".to_owned()), ".{0,10}"], 0..4),
        condition in proptest::collection::vec(
            prop_oneof![Just("sel"), Just("other"), Just("and"), Just("or"), Just("not"),
                Just("("), Just(")"), Just("1 of"), Just("all of"), Just("them"), Just("sel*"), Just("|")], 0..8),
        product in prop_oneof![Just("aws"), Just("azure"), Just("gcp"), Just("openai"), Just("x")],
    ) {
        let mut key = field.clone();
        for m in &modifiers {
            key.push('|');
            key.push_str(m);
        }
        let list: Vec<String> = values.iter().map(|v| format!("      - {}", serde_json::to_string(v).unwrap())).collect();
        let text = format!(
            "title: t\nlogsource:\n  product: {product}\ndetection:\n  sel:\n    {key}:\n{}\n  condition: {}\n",
            list.join("\n"),
            condition.join(" "),
        );
        if let Ok(rule) = stormwall_cloudlogs::sigma::Rule::parse("p.yml", &text) {
            match_all(&rule, &fixture_records());
        }
    }
}

#[test]
fn escaped_strings_and_string_encoded_parameters_read_as_plain_ones() {
    // Fields are borrowed from the record unless they hold an escape; both paths must give
    // the same values, and parameters logged as a JSON string must read as an object.
    let plain = r#"{"eventTime":"2025-03-04T02:15:31Z","eventSource":"bedrock.amazonaws.com","eventName":"InvokeModel","awsRegion":"us-east-1","sourceIPAddress":"198.51.100.23","userAgent":"Boto3/1.34 \"lab\"","userIdentity":{"type":"IAMUser","arn":"arn:aws:iam::111122223333:user/ci","accountId":"111122223333","accessKeyId":"AKIAEXAMPLE7Q2R4T6Y8"},"requestParameters":{"modelId":"anthropic.claude-v2"},"additionalEventData":{"callWithBearerToken":"TRUE"},"eventID":"e1"}"#;
    let escaped = plain
        .replace("\"anthropic.claude-v2\"", "\"anthropic.claude\\u002dv2\"")
        .replace("\"AKIAEXAMPLE7Q2R4T6Y8\"", "\"AKIA\\u0045XAMPLE7Q2R4T6Y8\"");
    let stringified = plain.replace(
        "{\"modelId\":\"anthropic.claude-v2\"}",
        "\"{\\\"modelId\\\":\\\"anthropic.claude-v2\\\"}\"",
    );
    assert_ne!(escaped, plain);
    assert_ne!(stringified, plain);
    for text in [plain.to_owned(), escaped, stringified] {
        let out = parse_bytes("t.json", text.as_bytes(), None);
        assert!(out.bad.is_empty(), "{:?}", out.bad);
        let e = usage(&out.records[0]);
        assert_eq!(e.model.as_deref(), Some("anthropic.claude-v2"), "{text}");
        assert_eq!(e.user_agent.as_deref(), Some("Boto3/1.34 \"lab\""));
        let c = e.cloud.as_deref().unwrap();
        assert_eq!(c.principal.id, "AKIAEXAMPLE7Q2R4T6Y8");
        assert!(c.bearer, "\"TRUE\" as a string counts");
        assert_eq!(c.principal.kind, CredentialKind::AwsBedrockApiKey);
    }
}
