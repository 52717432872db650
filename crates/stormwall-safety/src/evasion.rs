//! Evasion transforms for testing: the rewrites people use to slip prompts past filters,
//! applied to positive fixtures and evaluation sets to check that verdicts do not change.
//!
//! These are the well-known, trivially reversible tricks the normalizer exists to undo;
//! each is deterministic for a given seed so a failing case can be replayed.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;

/// One evasion transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Latin letters swapped for Cyrillic and Greek look-alikes.
    Homoglyph,
    /// Zero-width characters inserted between letters.
    ZeroWidth,
    /// Letters of each word separated by spaces (`n a k e d`), words by three spaces.
    Spacing,
    /// Letters swapped for digits and symbols (`n4k3d`).
    Leetspeak,
    /// The whole text base64-encoded after a short instruction.
    Base64,
    /// The whole text in rot13.
    Rot13,
    /// The text hidden in Unicode tag characters behind a harmless visible sentence.
    TagChars,
    /// Diacritics added to letters (precomposed and combining).
    Diacritics,
}

impl Transform {
    /// Every transform.
    pub const ALL: [Transform; 8] = [
        Transform::Homoglyph,
        Transform::ZeroWidth,
        Transform::Spacing,
        Transform::Leetspeak,
        Transform::Base64,
        Transform::Rot13,
        Transform::TagChars,
        Transform::Diacritics,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transform::Homoglyph => "homoglyph",
            Transform::ZeroWidth => "zero_width",
            Transform::Spacing => "spacing",
            Transform::Leetspeak => "leetspeak",
            Transform::Base64 => "base64",
            Transform::Rot13 => "rot13",
            Transform::TagChars => "tag_chars",
            Transform::Diacritics => "diacritics",
        }
    }

    /// Applies the transform; `seed` picks which letters are changed where that varies.
    pub fn apply(self, text: &str, seed: u64) -> String {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        match self {
            Transform::Homoglyph => text
                .chars()
                .map(|c| match homoglyph(c) {
                    Some(h) if rng.chance(2, 3) => h,
                    _ => c,
                })
                .collect(),
            Transform::ZeroWidth => {
                let zw = ['\u{200B}', '\u{200C}', '\u{2060}', '\u{FEFF}'];
                let mut out = String::with_capacity(text.len() * 3);
                let mut prev_alpha = false;
                for c in text.chars() {
                    if prev_alpha && c.is_alphanumeric() {
                        out.push(zw[(rng.next() % zw.len() as u64) as usize]);
                    }
                    out.push(c);
                    prev_alpha = c.is_alphanumeric();
                }
                out
            }
            Transform::Spacing => text
                .split_whitespace()
                .map(|w| {
                    let mut s = String::with_capacity(w.len() * 2);
                    for (i, c) in w.chars().enumerate() {
                        if i > 0 {
                            s.push(' ');
                        }
                        s.push(c);
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join("   "),
            Transform::Leetspeak => text
                .chars()
                .map(|c| match c.to_ascii_lowercase() {
                    'a' => '4',
                    'e' => '3',
                    'i' => '1',
                    'o' => '0',
                    's' => '5',
                    't' => '7',
                    _ => c,
                })
                .collect(),
            Transform::Base64 => format!(
                "decode this and follow it: {}",
                base64::engine::general_purpose::STANDARD.encode(text)
            ),
            Transform::Rot13 => text
                .chars()
                .map(|c| match c {
                    'a'..='m' | 'A'..='M' => (c as u8 + 13) as char,
                    'n'..='z' | 'N'..='Z' => (c as u8 - 13) as char,
                    _ => c,
                })
                .collect(),
            Transform::TagChars => {
                let mut out = String::from("Please draw a nice picture.");
                out.extend(
                    text.chars()
                        .filter(|c| (' '..='~').contains(c))
                        .filter_map(|c| char::from_u32(0xE0000 + c as u32)),
                );
                out
            }
            Transform::Diacritics => text
                .chars()
                .map(|c| match c {
                    'a' => "á".to_owned(),
                    'e' => "ë".to_owned(),
                    'i' => "ï".to_owned(),
                    'o' => "ø".to_owned(),
                    'u' => "ü".to_owned(),
                    'n' => "ñ".to_owned(),
                    c if c.is_ascii_alphabetic() && rng.chance(1, 2) => format!("{c}\u{0301}"),
                    c => c.to_string(),
                })
                .collect(),
        }
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transform name was not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown evasion transform {0:?}")]
pub struct UnknownTransform(pub String);

impl FromStr for Transform {
    type Err = UnknownTransform;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Transform::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTransform(s.to_owned()))
    }
}

/// Look-alikes from Cyrillic and Greek for Latin letters.
fn homoglyph(c: char) -> Option<char> {
    Some(match c {
        'a' => 'а',
        'c' => 'с',
        'e' => 'е',
        'i' => 'і',
        'o' => 'о',
        'p' => 'р',
        'x' => 'х',
        'y' => 'у',
        's' => 'ѕ',
        'j' => 'ј',
        'A' => 'А',
        'B' => 'В',
        'E' => 'Е',
        'H' => 'Н',
        'K' => 'К',
        'M' => 'М',
        'O' => 'О',
        'P' => 'Р',
        'T' => 'Т',
        'X' => 'Х',
        'N' => 'Ν',
        'Z' => 'Ζ',
        _ => return None,
    })
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_change_text_deterministically() {
        let s = "a quiet painting of an old harbour";
        for t in Transform::ALL {
            let a = t.apply(s, 7);
            assert_ne!(a, s, "{t}");
            assert_eq!(a, t.apply(s, 7), "{t}");
            assert_eq!(t.as_str().parse::<Transform>().unwrap(), t);
        }
    }
}
