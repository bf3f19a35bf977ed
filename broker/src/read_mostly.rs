//! A reader-writer lock for data read on every message and written
//! rarely: the subscription tries (read by every publish, written by
//! subscribes) and the links to the other nodes (read by every forward,
//! written when membership changes).
//!
//! A plain reader-writer lock keeps its readers in one counter, so every
//! read writes that counter's cache line twice (lock and unlock), and with
//! messages handled on every core the line moves from core to core. A
//! sharded lock gives each thread its own reader slot on its own cache
//! line; a writer takes every slot, which rare writes can afford.

use std::sync::PoisonError;

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

#[derive(Default)]
pub struct ReadMostly<T>(ShardedLock<T>);

impl<T> ReadMostly<T> {
    /// Shared access; the guard is not `Send`, so it is never held across
    /// an `.await`.
    ///
    /// Poisoning is ignored, as `parking_lot` does: a writer that panicked
    /// leaves the data as consistent as unwinding does, and refusing every
    /// later message would be worse.
    pub fn read(&self) -> ShardedLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Exclusive access (poisoning ignored, see [`read`](Self::read)).
    pub fn write(&self) -> ShardedLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_that_panicked_leaves_the_data_readable_and_writable() {
        let lock = std::sync::Arc::new(ReadMostly::<Vec<u32>>::default());
        let writer = lock.clone();
        let panicked = std::thread::spawn(move || {
            let mut data = writer.write();
            data.push(1);
            panic!("writer fails while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(*lock.read(), vec![1]);
        lock.write().push(2);
        assert_eq!(*lock.read(), vec![1, 2]);
    }
}
