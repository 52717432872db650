//! Synthetic OpenAI-shaped responses: the gateway's built-in `kind = "mock"` upstream and
//! the testkit's mock HTTP server (and with it the `stormwall-mock` benchmark binary) both
//! answer with [`respond`], so what the tests and the benchmark see is what the built-in
//! upstream serves.
//!
//! Everything here is pure: no I/O, no async, no global state beyond an id counter. The
//! bodies follow the public OpenAI wire format closely enough that the official SDKs parse
//! them, so the gateway's response screening and usage accounting see what production sees.
//! Bodies are built by serializing small borrowed structs (never `serde_json::Value` trees)
//! because this runs inside load benchmarks at well over ten thousand requests a second.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::Serialize;
use stormwall_types::Endpoint;
use stormwall_types::model::ModelList;

/// The reply text, pre-split into "tokens" so streams and `max_tokens` truncation are cheap.
const REPLY_TOKENS: [&str; 12] = [
    "This",
    " is",
    " a",
    " mock",
    " reply",
    " from",
    " Storm",
    "wall",
    "'s",
    " test",
    " upstream",
    ".",
];

/// The revised prompt attached to every generated image.
const IMAGE_REVISED_PROMPT: &str =
    "A plain grey square: a placeholder image from Stormwall's test upstream.";

/// Vector length of embeddings models other than `text-embedding-3-large` (the length of
/// `text-embedding-3-small` and `text-embedding-ada-002`).
const EMBEDDING_DIMENSIONS: usize = 1536;

/// Vector length of `text-embedding-3-large`.
const LARGE_EMBEDDING_DIMENSIONS: usize = 3072;

/// Reported as `system_fingerprint`, as the real API does for chat and completions.
const SYSTEM_FINGERPRINT: &str = "fp_stormwall_mock";

/// Content type of JSON bodies.
const CONTENT_TYPE_JSON: &str = "application/json";

/// Content type of streamed bodies, spelled as the OpenAI API sends it.
const CONTENT_TYPE_SSE: &str = "text/event-stream; charset=utf-8";

/// Terminal event of chat and completions streams.
const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// What the mock needs to know about one request; the caller parses the wire request.
#[derive(Debug, Clone, Copy)]
pub struct MockRequest<'a> {
    /// Which operation was called.
    pub endpoint: Endpoint,
    /// Model (or Azure deployment) name, echoed back in the body.
    pub model: &'a str,
    /// Whether the client asked for server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`: add a final usage chunk to chat and completions streams.
    pub include_usage: bool,
    /// Prompt size in tokens, as estimated by the caller.
    pub prompt_tokens: u64,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens`, whichever was sent.
    pub max_tokens: Option<u64>,
    /// Number of embeddings inputs (0 is treated as 1).
    pub inputs: usize,
    /// Number of images requested (`n`; 0 is treated as 1).
    pub images: u32,
    /// Embeddings `encoding_format: "base64"`: each vector as base64 of little-endian f32s
    /// (what the SDKs ask for by default) instead of a float array.
    pub base64: bool,
    /// Embeddings `dimensions`: shortened vectors (the model's full length when `None`).
    pub dimensions: Option<u64>,
}

/// A reply body: whole, or as a sequence of server-sent events to send one by one.
#[derive(Debug, Clone)]
pub enum MockBody {
    /// A complete JSON body.
    Full(Bytes),
    /// Complete SSE events, each ending in a blank line. Chat and completions streams end
    /// with `data: [DONE]`; Responses streams end with `event: response.completed`, as the
    /// real API does (it sends no `[DONE]`).
    Sse(Vec<Bytes>),
}

/// A complete mock reply.
#[derive(Debug, Clone)]
pub struct MockReply {
    /// HTTP status code.
    pub status: u16,
    /// Value of the `content-type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: MockBody,
}

/// Builds the reply the real API would give to `req`, with synthetic content.
pub fn respond(req: &MockRequest<'_>) -> MockReply {
    let built = match req.endpoint {
        Endpoint::ChatCompletions if req.stream => chat_stream(req).map(sse),
        Endpoint::ChatCompletions => chat_full(req).map(json),
        Endpoint::Completions if req.stream => completions_stream(req).map(sse),
        Endpoint::Completions => completions_full(req).map(json),
        // Embeddings and images have no streaming form; the real API ignores `stream` there.
        Endpoint::Embeddings => match embedding_dimensions(req) {
            Some(dims) => embeddings(req, dims).map(json),
            None => Ok(invalid_dimensions(req.model)),
        },
        Endpoint::ImagesGenerations => images(req).map(json),
        Endpoint::Responses if req.stream => responses_stream(req).map(sse),
        Endpoint::Responses => responses_full(req).map(json),
        Endpoint::Models => Ok(json(models_list(&[req.model]))),
    };
    // Serializing these plain structs into a Vec cannot fail; answering with an
    // OpenAI-shaped 500 keeps the function total without a panic path.
    built.unwrap_or_else(|_| MockReply {
        status: 500,
        content_type: CONTENT_TYPE_JSON,
        body: MockBody::Full(Bytes::from_static(
            br#"{"error":{"message":"mock upstream failed to build a reply","type":"server_error","param":null,"code":null}}"#,
        )),
    })
}

