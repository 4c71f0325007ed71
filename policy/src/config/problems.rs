//! How a config reports what is wrong: every problem with its field path and reason, and
//! the file it came from.
//!
//! Every section of the file (policies here; `server:` and `cluster:` in the crates that
//! own them) validates itself into one [`Problems`] list, so `tollgate validate` prints
//! every problem at once, each as `file: field.path: reason`.

use std::fmt;

/// One problem in a config: where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `policies[0].rate_limiter.parameters.interval`.
    pub path: String,
    /// What is wrong, e.g. `missing`.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// A config that could not be used: the file it came from and every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// File name (or `<embedded default>`, `<string>`).
    pub origin: String,
    /// At least one problem.
    pub errors: Vec<FieldError>,
}

impl ConfigError {
    /// A config error with one problem.
    pub fn one(origin: &str, path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: origin.to_string(),
            errors: vec![FieldError {
                path: path.into(),
                reason: reason.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", self.origin, e)?;
        }
        Ok(())
    }
}

/// The problems found so far while checking a config; sections append to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems {
    errors: Vec<FieldError>,
}

impl Problems {
    /// No problems yet.
    pub fn new() -> Problems {
        Problems::default()
    }

    /// Records that the field at `path` is wrong for `reason`.
    pub fn at(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// Records an already-built problem.
    pub fn push(&mut self, error: FieldError) {
        self.errors.push(error);
    }

    /// Whether nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The problems, in the order found.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// `Ok(value)` when nothing is wrong, else every problem under `origin`.
    pub fn into_result<T>(self, origin: &str, value: T) -> Result<T, ConfigError> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError {
                origin: origin.to_string(),
                errors: self.errors,
            })
        }
    }
}

/// Longest policy name, control point or limit label key, in bytes: the binary protocol's
/// longest string (`MAX_STRING_LEN`). A client's HELLO is answered with every one of them,
/// so one longer would make every binary connection fail.
pub const MAX_NAME_BYTES: usize = 4096;

/// Records a problem at `path` when `name` is longer than [`MAX_NAME_BYTES`].
pub fn check_name_len(name: &str, path: impl FnOnce() -> String, problems: &mut Problems) {
    if name.len() > MAX_NAME_BYTES {
        problems.at(
            path(),
            format!(
                "is {} bytes; at most {MAX_NAME_BYTES} (the binary protocol's longest string)",
                name.len()
            ),
        );
    }
}

/// `base.field`, or `field` when `base` is empty.
pub fn join(base: &str, field: &str) -> String {
    if base.is_empty() {
        field.to_string()
    } else {
        format!("{base}.{field}")
    }
}

/// Deserializes one section of the file, reporting the failing field's full path (the
/// section's own path `base` + the path inside it) in our wording: serde's ``missing field
/// `x` `` at `a.b` becomes `a.b.x: missing`.
pub fn deserialize_section<T: serde::de::DeserializeOwned>(
    value: serde_yaml_ng::Value,
    base: &str,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." {
            base.to_string()
        } else if inner.starts_with('[') {
            format!("{base}{inner}")
        } else {
            join(base, &inner)
        };
        let message = e.inner().to_string();
        if let Some(field) = backticked_after(&message, "missing field ") {
            FieldError {
                path: join(&path, field),
                reason: "missing".into(),
            }
        } else if let Some(field) = backticked_after(&message, "unknown field ") {
            let expected = message
                .split_once(", expected ")
                .map(|(_, rest)| rest.to_string());
            let reason = match expected {
                Some(rest) => format!("unknown field (expected {rest})"),
                None => "unknown field".into(),
            };
            // serde_path_to_error already ends the path with the unknown field.
            let path = if path.ends_with(field) {
                path
            } else {
                join(&path, field)
            };
            FieldError { path, reason }
        } else {
            FieldError {
                path,
                reason: message,
            }
        }
    })
}

fn backticked_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split('`').next()
}
