//! Reads what the gateway needs from a request body — model, stream flag, token limits,
//! end-user id, and the prompt text for estimates and digests — without keeping the body
//! as a tree. Unknown fields are skipped; the body itself is forwarded untouched.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use stormwall_types::Endpoint;

use crate::data::digest::{PromptDigest, PromptDigester};

/// Why a body cannot be proxied. Fixed messages only: never echo client input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub enum BodyError {
    /// Not JSON, or a field has the wrong type.
    InvalidJson,
    /// `model` is required on OpenAI paths.
    MissingModel,
    /// `n` outside 1..=10 on images/generations.
    ImagesN,
    /// `n` other than 1 for a model that makes one image per request (dall-e-3).
    SingleImageN,
    /// `n` outside 1..=128 on chat/completions or completions.
    ChoicesN,
    /// `best_of` outside 0..=20 on completions.
    BestOf,
    /// More than 2048 embeddings inputs.
    TooManyInputs,
}

/// Most images one images/generations request may ask for (OpenAI's limit).
const MAX_IMAGES: i64 = 10;
/// Most choices one chat/completions or completions request may ask for.
const MAX_CHOICES: i64 = 128;
/// Largest `best_of` on completions.
const MAX_BEST_OF: i64 = 20;
/// Most inputs in one embeddings request.
const MAX_EMBEDDING_INPUTS: usize = 2048;

impl BodyError {
    /// The client's message: the same fixed text as `Display`, as a `'static` string.
    pub fn message(self) -> &'static str {
        match self {
            BodyError::InvalidJson => "The request body is not valid JSON for this endpoint.",
            BodyError::MissingModel => "The request body must name a model.",
            BodyError::ImagesN => {
                "Invalid 'n': images/generations accepts 1 to 10 images per request."
            }
            BodyError::SingleImageN => {
                "Invalid 'n': this model generates one image per request; 'n' must be 1."
            }
            BodyError::ChoicesN => {
                "Invalid 'n': chat/completions and completions accept 1 to 128 choices."
            }
            BodyError::BestOf => "Invalid 'best_of': completions accepts 0 to 20.",
            BodyError::TooManyInputs => {
                "Invalid 'input': embeddings accepts at most 2048 inputs per request."
            }
        }
    }
}

/// The fields of a request body the pipeline uses.
#[derive(Debug, Default)]
pub struct ParsedRequest {
    /// `model` (OpenAI paths; Azure carries the deployment in the path instead).
    pub model: Option<String>,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// The largest of `max_tokens`, `max_completion_tokens`, `max_output_tokens`.
    pub max_tokens: Option<u64>,
    /// `user` or `safety_identifier`.
    pub end_user: Option<String>,
    /// `n` for image generations (requested; 1 when absent).
    pub images: Option<u32>,
    /// `n` as sent (images, or choices for chat and completions), before any bound.
    pub n: Option<i64>,
    /// `best_of` as sent (completions).
    pub best_of: Option<i64>,
    /// Embeddings `encoding_format: "base64"` (for the built-in mock's answer).
    pub base64: bool,
    /// Embeddings `dimensions`, when a whole number (for the built-in mock's answer).
    pub dimensions: Option<u64>,
    /// Number of embedding inputs.
    pub inputs: usize,
    /// Input tokens estimated from the text seen.
    pub estimated_input_tokens: u64,
    /// Digests of the prompt (never the text).
    pub digest: PromptDigest,
    /// The whole prompt text for the safety stage — system and developer messages, every
    /// message, instructions, the completions or images prompt, responses input — one part
    /// a line. Empty for embeddings, whose input is not screened. Never logged or stored.
    pub prompt_text: String,
}

impl ParsedRequest {
    /// Records what the request says about itself on its event: streaming and size fields
    /// and the prompt's digests. The gateway and the simulator's imported history both use
    /// this, so they cannot drift.
    pub fn note_into(&self, e: &mut stormwall_types::UsageEvent) {
        e.stream = self.stream;
        e.max_tokens = self.max_tokens;
        e.end_user = self.end_user.clone();
        e.images = self.images;
        e.estimated_input_tokens = self.estimated_input_tokens;
        e.system_prompt_hash = self.digest.system_hash.clone();
        e.prompt_simhash = self.digest.simhash.clone();
        e.prompt_minhash = self.digest.minhash.clone();
        e.prompt_chars = self.digest.chars;
        e.prompt_messages = self.digest.messages;
    }