/// The `GET /v1/models` body listing `models`, as the upstream answers it.
pub fn models_list(models: &[&str]) -> Bytes {
    // An empty list is still a valid answer should serialization ever fail.
    to_json(&ModelList::new(models))
        .unwrap_or_else(|_| Bytes::from_static(stormwall_types::model::EMPTY_MODEL_LIST))
}

fn json(body: Bytes) -> MockReply {
    MockReply {
        status: 200,
        content_type: CONTENT_TYPE_JSON,
        body: MockBody::Full(body),
    }
}

fn sse(events: Vec<Bytes>) -> MockReply {
    MockReply {
        status: 200,
        content_type: CONTENT_TYPE_SSE,
        body: MockBody::Sse(events),
    }
}

/// A body built by serialization (which cannot fail for these plain structs).
type Built<T> = Result<T, serde_json::Error>;

fn to_json<T: Serialize>(value: &T) -> Built<Bytes> {
    serde_json::to_vec(value).map(Bytes::from)
}

/// One `data:` event, with an optional `event:` line (the Responses API names its events).
fn sse_event<T: Serialize>(event: Option<&str>, value: &T) -> Built<Bytes> {
    let mut buf = Vec::with_capacity(320);
    if let Some(name) = event {
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'\n');
    }
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut buf, value)?;
    buf.extend_from_slice(b"\n\n");
    Ok(Bytes::from(buf))
}

/// A process-unique id: a per-process salt keeps ids from two mock processes apart, and a
/// counter keeps it cheap (no random source on the hot path).
fn next_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    static SALT: OnceLock<u32> = OnceLock::new();
    let salt = *SALT.get_or_init(|| {
        let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        // Fold the timestamp into 32 bits; only distinctness between processes matters.
        (nanos ^ (nanos >> 32)) as u32
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{salt:08x}{n:016x}")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// How many reply tokens to produce, and whether `max_tokens` cut the reply short.
fn completion_len(req: &MockRequest<'_>) -> (usize, bool) {
    let full = REPLY_TOKENS.len();
    match req.max_tokens {
        Some(max) if max < full as u64 => (max as usize, true),
        _ => (full, false),
    }
}

fn reply_text(tokens: usize) -> String {
    REPLY_TOKENS[..tokens].concat()
}

fn finish_reason(truncated: bool) -> &'static str {
    if truncated { "length" } else { "stop" }
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptTokensDetails,
    completion_tokens_details: CompletionTokensDetails,
}

#[derive(Serialize)]
struct PromptTokensDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize)]
struct CompletionTokensDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Usage {
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: 0,
            audio_tokens: 0,
        },
        completion_tokens_details: CompletionTokensDetails {
            reasoning_tokens: 0,
            audio_tokens: 0,
            accepted_prediction_tokens: 0,
            rejected_prediction_tokens: 0,
        },
    }
}

// ---- chat completions ------------------------------------------------------------------

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [ChatChoice<'a>; 1],
    usage: Usage,
    service_tier: &'static str,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
    annotations: [(); 0],
}

fn chat_full(req: &MockRequest<'_>) -> Built<Bytes> {
    let (tokens, truncated) = completion_len(req);
    let id = next_id("chatcmpl-");
    let text = reply_text(tokens);
    to_json(&ChatCompletion {
        id: &id,
        object: "chat.completion",
        created: now(),
        model: req.model,
        choices: [ChatChoice {
            index: 0,
            message: ChatMessage {
                role: "assistant",
                content: &text,
                refusal: None,
                annotations: [],
            },
            logprobs: None,
            finish_reason: finish_reason(truncated),
        }],
        usage: usage(req.prompt_tokens, tokens as u64),
        service_tier: "default",
        system_fingerprint: SYSTEM_FINGERPRINT,
    })
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    service_tier: &'static str,
    system_fingerprint: &'static str,
    choices: &'a [ChunkChoice<'a>],
    /// Absent unless the client asked for usage; then `null` on every chunk but the last,
    /// exactly like the real API.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
}

