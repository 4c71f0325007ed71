//! The API key a client presents in `HELLO` ([`ApiKey`]), validated once when it is made.

use crate::frame::MAX_API_KEY_LEN;

/// An API key the client sends in every connection's `HELLO` (the optional trailing field):
/// 1 to [`MAX_API_KEY_LEN`] bytes. A server with `server.api_keys` requires one on every
/// connection; a server without ignores it. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

/// Why a string cannot be an [`ApiKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// The key is empty: no server accepts an empty key.
    #[error("an API key must not be empty")]
    Empty,
    /// The key does not fit the `HELLO` field.
    #[error("an API key is at most {MAX_API_KEY_LEN} bytes, this one is {len}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
}

impl ApiKey {
    /// Checks `key` against the protocol's bounds.
    pub fn new(key: impl Into<String>) -> Result<ApiKey, ApiKeyError> {
        let key = key.into();
        if key.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        if key.len() > MAX_API_KEY_LEN {
            return Err(ApiKeyError::TooLong { len: key.len() });
        }
        Ok(ApiKey(key))
    }

    /// The key, as it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl std::str::FromStr for ApiKey {
    type Err = ApiKeyError;

    fn from_str(s: &str) -> Result<ApiKey, ApiKeyError> {
        ApiKey::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_and_never_printed() {
        assert_eq!(ApiKey::new(""), Err(ApiKeyError::Empty));
        let long = "k".repeat(MAX_API_KEY_LEN + 1);
        assert_eq!(
            ApiKey::new(long),
            Err(ApiKeyError::TooLong {
                len: MAX_API_KEY_LEN + 1
            })
        );
        let key = ApiKey::new("k".repeat(MAX_API_KEY_LEN)).expect("longest key");
        assert_eq!(key.expose().len(), MAX_API_KEY_LEN);
        let key: ApiKey = "sesame".parse().expect("key");
        assert_eq!(key.expose(), "sesame");
        assert!(!format!("{key:?}").contains("sesame"));
    }
}
