//! `stormwall-loadgen`: a closed-loop HTTP load generator for Stormwall benchmarks.
//!
//! Each worker owns one keep-alive HTTP/1.1 connection (TCP_NODELAY) and sends the next
//! request as soon as the previous body was read in full, so latency includes the whole
//! body (the last SSE event for streams). Requests that start during `--warmup` are sent
//! but not measured. `--scenario image` sends image generation requests whose prompts all
//! differ, so a gateway with the encoder tier embeds every one (its embedding cache never
//! answers). A second mode, `--create-keys N`, creates API keys through the admin API in
//! parallel and writes them one per line, for `--keys-file`.

// A command-line tool reports on stdout and stderr by design; connection drivers are
// detached tasks, which is fine in test tooling (the ban protects the gateway's request path).
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Filler for prompts: plain, benign English so content screening does its normal work
/// without matching any rule.
const FILLER: &str =
    "The quick brown fox jumps over the lazy dog while the committee reviews the quarterly plan. ";

/// Filler for image prompts: a benign scene description, as image prompts are written (the
/// encoder benchmark's prompt, `crates/stormwall-safety/benches/encoder.rs`).
const IMAGE_FILLER: &str = "a lighthouse on a rocky coast at dusk, oil painting, warm light, \
    highly detailed, calm sea, gulls circling over the harbour, fishing boats resting by the \
    pier, soft clouds, golden hour, a quiet village on the hill behind, wide angle, cinematic \
    composition, by a fictional painter, ";

/// Ends every image prompt: `variation RUN REQUEST`, six digits each — the run's from the
/// clock, the request's a counter — so no two prompts are equal, within a run or across the
/// runs of a benchmark (a gateway keeps recent embeddings; a prompt it saw in an earlier run
/// would not reach its encoder).
const IMAGE_SUFFIX: &str = "variation 000000 000000";

/// Digits of each number in [`IMAGE_SUFFIX`].
const SUFFIX_DIGITS: usize = 6;

/// Default measured duration when neither `--duration` nor `--requests` is given.
const DEFAULT_DURATION_SECS: f64 = 5.0;

/// What the requests ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Chat completions (or whatever `--path` names) with the same plain-English prompt.
    Chat,
    /// Image generations (`/v1/images/generations`, model `dall-e-3` unless given) with a
    /// scene-description prompt made unique per request by a counter at its end.
    Image,
}