fn chat_stream(req: &MockRequest<'_>) -> Built<Vec<Bytes>> {
    let (tokens, truncated) = completion_len(req);
    let id = next_id("chatcmpl-");
    let created = now();
    let no_usage = req.include_usage.then_some(None);
    let chunk = |choices: &[ChunkChoice<'_>], usage: Option<Option<&Usage>>| {
        sse_event(
            None,
            &ChatChunk {
                id: &id,
                object: "chat.completion.chunk",
                created,
                model: req.model,
                service_tier: "default",
                system_fingerprint: SYSTEM_FINGERPRINT,
                choices,
                usage,
            },
        )
    };
    let mut events = Vec::with_capacity(tokens + 4);
    // The real API opens every stream with an empty assistant delta carrying the role.
    events.push(chunk(
        &[ChunkChoice {
            index: 0,
            delta: Delta {
                role: Some("assistant"),
                content: Some(""),
                refusal: Some(None),
            },
            logprobs: None,
            finish_reason: None,
        }],
        no_usage,
    )?);
    for piece in &REPLY_TOKENS[..tokens] {
        events.push(chunk(
            &[ChunkChoice {
                index: 0,
                delta: Delta {
                    content: Some(piece),
                    ..Delta::default()
                },
                logprobs: None,
                finish_reason: None,
            }],
            no_usage,
        )?);
    }
    events.push(chunk(
        &[ChunkChoice {
            index: 0,
            delta: Delta::default(),
            logprobs: None,
            finish_reason: Some(finish_reason(truncated)),
        }],
        no_usage,
    )?);
    if req.include_usage {
        let usage = usage(req.prompt_tokens, tokens as u64);
        events.push(chunk(&[], Some(Some(&usage)))?);
    }
    events.push(Bytes::from_static(SSE_DONE));
    Ok(events)
}

// ---- legacy completions ------------------------------------------------------------------

#[derive(Serialize)]
struct TextCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: &'a [TextChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

fn completions_full(req: &MockRequest<'_>) -> Built<Bytes> {
    let (tokens, truncated) = completion_len(req);
    let id = next_id("cmpl-");
    let text = reply_text(tokens);
    let usage = usage(req.prompt_tokens, tokens as u64);
    to_json(&TextCompletion {
        id: &id,
        object: "text_completion",
        created: now(),
        model: req.model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices: &[TextChoice {
            text: &text,
            index: 0,
            logprobs: None,
            finish_reason: Some(finish_reason(truncated)),
        }],
        usage: Some(Some(&usage)),
    })
}

fn completions_stream(req: &MockRequest<'_>) -> Built<Vec<Bytes>> {
    let (tokens, truncated) = completion_len(req);
    let id = next_id("cmpl-");
    let created = now();
    let no_usage = req.include_usage.then_some(None);
    let chunk = |choices: &[TextChoice<'_>], usage: Option<Option<&Usage>>| {
        sse_event(
            None,
            &TextCompletion {
                id: &id,
                object: "text_completion",
                created,
                model: req.model,
                system_fingerprint: SYSTEM_FINGERPRINT,
                choices,
                usage,
            },
        )
    };
    let mut events = Vec::with_capacity(tokens + 3);
    for piece in &REPLY_TOKENS[..tokens] {
        events.push(chunk(
            &[TextChoice {
                text: piece,
                index: 0,
                logprobs: None,
                finish_reason: None,
            }],
            no_usage,
        )?);
    }
    events.push(chunk(
        &[TextChoice {
            text: "",
            index: 0,
            logprobs: None,
            finish_reason: Some(finish_reason(truncated)),
        }],
        no_usage,
    )?);
    if req.include_usage {
        let usage = usage(req.prompt_tokens, tokens as u64);
        events.push(chunk(&[], Some(Some(&usage)))?);
    }
    events.push(Bytes::from_static(SSE_DONE));
    Ok(events)
}

// ---- embeddings ----------------------------------------------------------------------------

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

/// One embedding as the client asked for it.
#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    /// `encoding_format: "float"` (the API's default).
    Floats(Vec<f32>),
    /// `encoding_format: "base64"`: the little-endian f32 bytes, base64-encoded.
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// The vector length to answer with: the model's own, or the `dimensions` asked for when
/// the model can shorten to it (`None`: out of range, which the real API refuses).
fn embedding_dimensions(req: &MockRequest<'_>) -> Option<usize> {
    let native = native_dimensions(req.model);
    match req.dimensions {
        None => Some(native),
        Some(d) => usize::try_from(d).ok().filter(|d| (1..=native).contains(d)),
    }
}

