//! Policy profiles: for each endpoint kind and category, what to do at which score.
//!
//! A profile is TOML. Each `[chat]` and `[image]` table maps a category to one rule or a
//! list of tiers (`{ action = "flag", threshold = 0.5 }`); the highest tier whose threshold
//! the score reaches wins, and a category with no rule is allowed. A profile may `extends`
//! a built-in one and override single categories. Built-ins: `default` (image strict),
//! `strict` and `permissive`.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::category::{CATEGORY_COUNT, Category, Kind};

// Actions are recorded on events, so they are shared vocabulary in `stormwall-types`;
// re-exported here so this crate's API keeps its paths.
pub use stormwall_types::safety::Action;

/// One tier of a rule: take `action` once the score reaches `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The action.
    pub action: Action,
    /// Score in 0..=1 at which the action applies.
    pub threshold: f32,
}

/// A profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The TOML did not parse, or named an unknown category, action or field.
    #[error("profile: {0}")]
    Parse(#[from] toml::de::Error),
    /// A threshold outside 0..=1.
    #[error("profile {profile}: {kind}.{category}: threshold {threshold} is outside 0..=1")]
    Threshold {
        /// Profile name.
        profile: String,
        /// Endpoint kind.
        kind: Kind,
        /// Category.
        category: Category,
        /// The bad threshold.
        threshold: f32,
    },
    /// `extends` named no built-in profile.
    #[error("profile {profile}: extends unknown profile {base:?}")]
    UnknownBase {
        /// Profile name.
        profile: String,
        /// The name it tried to extend.
        base: String,
    },
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum RawRules {
    One(Rule),
    Tiers(Vec<Rule>),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    extends: Option<String>,
    keep_evidence: Option<bool>,
    #[serde(default)]
    chat: BTreeMap<Category, RawRules>,
    #[serde(default)]
    image: BTreeMap<Category, RawRules>,
}

/// Per kind and category, the rule tiers sorted by threshold.
type Table = [Vec<Rule>; CATEGORY_COUNT];

/// A content-policy profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    name: String,
    description: String,
    keep_evidence: bool,
    chat: Table,
    image: Table,
}

/// Built-in profiles, embedded at compile time.
pub const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("default", include_str!("../data/profiles/default.toml")),
    ("strict", include_str!("../data/profiles/strict.toml")),
    (
        "permissive",
        include_str!("../data/profiles/permissive.toml"),
    ),
];

