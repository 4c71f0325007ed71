//! `alerter:` — Aperture's alert settings inside a component. Blueprint values files carry
//! one by default; Tollgate raises no alerts itself (its metrics feed whatever alerting
//! you run), so the block is accepted with Aperture's fields and not used.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Aperture's `AlerterParameters`: accepted so values files load unchanged; unused.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlerterConfig {
    /// Name of the alert.
    pub alert_name: Option<String>,
    /// Severity (`info`, `warn`, `crit`).
    pub severity: Option<String>,
    /// How long before an alert resolves.
    pub resolve_timeout: Option<String>,
    /// Channels to send alerts to.
    pub alert_channels: Vec<String>,
    /// Extra labels on the alert.
    pub labels: BTreeMap<String, String>,
}