/// The full vector length of an embeddings model.
fn native_dimensions(model: &str) -> usize {
    if model.starts_with("text-embedding-3-large") {
        LARGE_EMBEDDING_DIMENSIONS
    } else {
        EMBEDDING_DIMENSIONS
    }
}

/// The real API's 400 for `dimensions` the model cannot produce.
fn invalid_dimensions(model: &str) -> MockReply {
    #[derive(Serialize)]
    struct Error<'a> {
        error: Detail<'a>,
    }
    #[derive(Serialize)]
    struct Detail<'a> {
        message: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        param: &'static str,
        code: Option<()>,
    }
    let message = format!(
        "Invalid 'dimensions': this model makes vectors of 1 to {} dimensions.",
        native_dimensions(model)
    );
    let body = to_json(&Error {
        error: Detail {
            message: &message,
            kind: "invalid_request_error",
            param: "dimensions",
            code: None,
        },
    })
    .unwrap_or_else(|_| Bytes::from_static(br#"{"error":{"message":"Invalid 'dimensions'.","type":"invalid_request_error","param":"dimensions","code":null}}"#));
    MockReply {
        status: 400,
        content_type: CONTENT_TYPE_JSON,
        body: MockBody::Full(body),
    }
}

/// A deterministic unit-length vector per input index, with no zero component, so tests
/// can compare exact values and similarity maths behaves as on real embeddings.
fn embedding_vector(index: usize, dims: usize) -> Vec<f32> {
    let raw: Vec<f32> = (0..dims)
        .map(|dim| {
            // A small integer hash mapped onto odd multiples of 1/2048 in (-0.5, 0.5).
            let h = (index as u32).wrapping_mul(2_654_435_761) ^ (dim as u32).wrapping_mul(40_503);
            ((h >> 7) % 1024) as f32 / 1024.0 - 0.5 + 1.0 / 2048.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    raw.into_iter().map(|x| x / norm).collect()
}

fn encode_vector(v: Vec<f32>, base64: bool) -> Vector {
    if !base64 {
        return Vector::Floats(v);
    }
    use base64::Engine as _;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn embeddings(req: &MockRequest<'_>, dims: usize) -> Built<Bytes> {
    let inputs = req.inputs.max(1);
    to_json(&EmbeddingList {
        object: "list",
        data: (0..inputs)
            .map(|index| Embedding {
                object: "embedding",
                index,
                embedding: encode_vector(embedding_vector(index, dims), req.base64),
            })
            .collect(),
        model: req.model,
        usage: EmbeddingUsage {
            prompt_tokens: req.prompt_tokens,
            total_tokens: req.prompt_tokens,
        },
    })
}

// ---- images ----------------------------------------------------------------------------------

#[derive(Serialize)]
struct ImagesResponse {
    created: i64,
    data: Vec<Image>,
}

#[derive(Serialize)]
struct Image {
    url: String,
    revised_prompt: &'static str,
}

fn images(req: &MockRequest<'_>) -> Built<Bytes> {
    let id = next_id("img-");
    to_json(&ImagesResponse {
        created: now(),
        data: (0..req.images.max(1))
            .map(|i| Image {
                url: format!("https://example.invalid/img/{id}-{i}.png"),
                revised_prompt: IMAGE_REVISED_PROMPT,
            })
            .collect(),
    })
}

// ---- responses -------------------------------------------------------------------------------

#[derive(Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: i64,
    status: &'static str,
    error: Option<()>,
    incomplete_details: Option<IncompleteDetails>,
    instructions: Option<()>,
    max_output_tokens: Option<u64>,
    model: &'a str,
    output: &'a [OutputMessage<'a>],
    parallel_tool_calls: bool,
    previous_response_id: Option<()>,
    temperature: f32,
    text: TextConfig,
    tool_choice: &'static str,
    tools: [(); 0],
    top_p: f32,
    truncation: &'static str,
    usage: Option<ResponsesUsage>,
    metadata: Empty,
}

#[derive(Serialize)]
struct IncompleteDetails {
    reason: &'static str,
}

#[derive(Serialize)]
struct TextConfig {
    format: TextFormat,
}

#[derive(Serialize)]
struct TextFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct OutputMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    status: &'static str,
    role: &'static str,
    content: &'a [OutputText<'a>],
}

#[derive(Serialize)]
struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: [(); 0],
}

#[derive(Serialize)]
struct ResponsesUsage {
    input_tokens: u64,
    input_tokens_details: InputTokensDetails,
    output_tokens: u64,
    output_tokens_details: OutputTokensDetails,
    total_tokens: u64,
}

