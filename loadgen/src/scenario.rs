//! `--scenario FILE.yaml`: several label sets with weights. Each request picks one set by
//! weight, then adds `<label-key>=<key>` from the key distribution.
//!
//! ```yaml
//! mixes:
//!   - weight: 3                # relative frequency (> 0)
//!     labels: { tier: gold }   # extra flow labels
//!   - weight: 1
//!     control_point: checkout  # optional: overrides --control-point
//!     labels: { tier: free }
//!     tokens: 2                # optional: overrides --tokens
//! ```

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A scenario file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The label sets, with weights.
    pub mixes: Vec<Mix>,
}

/// One label set.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Relative frequency; must be > 0.
    pub weight: f64,
    /// Control point for this set; default `--control-point`.
    #[serde(default)]
    pub control_point: Option<String>,
    /// Extra labels (besides the key label).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Tokens per request for this set; default `--tokens`.
    #[serde(default)]
    pub tokens: Option<f64>,
}

impl Scenario {
    /// Parses and validates a scenario file's text.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if s.mixes.is_empty() {
            return Err("mixes: at least one label set is needed".into());
        }
        for (i, m) in s.mixes.iter().enumerate() {
            if !(m.weight.is_finite() && m.weight > 0.0) {
                return Err(format!("mixes[{i}].weight: must be > 0"));
            }
            if m.tokens.is_some_and(|t| !(t.is_finite() && t >= 0.0)) {
                return Err(format!("mixes[{i}].tokens: must be >= 0"));
            }
        }
        Ok(s)
    }

    /// The scenario of a run without `--scenario`: one set, no extra labels.
    pub fn single() -> Scenario {
        Scenario {
            mixes: vec![Mix {
                weight: 1.0,
                control_point: None,
                labels: BTreeMap::new(),
                tokens: None,
            }],
        }
    }

    /// A picker over the mixes.
    pub fn picker(&self) -> MixPicker {
        let mut acc = 0.0;
        let cumulative = self
            .mixes
            .iter()
            .map(|m| {
                acc += m.weight;
                acc
            })
            .collect();
        MixPicker { cumulative }
    }
}

/// Picks a mix index by weight.
#[derive(Clone, Debug)]
pub struct MixPicker {
    cumulative: Vec<f64>,
}

impl MixPicker {
    /// One mix index.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        if self.cumulative.len() <= 1 {
            return 0;
        }
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let u = rng.gen::<f64>() * total;
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parses_validates_and_picks_by_weight() {
        let s = Scenario::parse(
            "mixes:\n  - weight: 3\n    labels: { tier: gold }\n  - weight: 1\n    control_point: x\n    tokens: 2\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.mixes.len(), 2);
        assert_eq!(
            s.mixes[0].labels.get("tier").map(String::as_str),
            Some("gold")
        );
        assert_eq!(s.mixes[1].tokens, Some(2.0));
        let p = s.picker();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let first = (0..40_000).filter(|_| p.pick(&mut rng) == 0).count();
        assert!((29_000..31_000).contains(&first), "{first}");

        assert!(Scenario::parse("mixes: []").is_err());
        assert!(Scenario::parse("mixes:\n  - weight: 0\n").is_err());
        assert!(Scenario::parse("mixes:\n  - weight: 1\n    bogus: 1\n").is_err());
        assert_eq!(Scenario::single().picker().pick(&mut rng), 0);
    }
}
