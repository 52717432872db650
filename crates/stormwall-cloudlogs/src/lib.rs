//! Cloud-log parsers: the logs a cloud already writes about AI keys, turned into Stormwall's
//! one event model — a [`UsageEvent`] (with its `cloud` context) for a data-plane call, a
//! [`ControlEvent`] for a management call — so the same detectors judge keys no gateway
//! fronts.
//!
//! Sources ([`Source`]): Azure OpenAI diagnostic logs, Azure API Management `GatewayLogs`,
//! the Azure Activity log, AWS CloudTrail, Bedrock model-invocation logs, the OpenAI
//! organisation audit log and usage buckets, and Google Vertex AI audit logs. A source is
//! recognised from each record's content ([`sniff`]) unless forced. Containers
//! ([`container`]): JSON lines, a JSON array, a `{"Records":[…]}` / `{"records":[…]}` /
//! `{"data":[…]}` wrapper, any of them gzip-compressed.
//!
//! Pure: bytes in, records and counted errors out. A bad record is an error value with its
//! line; a known source's unknown operation becomes a generic event (`ControlAction::Other`).
//!
//! ```
//! use stormwall_cloudlogs::{parse_bytes, Record};
//! let line = br#"{"eventTime":"2025-03-04T02:15:31Z","eventSource":"bedrock.amazonaws.com","eventName":"InvokeModel","awsRegion":"us-east-1","sourceIPAddress":"198.51.100.23","userIdentity":{"type":"IAMUser","arn":"arn:aws:iam::111122223333:user/ci","accountId":"111122223333","accessKeyId":"AKIAEXAMPLE7Q2R4T6Y8"},"requestParameters":{"modelId":"anthropic.claude-v2"},"eventID":"e1"}"#;
//! let out = parse_bytes("trail.json", line, None);
//! assert_eq!(out.bad.len(), 0);
//! let Record::Usage(e) = &out.records[0] else { panic!() };
//! assert_eq!(e.model.as_deref(), Some("anthropic.claude-v2"));
//! ```

pub mod aws;
pub mod azure;
pub mod container;
pub mod gcp;
pub mod openai;
pub mod sigma;
pub mod util;

use std::fmt;
use std::str::FromStr;

pub use stormwall_types::{ControlEvent, UsageEvent};
use time::OffsetDateTime;

/// One parsed record.
// Not boxed: records stream one at a time, and a box per usage event costs more than the
// size difference.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A data-plane call (inference, model listing).
    Usage(UsageEvent),
    /// A management call.
    Control(ControlEvent),
}

impl Record {
    /// Event time.
    pub fn timestamp(&self) -> OffsetDateTime {
        match self {
            Record::Usage(e) => e.timestamp,
            Record::Control(c) => c.timestamp,
        }
    }

    /// Event id.
    pub fn id(&self) -> &str {
        match self {
            Record::Usage(e) => &e.id,
            Record::Control(c) => &c.id,
        }
    }
}

/// A log source Stormwall reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Azure OpenAI / AI Foundry diagnostic logs (`RequestResponse`, `Audit`, `Trace`).
    AzureDiagnostics,
    /// Azure API Management `GatewayLogs` in front of Azure OpenAI.
    AzureApim,
    /// Azure Activity (ARM) log.
    AzureActivity,
    /// AWS CloudTrail (Bedrock, IAM, …).
    Cloudtrail,
    /// Amazon Bedrock model-invocation logs.
    BedrockInvocation,
    /// OpenAI organisation audit log.
    OpenaiAudit,
    /// OpenAI usage API buckets.
    OpenaiUsage,
    /// Google Cloud audit logs for Vertex AI.
    VertexAudit,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 8] = [
        Source::AzureDiagnostics,
        Source::AzureApim,
        Source::AzureActivity,
        Source::Cloudtrail,
        Source::BedrockInvocation,
        Source::OpenaiAudit,
        Source::OpenaiUsage,
        Source::VertexAudit,
    ];

    /// The name `--source` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::AzureDiagnostics => "azure-diagnostics",
            Source::AzureApim => "azure-apim",
            Source::AzureActivity => "azure-activity",
            Source::Cloudtrail => "cloudtrail",
            Source::BedrockInvocation => "bedrock-invocation",
            Source::OpenaiAudit => "openai-audit",
            Source::OpenaiUsage => "openai-usage",
            Source::VertexAudit => "vertex-audit",
        }
    }

    /// The `event.dataset` its events carry.
    pub fn dataset(self) -> &'static str {
        match self {
            Source::AzureDiagnostics => "azure.openai",
            Source::AzureApim => "azure.apim",
            Source::AzureActivity => "azure.activity",
            Source::Cloudtrail => "aws.cloudtrail",
            Source::BedrockInvocation => "aws.bedrock_invocation",
            Source::OpenaiAudit => "openai.audit",
            Source::OpenaiUsage => "openai.usage",
            Source::VertexAudit => "gcp.vertex_audit",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a source.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown log source {0:?}; expected auto, azure-diagnostics, azure-apim, azure-activity, cloudtrail, bedrock-invocation, openai-audit, openai-usage or vertex-audit"
)]
pub struct UnknownSource(pub String);