#[derive(Serialize)]
struct InputTokensDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct OutputTokensDetails {
    reasoning_tokens: u64,
}

/// Everything a Responses body or event needs, computed once per request.
struct ResponsesParts<'a> {
    req: &'a MockRequest<'a>,
    id: String,
    msg_id: String,
    created_at: i64,
    tokens: usize,
    truncated: bool,
}

impl<'a> ResponsesParts<'a> {
    fn new(req: &'a MockRequest<'a>) -> Self {
        let (tokens, truncated) = completion_len(req);
        Self {
            req,
            id: next_id("resp_"),
            msg_id: next_id("msg_"),
            created_at: now(),
            tokens,
            truncated,
        }
    }

    /// The response object; `done` selects the final form (status, usage) over the
    /// in-progress one sent at the start of a stream.
    fn object<'b>(&'b self, output: &'b [OutputMessage<'b>], done: bool) -> ResponseObject<'b> {
        let status = match (done, self.truncated) {
            (false, _) => "in_progress",
            (true, false) => "completed",
            (true, true) => "incomplete",
        };
        ResponseObject {
            id: &self.id,
            object: "response",
            created_at: self.created_at,
            status,
            error: None,
            incomplete_details: (done && self.truncated).then_some(IncompleteDetails {
                reason: "max_output_tokens",
            }),
            instructions: None,
            max_output_tokens: self.req.max_tokens,
            model: self.req.model,
            output,
            parallel_tool_calls: true,
            previous_response_id: None,
            temperature: 1.0,
            text: TextConfig {
                format: TextFormat { kind: "text" },
            },
            tool_choice: "auto",
            tools: [],
            top_p: 1.0,
            truncation: "disabled",
            usage: done.then(|| ResponsesUsage {
                input_tokens: self.req.prompt_tokens,
                input_tokens_details: InputTokensDetails { cached_tokens: 0 },
                output_tokens: self.tokens as u64,
                output_tokens_details: OutputTokensDetails {
                    reasoning_tokens: 0,
                },
                total_tokens: self.req.prompt_tokens + self.tokens as u64,
            }),
            metadata: Empty {},
        }
    }

    fn message<'b>(
        &'b self,
        content: &'b [OutputText<'b>],
        status: &'static str,
    ) -> OutputMessage<'b> {
        OutputMessage {
            kind: "message",
            id: &self.msg_id,
            status,
            role: "assistant",
            content,
        }
    }
}

fn output_text(text: &str) -> OutputText<'_> {
    OutputText {
        kind: "output_text",
        text,
        annotations: [],
    }
}

fn responses_full(req: &MockRequest<'_>) -> Built<Bytes> {
    let parts = ResponsesParts::new(req);
    let text = reply_text(parts.tokens);
    let content = [output_text(&text)];
    let output = [parts.message(&content, "completed")];
    to_json(&parts.object(&output, true))
}

#[derive(Serialize)]
struct StreamEvent<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    fields: T,
}

#[derive(Serialize)]
struct WithResponse<'a> {
    response: ResponseObject<'a>,
}

#[derive(Serialize)]
struct WithItem<'a> {
    output_index: u32,
    item: OutputMessage<'a>,
}

#[derive(Serialize)]
struct WithPart<'a> {
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    part: OutputText<'a>,
}

#[derive(Serialize)]
struct WithDelta<'a> {
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    delta: &'a str,
}

#[derive(Serialize)]
struct WithText<'a> {
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    text: &'a str,
}