/// Generates closed-loop HTTP load and reports throughput and latency percentiles.
///
/// TSV output (--tsv) is one line: rps, p50_ms, p90_ms, p99_ms, errors, sent, ok,
/// ttfb_p50_ms, ttfb_p99_ms.
#[derive(Debug, Parser)]
#[command(name = "stormwall-loadgen", version)]
struct Args {
    /// Base URL of the server under test, e.g. http://127.0.0.1:8080 (a path prefix is kept).
    #[arg(long)]
    url: String,
    /// API key, sent as `Authorization: Bearer KEY` (or raw in --key-header).
    #[arg(long)]
    key: Option<String>,
    /// File with one API key per line; requests rotate through the keys.
    #[arg(long, conflicts_with = "key")]
    keys_file: Option<PathBuf>,
    /// Send the key raw in this header instead of `Authorization: Bearer` (e.g. `api-key`).
    #[arg(long)]
    key_header: Option<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Concurrent workers, one connection each.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Measured seconds, after the warm-up (default 5).
    #[arg(long, conflicts_with = "requests")]
    duration: Option<f64>,
    /// Measured requests to send, after the warm-up (instead of --duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds of unmeasured warm-up traffic first.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// What to send: chat (default) or image.
    #[arg(long, value_enum, default_value = "chat")]
    scenario: Scenario,
    /// Ask for a streamed response (`"stream": true` with usage).
    #[arg(long)]
    stream: bool,
    /// Prompt size in bytes.
    #[arg(long, default_value_t = 1024)]
    prompt_bytes: usize,
    /// Request path (and query), appended to the URL (default `/v1/chat/completions`;
    /// `/v1/images/generations` with `--scenario image`).
    #[arg(long)]
    path: Option<String>,
    /// Model named in the request body (default `gpt-4o-mini`; `dall-e-3` with
    /// `--scenario image`).
    #[arg(long)]
    model: Option<String>,
    /// `max_tokens` (or `max_output_tokens`) in the request body.
    #[arg(long, default_value_t = 16)]
    max_tokens: u64,
    /// Per-request timeout in seconds; a timeout counts as an error.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long, conflicts_with = "tsv")]
    json: bool,
    /// Print one tab-separated line (columns in --help) instead of text.
    #[arg(long)]
    tsv: bool,
    /// Key-creation mode: create N keys via POST {url}/admin/keys and print them (or write --keys-out).
    #[arg(long)]
    create_keys: Option<usize>,
    /// Tenant for --create-keys.
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Where --create-keys writes the keys, one per line (default: stdout).
    #[arg(long)]
    keys_out: Option<PathBuf>,
    /// Environment variable holding the admin bearer token for --create-keys.
    #[arg(long, default_value = "STORMWALL_ADMIN_TOKEN")]
    admin_token_env: String,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let image = args.scenario == Scenario::Image;
    if image && args.stream {
        eprintln!("stormwall-loadgen: --scenario image has no streamed form (drop --stream)");
        return ExitCode::from(2);
    }
    let (path, model) = if image {
        ("/v1/images/generations", "dall-e-3")
    } else {
        ("/v1/chat/completions", "gpt-4o-mini")
    };
    args.path.get_or_insert_with(|| path.to_owned());
    args.model.get_or_insert_with(|| model.to_owned());
    match try_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stormwall-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn try_main(args: Args) -> Result<(), BoxError> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.build()?;
    if args.create_keys.is_some() {
        runtime.block_on(create_keys(args))
    } else {
        runtime.block_on(load(args))
    }
}

/// Where to connect and what to put in the request line and `Host` header.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    /// Base path prefix from the URL, without a trailing slash.
    prefix: String,
}

async fn target(url: &str) -> Result<Target, BoxError> {
    let uri: Uri = url.parse()?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("only http:// URLs are supported, got {url}").into());
    }
    let authority = uri.authority().ok_or("URL has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((authority.host(), port))
        .await?
        .next()
        .ok_or_else(|| format!("cannot resolve {}", authority.host()))?;
    Ok(Target {
        addr,
        host: HeaderValue::from_str(authority.as_str())?,
        prefix: uri.path().trim_end_matches('/').to_owned(),
    })
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection ends when the worker drops its sender or the server closes it.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one request and reads the whole body; returns status, body and time to first byte.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    start: Instant,
) -> Result<(StatusCode, Bytes, Duration), BoxError> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut first_byte = None;
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(chunk) = frame?.into_data() {
            first_byte.get_or_insert_with(|| start.elapsed());
            data.extend_from_slice(&chunk);
        }
    }
    let ttfb = first_byte.unwrap_or_else(|| start.elapsed());
    Ok((status, Bytes::from(data), ttfb))
}

/// `--prompt-bytes` of `filler` repeated (the fillers are ASCII: any cut is a character
/// boundary).
fn prompt_of(filler: &str, bytes: usize) -> String {
    let mut prompt = String::with_capacity(bytes + filler.len());
    while prompt.len() < bytes {
        prompt.push_str(filler);
    }
    prompt.truncate(bytes);
    prompt
}

