//! Lexicons as data: term lists per category or feature, compiled into one Aho-Corasick
//! automaton that runs over every view.
//!
//! A lexicon file is TOML: what its terms signal (`feature`, and `category` for category
//! terms), weighted groups of terms, exception phrases inside which its terms do not count
//! (`naked eye`), and positive and negative examples that a test checks. Terms are written
//! plainly and folded like the text; `*` at an end drops the word boundary there
//! (`porn*` matches `pornographic`). A person gazetteer is a separate file of names and
//! aliases supplied by the operator.

use std::collections::HashMap;
use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use crate::category::Category;
use crate::normalize::{View, fold};

/// Built-in lexicon files, embedded at compile time.
pub const BUILTIN_LEXICONS: &[(&str, &str)] = &[
    ("sexual", include_str!("../data/lexicons/sexual.toml")),
    ("minors", include_str!("../data/lexicons/minors.toml")),
    ("violence", include_str!("../data/lexicons/violence.toml")),
    ("hate", include_str!("../data/lexicons/hate.toml")),
    (
        "harassment",
        include_str!("../data/lexicons/harassment.toml"),
    ),
    ("self_harm", include_str!("../data/lexicons/self_harm.toml")),
    ("illicit", include_str!("../data/lexicons/illicit.toml")),
    ("jailbreak", include_str!("../data/lexicons/jailbreak.toml")),
    ("rewrite", include_str!("../data/lexicons/rewrite.toml")),
    ("person", include_str!("../data/lexicons/person.toml")),
    ("likeness", include_str!("../data/lexicons/likeness.toml")),
];

/// Weight given to a gazetteer name: a named real person is near-certain evidence of one.
pub const PERSON_WEIGHT: f32 = 0.95;
/// Matches inside joined single letters need no word boundary when at least this long,
/// since `a n a k e d w o m a n` joins into one word.
const MIN_GLUED_SUBSTRING: usize = 4;

/// What a term's presence says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Direct evidence for a category.
    Category(Category),
    /// A minor is mentioned (combined with sexual terms into `sexual_minors`).
    Minor,
    /// A real person is described without a name (`a celebrity`, `my ex`).
    PersonDescriptor,
    /// A gazetteer name.
    Person,
    /// Intent to depict a likeness (`deepfake`, `face swap`, `photo of`).
    Likeness,
    /// An exception phrase: terms of the same file inside it do not count.
    Exception,
}

/// A lexicon or gazetteer file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LexiconError {
    /// The TOML did not parse or had unknown fields.
    #[error("lexicon {file}: {source}")]
    Parse {
        /// File label.
        file: String,
        /// Parser error.
        #[source]
        source: toml::de::Error,
    },
    /// The file parsed but says something invalid.
    #[error("lexicon {file}: {reason}")]
    Invalid {
        /// File label.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The automaton could not be built.
    #[error("lexicon automaton: {0}")]
    Build(#[from] aho_corasick::BuildError),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    id: String,
    #[serde(default)]
    #[allow(dead_code)] // documentation for readers of the data file
    description: String,
    feature: RawFeature,
    category: Option<Category>,
    #[serde(default)]
    terms: Vec<RawGroup>,
    #[serde(default)]
    exceptions: Vec<String>,
    #[serde(default)]
    examples: Examples,
}

#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawFeature {
    Category,
    Minor,
    PersonDescriptor,
    Likeness,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    weight: f32,
    #[serde(rename = "match")]
    terms: Vec<String>,
}

