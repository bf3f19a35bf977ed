//! The broker-wide budget for read buffers beyond their everyday size.
//!
//! A connection's read buffer grows past 64 KiB only while a large packet
//! arrives. A client can start a 1 MB packet and stop (300 such clients
//! held 321 MB), so what every buffer holds beyond 64 KiB comes out of one
//! budget (`max_read_buffer_bytes`): a connection that would go over it is
//! closed with "server busy", and the incomplete-packet deadline gives back
//! what a stalled client holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What the budget counts in: a connection's share is kept in a `u16` of
/// these (4 GiB at most, above any packet size), so that it takes two
/// bytes of every connection.
pub const UNIT: usize = 64 * 1024;

/// The bytes every connection may hold beyond its everyday buffer.
#[derive(Debug)]
pub struct ReadBudget {
    used: AtomicUsize,
    limit: usize,
}

impl ReadBudget {
    pub fn new(limit: usize) -> Arc<ReadBudget> {
        Arc::new(ReadBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes held by all connections now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Makes what a connection holds (`held`, in [`UNIT`]s) `bytes`,
    /// rounded up to whole units; false (holding what it held) when the
    /// budget has not that much left. A connection gives back all it
    /// holds, `resize(held, 0)`, before it ends.
    pub fn resize(&self, held: &mut u16, bytes: usize) -> bool {
        let Ok(units) = u16::try_from(bytes.div_ceil(UNIT)) else {
            return false;
        };
        if units == *held {
            return true;
        }
        let (now, bytes) = (usize::from(*held) * UNIT, usize::from(units) * UNIT);
        if bytes > now {
            let more = bytes - now;
            let before = self.used.fetch_add(more, Ordering::Relaxed);
            if before + more > self.limit {
                self.used.fetch_sub(more, Ordering::Relaxed);
                return false;
            }
        } else {
            self.used.fetch_sub(now - bytes, Ordering::Relaxed);
        }
        *held = units;
        true
    }
}

/// A share of the budget that is given back when dropped (for code that
/// may end anywhere, such as the handshake).
#[derive(Debug)]
pub struct Lease {
    budget: Arc<ReadBudget>,
    held: u16,
}

impl Lease {
    pub fn new(budget: &Arc<ReadBudget>) -> Lease {
        Lease {
            budget: budget.clone(),
            held: 0,
        }
    }

    /// See [`ReadBudget::resize`].
    pub fn resize(&mut self, bytes: usize) -> bool {
        self.budget.resize(&mut self.held, bytes)
    }

    /// What it holds, now the caller's to give back.
    pub fn into_held(mut self) -> u16 {
        std::mem::take(&mut self.held)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.resize(&mut self.held, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_share_the_budget_and_give_it_back() {
        let budget = ReadBudget::new(10 * UNIT);
        let mut a = Lease::new(&budget);
        let mut b = Lease::new(&budget);
        assert!(a.resize(6 * UNIT));
        assert!(!b.resize(4 * UNIT + 1), "6 + 5 units are over 10");
        assert_eq!(budget.used(), 6 * UNIT);
        assert!(b.resize(4 * UNIT));
        assert!(a.resize(1));
        assert_eq!(budget.used(), 5 * UNIT, "a byte takes a whole unit");
        drop(b);
        assert_eq!(budget.used(), UNIT);
        let mut held = a.into_held();
        assert_eq!(budget.used(), UNIT, "handed over, not given back");
        assert!(budget.resize(&mut held, 0));
        assert_eq!(budget.used(), 0);
        assert!(
            !budget.resize(&mut held, usize::MAX),
            "more units than a u16 holds"
        );
    }
}
