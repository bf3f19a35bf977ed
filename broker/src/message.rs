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
use starling_codec::{ByteString, LastWill, ProtocolVersion, PublishProperties, QoS};

/// A message's PUBLISH properties, boxed, and only when it has any (see
/// the codec's type: the same box travels from the decoded PUBLISH into
/// the message, with no copy of the properties on the way).
pub use starling_codec::MessageProperties;

/// The name of the node a message was first published on, interned: the
/// first message from a node leaks one copy of its name, and every later
/// one carries a plain pointer to it. Names are few (one per node the
/// cluster ever had) and small. A reference-counted name instead had its
/// one count bumped for every message by the task receiving a peer's
/// batches and dropped by the subscribers' writers on other cores: on the
/// receiving node of a cluster fan-in, about 5 % of its CPU.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin(&'static str);

impl Origin {
    pub fn intern(name: &str) -> Origin {
        static NAMES: std::sync::LazyLock<
            parking_lot::Mutex<std::collections::HashSet<&'static str>>,
        > = std::sync::LazyLock::new(Default::default);
        let mut names = NAMES.lock();
        match names.get(name) {
            Some(known) => Origin(known),
            None => {
                let leaked: &'static str = Box::leak(name.into());
                names.insert(leaked);
                Origin(leaked)
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::ops::Deref for Origin {
    type Target = str;

    fn deref(&self) -> &str {
        self.0
    }
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0, f)
    }
}

impl Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Origin::intern(&name))
    }
}

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
    /// belong to a single hop, and the Message Expiry Interval, which
    /// `expires_at` holds.
    pub properties: MessageProperties,
    /// The publishing session, for No Local. `None` for wills and
    /// messages that came from elsewhere.
    pub publisher: Option<SessionId>,
    /// The node the message was first published on (`None`: this one) and
    /// its number there; the pair identifies the message in the cluster.
    pub origin: Option<Origin>,
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
        properties: impl Into<MessageProperties>,
        publisher: Option<SessionId>,
    ) -> Message {
        Message::numbered(
            topic,
            payload,
            qos,
            retain,
            properties.into(),
            publisher,
            None,
            next_seq(),
        )
    }

    /// A message with its cluster-wide identity given (`origin`, `seq`),
    /// as [`new`](Self::new) makes one otherwise.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn numbered(
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: MessageProperties,
        publisher: Option<SessionId>,
        origin: Option<Origin>,
        seq: u64,
    ) -> Message {
        let mut expires_at = None;
        if properties.is_boxed() {
            // The alias and the identifiers were the publisher's; the expiry
            // is kept as an instant.
            let own = properties.make_mut();
            own.topic_alias = None;
            own.subscription_identifiers.clear();
            expires_at = own
                .message_expiry_interval
                .take()
                .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
            properties.shrink();
        }
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            publisher,
            origin,
            seq,
            expires_at,
        }
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

    /// The properties a PUBLISH of this message carries to a subscriber
    /// speaking `version`: its own, with the expiry left at `now` and the
    /// subscriber's Subscription Identifiers; none before MQTT 5, which
    /// has no properties to carry them.
    pub fn outbound_properties(
        &self,
        version: ProtocolVersion,
        now: Instant,
        subscription_ids: &[u32],
    ) -> MessageProperties {
        if !version.is_v5() {
            return MessageProperties::default();
        }
        let expiry = self.remaining_expiry(now);
        if !self.properties.is_boxed() && expiry.is_none() && subscription_ids.is_empty() {
            // The usual case: none, and nothing to box.
            return MessageProperties::default();
        }
        let mut properties = self.properties.clone();
        let outbound = properties.make_mut();
        outbound.message_expiry_interval = expiry;
        outbound.subscription_identifiers = subscription_ids.to_vec();
        properties
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

/// Numbers messages published on this node. Numbers only have to be
/// unique (they order nothing), so each thread takes a block of them at a
/// time: one counter shared by every publish had its cache line go from
/// core to core with each message.
fn next_seq() -> u64 {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};
    const BLOCK: u64 = 1024;
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        /// The next number of this thread's block, and the block's end.
        static OWN: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    OWN.with(|own| {
        let (mut next, mut end) = own.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        own.set((next + 1, end));
        next
    })
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
    /// Not 0: a retained message sent at subscribe, which waits in the
    /// mailbox until the SUBACK with this hold number is sent (see
    /// [`Mailbox::push_retained`](crate::session::mailbox::Mailbox::push_retained)).
    /// Only meaningful in the mailbox that numbered it.
    #[serde(skip)]
    pub suback_hold: u16,
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

/// Tracks a publish forwarded to other nodes until each of them
/// acknowledged it, so that the publisher's PUBACK/PUBREC can wait for
/// "every target node has the message". A message going to one node
/// shares the ticket of its batch with the batch's other messages
/// ([`Tracking::Batch`]).
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
            // Every waiter: a batch's ticket is awaited by each publisher
            // with a message in the batch. Waiters register before they
            // look (see `wait`), so none misses this.
            self.done.notify_waiters();
        }
    }

    pub fn is_done(&self) -> bool {
        self.remaining.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// Whether every target got the message (meaningful once done).
    pub fn delivered(&self) -> bool {
        !self.failed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// One ticket for both: done when both are, delivered when both were.
    /// With one of them missing, the other.
    pub fn join(
        a: Option<Arc<ForwardTicket>>,
        b: Option<Arc<ForwardTicket>>,
    ) -> Option<Arc<ForwardTicket>> {
        match (a, b) {
            (Some(a), Some(b)) => {
                let both = ForwardTicket::new(1);
                let done = both.clone();
                tokio::spawn(async move {
                    a.wait().await;
                    b.wait().await;
                    done.complete(a.delivered() && b.delivered());
                });
                Some(both)
            }
            (one, None) | (None, one) => one,
        }
    }

    /// Resolves once every target answered.
    pub async fn wait(&self) {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            // Registered before the look: a completion in between wakes it.
            notified.as_mut().enable();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod ticket_tests {
    use super::ForwardTicket;

    #[tokio::test]
    async fn a_joined_ticket_is_done_when_both_are_and_failed_if_either_failed() {
        assert!(ForwardTicket::join(None, None).is_none());
        let only = ForwardTicket::new(1);
        let joined = ForwardTicket::join(Some(only.clone()), None).expect("one");
        assert!(std::sync::Arc::ptr_eq(&only, &joined));

        let (a, b) = (ForwardTicket::new(1), ForwardTicket::new(1));
        let both = ForwardTicket::join(Some(a.clone()), Some(b.clone())).expect("both");
        a.complete(true);
        tokio::task::yield_now().await;
        assert!(!both.is_done());
        b.complete(false);
        both.wait().await;
        assert!(!both.delivered());
    }
}

/// How a message handed to a peer link is acknowledged to its publisher.
#[derive(Debug)]
pub enum Tracking {
    /// Nobody waits for the node's acknowledgement.
    Untracked,
    /// The message's own ticket, shared with the other nodes it goes to.
    Own(Arc<ForwardTicket>),
    /// The message goes to this node only: it waits on the ticket of the
    /// batch it joins, which the link hands back. One ticket per batch
    /// instead of one per message spares an allocation, a free on another
    /// core and a wake-up per QoS 1 publish.
    Batch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_interned_once_and_comes_back_from_storage_as_the_same_name() {
        let first = Origin::intern("node-a");
        let again = Origin::intern(&String::from("node-a"));
        assert!(std::ptr::eq(first.as_str(), again.as_str()));
        assert_ne!(first, Origin::intern("node-b"));

        let stored = postcard::to_allocvec(&Some(first)).ok();
        let back: Option<Option<Origin>> = stored.and_then(|b| postcard::from_bytes(&b).ok());
        let Some(Some(back)) = back else {
            panic!("an origin round-trips through postcard");
        };
        assert_eq!(&*back, "node-a");
        assert!(std::ptr::eq(back.as_str(), first.as_str()));
    }

    #[tokio::test]
    async fn ticket_completes_after_every_target_and_remembers_a_loss() {
        let ticket = ForwardTicket::new(2);
        ticket.complete(true);
        assert!(!ticket.is_done());
        ticket.complete(false);
        // Completed before anyone waited: wait() finds it done.
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

    /// A batch's ticket is awaited by every publisher with a message in
    /// the batch: one completion wakes them all.
    #[tokio::test]
    async fn one_completion_wakes_every_waiter() {
        let ticket = ForwardTicket::new(1);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let ticket = ticket.clone();
                tokio::spawn(async move { ticket.wait().await })
            })
            .collect();
        // Let them all start waiting before the completion.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        ticket.complete(true);
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(1), waiter)
                .await
                .unwrap()
                .unwrap();
        }
    }

    #[test]
    fn properties_are_boxed_only_when_there_are_some() {
        let empty = MessageProperties::from(PublishProperties::default());
        assert!(!empty.is_boxed());
        assert_eq!(*empty, PublishProperties::default());
        let typed = PublishProperties {
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        };
        let boxed = MessageProperties::from(typed.clone());
        assert!(boxed.is_boxed());
        assert_eq!(*boxed, typed);
    }

    #[test]
    fn boxed_properties_are_stored_as_the_properties_were() {
        let typed = PublishProperties {
            payload_format_indicator: Some(1),
            user_properties: vec![("k".into(), "v".into())],
            ..PublishProperties::default()
        };
        for properties in [PublishProperties::default(), typed] {
            let stored = postcard::to_allocvec(&MessageProperties::from(properties.clone())).ok();
            assert_eq!(stored, postcard::to_allocvec(&properties).ok());
            let back: Option<MessageProperties> =
                stored.and_then(|bytes| postcard::from_bytes(&bytes).ok());
            assert_eq!(back.as_deref(), Some(&properties));
        }
    }

    /// MQTT 5 subscribers get the expiry left and their identifiers;
    /// earlier versions have no properties, so none are made for them.
    #[test]
    fn outbound_properties_only_for_mqtt_5() {
        let expiring = PublishProperties {
            message_expiry_interval: Some(60),
            ..PublishProperties::default()
        };
        let message = Message::new(
            "t".into(),
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
            expiring,
            None,
        );
        let now = Instant::now();

        let v5 = message.outbound_properties(ProtocolVersion::V5, now, &[7]);
        assert_eq!(v5.subscription_identifiers, vec![7]);
        assert!(
            v5.message_expiry_interval
                .is_some_and(|left| left <= 60 && left > 0)
        );

        let v3 = message.outbound_properties(ProtocolVersion::V3_1_1, now, &[7]);
        assert!(!v3.is_boxed());
    }

    #[test]
    fn message_numbers_are_unique_across_threads() {
        let numbers: Vec<u64> = (0..4)
            .map(|_| std::thread::spawn(|| (0..3000).map(|_| next_seq()).collect::<Vec<_>>()))
            .flat_map(|thread| thread.join().unwrap_or_default())
            .collect();
        let unique: std::collections::HashSet<u64> = numbers.iter().copied().collect();
        assert_eq!((numbers.len(), unique.len()), (12_000, 12_000));
        assert!(!unique.contains(&0), "0 stands for no number on the wire");
    }
}