/// Positive and negative examples of a lexicon file, checked by a test.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    /// Texts in which the file's terms must match.
    #[serde(default)]
    pub positive: Vec<String>,
    /// Texts in which they must not.
    #[serde(default)]
    pub negative: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGazetteer {
    #[serde(default)]
    person: Vec<RawPerson>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerson {
    name: String,
    #[serde(default)]
    aliases: Vec<String>,
}

/// A lexicon file, parsed but not compiled.
#[derive(Debug, Clone)]
pub struct LexiconFile {
    id: String,
    terms: Vec<(String, Feature, f32)>,
    examples: Examples,
}

impl LexiconFile {
    /// Parses a lexicon file; `label` names it in errors.
    pub fn from_toml(label: &str, text: &str) -> Result<LexiconFile, LexiconError> {
        let raw: RawFile = toml::from_str(text).map_err(|source| LexiconError::Parse {
            file: label.to_owned(),
            source,
        })?;
        let invalid = |reason: String| LexiconError::Invalid {
            file: label.to_owned(),
            reason,
        };
        let feature = match (raw.feature, raw.category) {
            (RawFeature::Category, Some(c)) => Feature::Category(c),
            (RawFeature::Category, None) => {
                return Err(invalid("feature = \"category\" needs a category".into()));
            }
            (_, Some(_)) => return Err(invalid("only category files name a category".into())),
            (RawFeature::Minor, None) => Feature::Minor,
            (RawFeature::PersonDescriptor, None) => Feature::PersonDescriptor,
            (RawFeature::Likeness, None) => Feature::Likeness,
        };
        let mut terms = Vec::new();
        for g in raw.terms {
            if !(0.0..=1.0).contains(&g.weight) {
                return Err(invalid(format!("weight {} is outside 0..=1", g.weight)));
            }
            for t in g.terms {
                terms.push((t, feature, g.weight));
            }
        }
        for e in raw.exceptions {
            terms.push((e, Feature::Exception, 0.0));
        }
        if terms.is_empty() {
            return Err(invalid("no terms".into()));
        }
        Ok(LexiconFile {
            id: raw.id,
            terms,
            examples: raw.examples,
        })
    }

    /// Parses a person gazetteer: `[[person]]` tables with `name` and `aliases`.
    pub fn gazetteer_from_toml(label: &str, text: &str) -> Result<LexiconFile, LexiconError> {
        let raw: RawGazetteer = toml::from_str(text).map_err(|source| LexiconError::Parse {
            file: label.to_owned(),
            source,
        })?;
        let terms = raw
            .person
            .into_iter()
            .flat_map(|p| std::iter::once(p.name).chain(p.aliases))
            .map(|n| (n, Feature::Person, PERSON_WEIGHT))
            .collect();
        Ok(LexiconFile {
            id: format!("gazetteer:{label}"),
            terms,
            examples: Examples::default(),
        })
    }

    /// The file's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The file's examples.
    pub fn examples(&self) -> &Examples {
        &self.examples
    }
}

/// How a term's ends must meet word boundaries.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    left: bool,
    right: bool,
}

/// One compiled term.
#[derive(Debug, Clone, Copy)]
pub struct Term {
    /// What it signals.
    pub feature: Feature,
    /// How strongly, in 0..=1.
    pub weight: f32,
    /// Index of the file it came from.
    pub file: u16,
    bounds: Bounds,
    len: usize,
}

/// A term found in a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Index into [`Lexicon::terms`].
    pub term: u32,
    /// Index of the view it was found in.
    pub view: u16,
    /// Byte range in that view.
    pub range: Range<usize>,
}

/// Every lexicon compiled into one automaton.
#[derive(Debug, Clone)]
pub struct Lexicon {
    files: Vec<LexiconFile>,
    terms: Vec<Term>,
    /// Per automaton pattern: the terms that share its folded text.
    pattern_terms: Vec<Vec<u32>>,
    /// Per file: the category its terms signal, for category files.
    file_category: Vec<Option<Category>>,
    ac: AhoCorasick,
}