    /// Refuses counts the provider would refuse — `n`, `best_of`, embeddings inputs — before
    /// they reach an upstream or a budget: an unbounded `n` costs the gateway memory and
    /// time, and a reservation that no key could ever afford. `model` is the routing model
    /// (Azure: the deployment name), for the one per-model rule (dall-e-3 makes one image).
    pub fn check_counts(&self, endpoint: Endpoint, model: &str) -> Result<(), BodyError> {
        let n = self.n.unwrap_or(1);
        match endpoint {
            Endpoint::ImagesGenerations => {
                if !(1..=MAX_IMAGES).contains(&n) {
                    return Err(BodyError::ImagesN);
                }
                if n != 1 && model.starts_with("dall-e-3") {
                    return Err(BodyError::SingleImageN);
                }
            }
            Endpoint::ChatCompletions | Endpoint::Completions => {
                if !(1..=MAX_CHOICES).contains(&n) {
                    return Err(BodyError::ChoicesN);
                }
                if endpoint == Endpoint::Completions
                    && self
                        .best_of
                        .is_some_and(|b| !(0..=MAX_BEST_OF).contains(&b))
                {
                    return Err(BodyError::BestOf);
                }
            }
            Endpoint::Embeddings if self.inputs > MAX_EMBEDDING_INPUTS => {
                return Err(BodyError::TooManyInputs);
            }
            Endpoint::Embeddings | Endpoint::Responses | Endpoint::Models => {}
        }
        Ok(())
    }

    /// The role-play marker verdict, when the prompt reads like a role-play front-end's.
    pub fn roleplay_verdict(&self) -> Option<stormwall_types::SafetyVerdict> {
        stormwall_detect::markers::roleplay_markers(&self.prompt_text)
            .then(stormwall_detect::markers::roleplay_verdict)
    }
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    safety_identifier: Option<Cow<'a, str>>,
    // Signed and wide, so that an out-of-range count gets a message naming the field
    // rather than "not valid JSON".
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    best_of: Option<i64>,
    // Raw, so that an odd value is the upstream's to refuse, as before these were read.
    #[serde(borrow, default)]
    encoding_format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dimensions: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    instructions: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrParts<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Strings(#[serde(borrow)] Vec<Cow<'a, str>>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
}

/// Longest end-user id kept on an event.
const MAX_END_USER_LEN: usize = 256;

/// Parses a JSON request body for `endpoint`.
pub fn parse(
    body: &[u8],
    endpoint: Endpoint,
    digester: &PromptDigester,
) -> Result<ParsedRequest, BodyError> {
    // serde would also accept a JSON array for a struct (fields by position): require an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(BodyError::InvalidJson);
    }
    let f: Fields<'_> = serde_json::from_slice(body).map_err(|_| BodyError::InvalidJson)?;
    let mut texts = PromptTexts {
        full: (endpoint != Endpoint::Embeddings).then(String::new),
        ..PromptTexts::default()
    };
    if let Some(messages) = &f.messages {
        for m in messages {
            let role = m.role.as_deref().unwrap_or("user");
            if let Some(c) = m.content {
                collect_text(c, role, &mut texts, 0);
            }
            texts.messages += 1;
        }
    }
    if let Some(instr) = &f.instructions {
        texts.push("system", instr);
    }
    if let Some(p) = f.prompt {
        collect_text(p, "user", &mut texts, 0);
    }
    let mut inputs = 0;
    if let Some(i) = f.input {
        inputs = count_inputs(i);
        collect_text(i, "user", &mut texts, 0);
    }
    let max_tokens = [f.max_tokens, f.max_completion_tokens, f.max_output_tokens]
        .into_iter()
        .flatten()
        .max();
    let end_user = f
        .user
        .or(f.safety_identifier)
        .map(|u| truncate(&u, MAX_END_USER_LEN).to_owned());
    let digest = digester.digest(texts.system.as_deref(), &texts.root, &texts.all);
    Ok(ParsedRequest {
        model: f.model.map(Cow::into_owned),
        stream: f.stream.unwrap_or(false),
        include_usage: f
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        max_tokens,
        end_user,
        images: (endpoint == Endpoint::ImagesGenerations)
            .then(|| u32::try_from(f.n.unwrap_or(1).max(0)).unwrap_or(u32::MAX)),
        n: f.n,
        best_of: f.best_of,
        base64: f.encoding_format.is_some_and(|v| v.get() == r#""base64""#),
        dimensions: f.dimensions.and_then(|v| v.get().parse().ok()),
        inputs,
        estimated_input_tokens: estimate_tokens(texts.chars, texts.messages),
        digest: PromptDigest {
            chars: texts.chars,
            messages: texts.messages,
            ..digest
        },
        prompt_text: texts.full.unwrap_or_default(),
    })
}

/// Rough token estimate: ~4 bytes a token plus a few tokens of framing per message.
/// Reconciled from the upstream's usage after the call, so it only needs to be close.
pub fn estimate_tokens(chars: u64, messages: u32) -> u64 {
    chars.div_ceil(4) + u64::from(messages) * 4
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Default)]
struct PromptTexts {
    system: Option<String>,
    root: String,
    all: String,
    chars: u64,
    messages: u32,
    /// Every text, for screening (`None`: not kept).
    full: Option<String>,
}

