//! The lock around each subscription trie: read by every publish, written
//! only by subscribes and unsubscribes.
//!
//! A plain reader-writer lock keeps its readers in one counter, so every
//! publish writes that counter's cache line twice (lock and unlock), and
//! with publishers on every core the line moves from core to core: on a
//! publishing node of a cluster, and on a single node under fan-in, those
//! two atomics were the most expensive instructions of routing. A sharded
//! lock gives each thread its own reader slot on its own cache line; a
//! writer takes every slot, which subscribes, far rarer than publishes,
//! can afford.

use std::ops::{Deref, DerefMut};
use std::sync::PoisonError;

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use super::trie::Trie;

#[derive(Default)]
pub struct TrieLock(ShardedLock<Trie>);

/// Shared access to a trie; not `Send`, so never held across an `.await`.
pub struct TrieRead<'l>(ShardedLockReadGuard<'l, Trie>);

/// Exclusive access to a trie.
pub struct TrieWrite<'l>(ShardedLockWriteGuard<'l, Trie>);

impl TrieLock {
    /// Poisoning is ignored, as `parking_lot` does: a trie operation that
    /// panicked leaves the trie as consistent as Rust's unwinding does, and
    /// refusing every later publish would be worse.
    pub fn read(&self) -> TrieRead<'_> {
        TrieRead(self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn write(&self) -> TrieWrite<'_> {
        TrieWrite(self.0.write().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Deref for TrieRead<'_> {
    type Target = Trie;

    fn deref(&self) -> &Trie {
        &self.0
    }
}

impl Deref for TrieWrite<'_> {
    type Target = Trie;

    fn deref(&self) -> &Trie {
        &self.0
    }
}

impl DerefMut for TrieWrite<'_> {
    fn deref_mut(&mut self) -> &mut Trie {
        &mut self.0
    }
}
