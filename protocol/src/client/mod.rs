//! The tokio client (in progress).
