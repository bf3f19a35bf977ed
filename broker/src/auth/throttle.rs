//! Refusals slowed down per source address: each refused CONNECT from an
//! address waits longer before its CONNACK (250 ms, doubling up to 5 s)
//! while that address keeps failing; an address with no refusal for a
//! minute starts again. Guessing passwords gets slow, and a waiting
//! refusal holds one of `max_pending_connects`, not more. At most
//! [`MAX_TRACKED`] addresses are remembered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(5);
const FORGET_AFTER: Duration = Duration::from_secs(60);
pub const MAX_TRACKED: usize = 65_536;

#[derive(Default)]
pub struct Throttle {
    refusals: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    /// Counts a refusal from `address`; how long to wait before saying so.
    pub fn refused(&self, address: IpAddr) -> Duration {
        let now = Instant::now();
        let mut refusals = self.refusals.lock();
        if refusals.len() >= MAX_TRACKED && !refusals.contains_key(&address) {
            refusals.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
            if refusals.len() >= MAX_TRACKED {
                return MAX_DELAY;
            }
        }
        let entry = refusals.entry(address).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = entry.0.saturating_sub(1).min(8);
        (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_per_address_up_to_the_cap() {
        let throttle = Throttle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let delays: Vec<_> = (0..7).map(|_| throttle.refused(a).as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(
            throttle.refused(b).as_millis(),
            250,
            "another address starts afresh"
        );
    }
}
