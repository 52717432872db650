//! Model prices for cost accounting and budgets: built-in list prices for common models,
//! overridden or extended by `[pricing]` in `stormwall.toml` (a `"*"` entry prices any model
//! not listed). One table for the gateway's accounting and the simulator's model of it.

use std::collections::{BTreeMap, HashMap};

/// Price of one model, in US dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelPrice {
    /// Per million input tokens.
    pub input_per_mtok: f64,
    /// Per million output tokens.
    pub output_per_mtok: f64,
    /// Per generated image.
    pub per_image: f64,
}

/// Model name → price.
#[derive(Debug, Clone)]
pub struct Pricing {
    prices: HashMap<String, ModelPrice>,
    fallback: ModelPrice,
}

const BUILT_IN: &[(&str, f64, f64, f64)] = &[
    // (model, input $/Mtok, output $/Mtok, $/image) — public list prices, standard tier.
    ("gpt-4o", 2.50, 10.00, 0.0),
    ("gpt-4o-mini", 0.15, 0.60, 0.0),
    ("gpt-4.1", 2.00, 8.00, 0.0),
    ("gpt-4.1-mini", 0.40, 1.60, 0.0),
    ("gpt-4.1-nano", 0.10, 0.40, 0.0),
    ("o3-mini", 1.10, 4.40, 0.0),
    ("o4-mini", 1.10, 4.40, 0.0),
    ("gpt-3.5-turbo-instruct", 1.50, 2.00, 0.0),
    ("text-embedding-3-small", 0.02, 0.0, 0.0),
    ("text-embedding-3-large", 0.13, 0.0, 0.0),
    ("text-embedding-ada-002", 0.10, 0.0, 0.0),
    ("dall-e-3", 0.0, 0.0, 0.04),
    ("dall-e-2", 0.0, 0.0, 0.02),
    ("gpt-image-1", 5.00, 40.00, 0.0),
];

impl Pricing {
    /// Built-in prices with the config's entries on top.
    pub fn new(overrides: &BTreeMap<String, ModelPrice>) -> Self {
        let mut prices: HashMap<String, ModelPrice> = BUILT_IN
            .iter()
            .map(|&(m, i, o, img)| {
                (
                    m.to_owned(),
                    ModelPrice {
                        input_per_mtok: i,
                        output_per_mtok: o,
                        per_image: img,
                    },
                )
            })
            .collect();
        let mut fallback = ModelPrice::default();
        for (model, price) in overrides {
            if model == "*" {
                fallback = *price;
            } else {
                prices.insert(model.clone(), *price);
            }
        }
        Self { prices, fallback }
    }

    /// Price of a model (the `"*"` entry, or free, when unknown).
    pub fn price(&self, model: &str) -> ModelPrice {
        self.prices.get(model).copied().unwrap_or(self.fallback)
    }

    /// Cost of a call.
    pub fn cost(&self, model: &str, input_tokens: u64, output_tokens: u64, images: u32) -> f64 {
        let p = self.price(model);
        p.input_per_mtok * input_tokens as f64 / 1e6
            + p.output_per_mtok * output_tokens as f64 / 1e6
            + p.per_image * f64::from(images)
    }
}

impl Default for Pricing {
    /// The built-in list prices alone.
    fn default() -> Self {
        Self::new(&BTreeMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_fallback() {
        let mut o = BTreeMap::new();
        o.insert(
            "*".to_owned(),
            ModelPrice {
                input_per_mtok: 1.0,
                ..Default::default()
            },
        );
        let p = Pricing::new(&o);
        assert!((p.cost("gpt-4o-mini", 1_000_000, 1_000_000, 0) - 0.75).abs() < 1e-9);
        assert!((p.cost("unknown", 1_000_000, 0, 0) - 1.0).abs() < 1e-9);
        assert!((p.cost("dall-e-3", 0, 0, 2) - 0.08).abs() < 1e-9);
    }
}