impl Lexicon {
    /// Compiles files into one automaton.
    pub fn compile(files: Vec<LexiconFile>) -> Result<Lexicon, LexiconError> {
        let mut patterns: Vec<String> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut pattern_terms: Vec<Vec<u32>> = Vec::new();
        let mut terms = Vec::new();
        for (fi, f) in files.iter().enumerate() {
            let file = u16::try_from(fi).map_err(|_| LexiconError::Invalid {
                file: f.id.clone(),
                reason: "too many lexicon files".into(),
            })?;
            for (raw, feature, weight) in &f.terms {
                let t = raw.trim();
                let left = !t.starts_with('*');
                let right = !t.ends_with('*');
                let folded = fold(t.trim_matches('*'));
                if folded.is_empty() {
                    return Err(LexiconError::Invalid {
                        file: f.id.clone(),
                        reason: format!("term {raw:?} folds to nothing"),
                    });
                }
                let id = terms.len() as u32;
                terms.push(Term {
                    feature: *feature,
                    weight: *weight,
                    file,
                    bounds: Bounds { left, right },
                    len: folded.len(),
                });
                let p = *index.entry(folded.clone()).or_insert_with(|| {
                    patterns.push(folded);
                    pattern_terms.push(Vec::new());
                    patterns.len() - 1
                });
                pattern_terms[p].push(id);
            }
        }
        let file_category = files
            .iter()
            .map(|f| {
                f.terms.iter().find_map(|(_, feature, _)| match feature {
                    Feature::Category(c) => Some(*c),
                    _ => None,
                })
            })
            .collect();
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&patterns)?;
        Ok(Lexicon {
            files,
            terms,
            pattern_terms,
            file_category,
            ac,
        })
    }

    /// The built-in lexicons plus an optional gazetteer.
    pub fn builtin(gazetteer: Option<LexiconFile>) -> Result<Lexicon, LexiconError> {
        let mut files = BUILTIN_LEXICONS
            .iter()
            .map(|(label, text)| LexiconFile::from_toml(label, text))
            .collect::<Result<Vec<_>, _>>()?;
        files.extend(gazetteer);
        Lexicon::compile(files)
    }

    /// Compiled terms, indexed by [`Hit::term`].
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// The category a file's terms signal, if it is a category file.
    pub fn file_category(&self, file: u16) -> Option<Category> {
        self.file_category.get(usize::from(file)).copied().flatten()
    }

    /// The files compiled in, indexed by [`Term::file`].
    pub fn files(&self) -> &[LexiconFile] {
        &self.files
    }

    /// Finds every term in every view, honouring word boundaries; terms inside an exception
    /// phrase of their file are dropped, and the exception hits themselves are kept.
    pub fn find(&self, views: &[View], hits: &mut Vec<Hit>) {
        let first = hits.len();
        for (vi, view) in views.iter().enumerate() {
            let text = view.text().as_bytes();
            for m in self.ac.find_overlapping_iter(view.text()) {
                let range = m.start()..m.end();
                let Some(ids) = self.pattern_terms.get(m.pattern().as_usize()) else {
                    continue;
                };
                for &id in ids {
                    let Some(t) = self.terms.get(id as usize) else {
                        continue;
                    };
                    if bounded(text, &range, t, view) {
                        hits.push(Hit {
                            term: id,
                            view: vi as u16,
                            range: range.clone(),
                        });
                    }
                }
            }
        }
        let is_exc = |h: &Hit| {
            self.terms
                .get(h.term as usize)
                .is_some_and(|t| t.feature == Feature::Exception)
        };
        if !hits[first..].iter().any(is_exc) {
            return;
        }
        // Exceptions are rare, so only then is the hit list rebuilt.
        let found = hits.split_off(first);
        let exceptions: Vec<(u16, u16, Range<usize>)> = found
            .iter()
            .filter(|h| is_exc(h))
            .filter_map(|h| {
                let t = self.terms.get(h.term as usize)?;
                Some((t.file, h.view, h.range.clone()))
            })
            .collect();
        for h in found {
            // Exception hits stay in the list: the scorer uses them to discount the model.
            if is_exc(&h) {
                hits.push(h);
                continue;
            }
            let file = self.terms.get(h.term as usize).map(|t| t.file);
            let covered = exceptions.iter().any(|(f, v, r)| {
                Some(*f) == file && *v == h.view && r.start <= h.range.start && h.range.end <= r.end
            });
            if !covered {
                hits.push(h);
            }
        }
    }

    /// Whether any term of file `file` matches in the views of `text`.
    pub fn file_matches(&self, file: usize, text: &str) -> bool {
        let n = crate::normalize::normalize(text);
        let mut hits = Vec::new();
        self.find(&n.views, &mut hits);
        hits.iter().any(|h| {
            self.terms
                .get(h.term as usize)
                .is_some_and(|t| t.file as usize == file && t.feature != Feature::Exception)
        })
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

fn bounded(text: &[u8], r: &Range<usize>, t: &Term, view: &View) -> bool {
    let left_ok =
        !t.bounds.left || r.start == 0 || !text.get(r.start - 1).copied().is_some_and(is_word_byte);
    let right_ok = !t.bounds.right || text.get(r.end).copied().is_none_or(|b| !is_word_byte(b));
    if left_ok && right_ok {
        return true;
    }
    t.len >= MIN_GLUED_SUBSTRING && view.in_glued(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;

    fn lex(src: &str) -> Lexicon {
        Lexicon::compile(vec![LexiconFile::from_toml("t", src).unwrap()]).unwrap()
    }

    const SRC: &str = r#"
id = "t"
feature = "category"
category = "sexual"
exceptions = ["naked eye"]
[[terms]]
weight = 0.9
match = ["naked", "porn*"]
"#;

    fn count(l: &Lexicon, text: &str) -> usize {
        let n = normalize(text);
        let mut hits = Vec::new();
        l.find(&n.views, &mut hits);
        hits.iter()
            .filter(|h| l.terms()[h.term as usize].feature != Feature::Exception)
            .count()
    }

    #[test]
    fn boundaries_prefixes_and_exceptions() {
        let l = lex(SRC);
        assert_eq!(count(&l, "a naked figure"), 1);
        assert_eq!(count(&l, "snakedance"), 0);
        assert_eq!(count(&l, "pornographic"), 1);
        assert_eq!(count(&l, "seen with the naked eye"), 0);
    }

    #[test]
    fn glued_runs_match_inside() {
        let l = lex(SRC);
        assert!(count(&l, "a n a k e d f i g u r e") >= 1);
    }

    #[test]
    fn rejects_bad_files() {
        assert!(LexiconFile::from_toml("x", "id = \"x\"\nfeature = \"category\"").is_err());
        assert!(LexiconFile::from_toml("x", "id = \"x\"\nfeature = \"minor\"\nbogus = 1").is_err());
    }
}