/// The request body, or with `--scenario image` the body split where each request's
/// numbers go (they replace [`IMAGE_SUFFIX`]'s zeros).
fn request_body(args: &Args) -> (Bytes, Option<(String, String)>) {
    if args.scenario == Scenario::Image {
        let mut prompt = prompt_of(
            IMAGE_FILLER,
            args.prompt_bytes.saturating_sub(IMAGE_SUFFIX.len()),
        );
        prompt.push_str(IMAGE_SUFFIX);
        let body = serde_json::json!({"model": args.model, "prompt": prompt, "n": 1}).to_string();
        let numbers = 2 * SUFFIX_DIGITS + 1;
        // The suffix is plain ASCII, so it appears verbatim in the JSON, once.
        if let Some(at) = body.find(IMAGE_SUFFIX) {
            let cut = at + IMAGE_SUFFIX.len() - numbers;
            let (head, tail) = body.split_at(cut);
            return (
                Bytes::from(body.clone()),
                Some((head.to_owned(), tail[numbers..].to_owned())),
            );
        }
        return (Bytes::from(body), None);
    }
    let prompt = prompt_of(FILLER, args.prompt_bytes);
    let path = args.path.as_deref().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    let mut body = if path.ends_with("/chat/completions") {
        serde_json::json!({
            "model": args.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": args.max_tokens,
        })
    } else if path.ends_with("/completions") {
        serde_json::json!({"model": args.model, "prompt": prompt, "max_tokens": args.max_tokens})
    } else if path.ends_with("/embeddings") {
        serde_json::json!({"model": args.model, "input": prompt})
    } else if path.ends_with("/responses") {
        serde_json::json!({"model": args.model, "input": prompt, "max_output_tokens": args.max_tokens})
    } else if path.ends_with("/images/generations") {
        serde_json::json!({"model": args.model, "prompt": prompt, "n": 1})
    } else {
        serde_json::json!({"model": args.model, "messages": [{"role": "user", "content": prompt}]})
    };
    if args.stream
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert("stream".into(), true.into());
        if !path.ends_with("/responses") {
            obj.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
        }
    }
    (Bytes::from(body.to_string()), None)
}

/// The body of request `n` of run `run` from a split body: both numbers zero-padded to six
/// digits (the counter wraps after a million requests).
fn numbered_body((head, tail): &(String, String), run: u64, n: u64) -> Bytes {
    Bytes::from(format!(
        "{head}{:06} {:06}{tail}",
        run % 1_000_000,
        n % 1_000_000
    ))
}

/// A number for this run: the clock's microseconds, so two runs (even of one second each)
/// differ.
fn run_number() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            u64::from(d.subsec_micros()) + d.as_secs() * 1_000_000
        })
}

/// What one worker measured.
#[derive(Debug, Default)]
struct Stats {
    latencies_us: Vec<u32>,
    ttfb_us: Vec<u32>,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    timeouts: u64,
    /// All requests sent, warm-up included (for CPU-per-request accounting).
    sent: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        self.ttfb_us.extend(other.ttfb_us);
        self.ok += other.ok;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.timeouts += other.timeouts;
        self.sent += other.sent;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.last_done = self.last_done.max(other.last_done);
    }

    fn errors(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.transport_errors
            + self.timeouts
    }

    fn note_error(&mut self, message: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }
}

/// Everything a worker shares with the others.
struct Plan {
    target: Target,
    path_and_query: Uri,
    base_headers: HeaderMap,
    auth_header: HeaderName,
    keys: Vec<HeaderValue>,
    body: Bytes,
    /// With `--scenario image`: the body around each request's numbers.
    numbered: Option<(String, String)>,
    run: u64,
    next_body: AtomicU64,
    timeout: Duration,
    warm_end: Instant,
    end: Instant,
    /// Measured requests left, in --requests mode.
    budget: Option<AtomicU64>,
    next_key: AtomicUsize,
}

