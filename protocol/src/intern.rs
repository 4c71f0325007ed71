//! The per-connection interned-string table.
//!
//! A client binds an id to a string with `INTERN { id, string }` and afterwards refers to the
//! string by id in any string ref (control points, label keys) on the *same connection*. Ids are
//! connection-scoped (a fresh connection starts empty), `0..MAX_INTERNED`, and re-binding an id
//! replaces its string for every later frame. The table is bounded twice: by [`MAX_INTERNED`]
//! slots and by [`MAX_INTERNED_BYTES`] of string data.

use crate::decode::StrRef;
use crate::error::InternError;
use crate::frame::{MAX_INTERNED, MAX_INTERNED_BYTES};

/// A connection's interned strings, indexed by id.
#[derive(Debug, Default, Clone)]
pub struct InternTable {
    /// Slot `id` holds the string bound to `id`. Grows on demand up to `MAX_INTERNED` slots, so
    /// a connection that never interns costs nothing.
    slots: Vec<Option<Box<str>>>,
    /// Sum of the bound strings' lengths, kept `<= MAX_INTERNED_BYTES`.
    bytes: usize,
}

impl InternTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `id` to `value`, replacing any previous binding.
    pub fn bind(&mut self, id: u16, value: &str) -> Result<(), InternError> {
        let idx = usize::from(id);
        if idx >= MAX_INTERNED {
            return Err(InternError::IdOutOfRange { id });
        }
        let old_len = self
            .slots
            .get(idx)
            .and_then(|s| s.as_ref())
            .map_or(0, |s| s.len());
        let new_total = self
            .bytes
            .saturating_sub(old_len)
            .saturating_add(value.len());
        if new_total > MAX_INTERNED_BYTES {
            return Err(InternError::BudgetExceeded { len: value.len() });
        }
        if self.slots.len() <= idx {
            self.slots.resize(idx + 1, None);
        }
        if let Some(slot) = self.slots.get_mut(idx) {
            *slot = Some(value.into());
            self.bytes = new_total;
        }
        Ok(())
    }

    /// The string bound to `id`, if any.
    #[inline]
    pub fn get(&self, id: u16) -> Option<&str> {
        self.slots.get(usize::from(id))?.as_deref()
    }

    /// Resolves a string ref: inline strings as they are, interned ids through the table.
    /// `None` means an unbound id (answer `UNKNOWN_INTERNED_ID`).
    #[inline]
    pub fn resolve<'s>(&'s self, r: StrRef<'s>) -> Option<&'s str> {
        match r {
            StrRef::Inline(s) => Some(s),
            StrRef::Interned(id) => self.get(id),
        }
    }

    /// Number of bound ids.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// True if nothing is bound.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0 && self.slots.iter().all(Option::is_none)
    }

    /// Bytes of string data currently bound.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_resolve_rebind() {
        let mut t = InternTable::new();
        assert_eq!(t.resolve(StrRef::Interned(3)), None);
        t.bind(3, "user").expect("bind");
        assert_eq!(t.resolve(StrRef::Interned(3)), Some("user"));
        assert_eq!(t.resolve(StrRef::Inline("x")), Some("x"));
        t.bind(3, "tenant").expect("rebind");
        assert_eq!(t.get(3), Some("tenant"));
        assert_eq!(t.bytes(), 6);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn bounds() {
        let mut t = InternTable::new();
        assert_eq!(
            t.bind(MAX_INTERNED as u16, "x"),
            Err(InternError::IdOutOfRange {
                id: MAX_INTERNED as u16
            })
        );
        let big = "a".repeat(4096);
        let mut id = 0u16;
        loop {
            match t.bind(id, &big) {
                Ok(()) => id += 1,
                Err(e) => {
                    assert_eq!(e, InternError::BudgetExceeded { len: 4096 });
                    break;
                }
            }
        }
        assert_eq!(usize::from(id), MAX_INTERNED_BYTES / 4096);
        // Rebinding an existing id to a shorter string frees budget.
        t.bind(0, "short").expect("shrink");
        t.bind(id, "short").expect("fits now");
    }
}