impl Profile {
    /// Names of the built-in profiles.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN_PROFILES.iter().map(|(n, _)| *n)
    }

    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Option<Profile> {
        let (_, text) = BUILTIN_PROFILES.iter().find(|(n, _)| *n == name)?;
        Profile::from_toml(text).ok()
    }

    /// Parses a profile; `extends` may name a built-in profile.
    pub fn from_toml(text: &str) -> Result<Profile, ProfileError> {
        Profile::from_raw(toml::from_str(text)?)
    }

    /// Reads a profile from an already parsed TOML table (a profile inlined in a larger
    /// config file): the same format, checks and errors as [`Profile::from_toml`].
    pub fn from_table(table: toml::Table) -> Result<Profile, ProfileError> {
        Profile::from_raw(table.try_into()?)
    }

    fn from_raw(raw: RawProfile) -> Result<Profile, ProfileError> {
        let mut p = match &raw.extends {
            None => Profile {
                name: String::new(),
                description: String::new(),
                keep_evidence: false,
                chat: Default::default(),
                image: Default::default(),
            },
            Some(base) => {
                let text = BUILTIN_PROFILES
                    .iter()
                    .find(|(n, _)| n == base)
                    .map(|(_, t)| *t)
                    .ok_or_else(|| ProfileError::UnknownBase {
                        profile: raw.name.clone(),
                        base: base.clone(),
                    })?;
                let base_raw: RawProfile = toml::from_str(text)?;
                if base_raw.extends.is_some() {
                    // Built-ins are flat; one level of inheritance keeps profiles readable.
                    return Err(ProfileError::UnknownBase {
                        profile: raw.name.clone(),
                        base: base.clone(),
                    });
                }
                Profile::from_toml(text)?
            }
        };
        p.name = raw.name.clone();
        p.description = raw.description;
        if let Some(k) = raw.keep_evidence {
            p.keep_evidence = k;
        }
        for (kind, rules) in [(Kind::Chat, raw.chat), (Kind::Image, raw.image)] {
            for (category, r) in rules {
                let mut tiers = match r {
                    RawRules::One(r) => vec![r],
                    RawRules::Tiers(v) => v,
                };
                for t in &tiers {
                    if !(0.0..=1.0).contains(&t.threshold) {
                        return Err(ProfileError::Threshold {
                            profile: raw.name.clone(),
                            kind,
                            category,
                            threshold: t.threshold,
                        });
                    }
                }
                tiers.sort_by(|a, b| a.threshold.total_cmp(&b.threshold));
                p.table_mut(kind)[category.index()] = tiers;
            }
        }
        Ok(p)
    }

    /// This profile with `floor`'s tiers for `kind` added, so that for every category and
    /// score the stricter action of the two applies. Everything else — name, description,
    /// evidence setting, the other kind's rules — is this profile's.
    ///
    /// The gateway holds image endpoints to `image_profile` this way.
    pub fn with_floor(&self, floor: &Profile, kind: Kind) -> Profile {
        let mut p = self.clone();
        for c in Category::ALL {
            let extra = floor.rules(kind, c);
            if extra.is_empty() {
                continue;
            }
            let tiers = &mut p.table_mut(kind)[c.index()];
            tiers.extend_from_slice(extra);
            // Stable, as when a profile is parsed: `action` takes the strictest tier reached,
            // so the order among equal thresholds never changes a decision.
            tiers.sort_by(|a, b| a.threshold.total_cmp(&b.threshold));
        }
        p
    }

    fn table(&self, kind: Kind) -> &Table {
        match kind {
            Kind::Chat => &self.chat,
            Kind::Image => &self.image,
        }
    }

    fn table_mut(&mut self, kind: Kind) -> &mut Table {
        match kind {
            Kind::Chat => &mut self.chat,
            Kind::Image => &mut self.image,
        }
    }

    /// The profile's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The profile's description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether flagged requests may keep the prompt as evidence.
    pub fn keep_evidence(&self) -> bool {
        self.keep_evidence
    }

    /// The rule tiers for a kind and category, sorted by threshold.
    pub fn rules(&self, kind: Kind, category: Category) -> &[Rule] {
        &self.table(kind)[category.index()]
    }

    /// The action for a score: the strictest tier whose threshold it reaches.
    pub fn action(&self, kind: Kind, category: Category, score: f32) -> Action {
        self.rules(kind, category)
            .iter()
            .filter(|r| score >= r.threshold && score > 0.0)
            .map(|r| r.action)
            .max()
            .unwrap_or(Action::Allow)
    }

    /// The lowest threshold at which this kind and category gets `action` or a stricter one.
    pub fn threshold_for(&self, kind: Kind, category: Category, action: Action) -> Option<f32> {
        self.rules(kind, category)
            .iter()
            .filter(|r| r.action >= action)
            .map(|r| r.threshold)
            .reduce(f32::min)
    }
}

impl Default for Profile {
    /// The built-in `default` profile.
    fn default() -> Self {
        Profile::builtin("default").unwrap_or_else(|| Profile {
            // Unreachable while the embedded file parses, which a unit test checks.
            name: "default".into(),
            description: String::new(),
            keep_evidence: false,
            chat: Default::default(),
            image: Default::default(),
        })
    }
}