async fn worker(plan: Arc<Plan>) -> Stats {
    let mut stats = Stats::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let start = Instant::now();
        if start >= plan.end {
            break;
        }
        let measured = start >= plan.warm_end;
        if measured
            && let Some(budget) = &plan.budget
            && budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            break;
        }
        let mut conn = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(plan.target.addr).await {
                Ok(s) => s,
                Err(e) => {
                    if measured {
                        stats.transport_errors += 1;
                    }
                    stats.note_error(|| format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let body = match &plan.numbered {
            Some(parts) => numbered_body(
                parts,
                plan.run,
                plan.next_body.fetch_add(1, Ordering::Relaxed),
            ),
            None => plan.body.clone(),
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = plan.path_and_query.clone();
        *request.headers_mut() = plan.base_headers.clone();
        if !plan.keys.is_empty() {
            let i = plan.next_key.fetch_add(1, Ordering::Relaxed) % plan.keys.len();
            request
                .headers_mut()
                .insert(plan.auth_header.clone(), plan.keys[i].clone());
        }
        stats.sent += 1;
        let outcome = tokio::time::timeout(plan.timeout, exchange(&mut conn, request, start)).await;
        let done = Instant::now();
        match outcome {
            Ok(Ok((status, body, ttfb))) => {
                sender = Some(conn);
                if !measured {
                    continue;
                }
                *stats.statuses.entry(status.as_u16()).or_default() += 1;
                stats.last_done = Some(done);
                if status.is_success() {
                    stats.ok += 1;
                    stats.latencies_us.push(micros(done - start));
                    stats.ttfb_us.push(micros(ttfb));
                } else {
                    stats.note_error(|| {
                        format!(
                            "HTTP {status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(300)])
                        )
                    });
                }
            }
            Ok(Err(e)) => {
                if measured {
                    stats.transport_errors += 1;
                    stats.last_done = Some(done);
                }
                stats.note_error(|| format!("transport: {e}"));
            }
            Err(_) => {
                if measured {
                    stats.timeouts += 1;
                    stats.last_done = Some(done);
                }
                stats.note_error(|| format!("timeout after {:?}", plan.timeout));
            }
        }
    }
    stats
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Nearest-rank percentile of a sorted slice, in milliseconds.
fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    f64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]) / 1000.0
}

fn header_line(line: &str) -> Result<(HeaderName, HeaderValue), BoxError> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| format!("--header must be `Name: value`, got {line:?}"))?;
    Ok((
        HeaderName::try_from(name.trim())?,
        HeaderValue::try_from(value.trim())?,
    ))
}

async fn load(args: Args) -> Result<(), BoxError> {
    let target = target(&args.url).await?;
    let path_and_query: Uri = format!(
        "{}{}",
        target.prefix,
        args.path.as_deref().unwrap_or_default()
    )
    .parse()?;

    let mut base_headers = HeaderMap::new();
    base_headers.insert(HOST, target.host.clone());
    base_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    base_headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("stormwall-loadgen/0.1"),
    );
    for line in &args.headers {
        let (name, value) = header_line(line)?;
        base_headers.insert(name, value);
    }

    let raw_keys: Vec<String> = match (&args.key, &args.keys_file) {
        (Some(key), _) => vec![key.clone()],
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        (None, None) => Vec::new(),
    };
    if args.keys_file.is_some() && raw_keys.is_empty() {
        return Err("--keys-file holds no keys".into());
    }
    let (auth_header, keys) = match &args.key_header {
        Some(name) => (
            HeaderName::try_from(name.as_str())?,
            raw_keys
                .iter()
                .map(|k| HeaderValue::try_from(k.as_str()))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => (
            AUTHORIZATION,
            raw_keys
                .iter()
                .map(|k| HeaderValue::try_from(format!("Bearer {k}")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };

    let concurrency = args.concurrency.max(1);
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup.max(0.0));
    let end = match args.requests {
        // Bounded by the budget; the far deadline only guards against a hung server.
        Some(_) => warm_end + Duration::from_secs(3600),
        None => {
            warm_end
                + Duration::from_secs_f64(args.duration.unwrap_or(DEFAULT_DURATION_SECS).max(0.0))
        }
    };
    let (body, numbered) = request_body(&args);
    let plan = Arc::new(Plan {
        target,
        path_and_query,
        base_headers,
        auth_header,
        keys,
        body,
        numbered,
        run: run_number(),
        next_body: AtomicU64::new(0),
        timeout: Duration::from_secs_f64(args.timeout.max(0.001)),
        warm_end,
        end,
        budget: args.requests.map(AtomicU64::new),
        next_key: AtomicUsize::new(0),
    });

    let handles: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(plan.clone())))
        .collect();
    let mut stats = Stats::default();
    for handle in handles {
        stats.merge(handle.await?);
    }
    stats.latencies_us.sort_unstable();
    stats.ttfb_us.sort_unstable();
    report(&args, &stats, plan.warm_end);
    Ok(())
}

