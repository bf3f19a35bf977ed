//! End-to-end latency: publishers stamp the first 8 bytes of each payload
//! with the send time, subscribers subtract it from the arrival time.
//!
//! The clock is CLOCK_REALTIME in nanoseconds since the Unix epoch, so a
//! publisher and a subscriber in two processes on the same machine share it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of payload taken by the timestamp.
pub const STAMP_LEN: usize = 8;

/// Latencies above this are taken for stamps from another source (or a
/// clock step) and not recorded.
const MAX_PLAUSIBLE_NS: u64 = 3_600 * 1_000_000_000;

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes `ns` into the first 8 bytes of `payload` (big endian). Payloads
/// shorter than 8 bytes carry no stamp.
pub fn stamp(payload: &mut [u8], ns: u64) {
    if let Some(head) = payload.get_mut(..STAMP_LEN) {
        head.copy_from_slice(&ns.to_be_bytes());
    }
}

/// The stamp in `payload`, if it has one.
pub fn read_stamp(payload: &[u8]) -> Option<u64> {
    let head: [u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

/// The latency of a message stamped `sent` and received at `now`, or `None`
/// when the stamp cannot be one of ours (in the future, or over an hour old).
pub fn latency_ns(sent: u64, now: u64) -> Option<u64> {
    let latency = now.checked_sub(sent)?;
    (latency <= MAX_PLAUSIBLE_NS).then_some(latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let mut payload = vec![0u8; 64];
        stamp(&mut payload, 1_700_000_000_123_456_789);
        assert_eq!(read_stamp(&payload), Some(1_700_000_000_123_456_789));
        assert!(payload[STAMP_LEN..].iter().all(|&b| b == 0));
    }

    #[test]
    fn stamp_is_big_endian() {
        let mut payload = [0u8; 8];
        stamp(&mut payload, 0x0102_0304_0506_0708);
        assert_eq!(payload, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn short_payloads_carry_no_stamp() {
        let mut payload = [9u8; 7];
        stamp(&mut payload, 5);
        assert_eq!(payload, [9u8; 7]);
        assert_eq!(read_stamp(&payload), None);
    }

    #[test]
    fn latency_rejects_implausible_stamps() {
        assert_eq!(latency_ns(1_000, 1_500), Some(500));
        assert_eq!(latency_ns(2_000, 1_500), None);
        let now = now_ns();
        assert_eq!(latency_ns(now - 2 * MAX_PLAUSIBLE_NS, now), None);
        assert_eq!(latency_ns(0, now), None);
    }

    #[test]
    fn clock_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        assert!(a > 1_600_000_000_000_000_000);
    }
}
