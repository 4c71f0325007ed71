//! [`Tokens`]: a request's cost, a finite number of at least 0.
//!
//! A cost arrives from the network (a `tokens` label, the binary protocol's tokens field, a
//! gRPC label map). It is checked once, where it enters, into this type; nothing that takes
//! tokens from a bucket can then be handed a negative (which would refill the bucket), a NaN
//! or an infinity. Handing tokens *back* is a separate operation
//! ([`crate::BucketStore::give_back`]), never a negative take.

use std::fmt;

/// A token cost: finite and `>= 0`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Default)]
pub struct Tokens(f64);

/// Why a number is not a token cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokensError {
    /// Not a number at all (`abc`).
    #[error("is not a number")]
    NotANumber,
    /// NaN or an infinity.
    #[error("must be a finite number")]
    NotFinite,
    /// Below zero: would hand tokens out instead of taking them.
    #[error("must not be negative")]
    Negative,
}

impl Tokens {
    /// One token: the cost of a request that names none.
    pub const ONE: Tokens = Tokens(1.0);
    /// No tokens.
    pub const ZERO: Tokens = Tokens(0.0);

    /// A cost from a number, if it is finite and not negative (`-0.0` becomes `0`).
    pub fn new(value: f64) -> Result<Tokens, TokensError> {
        if !value.is_finite() {
            Err(TokensError::NotFinite)
        } else if value < 0.0 {
            Err(TokensError::Negative)
        } else {
            Ok(Tokens(value + 0.0))
        }
    }

    /// A cost from label text (`"2"`, `" 0.5 "`).
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let value: f64 = text.trim().parse().map_err(|_| TokensError::NotANumber)?;
        Tokens::new(value)
    }

    /// The number.
    #[inline]
    pub fn get(self) -> f64 {
        self.0
    }
}

impl fmt::Display for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finite_non_negative_numbers_are_costs() {
        assert_eq!(Tokens::parse("2").map(Tokens::get), Ok(2.0));
        assert_eq!(Tokens::parse(" 0.5 ").map(Tokens::get), Ok(0.5));
        assert_eq!(Tokens::parse("0").map(Tokens::get), Ok(0.0));
        assert_eq!(Tokens::parse("-0").map(|t| t.get().to_bits()), Ok(0));
        assert_eq!(Tokens::parse("-1"), Err(TokensError::Negative));
        assert_eq!(Tokens::parse("-1000"), Err(TokensError::Negative));
        assert_eq!(Tokens::parse("NaN"), Err(TokensError::NotFinite));
        assert_eq!(Tokens::parse("inf"), Err(TokensError::NotFinite));
        assert_eq!(Tokens::parse("-inf"), Err(TokensError::NotFinite));
        assert_eq!(Tokens::parse("abc"), Err(TokensError::NotANumber));
        assert_eq!(Tokens::parse(""), Err(TokensError::NotANumber));
        assert_eq!(Tokens::new(f64::MAX).map(Tokens::get), Ok(f64::MAX));
    }
}
