//! Parse + detect throughput on JSON lines, one core: the path `stormwall detect --logs`
//! takes (parse every record, order by event time, judge with the engine and the cloud
//! detectors). Run: `cargo bench -p stormwall-cloudlogs --bench parse_detect`
//! (`-- N` sets the number of records; default 400,000; `-- N --emit DIR` writes them as
//! JSON-lines files instead). `bench/cloud-logs.sh` runs it and checks the target.
//!
//! Records are CloudTrail Bedrock events and Azure OpenAI diagnostic records in their
//! vendors' shapes, for 200 principals over 14 days, generated deterministically.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use stormwall_cloudlogs::{Record, Source, for_each_record};
use stormwall_detect::EngineConfig;
use stormwall_detect::cloud::CloudRun;

fn iso(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn cloudtrail(n: usize) -> String {
    let mut out = String::with_capacity(n * 900);
    let mut x: u64 = 42;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = x % 200;
        let t = 1_738_540_800 + (i as i64) * 14 * 86_400 / n as i64;
        let region = ["us-east-1", "us-west-2"][(p % 2) as usize];
        out.push_str(&format!(
            r#"{{"eventVersion":"1.10","eventTime":"{}","eventSource":"bedrock.amazonaws.com","eventName":"InvokeModel","awsRegion":"{region}","sourceIPAddress":"198.51.100.{}","userAgent":"Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux lang/python#3.11","userIdentity":{{"type":"IAMUser","arn":"arn:aws:iam::111122223333:user/app-{p}","accountId":"111122223333","accessKeyId":"AKIAEXAMPLE{p:09}","principalId":"AIDAEXAMPLE1234567890"}},"requestParameters":{{"modelId":"anthropic.claude-3-haiku-20240307-v1:0"}},"responseElements":null,"additionalEventData":{{"callWithBearerToken":false}},"requestID":"{i:08x}-0000-4000-8000-000000000000","eventID":"ev-{i:010}","readOnly":true,"eventType":"AwsApiCall","managementEvent":true,"recipientAccountId":"111122223333","eventCategory":"Management","tlsDetails":{{"tlsVersion":"TLSv1.3","cipherSuite":"TLS_AES_128_GCM_SHA256","clientProvidedHostHeader":"bedrock-runtime.{region}.amazonaws.com"}}}}"#,
            iso(t),
            p % 250
        ));
        out.push('\n');
    }
    out
}

fn azure(n: usize) -> String {
    let mut out = String::with_capacity(n * 800);
    for i in 0..n {
        let p = (i * 7919) % 200;
        let t = 1_738_540_800 + (i as i64) * 14 * 86_400 / n as i64;
        out.push_str(&format!(
            r#"{{"time":"{}","resourceId":"/SUBSCRIPTIONS/00000000-1111-2222-3333-444444444444/RESOURCEGROUPS/RG-AI/PROVIDERS/MICROSOFT.COGNITIVESERVICES/ACCOUNTS/ACCT-{p}","category":"RequestResponse","operationName":"ChatCompletions_Create","callerIpAddress":"198.51.100.***","correlationId":"{i:08x}-7d1b-4c61-9a3e-2b7f1c0d9e11","durationMs":812,"resultSignature":"200","location":"eastus","event":"ShoeboxCallResult","properties":{{"apiName":"Azure OpenAI API version 2024-06-01","requestLength":1812,"responseLength":2210,"objectId":"","streamType":"Non-Streaming","modelDeploymentName":"gpt4o-prod","modelName":"gpt-4o","modelVersion":"2024-05-13"}}}}"#,
            iso(t)
        ));
        out.push('\n');
    }
    out
}

/// Seconds this thread spent on a CPU (the machine may be shared: wall time would count
/// other processes' time slices); wall time where `/proc/thread-self/schedstat` is missing.
struct Clock(Instant, Option<u64>);

fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Clock {
    fn start() -> Self {
        Clock(Instant::now(), cpu_ns())
    }
    fn secs(&self) -> f64 {
        match (self.1, cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e9,
            _ => self.0.elapsed().as_secs_f64(),
        }
    }
}

fn measure(name: &str, text: &str, source: Option<Source>) {
    measure_with(name, text, source, EngineConfig::default());
    // The same with the data-plane engine switched off: the share the cloud detectors and
    // the parsers take.
    let mut off = EngineConfig::default();
    off.detect.enabled = false;
    measure_with(&format!("{name}, engine off"), text, source, off);
}

fn measure_with(name: &str, text: &str, source: Option<Source>, cfg: EngineConfig) {
    let bytes = text.as_bytes();
    let n_lines = text.lines().count();
    let wall = Instant::now();
    // Parse only.
    let start = Clock::start();
    let mut per = Default::default();
    let mut parsed = 0usize;
    for_each_record("bench", bytes, source, &mut per, &mut |r| {
        if r.is_ok() {
            parsed += 1;
        }
    });
    let parse_secs = start.secs();
    assert_eq!(parsed, n_lines);
    // Parse + order + detect.
    let start = Clock::start();
    let mut records = Vec::with_capacity(n_lines);
    for_each_record("bench", bytes, source, &mut per, &mut |r| {
        if let Ok(rec) = r {
            records.push(rec);
        }
    });
    stormwall_cloudlogs::sort_by_time(&mut records);
    let collected = start.secs();
    let mut run = CloudRun::without_state(cfg);
    let mut out = Vec::new();
    let mut alerts = 0usize;
    for rec in records {
        out.clear();
        match rec {
            Record::Usage(e) => run.observe_usage(e, &mut out),
            Record::Control(c) => run.observe_control(&c, &mut out),
        }
        alerts += out.len();
    }
    let total = start.secs();
    println!(
        "{name}: {n_lines} records, {:.0} bytes/record, {} bytes/parsed record | parse only {:.0} records/CPU-s | parse + collect + sort {:.0} records/CPU-s | parse + detect {:.0} records/CPU-s ({alerts} alerts; {:.1} s wall)",
        bytes.len() as f64 / n_lines as f64,
        std::mem::size_of::<Record>(),
        n_lines as f64 / parse_secs,
        n_lines as f64 / collected,
        n_lines as f64 / total,
        wall.elapsed().as_secs_f64(),
    );
}

/// Time `sniff` takes per record (the price of `--source auto`).
fn sniff_cost(name: &str, text: &str) {
    let start = Clock::start();
    let mut found = 0usize;
    for _ in 0..5 {
        for line in text.lines() {
            found += usize::from(stormwall_cloudlogs::sniff(line).is_some());
        }
    }
    let secs = start.secs();
    println!(
        "{name}: sniff {:.0} ns/record",
        secs * 1e9 / found.max(1) as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(400_000);
    // `--emit DIR`: write the records as JSON-lines files instead (bench/cloud-logs.sh
    // times `stormwall detect --logs` over them).
    if let Some(dir) = args
        .iter()
        .position(|a| a == "--emit")
        .and_then(|i| args.get(i + 1))
    {
        let dir = std::path::Path::new(dir);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cloudtrail.jsonl"), cloudtrail(n)).unwrap();
        std::fs::write(dir.join("azure-diagnostics.jsonl"), azure(n)).unwrap();
        println!(
            "wrote {n} CloudTrail and {n} Azure records under {}",
            dir.display()
        );
        return;
    }
    measure("cloudtrail (auto source)", &cloudtrail(n), None);
    measure(
        "cloudtrail (--source cloudtrail)",
        &cloudtrail(n),
        Some(Source::Cloudtrail),
    );
    measure("azure diagnostics (auto source)", &azure(n), None);
    sniff_cost("cloudtrail", &cloudtrail(n));
    sniff_cost("azure diagnostics", &azure(n));
}
