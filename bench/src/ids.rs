//! Packet identifiers of a publisher's QoS 1/2 messages in flight.

/// Which of the 65,535 packet identifiers are in use, handed out in
/// increasing order (wrapping) and skipping those still in flight, so an
/// acknowledgement that comes late never matches a reused identifier.
pub struct IdPool {
    used: Vec<u64>,
    next: u16,
    in_use: usize,
}

impl Default for IdPool {
    fn default() -> Self {
        IdPool::new()
    }
}

impl IdPool {
    pub fn new() -> IdPool {
        IdPool {
            used: vec![0; 65_536 / 64],
            next: 1,
            in_use: 0,
        }
    }

    fn bit(id: u16) -> (usize, u64) {
        (usize::from(id) / 64, 1u64 << (id % 64))
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// A free identifier, or `None` when all 65,535 are in flight.
    pub fn alloc(&mut self) -> Option<u16> {
        if self.in_use >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id == u16::MAX { 1 } else { id + 1 };
            let (word, mask) = IdPool::bit(id);
            if self.used[word] & mask == 0 {
                self.used[word] |= mask;
                self.in_use += 1;
                return Some(id);
            }
        }
    }

    /// Releases `id`; false if it was not in use (an unexpected ack).
    pub fn free(&mut self, id: u16) -> bool {
        let (word, mask) = IdPool::bit(id);
        if id == 0 || self.used[word] & mask == 0 {
            return false;
        }
        self.used[word] &= !mask;
        self.in_use -= 1;
        true
    }

    pub fn contains(&self, id: u16) -> bool {
        let (word, mask) = IdPool::bit(id);
        id != 0 && self.used[word] & mask != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_increase() {
        let mut pool = IdPool::new();
        assert_eq!(pool.alloc(), Some(1));
        assert_eq!(pool.alloc(), Some(2));
        assert_eq!(pool.in_use(), 2);
        assert!(pool.free(1));
        assert!(!pool.free(1));
        assert!(!pool.free(0));
        assert!(!pool.free(77));
        assert_eq!(pool.alloc(), Some(3));
    }

    #[test]
    fn wraps_around_and_skips_ids_in_flight() {
        let mut pool = IdPool::new();
        for _ in 0..u16::MAX {
            assert!(pool.alloc().is_some());
        }
        assert_eq!(pool.alloc(), None);
        assert!(pool.free(5));
        assert!(pool.free(3));
        assert_eq!(pool.alloc(), Some(3));
        assert_eq!(pool.alloc(), Some(5));
        assert!(pool.contains(5));
        assert_eq!(pool.alloc(), None);
    }
}