fn report(args: &Args, stats: &Stats, warm_end: Instant) {
    let window = stats
        .last_done
        .map_or(0.0, |t| t.saturating_duration_since(warm_end).as_secs_f64());
    let rps = if window > 0.0 {
        stats.ok as f64 / window
    } else {
        0.0
    };
    let lat = &stats.latencies_us;
    let mean_ms = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&v| f64::from(v)).sum::<f64>() / lat.len() as f64 / 1000.0
    };
    let (p50, p90, p99) = (
        percentile_ms(lat, 50.0),
        percentile_ms(lat, 90.0),
        percentile_ms(lat, 99.0),
    );
    let max_ms = percentile_ms(lat, 100.0);
    let (ttfb50, ttfb99) = (
        percentile_ms(&stats.ttfb_us, 50.0),
        percentile_ms(&stats.ttfb_us, 99.0),
    );
    let errors = stats.errors();
    if args.tsv {
        println!(
            "{rps:.1}\t{p50:.3}\t{p90:.3}\t{p99:.3}\t{errors}\t{}\t{}\t{ttfb50:.3}\t{ttfb99:.3}",
            stats.sent, stats.ok
        );
    } else if args.json {
        let statuses: serde_json::Map<String, serde_json::Value> = stats
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), (*n).into()))
            .collect();
        let out = serde_json::json!({
            "url": args.url,
            "path": args.path,
            "scenario": format!("{:?}", args.scenario).to_lowercase(),
            "concurrency": args.concurrency,
            "stream": args.stream,
            "prompt_bytes": args.prompt_bytes,
            "window_s": window,
            "ok": stats.ok,
            "errors": errors,
            "sent_total": stats.sent,
            "rps": rps,
            "p50_ms": p50,
            "p90_ms": p90,
            "p99_ms": p99,
            "max_ms": max_ms,
            "mean_ms": mean_ms,
            "ttfb_p50_ms": ttfb50,
            "ttfb_p99_ms": ttfb99,
            "statuses": statuses,
            "transport_errors": stats.transport_errors,
            "timeouts": stats.timeouts,
            "first_error": stats.first_error,
        });
        println!("{out}");
    } else {
        println!(
            "POST {}{}  concurrency={} stream={} prompt={}B",
            args.url,
            args.path.as_deref().unwrap_or_default(),
            args.concurrency,
            args.stream,
            args.prompt_bytes
        );
        println!(
            "requests: {} ok, {} errors (transport {}, timeouts {}) in {window:.2} s; {} sent incl. warm-up",
            stats.ok, errors, stats.transport_errors, stats.timeouts, stats.sent
        );
        println!("throughput: {rps:.1} req/s");
        println!(
            "latency ms: p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  max {max_ms:.3}  mean {mean_ms:.3}"
        );
        println!("first byte ms: p50 {ttfb50:.3}  p99 {ttfb99:.3}");
        if !stats.statuses.is_empty() {
            let codes: Vec<String> = stats
                .statuses
                .iter()
                .map(|(s, n)| format!("{s}={n}"))
                .collect();
            println!("statuses: {}", codes.join(" "));
        }
    }
    if let Some(e) = &stats.first_error {
        eprintln!("stormwall-loadgen: first error: {e}");
    }
}

