//! Broker-wide counters. Plain atomics: they are bumped on the publish path
//! and read rarely (admin API, $SYS, tests).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of every counter.
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
        pub struct MetricsSnapshot {
            $(pub $name: u64,)*
        }

        impl Metrics {
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Client connections currently open (after CONNACK).
    connections,
    /// Of those, idle ones parked without a task of their own.
    connections_parked,
    /// Times a connection parked (against `connections_parked`: how often
    /// parked connections wake up).
    parks,
    /// Sessions known to the broker, connected or not.
    sessions,
    /// PUBLISH packets accepted from clients.
    messages_received,
    /// PUBLISH packets written to clients.
    messages_sent,
    /// Deliveries queued to sessions.
    deliveries,
    /// Messages dropped because a session queue was full.
    dropped_queue_full,
    /// QoS 0 messages not queued for offline sessions.
    dropped_offline_qos0,
    /// Messages dropped because they exceeded a client's Maximum Packet Size.
    dropped_too_large,
    /// Messages dropped because their Message Expiry Interval ran out.
    dropped_expired,
    /// Publishes that matched no subscriber.
    dropped_no_subscribers,
    /// Connections closed for a protocol violation or malformed packet.
    protocol_errors,
    /// Connections refused at CONNECT (limits, identifiers, versions).
    connects_refused,
    /// Wills published.
    wills_published,
    /// Messages for other nodes taken by their peer link to be sent.
    forwarded,
    /// Messages for other nodes that could not be forwarded (link down,
    /// buffer full, or lost with a broken stream).
    forward_dropped,
    /// Messages received from other nodes.
    forward_received,
    /// Times a publisher was held back by a congested peer link.
    forward_held_back,
    /// Sessions given to another node whose redirect stub still runs.
    handovers_active,
    /// SUBACKs sent before every node confirmed the route (route_sync).
    route_sync_timeouts,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}
