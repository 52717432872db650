//! The BERT WordPiece tokenizer, read from a Hugging Face `tokenizer.json`: the
//! `BertNormalizer` (control characters dropped, whitespace unified, CJK ideographs split,
//! accents stripped and lowercased when the file says so), the `BertPreTokenizer` (split on
//! whitespace and punctuation) and greedy longest-match-first WordPiece with `##`
//! continuations, then `[CLS] … [SEP]`.
//!
//! Unicode categories are approximated where std has no table (format characters,
//! punctuation outside ASCII): the shared ranges, which is what everyday text holds.

use std::collections::HashMap;

use super::EncoderError;

/// A WordPiece tokenizer.
#[derive(Debug, Clone)]
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    prefix: String,
    max_chars: usize,
    lowercase: bool,
    strip_accents: bool,
    chinese: bool,
    clean: bool,
}

#[derive(serde::Deserialize)]
struct File {
    normalizer: Option<Normalizer>,
    model: ModelSpec,
}

#[derive(serde::Deserialize)]
struct Normalizer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    clean_text: bool,
    #[serde(default = "yes")]
    handle_chinese_chars: bool,
    #[serde(default)]
    strip_accents: Option<bool>,
    #[serde(default = "yes")]
    lowercase: bool,
}

fn yes() -> bool {
    true
}

#[derive(serde::Deserialize)]
struct ModelSpec {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, u32>,
    #[serde(default = "unk")]
    unk_token: String,
    #[serde(default = "hashes")]
    continuing_subword_prefix: String,
    #[serde(default = "hundred")]
    max_input_chars_per_word: usize,
}

fn unk() -> String {
    "[UNK]".to_owned()
}
fn hashes() -> String {
    "##".to_owned()
}
fn hundred() -> usize {
    100
}

impl WordPiece {
    /// Reads a `tokenizer.json` whose model is WordPiece.
    pub fn from_json(text: &str) -> Result<WordPiece, EncoderError> {
        let f: File = serde_json::from_str(text)
            .map_err(|e| EncoderError::Tokenizer(format!("tokenizer.json: {e}")))?;
        if f.model.kind != "WordPiece" {
            return Err(EncoderError::Tokenizer(format!(
                "tokenizer.json: model type {:?}, only WordPiece is supported",
                f.model.kind
            )));
        }
        let id = |t: &str| {
            f.model
                .vocab
                .get(t)
                .copied()
                .ok_or_else(|| EncoderError::Tokenizer(format!("vocabulary has no {t:?}")))
        };
        let (unk, cls, sep) = (id(&f.model.unk_token)?, id("[CLS]")?, id("[SEP]")?);
        let n = f.normalizer;
        if let Some(n) = &n
            && n.kind != "BertNormalizer"
        {
            return Err(EncoderError::Tokenizer(format!(
                "tokenizer.json: normalizer {:?}, only BertNormalizer is supported",
                n.kind
            )));
        }
        let lowercase = n.as_ref().is_some_and(|n| n.lowercase);
        Ok(WordPiece {
            unk,
            cls,
            sep,
            prefix: f.model.continuing_subword_prefix,
            max_chars: f.model.max_input_chars_per_word,
            lowercase,
            // Hugging Face: an unset strip_accents follows lowercase.
            strip_accents: n
                .as_ref()
                .is_some_and(|n| n.strip_accents.unwrap_or(n.lowercase)),
            chinese: n.as_ref().is_some_and(|n| n.handle_chinese_chars),
            clean: n.as_ref().is_some_and(|n| n.clean_text),
            vocab: f.model.vocab,
        })
    }

    /// Number of entries in the vocabulary.
    pub fn vocab_len(&self) -> usize {
        self.vocab.len()
    }

    /// Token ids of `text` between `[CLS]` and `[SEP]`, at most `max_len` in all (the text's
    /// tokens are cut at the end).
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let budget = max_len.saturating_sub(2);
        let mut ids = Vec::with_capacity(budget.min(text.len() + 2) + 2);
        ids.push(self.cls);
        let normal = self.normalize(text);
        let mut word = String::new();
        'words: for w in pre_tokenize(&normal) {
            if ids.len() > budget {
                break;
            }
            let start = ids.len();
            if w.chars().count() > self.max_chars {
                ids.push(self.unk);
                continue;
            }
            let mut rest = w;
            let mut first = true;
            while !rest.is_empty() {
                // Longest prefix of `rest` in the vocabulary, trying char boundaries from the
                // end.
                let mut found = None;
                for (end, _) in rest
                    .char_indices()
                    .skip(1)
                    .chain(std::iter::once((rest.len(), ' ')))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    let Some(piece) = rest.get(..end) else {
                        continue;
                    };
                    word.clear();
                    if !first {
                        word.push_str(&self.prefix);
                    }
                    word.push_str(piece);
                    if let Some(&id) = self.vocab.get(word.as_str()) {
                        found = Some((id, end));
                        break;
                    }
                }
                let Some((id, end)) = found else {
                    ids.truncate(start);
                    ids.push(self.unk);
                    continue 'words;
                };
                ids.push(id);
                rest = rest.get(end..).unwrap_or("");
                first = false;
            }
        }
        ids.truncate(budget + 1);
        ids.push(self.sep);
        ids
    }

    fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            if self.clean {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    out.push(' ');
                    continue;
                }
            }
            if self.chinese && is_cjk(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
                continue;
            }
            out.push(c);
        }
        if self.strip_accents {
            use unicode_normalization::UnicodeNormalization;
            out = out
                .nfd()
                .filter(|&c| !unicode_normalization::char::is_combining_mark(c))
                .collect();
        }
        if self.lowercase {
            out = out.to_lowercase();
        }
        out
    }
}