/// `--create-keys N`: POST {url}/admin/keys `{"tenant": ...}` N times over `--concurrency`
/// connections and collect the `key` field of each answer.
async fn create_keys(args: Args) -> Result<(), BoxError> {
    let count = args.create_keys.unwrap_or(0);
    let token = std::env::var(&args.admin_token_env)
        .map_err(|_| format!("set {} to the admin token", args.admin_token_env))?;
    let target = target(&args.url).await?;
    let uri: Uri = format!("{}/admin/keys", target.prefix).parse()?;
    let body = Bytes::from(serde_json::json!({"tenant": args.tenant}).to_string());
    let mut headers = HeaderMap::new();
    headers.insert(HOST, target.host.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}"))?,
    );

    let remaining = Arc::new(AtomicU64::new(count as u64));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (remaining, uri, body, headers, addr) = (
            remaining.clone(),
            uri.clone(),
            body.clone(),
            headers.clone(),
            target.addr,
        );
        handles.push(tokio::spawn(async move {
            let mut keys = Vec::new();
            let mut conn = connect(addr).await?;
            while remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                if conn.is_closed() {
                    conn = connect(addr).await?;
                }
                let mut request = Request::new(Full::new(body.clone()));
                *request.method_mut() = Method::POST;
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = headers.clone();
                let (status, body, _) = exchange(&mut conn, request, Instant::now()).await?;
                if !status.is_success() {
                    return Err(format!(
                        "POST /admin/keys: HTTP {status}: {}",
                        String::from_utf8_lossy(&body)
                    )
                    .into());
                }
                let json: serde_json::Value = serde_json::from_slice(&body)?;
                let key = json
                    .get("key")
                    .and_then(|k| k.as_str())
                    .ok_or("POST /admin/keys answer has no `key` field")?;
                keys.push(key.to_owned());
            }
            Ok::<_, BoxError>(keys)
        }));
    }
    let mut keys = Vec::with_capacity(count);
    for handle in handles {
        keys.extend(handle.await??);
    }
    let mut text = keys.join("\n");
    text.push('\n');
    match &args.keys_out {
        Some(path) => std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    eprintln!(
        "stormwall-loadgen: created {} keys in {:.1} s",
        keys.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_prompts_differ_per_request_and_keep_their_length() {
        let mut args = Args::parse_from([
            "stormwall-loadgen",
            "--url",
            "http://127.0.0.1:1",
            "--scenario",
            "image",
            "--prompt-bytes",
            "300",
        ]);
        args.model = Some("dall-e-3".into());
        let (_, numbered) = request_body(&args);
        let parts = numbered.expect("image bodies are numbered");
        let prompts: Vec<String> = [(7, 0), (7, 1), (1_000_042, 999_999)]
            .into_iter()
            .map(|(run, n)| {
                let v: serde_json::Value =
                    serde_json::from_slice(&numbered_body(&parts, run, n)).expect("valid JSON");
                assert_eq!(v["model"], "dall-e-3");
                v["prompt"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        assert!(prompts.iter().all(|p| p.len() == 300), "{prompts:?}");
        assert!(
            prompts[0].ends_with("variation 000007 000000"),
            "{}",
            prompts[0]
        );
        assert!(
            prompts[1].ends_with("variation 000007 000001"),
            "{}",
            prompts[1]
        );
        assert!(
            prompts[2].ends_with("variation 000042 999999"),
            "{}",
            prompts[2]
        );
        assert!(prompts[0].starts_with("a lighthouse on a rocky coast"));
    }

    #[test]
    fn chat_bodies_are_unchanged() {
        let args = Args::parse_from(["stormwall-loadgen", "--url", "http://127.0.0.1:1"]);
        let (body, numbered) = request_body(&Args {
            path: Some("/v1/chat/completions".into()),
            model: Some("gpt-4o-mini".into()),
            ..args
        });
        assert!(numbered.is_none());
        let v: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(
            v["messages"][0]["content"].as_str().map(str::len),
            Some(1024)
        );
        assert_eq!(v["max_tokens"], 16);
    }
}