impl FromStr for Source {
    type Err = UnknownSource;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Source::ALL
            .into_iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownSource(s.to_owned()))
    }
}

/// Why a record could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, or not the shape of its source.
    #[error("not a {0} record: {1}")]
    Shape(&'static str, String),
    /// A required field is missing.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A field has an unusable value.
    #[error("bad {0}: {1:?}")]
    Field(&'static str, String),
    /// No source recognised the record.
    #[error("no known log source recognises this record")]
    Unrecognised,
    /// The container (gzip stream, JSON array) is unreadable.
    #[error("unreadable file: {0}")]
    Container(String),
}

/// Orders records by event time, stably (files in order, then time), moving each record
/// once: records are large, and logs mostly arrive in order already.
pub fn sort_by_time(records: &mut Vec<Record>) {
    if records.is_sorted_by_key(Record::timestamp) {
        return;
    }
    let mut keys: Vec<(OffsetDateTime, usize)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.timestamp(), i))
        .collect();
    keys.sort_unstable();
    let mut slots: Vec<Option<Record>> = records.drain(..).map(Some).collect();
    records.extend(
        keys.into_iter()
            .filter_map(|(_, i)| slots.get_mut(i)?.take()),
    );
}

/// The strings [`sniff`] looks for, searched with finders built once (building a finder
/// per look cost more than the search on every record).
const SNIFF_NEEDLES: [&str; 18] = [
    "\"eventSource\"",
    "\"eventName\"",
    "ModelInvocationLog",
    "\"schemaType\"",
    "\"protoPayload\"",
    "organization.audit_log",
    "\"effective_at\"",
    "\"actor\"",
    "\"results\"",
    "\"start_time\"",
    "GatewayLogs",
    "\"backendUrl\"",
    "\"BackendUrl\"",
    "\"eventTimestamp\"",
    "\"Administrative\"",
    "\"operationName\"",
    "\"category\"",
    "\"Category\"",
];

/// ARM operation markers (lower-case) [`operation_has_slash`] looks for.
const ARM_NEEDLES: [&str; 4] = ["/action", "/write", "/delete", "microsoft."];

fn finders(needles: &[&'static str]) -> Vec<memchr::memmem::Finder<'static>> {
    needles
        .iter()
        .map(|n| memchr::memmem::Finder::new(n.as_bytes()))
        .collect()
}

/// Which source wrote a record, from cheap looks at its text (no full parse).
pub fn sniff(text: &str) -> Option<Source> {
    static F: std::sync::LazyLock<Vec<memchr::memmem::Finder<'static>>> =
        std::sync::LazyLock::new(|| finders(&SNIFF_NEEDLES));
    let has = |i: usize| F.get(i).is_some_and(|f| f.find(text.as_bytes()).is_some());
    if has(0) && has(1) {
        Some(Source::Cloudtrail)
    } else if has(2) && has(3) {
        Some(Source::BedrockInvocation)
    } else if has(4) {
        Some(Source::VertexAudit)
    } else if has(5) || (has(6) && has(7)) {
        Some(Source::OpenaiAudit)
    } else if has(8) && has(9) {
        Some(Source::OpenaiUsage)
    } else if has(10) || has(11) || has(12) {
        Some(Source::AzureApim)
    } else if has(13)
        || has(14)
        || (has(15) && F.get(15).is_some_and(|f| operation_has_slash(text, f)))
    {
        Some(Source::AzureActivity)
    } else if has(16) || has(17) {
        Some(Source::AzureDiagnostics)
    } else {
        None
    }
}

/// Whether the record's `operationName` looks like an ARM operation (`PROVIDER/…/ACTION`).
fn operation_has_slash(text: &str, operation: &memchr::memmem::Finder<'_>) -> bool {
    static F: std::sync::LazyLock<Vec<memchr::memmem::Finder<'static>>> =
        std::sync::LazyLock::new(|| finders(&ARM_NEEDLES));
    let Some(i) = operation.find(text.as_bytes()) else {
        return false;
    };
    let rest = text.as_bytes().get(i + 15..).unwrap_or(&[]);
    // The 120 bytes after the name, lower-cased on the stack (every Azure diagnostic record
    // comes here).
    let mut buf = [0u8; 120];
    let n = rest.len().min(buf.len());
    let lower = buf.get_mut(..n).unwrap_or_default();
    lower.copy_from_slice(rest.get(..n).unwrap_or_default());
    lower.make_ascii_lowercase();
    F.iter().any(|f| f.find(lower).is_some())
}

/// Parses one record of a known source. Most records give one event; a usage bucket gives
/// one per result.
pub fn parse_record(source: Source, text: &str) -> Result<Vec<Record>, ParseError> {
    match source {
        Source::Cloudtrail => aws::cloudtrail(text).map(|r| vec![r]),
        Source::BedrockInvocation => aws::invocation(text).map(|r| vec![r]),
        Source::AzureDiagnostics => azure::diagnostics(text).map(|r| vec![r]),
        Source::AzureApim => azure::apim(text).map(|r| vec![r]),
        Source::AzureActivity => azure::activity(text).map(|r| vec![r]),
        Source::OpenaiAudit => openai::audit(text).map(|r| vec![r]),
        Source::OpenaiUsage => openai::usage(text),
        Source::VertexAudit => gcp::vertex(text).map(|r| vec![r]),
    }
}

/// A record that could not be used, and where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// File (as named by the caller).
    pub file: String,
    /// 1-based line the record starts on.
    pub line: usize,
    /// Why.
    pub error: ParseError,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.error)
    }
}

