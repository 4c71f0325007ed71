//! [`Counter`]: a monotonic `u64` that one thread writes and any thread reads.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic counter, read at scrape time by another thread.
///
/// Two ways to write it, and every counter has exactly one kind of writer:
/// - [`Counter::add`] — **single writer**: only the shard that owns the counter's block
///   writes it, so an increment is a relaxed load and a relaxed store, with no
///   read-modify-write. A locked `fetch_add` costs a serialising instruction per event on
///   the decision path; a plain store costs what a non-atomic increment does. A reader on
///   another thread sees some recent value, never a torn one.
/// - [`Counter::add_shared`] — any number of writers (`fetch_add`): for counters written
///   off the decision path by threads that are not shards (the gRPC runtime).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the counter's one writer may call this (see the type's docs).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds `n` from any thread.
    #[inline]
    pub fn add_shared(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_writers_add() {
        let c = Counter::default();
        c.add(2);
        c.add_shared(3);
        assert_eq!(c.get(), 5);
    }

    #[test]
    fn shared_adds_from_many_threads_are_all_counted() {
        let c = std::sync::Arc::new(Counter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| c.add_shared(1)))
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(c.get(), 40_000);
    }
}