/// Words and punctuation marks: whitespace splits and is dropped, each punctuation
/// character is a word of its own.
fn pre_tokenize(text: &str) -> impl Iterator<Item = &str> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        if is_whitespace(c) || is_punctuation(c) {
            if let Some(s) = start.take() {
                out.extend(text.get(s..i));
            }
            if !is_whitespace(c) {
                out.extend(text.get(i..i + c.len_utf8()));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.extend(text.get(s..));
    }
    out.into_iter()
}

fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
        || matches!(
            c,
            '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
        )
}

/// Control and format characters (`Cc`, and the common `Cf`): dropped by the normaliser.
fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{600}'..='\u{605}'
                | '\u{61c}'
                | '\u{6dd}'
                | '\u{70f}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            c,
            '\u{a1}' | '\u{a7}' | '\u{ab}' | '\u{b6}' | '\u{b7}' | '\u{bb}' | '\u{bf}'
                | '\u{2010}'..='\u{2027}'
                | '\u{2030}'..='\u{205e}'
                | '\u{3001}'..='\u{3003}'
                | '\u{3008}'..='\u{3011}'
                | '\u{3014}'..='\u{301f}'
                | '\u{ff01}'..='\u{ff03}'
                | '\u{ff05}'..='\u{ff0a}'
                | '\u{ff0c}'..='\u{ff0f}'
                | '\u{ff1a}'
                | '\u{ff1b}'
                | '\u{ff1f}'
                | '\u{ff20}'
                | '\u{ff3b}'..='\u{ff3d}'
                | '\u{ff3f}'
                | '\u{ff5b}'
                | '\u{ff5d}'
        )
}

fn is_cjk(c: char) -> bool {
    matches!(
        c,
        '\u{4e00}'..='\u{9fff}'
            | '\u{3400}'..='\u{4dbf}'
            | '\u{20000}'..='\u{2a6df}'
            | '\u{2a700}'..='\u{2b73f}'
            | '\u{2b740}'..='\u{2b81f}'
            | '\u{2b820}'..='\u{2ceaf}'
            | '\u{f900}'..='\u{faff}'
            | '\u{2f800}'..='\u{2fa1f}'
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let json = serde_json::json!({
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4,
                    "world": 5, "!": 6, "un": 7, "##aff": 8, "##able": 9, "cafe": 10,
                    ",": 11}}
        });
        WordPiece::from_json(&json.to_string()).unwrap()
    }

    #[test]
    fn greedy_longest_match_with_continuations() {
        let t = tiny();
        assert_eq!(t.encode("Hello, WORLD!", 64), [2, 4, 11, 5, 6, 3]);
        assert_eq!(t.encode("unaffable", 64), [2, 7, 8, 9, 3]);
        // A word with any unmatched piece is one [UNK].
        assert_eq!(t.encode("unaffablex hello", 64), [2, 1, 4, 3]);
        // Accents stripped (lowercase implies it), control characters dropped.
        assert_eq!(t.encode("Café\u{200b}", 64), [2, 10, 3]);
    }

    #[test]
    fn cut_to_the_budget_keeping_cls_and_sep() {
        let t = tiny();
        let ids = t.encode(&"hello ".repeat(100), 8);
        assert_eq!(ids.len(), 8);
        assert_eq!((ids[0], ids[7]), (2, 3));
        assert_eq!(t.encode("", 8), [2, 3]);
    }

    #[test]
    fn a_non_wordpiece_file_is_an_error() {
        let e = WordPiece::from_json(r#"{"model":{"type":"BPE","vocab":{}}}"#).unwrap_err();
        assert!(e.to_string().contains("WordPiece"), "{e}");
        assert!(WordPiece::from_json("not json").is_err());
    }
}
