//! [`HelloPositions`]: what a connection's `limiter_index` means.
//!
//! A `CHECK_REPLY`'s `limiter_index` indexes the `policy_names` of the connection's
//! `HELLO_REPLY`. A reload may reorder, add or remove policies while the connection lasts,
//! and a limiter's place in the new list is not its place in the list the client holds:
//! answered by the new place, the client would put an outcome under another policy's name.
//! So each connection keeps where every limiter stood in the list it was sent, and its
//! replies index that list.

use tollgate_policy::{Engine, LimiterId};

/// Each limiter's place in the `policy_names` one `HELLO_REPLY` listed.
#[derive(Debug)]
pub struct HelloPositions {
    /// By [`LimiterId`]: its place, or [`HelloPositions::NOT_LISTED`].
    by_id: Vec<u16>,
}

impl HelloPositions {
    /// The index of a limiter the client's list does not hold (added by a later reload):
    /// past any list, so a client reads it as unknown.
    pub const NOT_LISTED: u16 = u16::MAX;

    /// The places in the list made from `engine` (`policy_names` is its limiters, in order).
    pub fn of(engine: &Engine) -> HelloPositions {
        let mut by_id = Vec::new();
        for spec in engine.limiters() {
            let id = spec.id.get() as usize;
            if by_id.len() <= id {
                by_id.resize(id + 1, Self::NOT_LISTED);
            }
            by_id[id] = spec.position;
        }
        HelloPositions { by_id }
    }

    /// Where `limiter` stood in the list.
    pub fn position(&self, limiter: LimiterId) -> u16 {
        self.by_id
            .get(limiter.get() as usize)
            .copied()
            .unwrap_or(Self::NOT_LISTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_policy::parse_policies;

    fn engine(names: &[&str]) -> Vec<tollgate_policy::PolicyConfig> {
        let mut yaml = String::from("policies:\n");
        for name in names {
            yaml.push_str(&format!(
                "  - policy_name: {name}\n    rate_limiter: {{ bucket_capacity: 1, fill_amount: 1, parameters: {{ interval: 1s }}, selectors: [ {{ control_point: x }} ] }}\n"
            ));
        }
        parse_policies(&yaml, "t").expect("valid")
    }

    #[test]
    fn a_reload_does_not_move_a_limiter_in_a_list_already_sent() {
        let before = tollgate_policy::Engine::new(&engine(&["a", "b", "c"]));
        let sent = HelloPositions::of(&before);
        // b removed, d added first, a and c swapped.
        let after = before.successor(&engine(&["d", "c", "a"]));
        let id = |name: &str| {
            after
                .limiters()
                .iter()
                .find(|l| l.policy_name == name)
                .map(|l| l.id)
                .expect("listed")
        };
        assert_eq!(sent.position(id("a")), 0);
        assert_eq!(sent.position(id("c")), 2);
        assert_eq!(sent.position(id("d")), HelloPositions::NOT_LISTED);
        assert_eq!(after.limiter(id("a")).position, 2, "a's new place differs");
    }
}
