//! The message as it travels through the broker.
//!
//! A PUBLISH becomes one [`Message`] behind an `Arc`; every subscriber gets a
//! [`Delivery`] that points at it, so the payload and properties are shared,
//! never copied per subscriber.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use starling_codec::{ByteString, LastWill, PublishProperties, QoS};

/// Identifies one session incarnation inside this broker (No Local and
/// duplicate suppression compare these, not client ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// An application message after it was accepted from a publisher.
#[derive(Debug, Serialize, Deserialize)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// As published, minus Topic Alias and Subscription Identifiers, which
    /// belong to a single hop.
    pub properties: PublishProperties,
    /// The publishing session, for No Local. `None` for wills and
    /// messages that came from elsewhere.
    pub publisher: Option<SessionId>,
    /// The node the message was first published on (`None`: this one) and
    /// its number there; the pair identifies the message in the cluster.
    pub origin: Option<Arc<str>>,
    pub seq: u64,
    /// When the Message Expiry Interval runs out. Crosses processes as the
    /// time left, since an `Instant` means nothing elsewhere.
    #[serde(with = "time_left")]
    pub expires_at: Option<Instant>,
}

impl Message {
    pub fn new(
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: PublishProperties,
        publisher: Option<SessionId>,
    ) -> Message {
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            publisher,
            origin: None,
            seq: next_seq(),
            expires_at,
        }
    }

    /// The cluster-wide identity of the message, with `own_node` standing
    /// for messages published here.
    pub fn id<'a>(&'a self, own_node: &'a Arc<str>) -> (&'a Arc<str>, u64) {
        (self.origin.as_ref().unwrap_or(own_node), self.seq)
    }

    /// The message a will turns into when it is published.
    pub fn from_will(will: &LastWill) -> Message {
        let p = &will.properties;
        let properties = PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            ..PublishProperties::default()
        };
        Message::new(
            will.topic.clone(),
            will.payload.clone(),
            will.qos,
            will.retain,
            properties,
            None,
        )
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Seconds of expiry left, for the Message Expiry Interval sent onwards
    /// (MQTT 5.0 §3.3.2.3.3: the receiver gets the remaining lifetime).
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            // Round up so a message with 0.4 s left is not sent as "0 s".
            u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0)).unwrap_or(u32::MAX)
        })
    }
}

/// Numbers messages published on this node. A relaxed atomic increment: it
/// orders nothing, it only has to be unique.
fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The shared subscription a delivery was chosen through, so that it can be
/// given to another member if its session goes away unacknowledged.
#[derive(Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShareKey {
    pub group: Box<str>,
    pub filter: Box<str>,
}

/// One message on its way to one session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(publish QoS, subscription QoS).
    pub qos: QoS,
    /// The RETAIN flag to send (retained-at-subscribe, or Retain As Published).
    pub retain: bool,
    /// Every matching subscription's identifier (MQTT 5.0 §3.3.4).
    pub subscription_ids: SmallVec<[u32; 1]>,
    pub share: Option<Arc<ShareKey>>,
}

/// (De)serializes an `Option<Instant>` as the milliseconds left.
mod time_left {
    use std::time::{Duration, Instant};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(at: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        let now = Instant::now();
        at.map(|at| at.saturating_duration_since(now).as_millis() as u64)
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
        let left: Option<u64> = Option::deserialize(d)?;
        Ok(left.map(|ms| Instant::now() + Duration::from_millis(ms)))
    }
}

/// Tracks one publish forwarded to other nodes until each of them
/// acknowledged it, so that the publisher's PUBACK/PUBREC can wait for
/// "every target node has the message".
#[derive(Debug)]
pub struct ForwardTicket {
    remaining: std::sync::atomic::AtomicUsize,
    failed: std::sync::atomic::AtomicBool,
    done: tokio::sync::Notify,
}

impl ForwardTicket {
    /// A ticket waiting for `targets` acknowledgements.
    pub fn new(targets: usize) -> Arc<ForwardTicket> {
        Arc::new(ForwardTicket {
            remaining: std::sync::atomic::AtomicUsize::new(targets),
            failed: std::sync::atomic::AtomicBool::new(false),
            done: tokio::sync::Notify::new(),
        })
    }

    /// One target acknowledged (`delivered`) or was lost (`!delivered`).
    pub fn complete(&self, delivered: bool) {
        use std::sync::atomic::Ordering;
        if !delivered {
            self.failed.store(true, Ordering::Release);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A stored permit: the waiter may not be waiting yet.
            self.done.notify_one();
        }
    }

    pub fn is_done(&self) -> bool {
        self.remaining.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// Whether every target got the message (meaningful once done).
    pub fn delivered(&self) -> bool {
        !self.failed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once every target answered.
    pub async fn wait(&self) {
        while !self.is_done() {
            self.done.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticket_completes_after_every_target_and_remembers_a_loss() {
        let ticket = ForwardTicket::new(2);
        ticket.complete(true);
        assert!(!ticket.is_done());
        ticket.complete(false);
        // Completed before anyone waited: the stored permit lets wait() end.
        tokio::time::timeout(Duration::from_secs(1), ticket.wait())
            .await
            .unwrap();
        assert!(!ticket.delivered());

        let ok = ForwardTicket::new(1);
        let waiter = tokio::spawn({
            let ok = ok.clone();
            async move { ok.wait().await }
        });
        ok.complete(true);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(ok.delivered());
    }
}