/// What one file gave.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Events, in file order.
    pub records: Vec<Record>,
    /// Records that could not be used.
    pub bad: Vec<BadRecord>,
    /// Records read per source.
    pub per_source: std::collections::BTreeMap<Source, u64>,
}

/// Parses a whole file's bytes (gzip or not, any container), recognising each record's
/// source unless `forced`. Never fails: problems are in [`Parsed::bad`].
pub fn parse_bytes(file: &str, bytes: &[u8], forced: Option<Source>) -> Parsed {
    let mut out = Parsed::default();
    let mut sink = |r: Result<Record, BadRecord>| match r {
        Ok(rec) => out.records.push(rec),
        Err(b) => out.bad.push(b),
    };
    let mut counts = std::collections::BTreeMap::new();
    for_each_record(file, bytes, forced, &mut counts, &mut sink);
    out.per_source = counts;
    out
}

/// Streams a file's records to `sink` (the allocation-light path the benchmark and the CLI
/// use). `per_source` counts records read per source.
pub fn for_each_record(
    file: &str,
    bytes: &[u8],
    forced: Option<Source>,
    per_source: &mut std::collections::BTreeMap<Source, u64>,
    sink: &mut dyn FnMut(Result<Record, BadRecord>),
) {
    let mut one = |line: usize, text: &str| {
        let bad = |error| BadRecord {
            file: file.to_owned(),
            line,
            error,
        };
        let source = match forced {
            Some(s) => s,
            None => match sniff(text) {
                Some(s) => s,
                None => {
                    sink(Err(bad(ParseError::Unrecognised)));
                    return;
                }
            },
        };
        *per_source.entry(source).or_default() += 1;
        // One record per line for all but usage buckets: handed on directly, without the
        // one-element `Vec` [`parse_record`] returns (an 800-byte allocation and copy each).
        let one = match source {
            Source::Cloudtrail => aws::cloudtrail(text),
            Source::BedrockInvocation => aws::invocation(text),
            Source::AzureDiagnostics => azure::diagnostics(text),
            Source::AzureApim => azure::apim(text),
            Source::AzureActivity => azure::activity(text),
            Source::OpenaiAudit => openai::audit(text),
            Source::VertexAudit => gcp::vertex(text),
            Source::OpenaiUsage => match openai::usage(text) {
                Ok(recs) => {
                    for r in recs {
                        sink(Ok(r));
                    }
                    return;
                }
                Err(e) => Err(e),
            },
        };
        match one {
            Ok(r) => sink(Ok(r)),
            Err(e) => sink(Err(bad(e))),
        }
    };
    if let Err(e) = container::records(bytes, &mut one) {
        sink(Err(BadRecord {
            file: file.to_owned(),
            line: e.line,
            error: ParseError::Container(e.message),
        }));
    }
}