impl PromptTexts {
    /// Longest text kept for digests: enough to fingerprint a prompt's style.
    const DIGEST_CAP: usize = 16 * 1024;

    fn push(&mut self, role: &str, text: &str) {
        self.chars += text.len() as u64;
        if let Some(full) = &mut self.full {
            if !full.is_empty() {
                full.push('\n');
            }
            full.push_str(text);
        }
        if matches!(role, "system" | "developer") {
            if self.system.is_none() {
                self.system = Some(text.to_owned());
            }
            return;
        }
        if self.root.is_empty() && role == "user" {
            self.root.push_str(truncate(text, Self::DIGEST_CAP));
        }
        if self.all.len() < Self::DIGEST_CAP {
            let room = Self::DIGEST_CAP - self.all.len();
            self.all.push_str(truncate(text, room));
            self.all.push('\n');
        }
    }
}

/// Deepest nesting followed when collecting text (responses input items nest one level).
const MAX_DEPTH: u8 = 3;

fn collect_text(raw: &RawValue, role: &str, texts: &mut PromptTexts, depth: u8) {
    if depth > MAX_DEPTH {
        return;
    }
    match serde_json::from_str::<TextOrParts<'_>>(raw.get()) {
        Ok(TextOrParts::Text(t)) => texts.push(role, &t),
        Ok(TextOrParts::Strings(list)) => list.iter().for_each(|t| texts.push(role, t)),
        Ok(TextOrParts::Parts(parts)) => {
            for p in parts {
                let role = p.role.as_deref().unwrap_or(role);
                if let Some(t) = &p.text {
                    texts.push(role, t);
                }
                if let Some(c) = p.content {
                    collect_text(c, role, texts, depth + 1);
                }
            }
        }
        Ok(TextOrParts::Other(_)) | Err(_) => {}
    }
}

