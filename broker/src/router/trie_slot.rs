//! One subscription trie behind its lock, with a flag a publish reads
//! before locking: a trie without filters is skipped, unlocked.
//!
//! On a node whose subscribers are all elsewhere (the publishers' node of
//! a cluster), every publish took and released two read locks for tries
//! with nothing in them; even unshared, those locked instructions wait
//! for the core's pending stores like fences. The flag is written under
//! the write lock, after the change, and read with acquire ordering: a
//! publish that finds it unset started before the subscribe that sets it
//! had finished, as it could have taken the read lock first.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_utils::sync::ShardedLockReadGuard;

use super::trie::Trie;
use crate::read_mostly::ReadMostly;

#[derive(Default)]
pub struct TrieSlot {
    trie: ReadMostly<Trie>,
    /// The trie holds at least one filter.
    occupied: AtomicBool,
}

pub type TrieGuard<'t> = ShardedLockReadGuard<'t, Trie>;

impl TrieSlot {
    /// The trie, read-locked.
    pub fn read(&self) -> TrieGuard<'_> {
        self.trie.read()
    }

    /// The trie, read-locked, unless it has no filter.
    pub fn read_occupied(&self) -> Option<TrieGuard<'_>> {
        self.is_occupied().then(|| self.trie.read())
    }

    /// Whether the trie has a filter (no lock taken).
    pub fn is_occupied(&self) -> bool {
        self.occupied.load(Ordering::Acquire)
    }

    /// Changes the trie under its write lock.
    pub fn write<R>(&self, change: impl FnOnce(&mut Trie) -> R) -> R {
        let mut trie = self.trie.write();
        let result = change(&mut trie);
        self.occupied
            .store(trie.filter_count() > 0, Ordering::Release);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use starling_codec::SubscriptionOptions;

    use super::*;
    use crate::config::DropPolicy;
    use crate::message::SessionId;
    use crate::router::trie::{Matches, Subscriber};
    use crate::session::mailbox::Mailbox;

    #[test]
    fn a_publish_skips_the_trie_only_while_it_has_no_filter() {
        let slot = TrieSlot::default();
        assert!(slot.read_occupied().is_none());

        let mailbox = Arc::new(Mailbox::new(SessionId(1), 10, DropPolicy::Oldest, true));
        let subscriber = Subscriber {
            mailbox,
            options: SubscriptionOptions::default(),
            identifier: None,
        };
        slot.write(|trie| trie.insert("a/#", None, SessionId(1), subscriber));
        let Some(trie) = slot.read_occupied() else {
            panic!("a trie with a filter is read");
        };
        let mut matches = Matches::default();
        trie.matches("a/b", &mut matches);
        assert_eq!(matches.subscribers.len(), 1);
        drop(matches);
        drop(trie);

        slot.write(|trie| trie.remove("a/#", None, SessionId(1)));
        assert!(slot.read_occupied().is_none());
    }
}
