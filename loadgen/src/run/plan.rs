//! What every load thread needs, fixed before the run: the settings, the connection settings,
//! the key sampler, the scenario's mix picker and one request template per mix.

use tollgate_protocol::client::CheckRequest;

use crate::accuracy::Limit;
use crate::drivers::{ConnSettings, RedisLimit};
use crate::keys::{key_name, KeySampler};
use crate::run::{RunConfig, DEFAULT_LIMIT};
use crate::scenario::{MixPicker, Scenario};

/// What every load thread needs, fixed before the run.
pub(super) struct Plan {
    /// The run's settings.
    pub(super) cfg: RunConfig,
    /// How each connection is dialled and bounded (and the Redis script's limit).
    pub(super) settings: ConnSettings,
    /// Draws keys from the configured distribution.
    pub(super) sampler: KeySampler,
    /// Draws a scenario mix per request.
    pub(super) picker: MixPicker,
    /// One request template per mix, with its token cost.
    pub(super) templates: Vec<(CheckRequest, f64)>,
}

impl Plan {
    /// The plan of `cfg`; `limit` is the limit the run measures accuracy against (and gives
    /// the Redis script), if any.
    pub(super) fn new(cfg: &RunConfig, limit: Option<Limit>) -> Plan {
        let redis_limit = limit.unwrap_or(DEFAULT_LIMIT);
        let settings = ConnSettings {
            request_timeout: cfg.request_timeout,
            connect_timeout: cfg.connect_timeout,
            max_in_flight: (cfg.pipeline * 2).max(1024),
            access: cfg.access.clone(),
            redis_limit: RedisLimit {
                capacity: redis_limit.capacity.to_string(),
                fill_amount: redis_limit.fill_amount.to_string(),
                interval_us: (redis_limit.interval_ns / 1000).max(1).to_string(),
            },
            redis_batch: cfg.redis_batch,
        };
        let scenario = cfg.scenario.clone().unwrap_or_else(Scenario::single);
        Plan {
            picker: scenario.picker(),
            templates: templates(cfg, &scenario),
            sampler: KeySampler::new(&cfg.distribution, cfg.keys),
            settings,
            cfg: cfg.clone(),
        }
    }
}

/// One request template per scenario mix; the key label is last and rewritten per request.
fn templates(cfg: &RunConfig, scenario: &Scenario) -> Vec<(CheckRequest, f64)> {
    scenario
        .mixes
        .iter()
        .map(|m| {
            let mut labels: Vec<(String, String)> = m
                .labels
                .iter()
                .filter(|(k, _)| **k != cfg.label_key)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.push((cfg.label_key.clone(), String::new()));
            let tokens = m.tokens.unwrap_or(cfg.tokens);
            let control_point = m
                .control_point
                .clone()
                .unwrap_or_else(|| cfg.control_point.clone());
            (
                CheckRequest {
                    control_point,
                    labels,
                    tokens: Some(tokens),
                    wait: None,
                },
                tokens,
            )
        })
        .collect()
}

/// Rewrites the key label (the last label, by convention) to key `key`.
pub(super) fn set_key(req: &mut CheckRequest, prefix: &str, key: usize) {
    if let Some((_, v)) = req.labels.last_mut() {
        key_name(v, prefix, key);
    }
}