/// Number of embeddings inputs: a string or one token array is one input; an array of
/// strings or of token arrays is one per item. Counted without collecting the items.
fn count_inputs(raw: &RawValue) -> usize {
    struct Items;
    impl<'de> serde::de::Visitor<'de> for Items {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let Some(first) = seq.next_element::<&RawValue>()? else {
                return Ok(0);
            };
            let mut n = 1;
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                n += 1;
            }
            // An array of token ids is a single input.
            let tokens = first
                .get()
                .starts_with(|c: char| c == '-' || c.is_ascii_digit());
            Ok(if tokens { 1 } else { n })
        }
    }
    let s = raw.get().trim_start();
    if !s.starts_with('[') {
        return 1;
    }
    let mut de = serde_json::Deserializer::from_str(s);
    serde::Deserializer::deserialize_seq(&mut de, Items).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(body: &str, e: Endpoint) -> Result<ParsedRequest, BodyError> {
        parse(body.as_bytes(), e, &PromptDigester::default())
    }

    #[test]
    fn chat_fields() {
        let r = p(
            r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":50,"user":"u-1",
               "messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":[{"type":"text","text":"Hello there"}]}]}"#,
            Endpoint::ChatCompletions,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(50));
        assert_eq!(r.end_user.as_deref(), Some("u-1"));
        assert_eq!(r.digest.messages, 2);
        assert!(r.digest.system_hash.is_some());
        assert!(r.estimated_input_tokens > 0);
        assert_eq!(r.prompt_text, "You are helpful.\nHello there");
    }

    #[test]
    fn embeddings_count_inputs() {
        let r = p(
            r#"{"model":"e","input":["a","b","c"]}"#,
            Endpoint::Embeddings,
        )
        .unwrap();
        assert_eq!(r.inputs, 3);
        assert!(r.estimated_input_tokens > 0);
        let r = p(r#"{"model":"e","input":"a"}"#, Endpoint::Embeddings).unwrap();
        assert_eq!(r.inputs, 1);
        assert!(r.prompt_text.is_empty(), "embeddings input is not screened");
    }

    #[test]
    fn embeddings_encoding_and_dimensions() {
        let r = p(
            r#"{"model":"e","input":"a","encoding_format":"base64","dimensions":256}"#,
            Endpoint::Embeddings,
        )
        .unwrap();
        assert!(r.base64);
        assert_eq!(r.dimensions, Some(256));
        let r = p(
            r#"{"model":"e","input":"a","encoding_format":"float","dimensions":"x"}"#,
            Endpoint::Embeddings,
        )
        .unwrap();
        assert!(!r.base64);
        assert_eq!(r.dimensions, None, "an odd value is left to the upstream");
    }

    #[test]
    fn a_token_array_is_one_embeddings_input() {
        let r = p(r#"{"model":"e","input":[1,2,3]}"#, Endpoint::Embeddings).unwrap();
        assert_eq!(r.inputs, 1);
        let r = p(r#"{"model":"e","input":[[1,2],[3]]}"#, Endpoint::Embeddings).unwrap();
        assert_eq!(r.inputs, 2);
        let r = p(r#"{"model":"e","input":[]}"#, Endpoint::Embeddings).unwrap();
        assert_eq!(r.inputs, 0);
    }

    #[test]
    fn counts_are_bounded_per_endpoint() {
        let check =
            |body: &str, e: Endpoint, model: &str| p(body, e).unwrap().check_counts(e, model);
        let img = Endpoint::ImagesGenerations;
        assert_eq!(check(r#"{"n":10}"#, img, "dall-e-2"), Ok(()));
        assert_eq!(check(r#"{}"#, img, "dall-e-3"), Ok(()));
        for n in ["0", "11", "-1", "2000000", "9223372036854775807"] {
            let body = format!(r#"{{"n":{n}}}"#);
            assert_eq!(
                check(&body, img, "dall-e-2"),
                Err(BodyError::ImagesN),
                "{n}"
            );
        }
        assert_eq!(
            check(r#"{"n":2}"#, img, "dall-e-3"),
            Err(BodyError::SingleImageN)
        );
        let chat = Endpoint::ChatCompletions;
        assert_eq!(check(r#"{"n":128}"#, chat, "m"), Ok(()));
        assert_eq!(check(r#"{"n":129}"#, chat, "m"), Err(BodyError::ChoicesN));
        assert_eq!(check(r#"{"n":0}"#, chat, "m"), Err(BodyError::ChoicesN));
        let cmpl = Endpoint::Completions;
        assert_eq!(check(r#"{"n":3,"best_of":20}"#, cmpl, "m"), Ok(()));
        assert_eq!(
            check(r#"{"best_of":21}"#, cmpl, "m"),
            Err(BodyError::BestOf)
        );
        assert_eq!(check(r#"{"n":129}"#, cmpl, "m"), Err(BodyError::ChoicesN));
        let emb = Endpoint::Embeddings;
        let inputs = |n: usize| format!(r#"{{"input":{}}}"#, serde_json::json!(vec!["x"; n]));
        assert_eq!(check(&inputs(2048), emb, "e"), Ok(()));
        assert_eq!(
            check(&inputs(2049), emb, "e"),
            Err(BodyError::TooManyInputs)
        );
        assert!(
            BodyError::ImagesN.to_string().contains("'n'")
                && BodyError::BestOf.to_string().contains("'best_of'")
                && BodyError::TooManyInputs.to_string().contains("'input'")
        );
    }

    #[test]
    fn images_default_n() {
        let r = p(
            r#"{"model":"dall-e-3","prompt":"a lighthouse"}"#,
            Endpoint::ImagesGenerations,
        )
        .unwrap();
        assert_eq!(r.images, Some(1));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for b in [
            "",
            "{",
            "[]",
            "null",
            r#"{"model":5}"#,
            r#"{"messages":"x"}"#,
        ] {
            assert!(p(b, Endpoint::ChatCompletions).is_err(), "{b}");
        }
    }

    #[test]
    fn odd_content_shapes_are_tolerated() {
        let r = p(
            r#"{"model":"m","messages":[{"role":"user","content":null},{"role":"user","content":{"x":1}},{"role":"tool"}]}"#,
            Endpoint::ChatCompletions,
        )
        .unwrap();
        assert_eq!(r.digest.messages, 3);
    }
}