/// The Responses streaming sequence: created, in_progress, item and part added, one
/// `output_text.delta` per token, the matching `done` events, then `response.completed`
/// (or `response.incomplete` when `max_output_tokens` cut the reply) carrying the usage.
fn responses_stream(req: &MockRequest<'_>) -> Built<Vec<Bytes>> {
    let parts = ResponsesParts::new(req);
    let text = reply_text(parts.tokens);
    let mut events = Vec::with_capacity(parts.tokens + 8);
    let mut seq = 0u64;
    let mut push = |name: &str, fields: &dyn erased::Fields| -> Built<()> {
        events.push(fields.event(name, seq)?);
        seq += 1;
        Ok(())
    };

    let empty_output: [OutputMessage<'_>; 0] = [];
    push(
        "response.created",
        &WithResponse {
            response: parts.object(&empty_output, false),
        },
    )?;
    push(
        "response.in_progress",
        &WithResponse {
            response: parts.object(&empty_output, false),
        },
    )?;
    push(
        "response.output_item.added",
        &WithItem {
            output_index: 0,
            item: parts.message(&[], "in_progress"),
        },
    )?;
    push(
        "response.content_part.added",
        &WithPart {
            item_id: &parts.msg_id,
            output_index: 0,
            content_index: 0,
            part: output_text(""),
        },
    )?;
    for piece in &REPLY_TOKENS[..parts.tokens] {
        push(
            "response.output_text.delta",
            &WithDelta {
                item_id: &parts.msg_id,
                output_index: 0,
                content_index: 0,
                delta: piece,
            },
        )?;
    }
    push(
        "response.output_text.done",
        &WithText {
            item_id: &parts.msg_id,
            output_index: 0,
            content_index: 0,
            text: &text,
        },
    )?;
    push(
        "response.content_part.done",
        &WithPart {
            item_id: &parts.msg_id,
            output_index: 0,
            content_index: 0,
            part: output_text(&text),
        },
    )?;
    let content = [output_text(&text)];
    let item_status = if parts.truncated {
        "incomplete"
    } else {
        "completed"
    };
    push(
        "response.output_item.done",
        &WithItem {
            output_index: 0,
            item: parts.message(&content, item_status),
        },
    )?;
    let output = [parts.message(&content, item_status)];
    let last = if parts.truncated {
        "response.incomplete"
    } else {
        "response.completed"
    };
    push(
        last,
        &WithResponse {
            response: parts.object(&output, true),
        },
    )?;
    Ok(events)
}

/// Lets one closure serialize the several payload types of the Responses stream.
mod erased {
    use super::{Built, StreamEvent, sse_event};
    use bytes::Bytes;
    use serde::Serialize;

    /// A Responses stream payload that can become one named SSE event.
    pub(super) trait Fields {
        /// Serializes `self` as the event `name` with sequence number `seq`.
        fn event(&self, name: &str, seq: u64) -> Built<Bytes>;
    }

    impl<T: Serialize> Fields for T {
        fn event(&self, name: &str, seq: u64) -> Built<Bytes> {
            sse_event(
                Some(name),
                &StreamEvent {
                    kind: name,
                    sequence_number: seq,
                    fields: self,
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn req(endpoint: Endpoint) -> MockRequest<'static> {
        MockRequest {
            endpoint,
            model: "gpt-4o-mini",
            stream: false,
            include_usage: false,
            prompt_tokens: 21,
            max_tokens: None,
            inputs: 0,
            images: 0,
            base64: false,
            dimensions: None,
        }
    }

    fn full_json(reply: &MockReply) -> Value {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/json");
        match &reply.body {
            MockBody::Full(b) => serde_json::from_slice(b).unwrap(),
            MockBody::Sse(_) => panic!("expected a full body"),
        }
    }

    /// Parses every event into (event name, data JSON); `[DONE]` becomes `Value::Null`.
    fn sse_events(reply: &MockReply) -> Vec<(Option<String>, Value)> {
        assert_eq!(reply.status, 200);
        assert!(reply.content_type.starts_with("text/event-stream"));
        let MockBody::Sse(events) = &reply.body else {
            panic!("expected SSE")
        };
        events
            .iter()
            .map(|ev| {
                let s = std::str::from_utf8(ev).unwrap();
                assert!(s.ends_with("\n\n"), "event must end in a blank line: {s:?}");
                let body = &s[..s.len() - 2];
                assert!(!body.contains("\n\n"));
                let mut name = None;
                let mut data = None;
                for line in body.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_owned());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        assert!(data.is_none(), "one data line per event");
                        data = Some(if d == "[DONE]" {
                            Value::Null
                        } else {
                            serde_json::from_str(d).unwrap()
                        });
                    } else {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                (name, data.unwrap())
            })
            .collect()
    }

    #[test]
    fn chat_completion_has_the_openai_shape() {
        let v = full_json(&respond(&req(Endpoint::ChatCompletions)));
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["object"], "chat.completion");
        assert!(v["created"].as_i64().unwrap() > 1_600_000_000);
        assert_eq!(v["model"], "gpt-4o-mini");
        assert!(v["system_fingerprint"].is_string());
        let choice = &v["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(
            choice["message"]["content"],
            "This is a mock reply from Stormwall's test upstream."
        );
        assert!(choice["message"]["refusal"].is_null());
        assert!(choice["logprobs"].is_null());
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 21);
        assert_eq!(v["usage"]["completion_tokens"], 12);
        assert_eq!(v["usage"]["total_tokens"], 33);
    }

    #[test]
    fn max_tokens_truncates_with_finish_reason_length() {
        let mut r = req(Endpoint::ChatCompletions);
        r.max_tokens = Some(3);
        let v = full_json(&respond(&r));
        assert_eq!(v["choices"][0]["message"]["content"], "This is a");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 3);
    }

    #[test]
    fn model_names_are_escaped() {
        let mut r = req(Endpoint::ChatCompletions);
        r.model = "we\"ird\\model\n";
        let v = full_json(&respond(&r));
        assert_eq!(v["model"], "we\"ird\\model\n");
    }

    #[test]
    fn ids_are_unique() {
        let a = full_json(&respond(&req(Endpoint::ChatCompletions)));
        let b = full_json(&respond(&req(Endpoint::ChatCompletions)));
        assert_ne!(a["id"], b["id"]);
    }

    #[test]
    fn chat_stream_without_usage() {
        let mut r = req(Endpoint::ChatCompletions);
        r.stream = true;
        let events = sse_events(&respond(&r));
        // role, 12 content deltas, finish, [DONE]
        assert_eq!(events.len(), 15);
        let (name, first) = &events[0];
        assert!(name.is_none());
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["delta"]["content"], "");
        assert!(first.get("usage").is_none());
        let text: String = events[1..13]
            .iter()
            .map(|(_, v)| v["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, "This is a mock reply from Stormwall's test upstream.");
        let finish = &events[13].1;
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(finish["choices"][0]["delta"], serde_json::json!({}));
        assert!(events[14].1.is_null(), "last event is [DONE]");
        // Every chunk of one stream shares its id.
        let id = &first["id"];
        assert!(events[..14].iter().all(|(_, v)| &v["id"] == id));
    }

    #[test]
    fn chat_stream_include_usage_adds_a_usage_chunk() {
        let mut r = req(Endpoint::ChatCompletions);
        r.stream = true;
        r.include_usage = true;
        r.max_tokens = Some(5);
        let events = sse_events(&respond(&r));
        // role, 5 deltas, finish, usage, [DONE]
        assert_eq!(events.len(), 9);
        assert!(
            events[..7]
                .iter()
                .all(|(_, v)| v["usage"].is_null() && v.get("usage").is_some())
        );
        assert_eq!(events[6].1["choices"][0]["finish_reason"], "length");
        let usage_chunk = &events[7].1;
        assert_eq!(usage_chunk["choices"], serde_json::json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 21);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
        assert_eq!(usage_chunk["usage"]["total_tokens"], 26);
        assert!(events[8].1.is_null());
    }

    #[test]
    fn completions_full_and_stream() {
        let v = full_json(&respond(&req(Endpoint::Completions)));
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(v["object"], "text_completion");
        assert_eq!(
            v["choices"][0]["text"],
            "This is a mock reply from Stormwall's test upstream."
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 33);

        let mut r = req(Endpoint::Completions);
        r.stream = true;
        r.include_usage = true;
        let events = sse_events(&respond(&r));
        // 12 deltas, finish, usage, [DONE]
        assert_eq!(events.len(), 15);
        assert_eq!(events[0].1["object"], "text_completion");
        assert_eq!(events[0].1["choices"][0]["text"], "This");
        assert_eq!(events[12].1["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[13].1["choices"], serde_json::json!([]));
        assert_eq!(events[13].1["usage"]["completion_tokens"], 12);
        assert!(events[14].1.is_null());

        r.include_usage = false;
        let events = sse_events(&respond(&r));
        assert_eq!(events.len(), 14);
        assert!(events.iter().all(|(_, v)| v.get("usage").is_none()));
    }

    #[test]
    fn embeddings_are_deterministic() {
        let mut r = req(Endpoint::Embeddings);
        r.model = "text-embedding-3-small";
        r.inputs = 3;
        r.stream = true; // ignored, as by the real API
        let v = full_json(&respond(&r));
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "text-embedding-3-small");
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        for (i, d) in data.iter().enumerate() {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            let e = d["embedding"].as_array().unwrap();
            assert_eq!(e.len(), EMBEDDING_DIMENSIONS);
            assert!(e.iter().all(|x| x.as_f64().unwrap().abs() <= 0.5));
        }
        assert_ne!(data[0]["embedding"], data[1]["embedding"]);
        assert_eq!(v["usage"]["prompt_tokens"], 21);
        assert_eq!(v["usage"]["total_tokens"], 21);
        let again = full_json(&respond(&r));
        assert_eq!(again["data"], v["data"]);
        // Zero inputs still yields one vector.
        r.inputs = 0;
        assert_eq!(full_json(&respond(&r))["data"].as_array().unwrap().len(), 1);
    }

    fn floats(v: &Value) -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    #[test]
    fn embeddings_look_real_and_honour_encoding_format_and_dimensions() {
        use base64::Engine as _;
        let mut r = req(Endpoint::Embeddings);
        r.model = "text-embedding-3-small";
        r.inputs = 2;
        let v = full_json(&respond(&r));
        let plain = floats(&v["data"][1]["embedding"]);
        assert_eq!(plain.len(), 1536);
        assert!(plain.iter().all(|x| *x != 0.0), "no zero component");
        let norm: f32 = plain.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "unit length, like real embeddings: {norm}"
        );

        r.base64 = true;
        let v = full_json(&respond(&r));
        let text = v["data"][1]["embedding"].as_str().expect("a base64 string");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(decoded, plain, "the same vector, bit for bit");

        r.base64 = false;
        r.dimensions = Some(256);
        assert_eq!(
            floats(&full_json(&respond(&r))["data"][0]["embedding"]).len(),
            256
        );
        r.model = "text-embedding-3-large";
        r.dimensions = None;
        assert_eq!(
            floats(&full_json(&respond(&r))["data"][0]["embedding"]).len(),
            3072
        );
        for bad in [0, 3073, u64::MAX] {
            r.dimensions = Some(bad);
            let reply = respond(&r);
            assert_eq!(reply.status, 400, "{bad}");
            let MockBody::Full(b) = &reply.body else {
                panic!("expected a full body")
            };
            let e: Value = serde_json::from_slice(b).unwrap();
            assert_eq!(e["error"]["param"], "dimensions");
            assert_eq!(e["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn images_list_urls() {
        let mut r = req(Endpoint::ImagesGenerations);
        r.images = 2;
        let v = full_json(&respond(&r));
        assert!(v["created"].is_i64());
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        for d in data {
            let url = d["url"].as_str().unwrap();
            assert!(url.starts_with("https://example.invalid/img/") && url.ends_with(".png"));
            assert!(d["revised_prompt"].is_string());
        }
    }

    #[test]
    fn responses_full_shape() {
        let v = full_json(&respond(&req(Endpoint::Responses)));
        assert!(v["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], "gpt-4o-mini");
        let msg = &v["output"][0];
        assert_eq!(msg["type"], "message");
        assert_eq!(msg["role"], "assistant");
        assert_eq!(msg["content"][0]["type"], "output_text");
        assert_eq!(
            msg["content"][0]["text"],
            "This is a mock reply from Stormwall's test upstream."
        );
        assert_eq!(msg["content"][0]["annotations"], serde_json::json!([]));
        assert_eq!(v["usage"]["input_tokens"], 21);
        assert_eq!(v["usage"]["output_tokens"], 12);
        assert_eq!(v["usage"]["total_tokens"], 33);

        let mut r = req(Endpoint::Responses);
        r.max_tokens = Some(2);
        let v = full_json(&respond(&r));
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(v["output"][0]["content"][0]["text"], "This is");
    }

    #[test]
    fn responses_stream_events() {
        let mut r = req(Endpoint::Responses);
        r.stream = true;
        let events = sse_events(&respond(&r));
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        assert_eq!(names[0], "response.created");
        assert_eq!(names.last().copied(), Some("response.completed"));
        assert_eq!(
            names
                .iter()
                .filter(|n| **n == "response.output_text.delta")
                .count(),
            12
        );
        for (i, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], name.as_deref().unwrap());
            assert_eq!(data["sequence_number"], i);
        }
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert!(events[0].1["response"]["usage"].is_null());
        let text: String = events
            .iter()
            .filter(|(n, _)| n.as_deref() == Some("response.output_text.delta"))
            .map(|(_, v)| v["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text, "This is a mock reply from Stormwall's test upstream.");
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["usage"]["input_tokens"], 21);
        assert_eq!(done["usage"]["output_tokens"], 12);
        assert_eq!(done["usage"]["total_tokens"], 33);
        assert_eq!(done["output"][0]["content"][0]["text"], text);
    }

    #[test]
    fn models_list_shape() {
        let v: Value = serde_json::from_slice(&models_list(&["gpt-4o", "dall-e-3"])).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["id"], "gpt-4o");
        assert_eq!(v["data"][1]["object"], "model");
        assert!(v["data"][1]["created"].is_i64());
        assert!(v["data"][1]["owned_by"].is_string());
        let via_respond = full_json(&respond(&req(Endpoint::Models)));
        assert_eq!(via_respond["data"][0]["id"], "gpt-4o-mini");
    }
}