impl FromStr for Profile {
    type Err = ProfileError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::from_toml(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_image_is_stricter() {
        for name in Profile::builtin_names() {
            let (_, text) = BUILTIN_PROFILES.iter().find(|(n, _)| *n == name).unwrap();
            let p = Profile::from_toml(text).unwrap();
            assert_eq!(p.name(), name);
        }
        let p = Profile::default();
        assert_eq!(p.name(), "default");
        for c in [Category::Sexual, Category::Violence, Category::Hate] {
            let chat = p.threshold_for(Kind::Chat, c, Action::Flag).unwrap_or(1.0);
            let image = p.threshold_for(Kind::Image, c, Action::Flag).unwrap_or(1.0);
            assert!(image <= chat, "{c}");
            assert_eq!(p.action(Kind::Image, c, 0.99), Action::Block, "{c}");
        }
    }

    #[test]
    fn extends_and_tiers() {
        let p = Profile::from_toml(
            r#"
name = "mine"
extends = "default"
[chat]
sexual = [{ action = "block", threshold = 0.9 }, { action = "log", threshold = 0.2 }]
"#,
        )
        .unwrap();
        assert_eq!(p.action(Kind::Chat, Category::Sexual, 0.5), Action::Log);
        assert_eq!(p.action(Kind::Chat, Category::Sexual, 0.95), Action::Block);
        assert_eq!(p.action(Kind::Chat, Category::Sexual, 0.0), Action::Allow);
        let d = Profile::default();
        assert_eq!(
            p.rules(Kind::Image, Category::Sexual),
            d.rules(Kind::Image, Category::Sexual)
        );
    }

    #[test]
    fn rejects_bad_profiles() {
        assert!(
            Profile::from_toml(
                "name = \"x\"\n[chat]\nsexual = { action = \"nuke\", threshold = 0.5 }"
            )
            .is_err()
        );
        assert!(
            Profile::from_toml(
                "name = \"x\"\n[chat]\nnot_a_category = { action = \"block\", threshold = 0.5 }"
            )
            .is_err()
        );
        assert!(
            Profile::from_toml(
                "name = \"x\"\n[chat]\nsexual = { action = \"block\", threshold = 1.5 }"
            )
            .is_err()
        );
        assert!(Profile::from_toml("name = \"x\"\nextends = \"nope\"").is_err());
        assert!(Profile::from_toml("name = \"x\"\nbogus = 1").is_err());
    }

    /// How the gateway used to combine profiles: write the combination as a profile and
    /// parse it back. `with_floor` must give the same rules.
    fn floor_by_text(base: &Profile, floor: &Profile, kind: Kind) -> Profile {
        let tiers = |rules: &[Rule]| {
            let items: Vec<String> = rules
                .iter()
                .map(|r| {
                    format!(
                        "{{ action = \"{}\", threshold = {:?} }}",
                        r.action, r.threshold
                    )
                })
                .collect();
            format!("[{}]", items.join(", "))
        };
        let mut text = format!(
            "name = {:?}\nkeep_evidence = {}\n",
            base.name(),
            base.keep_evidence()
        );
        for k in [Kind::Chat, Kind::Image] {
            text.push_str(&format!("[{k}]\n"));
            for c in Category::ALL {
                let mut r = base.rules(k, c).to_vec();
                if k == kind {
                    r.extend_from_slice(floor.rules(k, c));
                }
                if !r.is_empty() {
                    text.push_str(&format!("{c} = {}\n", tiers(&r)));
                }
            }
        }
        Profile::from_toml(&text).unwrap()
    }

    #[test]
    fn with_floor_takes_the_stricter_action_at_every_score() {
        let base = Profile::builtin("permissive").unwrap();
        let floor = Profile::builtin("default").unwrap();
        let p = base.with_floor(&floor, Kind::Image);
        assert_eq!(p.name(), base.name());
        assert_eq!(p.description(), base.description());
        assert_eq!(p.keep_evidence(), base.keep_evidence());
        for c in Category::ALL {
            assert_eq!(p.rules(Kind::Chat, c), base.rules(Kind::Chat, c), "{c}");
            let image = p.rules(Kind::Image, c);
            assert!(image.windows(2).all(|w| w[0].threshold <= w[1].threshold));
            for i in 0..=100u8 {
                let score = f32::from(i) / 100.0;
                let stricter =
                    base.action(Kind::Image, c, score)
                        .max(floor.action(Kind::Image, c, score));
                assert_eq!(p.action(Kind::Image, c, score), stricter, "{c} {score}");
            }
        }
        // The permissive profile only logs sexual images; the default's image tiers block.
        assert_eq!(base.action(Kind::Image, Category::Sexual, 0.9), Action::Log);
        assert_eq!(p.action(Kind::Image, Category::Sexual, 0.9), Action::Block);
        // A floor with no tiers for the kind changes nothing.
        assert_eq!(
            base.with_floor(
                &Profile::from_toml("name = \"empty\"").unwrap(),
                Kind::Image
            ),
            base
        );
    }

    #[test]
    fn with_floor_gives_the_rules_the_text_round_trip_gave() {
        let mut profiles: Vec<Profile> = Profile::builtin_names()
            .filter_map(Profile::builtin)
            .collect();
        profiles.push(
            Profile::from_toml(
                r#"
name = "tiers"
keep_evidence = true
[chat]
violence = [{ action = "block", threshold = 0.9 }, { action = "log", threshold = 0.3 }]
[image]
sexual = [{ action = "flag", threshold = 0.35 }, { action = "log", threshold = 0.35 }]
hate = { action = "block", threshold = 0.123456789 }
"#,
            )
            .unwrap(),
        );
        for base in &profiles {
            for floor in &profiles {
                for kind in [Kind::Chat, Kind::Image] {
                    let typed = base.with_floor(floor, kind);
                    let text = floor_by_text(base, floor, kind);
                    for k in [Kind::Chat, Kind::Image] {
                        for c in Category::ALL {
                            assert_eq!(
                                typed.rules(k, c),
                                text.rules(k, c),
                                "{} + {} ({kind}): {k}.{c}",
                                base.name(),
                                floor.name()
                            );
                        }
                    }
                    assert_eq!(typed.name(), text.name());
                    assert_eq!(typed.keep_evidence(), text.keep_evidence());
                }
            }
        }
    }

    #[test]
    fn from_table_reads_like_from_toml() {
        let texts: Vec<&str> = BUILTIN_PROFILES
            .iter()
            .map(|(_, t)| *t)
            .chain([
                "name = \"mine\"\nextends = \"strict\"\nkeep_evidence = true\n[image]\nsexual = { action = \"log\", threshold = 1 }",
            ])
            .collect();
        for text in texts {
            let table: toml::Table = toml::from_str(text).unwrap();
            assert_eq!(
                Profile::from_table(table).unwrap(),
                Profile::from_toml(text).unwrap()
            );
        }
        let bad = |text: &str| {
            let table: toml::Table = toml::from_str(text).unwrap();
            (
                Profile::from_table(table).unwrap_err(),
                Profile::from_toml(text).unwrap_err(),
            )
        };
        for text in [
            "name = \"x\"\n[chat]\nsexual = { action = \"nuke\", threshold = 0.5 }",
            "name = \"x\"\n[chat]\nnot_a_category = { action = \"block\", threshold = 0.5 }",
            "name = \"x\"\nbogus = 1",
            "description = \"no name\"",
        ] {
            let (from_table, from_text) = bad(text);
            assert!(
                matches!(from_table, ProfileError::Parse(_)),
                "{text}: {from_table}"
            );
            assert!(
                matches!(from_text, ProfileError::Parse(_)),
                "{text}: {from_text}"
            );
        }
        let (from_table, from_text) =
            bad("name = \"x\"\n[chat]\nsexual = { action = \"block\", threshold = 1.5 }");
        assert_eq!(from_table.to_string(), from_text.to_string());
        assert!(matches!(from_table, ProfileError::Threshold { .. }));
        let (from_table, from_text) = bad("name = \"x\"\nextends = \"nope\"");
        assert_eq!(from_table.to_string(), from_text.to_string());
        assert!(matches!(from_table, ProfileError::UnknownBase { .. }));
        let (unknown_field, _) = bad("name = \"x\"\nbogus = 1");
        assert!(
            unknown_field.to_string().contains("bogus"),
            "{unknown_field}"
        );
    }
}
