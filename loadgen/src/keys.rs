//! Which key each request uses: `hot` (one key), `uniform` over `N` keys, `zipf:S` over `N`
//! keys (rank `k` drawn with probability proportional to `1 / k^S`), or `seq` (keys in order,
//! shared by all tasks: `N` requests touch `N` distinct keys, for memory tests). Key index `i`
//! names the label value `user-<i>` (see [`key_name`]); with zipf, index 0 is the most popular.
//!
//! Zipf is sampled exactly by inverting its cumulative distribution: a table of the `N`
//! cumulative probabilities (8 bytes per key: 8 MB for 1M keys), shared by all tasks, and a
//! binary search per draw (~20 steps for 1M keys).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::Rng;

/// How requests spread over keys.
#[derive(Clone, Debug, PartialEq)]
pub enum Distribution {
    /// Every request uses key 0.
    Hot,
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent `s` (> 0): rank `k` has weight `1 / k^s`.
    Zipf(f64),
    /// Keys in order 0, 1, 2, ... (wrapping), one shared sequence for all tasks.
    Sequential,
}

impl FromStr for Distribution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hot" => Ok(Distribution::Hot),
            "uniform" => Ok(Distribution::Uniform),
            "seq" => Ok(Distribution::Sequential),
            _ => {
                let exp = s.strip_prefix("zipf:").ok_or_else(|| {
                    format!("{s:?}: expected hot, uniform, seq or zipf:S (e.g. zipf:1.1)")
                })?;
                let exp: f64 = exp
                    .parse()
                    .map_err(|_| format!("{s:?}: zipf exponent {exp:?} is not a number"))?;
                if !(exp.is_finite() && exp > 0.0) {
                    return Err(format!("{s:?}: zipf exponent must be > 0"));
                }
                Ok(Distribution::Zipf(exp))
            }
        }
    }
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Distribution::Hot => f.write_str("hot"),
            Distribution::Uniform => f.write_str("uniform"),
            Distribution::Zipf(s) => write!(f, "zipf:{s}"),
            Distribution::Sequential => f.write_str("seq"),
        }
    }
}

/// Draws key indices; cheap to clone (the zipf table is shared).
#[derive(Clone, Debug)]
pub struct KeySampler {
    keys: usize,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Hot,
    Uniform,
    /// Cumulative probabilities, `cdf[k]` = P(rank <= k + 1); the last entry is 1.
    Zipf(Arc<[f64]>),
    /// The next key of the shared sequence.
    Sequential(Arc<AtomicU64>),
}

impl KeySampler {
    /// A sampler of `dist` over keys `0..keys` (`keys` >= 1; `hot` ignores it).
    pub fn new(dist: &Distribution, keys: usize) -> KeySampler {
        let keys = keys.max(1);
        let kind = match dist {
            Distribution::Hot => Kind::Hot,
            Distribution::Uniform => Kind::Uniform,
            Distribution::Zipf(s) => Kind::Zipf(zipf_cdf(keys, *s)),
            Distribution::Sequential => Kind::Sequential(Arc::new(AtomicU64::new(0))),
        };
        KeySampler { keys, kind }
    }

    /// Keys this sampler can return (1 for `hot`).
    pub fn key_space(&self) -> usize {
        match self.kind {
            Kind::Hot => 1,
            _ => self.keys,
        }
    }

    /// One key index.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        match &self.kind {
            Kind::Hot => 0,
            Kind::Uniform => rng.gen_range(0..self.keys),
            Kind::Zipf(cdf) => {
                let u: f64 = rng.gen();
                cdf.partition_point(|&c| c <= u).min(cdf.len() - 1)
            }
            Kind::Sequential(next) => {
                (next.fetch_add(1, Ordering::Relaxed) % self.keys as u64) as usize
            }
        }
    }
}

/// The cumulative zipf distribution over ranks `1..=n`, normalised so the last entry is 1.
fn zipf_cdf(n: usize, s: f64) -> Arc<[f64]> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            acc += (k as f64).powf(-s);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    if let Some(last) = cdf.last_mut() {
        *last = 1.0;
    }
    cdf.into()
}

/// Writes the label value of key `index` (`<prefix><index>`, by default `user-<index>`) into
/// `out`, reusing its allocation.
pub fn key_name(out: &mut String, prefix: &str, index: usize) {
    out.clear();
    out.push_str(prefix);
    // Once per request: `itoa` writes the digits without the formatting machinery of
    // `write!` (~1% of the loadgen's CPU at 8 x 64).
    out.push_str(itoa::Buffer::new().format(index));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parses_and_prints() {
        assert_eq!("hot".parse::<Distribution>(), Ok(Distribution::Hot));
        assert_eq!("uniform".parse::<Distribution>(), Ok(Distribution::Uniform));
        assert_eq!(
            "zipf:1.1".parse::<Distribution>(),
            Ok(Distribution::Zipf(1.1))
        );
        assert!("zipf:0".parse::<Distribution>().is_err());
        assert!("zipf:x".parse::<Distribution>().is_err());
        assert!("pareto".parse::<Distribution>().is_err());
        assert_eq!(Distribution::Zipf(1.1).to_string(), "zipf:1.1");
        assert_eq!("seq".parse::<Distribution>(), Ok(Distribution::Sequential));
    }

    #[test]
    fn hot_is_one_key_and_uniform_covers_all() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let hot = KeySampler::new(&Distribution::Hot, 1000);
        assert!((0..100).all(|_| hot.sample(&mut rng) == 0));
        assert_eq!(hot.key_space(), 1);
        let uni = KeySampler::new(&Distribution::Uniform, 10);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[uni.sample(&mut rng)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800 && n < 1200), "{seen:?}");
        let seq = KeySampler::new(&Distribution::Sequential, 3);
        let clone = seq.clone();
        let got: Vec<usize> = (0..4)
            .map(|i| {
                if i % 2 == 0 {
                    seq.sample(&mut rng)
                } else {
                    clone.sample(&mut rng)
                }
            })
            .collect();
        assert_eq!(got, [0, 1, 2, 0]);
    }

    #[test]
    fn zipf_frequencies_match_the_law() {
        // s = 1.1 over 1000 keys: P(rank k) = k^-1.1 / H where H = sum over k.
        let n = 1000;
        let s = 1.1;
        let h: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
        let sampler = KeySampler::new(&Distribution::Zipf(s), n);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let draws = 200_000;
        let mut counts = vec![0u32; n];
        for _ in 0..draws {
            counts[sampler.sample(&mut rng)] += 1;
        }
        for rank in [1usize, 2, 3, 10] {
            let expected = draws as f64 * (rank as f64).powf(-s) / h;
            let got = counts[rank - 1] as f64;
            // Well within 5 standard deviations of a binomial count.
            let sd = expected.sqrt();
            assert!(
                (got - expected).abs() < 5.0 * sd,
                "rank {rank}: {got} vs {expected}"
            );
        }
        // Rank 1 over rank 2 is 2^1.1 ~ 2.14.
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((ratio - 2f64.powf(s)).abs() < 0.1, "{ratio}");
    }

    #[test]
    fn key_names() {
        let mut s = String::from("junk");
        key_name(&mut s, "user-", 42);
        assert_eq!(s, "user-42");
    }
}
