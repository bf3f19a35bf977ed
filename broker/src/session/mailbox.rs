//! A session's queue of messages not yet handed to its connection.
//!
//! The mailbox outlives connections: while the client is away it keeps
//! collecting (bounded), and the next connection drains it. Publishers push
//! under a per-session lock, so no lock is shared by all sessions on the
//! publish path.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use starling_codec::QoS;

use crate::config::DropPolicy;
use crate::message::{Delivery, Origin, SessionId};
use std::sync::Arc;

/// Capacity above which an emptied queue gives its memory back, so that a
/// burst does not leave every idle session holding a large buffer.
const SHRINK_ABOVE: usize = 64;

/// How a push went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    /// Queued, but this many of the oldest messages were dropped to make
    /// room (by count, one; by bytes, as many as it takes).
    QueuedDroppedOldest(u32),
    /// Not queued: the queue is full and the policy keeps what is there.
    DroppedFull,
    /// Not queued: QoS 0 for an offline session with QoS 0 queueing off.
    DroppedOfflineQos0,
    /// Not queued: the session already got this message (it arrived twice
    /// while the session moved between nodes).
    Duplicate,
}

/// Message identities seen while a session that just moved here may get a
/// message both directly and redirected from its old node.
#[derive(Debug)]
struct Dedupe {
    seen: HashSet<(Option<Origin>, u64)>,
    until: Instant,
}

/// Retained messages of new subscriptions waiting to go, outside the
/// queue's bounds: MQTT requires every one of them (MQTT-3.3.1-9), and the
/// connection takes them as its inflight window and socket allow, like any
/// message. At most `max_retained_backlog`.
#[derive(Debug, Default)]
struct Backlog {
    retained: VecDeque<Delivery>,
    /// How many of the queue's `items` come before `retained`.
    at: usize,
}

/// The queue, in delivery order: the first `backlog.at` of `items`, then
/// `backlog.retained`, then the rest of `items`.
#[derive(Debug, Default)]
struct Queue {
    /// Everything the queue's bounds count.
    items: VecDeque<Delivery>,
    /// What `items` weigh in payload and topic bytes (`weight`); a u32
    /// (`max_queued_bytes` is at most 4 GiB): every session has a queue.
    bytes: u32,
    /// Retained messages of new subscriptions, outside the bounds (boxed:
    /// most mailboxes never have one).
    backlog: Option<Box<Backlog>>,
    /// Boxed: almost always `None`, and every session has a mailbox.
    dedupe: Option<Box<Dedupe>>,
    /// The last hold number given to retained messages waiting for their
    /// SUBACK, and the last one released (sent). Numbers wrap and skip 0.
    holds_issued: u16,
    holds_released: u16,
}

/// What a queued delivery counts against `max_queued_bytes`: its payload
/// and topic, the part that grows with what clients send. Shared between
/// the subscribers it goes to, but a bound per session must count it for
/// each.
fn weight(delivery: &Delivery) -> u32 {
    u32::try_from(delivery.message.payload.len() + delivery.message.topic.len()).unwrap_or(u32::MAX)
}

impl Queue {
    fn push_back(&mut self, delivery: Delivery) {
        self.bytes = self.bytes.saturating_add(weight(&delivery));
        self.items.push_back(delivery);
    }

    fn push_front(&mut self, delivery: Delivery) {
        self.bytes = self.bytes.saturating_add(weight(&delivery));
        self.items.push_front(delivery);
        if let Some(backlog) = &mut self.backlog {
            backlog.at += 1;
        }
    }

    /// The next delivery in order.
    fn front(&self) -> Option<&Delivery> {
        match &self.backlog {
            Some(backlog) if backlog.at == 0 => backlog.retained.front(),
            _ => self.items.front(),
        }
    }

    /// Takes the next delivery in order.
    fn pop_front(&mut self) -> Option<Delivery> {
        if let Some(backlog) = &mut self.backlog
            && backlog.at == 0
        {
            let retained = backlog.retained.pop_front();
            if backlog.retained.is_empty() {
                self.backlog = None;
            }
            return retained;
        }
        self.pop_oldest_counted()
    }

    /// Takes the oldest delivery the bounds count (to make room for a new
    /// one): never a retained message of the backlog.
    fn pop_oldest_counted(&mut self) -> Option<Delivery> {
        let delivery = self.items.pop_front()?;
        self.bytes = self.bytes.saturating_sub(weight(&delivery));
        if let Some(backlog) = &mut self.backlog {
            backlog.at = backlog.at.saturating_sub(1);
        }
        Some(delivery)
    }

    fn len(&self) -> usize {
        self.items.len() + self.backlog.as_ref().map_or(0, |b| b.retained.len())
    }

    /// Whether `delivery` still waits for its SUBACK.
    fn is_held(&self, delivery: &Delivery) -> bool {
        delivery.suback_hold != 0 && is_after(delivery.suback_hold, self.holds_released)
    }

    fn release_all_holds(&mut self) {
        self.holds_released = self.holds_issued;
    }
}

/// `a` comes after `b` in the wrapping order of hold numbers (at most a
/// few are outstanding at once, so half the range is plenty).
fn is_after(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

/// What every mailbox of a broker is bounded by: one copy shared by all
/// (every session has a mailbox; per mailbox they cost 40 bytes).
#[derive(Debug, Clone)]
pub struct MailboxLimits {
    pub max_queued: usize,
    /// Payload and topic bytes queued at most (`max_queued_bytes`).
    pub max_queued_bytes: usize,
    /// Retained messages of new subscriptions waiting at most.
    pub max_retained_backlog: usize,
    pub drop_policy: DropPolicy,
    pub queue_qos0_offline: bool,
}

#[derive(Debug)]
pub struct Mailbox {
    pub session_id: SessionId,
    queue: Mutex<Queue>,
    /// Set by a push, cleared by the reader that notices it.
    mail: AtomicBool,
    reader: AtomicWaker,
    online: AtomicBool,
    limits: Arc<MailboxLimits>,
}

impl Mailbox {
    /// A mailbox with limits of its own, unbounded in bytes (tests).
    pub fn new(
        session_id: SessionId,
        max_queued: usize,
        drop_policy: DropPolicy,
        queue_qos0_offline: bool,
    ) -> Mailbox {
        Mailbox::with_limits(
            session_id,
            Arc::new(MailboxLimits {
                max_queued,
                max_queued_bytes: usize::MAX,
                max_retained_backlog: usize::MAX,
                drop_policy,
                queue_qos0_offline,
            }),
        )
    }

    /// A mailbox bounded by the broker's shared `limits`.
    pub fn with_limits(session_id: SessionId, limits: Arc<MailboxLimits>) -> Mailbox {
        Mailbox {
            session_id,
            queue: Mutex::new(Queue::default()),
            mail: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            online: AtomicBool::new(false),
            limits,
        }
    }

    /// Bounds the queue in bytes too (see `weight`).
    pub fn with_byte_limit(mut self, max_queued_bytes: usize) -> Mailbox {
        Arc::make_mut(&mut self.limits).max_queued_bytes = max_queued_bytes;
        self
    }

    /// Bounds the retained messages of new subscriptions waiting to go
    /// (they are outside the other bounds; see `Queue::backlog`).
    pub fn with_retained_backlog_limit(mut self, max: usize) -> Mailbox {
        Arc::make_mut(&mut self.limits).max_retained_backlog = max;
        self
    }

    pub fn push(&self, delivery: Delivery) -> PushOutcome {
        let online = self.is_online();
        if let Some(dropped) = self.dropped_offline(online, &delivery) {
            return dropped;
        }
        let outcome = self.queue_locked(&mut self.queue.lock(), delivery);
        if online {
            self.signal();
        }
        outcome
    }

    /// [`push`](Self::push)es each of `deliveries` in order, under one
    /// lock and with one wake-up of the reader; `outcome` hears how each
    /// went.
    pub fn push_all(
        &self,
        deliveries: impl Iterator<Item = Delivery>,
        mut outcome: impl FnMut(PushOutcome),
    ) {
        let online = self.is_online();
        {
            let mut queue = self.queue.lock();
            for delivery in deliveries {
                outcome(match self.dropped_offline(online, &delivery) {
                    Some(dropped) => dropped,
                    None => self.queue_locked(&mut queue, delivery),
                });
            }
        }
        if online {
            self.signal();
        }
    }

    /// `Some` when `delivery` is not to be queued at all: QoS 0 while the
    /// session is offline and such messages are not kept.
    fn dropped_offline(&self, online: bool, delivery: &Delivery) -> Option<PushOutcome> {
        (!online && delivery.qos == QoS::AtMostOnce && !self.limits.queue_qos0_offline)
            .then_some(PushOutcome::DroppedOfflineQos0)
    }

    /// Queues `delivery` in the locked `guard`, per the queue's bound and
    /// drop policy and the duplicate window.
    fn queue_locked(&self, guard: &mut Queue, delivery: Delivery) -> PushOutcome {
        if let Some(dedupe) = &mut guard.dedupe {
            if Instant::now() > dedupe.until {
                guard.dedupe = None;
            } else {
                let id = (delivery.message.origin, delivery.message.seq);
                if !dedupe.seen.insert(id) {
                    return PushOutcome::Duplicate;
                }
            }
        }
        let bytes = weight(&delivery);
        let fits = |queue: &Queue| {
            queue.items.len() < self.limits.max_queued
                && u64::from(queue.bytes) + u64::from(bytes) <= self.limits.max_queued_bytes as u64
        };
        if fits(guard) {
            guard.push_back(delivery);
            return PushOutcome::Queued;
        }
        if self.limits.drop_policy == DropPolicy::Newest
            || bytes as usize > self.limits.max_queued_bytes
        {
            return PushOutcome::DroppedFull;
        }
        let mut dropped = 0;
        while !fits(guard) && guard.pop_oldest_counted().is_some() {
            dropped += 1;
        }
        guard.push_back(delivery);
        PushOutcome::QueuedDroppedOldest(dropped)
    }

    /// Queues the retained messages of a new subscription, made by `make`
    /// under the queue's lock, where the caller makes sure they are the
    /// current ones of their topics. A publisher stores its retained copy
    /// before it routes the message here, so a live message queued before is
    /// no newer than what `make` finds, and one routed after is queued
    /// after: on this node, a live message is never followed by an older
    /// retained value of its topic.
    ///
    /// They join the retained backlog, which the queue's bounds do not
    /// count, so that none is dropped however many there are; only beyond
    /// the backlog's own limit (a client subscribing to `#` again and
    /// again) are they dropped, and counted. The backlog holds retained
    /// messages only, whose payloads the retained store shares: when live
    /// messages were queued behind a backlog that still waits, the new
    /// ones go behind those, into the bounded queue (drops counted).
    ///
    /// With `hold`, the messages (and whatever is queued behind them) wait
    /// until [`release_hold`](Self::release_hold) with the returned number:
    /// the SUBACK they follow is not sent yet. Returns that number (0 when
    /// nothing was queued or nothing is held) and how many were dropped.
    pub fn push_retained(&self, hold: bool, make: impl FnOnce() -> Vec<Delivery>) -> (u16, usize) {
        let online = self.is_online();
        let mut number = 0;
        let mut dropped = 0;
        {
            let mut queue = self.queue.lock();
            let retained = make();
            if retained.is_empty() {
                return (0, 0);
            }
            if hold {
                queue.holds_issued = match queue.holds_issued.wrapping_add(1) {
                    0 => 1,
                    n => n,
                };
                number = queue.holds_issued;
            }
            let queue = &mut *queue;
            let behind_live = queue
                .backlog
                .as_ref()
                .is_some_and(|backlog| backlog.at < queue.items.len());
            if behind_live {
                for mut delivery in retained {
                    if self.dropped_offline(online, &delivery).is_none() {
                        delivery.suback_hold = number;
                        dropped += match self.queue_locked(queue, delivery) {
                            PushOutcome::QueuedDroppedOldest(n) => n as usize,
                            PushOutcome::DroppedFull => 1,
                            _ => 0,
                        };
                    }
                }
            } else {
                let at = queue.items.len();
                let backlog = queue.backlog.get_or_insert_with(|| {
                    Box::new(Backlog {
                        retained: VecDeque::new(),
                        at,
                    })
                });
                for mut delivery in retained {
                    if self.dropped_offline(online, &delivery).is_some() {
                        continue;
                    }
                    if backlog.retained.len() >= self.limits.max_retained_backlog {
                        dropped += 1;
                        continue;
                    }
                    delivery.suback_hold = number;
                    backlog.retained.push_back(delivery);
                }
                if backlog.retained.is_empty() {
                    queue.backlog = None;
                }
            }
        }
        if online {
            self.signal();
        }
        (number, dropped)
    }

    /// The SUBACK of hold `number` was sent: its retained messages may go.
    pub fn release_hold(&self, number: u16) {
        {
            let mut queue = self.queue.lock();
            if is_after(number, queue.holds_released) {
                queue.holds_released = number;
            }
        }
        self.signal();
    }

    /// Moves up to `max` deliveries from the front into `out`, stopping at
    /// the first QoS 1/2 delivery once `qos_room` of them have been taken
    /// (the inflight window), and at retained messages waiting for their
    /// SUBACK. Order is kept: nothing overtakes a delivery that cannot be
    /// sent yet.
    pub fn pop_batch(&self, out: &mut Vec<Delivery>, max: usize, mut qos_room: usize) {
        let mut guard = self.queue.lock();
        while out.len() < max {
            match guard.front() {
                None => break,
                Some(front) if guard.is_held(front) => break,
                Some(front) if front.qos != QoS::AtMostOnce => {
                    if qos_room == 0 {
                        break;
                    }
                    qos_room -= 1;
                }
                Some(_) => {}
            }
            if let Some(delivery) = guard.pop_front() {
                out.push(delivery);
            }
        }
        let queue = &mut guard.items;
        if queue.is_empty() && queue.capacity() > SHRINK_ABOVE {
            *queue = VecDeque::new();
        }
    }

    /// Puts deliveries back at the front, in order (a connection that ended
    /// before sending them).
    pub fn unpop(&self, deliveries: Vec<Delivery>) {
        let mut guard = self.queue.lock();
        for delivery in deliveries.into_iter().rev() {
            guard.push_front(delivery);
        }
    }

    /// Takes out the deliveries of shared subscriptions, leaving the rest
    /// (the retained backlog included) where it is: a connection that ends
    /// hands those to other members of their groups.
    pub fn take_shared(&self) -> Vec<Delivery> {
        let mut guard = self.queue.lock();
        let queue = &mut *guard;
        if queue.items.iter().all(|d| d.share.is_none()) {
            return Vec::new();
        }
        // The backlog's place: after the first `at` of the items.
        let at = queue.backlog.as_ref().map_or(0, |backlog| backlog.at);
        let mut taken_before_backlog = 0;
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(queue.items.len());
        for (index, delivery) in std::mem::take(&mut queue.items).into_iter().enumerate() {
            if delivery.share.is_none() {
                kept.push_back(delivery);
                continue;
            }
            queue.bytes = queue.bytes.saturating_sub(weight(&delivery));
            if index < at {
                taken_before_backlog += 1;
            }
            taken.push(delivery);
        }
        queue.items = kept;
        if let Some(backlog) = &mut queue.backlog {
            backlog.at -= taken_before_backlog;
        }
        taken
    }

    /// Empties the queue (a new session replaces the old one, or the
    /// session moves). Holds end: their numbers mean nothing elsewhere.
    pub fn take_all(&self) -> VecDeque<Delivery> {
        let mut queue = self.queue.lock();
        queue.release_all_holds();
        let mut items = std::mem::take(&mut queue.items);
        queue.bytes = 0;
        if let Some(mut backlog) = queue.backlog.take() {
            let after = items.split_off(backlog.at.min(items.len()));
            items.append(&mut backlog.retained);
            items.extend(after);
        }
        for delivery in &mut items {
            delivery.suback_hold = 0;
        }
        items
    }

    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().len() == 0
    }

    /// For `window`, drops a second copy of any message (by its cluster
    /// identity): the session just moved here and its old node redirects
    /// what still reaches it there.
    pub fn deduplicate_for(&self, window: Duration) {
        self.queue.lock().dedupe = Some(Box::new(Dedupe {
            seen: HashSet::new(),
            until: Instant::now() + window,
        }));
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// A connection took the session or left it. Retained messages held
    /// for a SUBACK the last connection never sent go now (with the next
    /// connection's resumed session).
    pub fn set_online(&self, online: bool) {
        self.queue.lock().release_all_holds();
        self.online.store(online, Ordering::Release);
        if online {
            self.signal();
        }
    }

    /// Tells the reader there is mail. A flag already set means the reader
    /// has been told and not yet looked: no second wake-up.
    fn signal(&self) {
        if !self.mail.swap(true, Ordering::AcqRel) {
            crate::reply_order::note_mail_wake();
            self.reader.wake();
        }
    }

    /// Ready when a push may have happened since the last time this (or
    /// [`Mailbox::notified`]) returned.
    pub fn poll_mail(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.mail.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.reader.register(cx.waker());
        // A push between the check and the registration woke nobody.
        if self.mail.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves when a push may have happened since the last call.
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_mail(cx)).await
    }

    /// Mail arrived that the reader has not noticed yet.
    pub fn has_mail(&self) -> bool {
        self.mail.load(Ordering::Acquire)
    }

    /// Leaves `waker` to be woken by the next push; true if mail arrived
    /// that nobody has looked at yet (the waker may then never be woken).
    pub fn watch(&self, waker: &Waker) -> bool {
        self.reader.register(waker);
        self.mail.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use starling_codec::PublishProperties;

    use super::*;
    use crate::message::Message;

    fn delivery(n: u8, qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message::new(
                "t".into(),
                Bytes::from(vec![n]),
                qos,
                false,
                PublishProperties::default(),
                None,
            )),
            qos,
            retain: false,
            subscription_ids: Default::default(),
            share: None,
            suback_hold: 0,
        }
    }

    fn payloads(v: &[Delivery]) -> Vec<u8> {
        v.iter().map(|d| d.message.payload[0]).collect()
    }

    #[test]
    fn full_queue_drops_oldest_or_newest_per_policy() {
        let oldest = Mailbox::new(SessionId(1), 2, DropPolicy::Oldest, true);
        let newest = Mailbox::new(SessionId(2), 2, DropPolicy::Newest, true);
        for n in 0..3 {
            oldest.push(delivery(n, QoS::AtLeastOnce));
            newest.push(delivery(n, QoS::AtLeastOnce));
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        oldest.pop_batch(&mut a, 10, 10);
        newest.pop_batch(&mut b, 10, 10);
        assert_eq!(payloads(&a), vec![1, 2]);
        assert_eq!(payloads(&b), vec![0, 1]);
    }

    #[test]
    fn the_byte_bound_drops_as_many_oldest_as_it_takes_or_the_newest() {
        // Each delivery weighs its one-byte payload and one-byte topic.
        let oldest = Mailbox::new(SessionId(1), 100, DropPolicy::Oldest, true).with_byte_limit(6);
        let newest = Mailbox::new(SessionId(2), 100, DropPolicy::Newest, true).with_byte_limit(6);
        for n in 0..3 {
            assert_eq!(
                oldest.push(delivery(n, QoS::AtLeastOnce)),
                PushOutcome::Queued
            );
            assert_eq!(
                newest.push(delivery(n, QoS::AtLeastOnce)),
                PushOutcome::Queued
            );
        }
        assert_eq!(
            newest.push(delivery(3, QoS::AtLeastOnce)),
            PushOutcome::DroppedFull
        );
        assert_eq!(
            oldest.push(delivery(3, QoS::AtLeastOnce)),
            PushOutcome::QueuedDroppedOldest(1)
        );
        let mut big = delivery(4, QoS::AtLeastOnce);
        Arc::get_mut(&mut big.message).expect("not shared").payload = Bytes::from(vec![4; 3]);
        assert_eq!(oldest.push(big), PushOutcome::QueuedDroppedOldest(2));
        let mut out = Vec::new();
        oldest.pop_batch(&mut out, 10, 10);
        assert_eq!(payloads(&out), vec![3, 4]);
        assert_eq!(oldest.queue.lock().bytes, 0);
        oldest.unpop(out);
        assert_eq!(oldest.queue.lock().bytes, 6);
        oldest.take_all();
        assert_eq!(oldest.queue.lock().bytes, 0);
    }

    #[test]
    fn offline_qos0_is_dropped_when_not_queued() {
        let mailbox = Mailbox::new(SessionId(1), 10, DropPolicy::Oldest, false);
        assert_eq!(
            mailbox.push(delivery(0, QoS::AtMostOnce)),
            PushOutcome::DroppedOfflineQos0
        );
        assert_eq!(
            mailbox.push(delivery(1, QoS::AtLeastOnce)),
            PushOutcome::Queued
        );
        mailbox.set_online(true);
        assert_eq!(
            mailbox.push(delivery(2, QoS::AtMostOnce)),
            PushOutcome::Queued
        );
        assert_eq!(mailbox.len(), 2);
    }

    #[test]
    fn batches_stop_at_the_window_without_reordering() {
        let mailbox = Mailbox::new(SessionId(1), 10, DropPolicy::Oldest, true);
        mailbox.push(delivery(0, QoS::AtLeastOnce));
        mailbox.push(delivery(1, QoS::AtMostOnce));
        mailbox.push(delivery(2, QoS::AtLeastOnce));
        mailbox.push(delivery(3, QoS::AtMostOnce));
        let mut out = Vec::new();
        mailbox.pop_batch(&mut out, 10, 1);
        assert_eq!(
            payloads(&out),
            vec![0, 1],
            "QoS 0 behind a blocked QoS 1 waits"
        );
        out.clear();
        mailbox.pop_batch(&mut out, 10, 1);
        assert_eq!(payloads(&out), vec![2, 3]);
    }

    #[test]
    fn unpop_restores_order() {
        let mailbox = Mailbox::new(SessionId(1), 10, DropPolicy::Oldest, true);
        for n in 0..4 {
            mailbox.push(delivery(n, QoS::AtLeastOnce));
        }
        let mut out = Vec::new();
        mailbox.pop_batch(&mut out, 2, 10);
        mailbox.unpop(out);
        let mut all = Vec::new();
        mailbox.pop_batch(&mut all, 10, 10);
        assert_eq!(payloads(&all), vec![0, 1, 2, 3]);
    }

    fn pop_all(mailbox: &Mailbox) -> Vec<u8> {
        let mut out = Vec::new();
        mailbox.pop_batch(&mut out, 100, 100);
        payloads(&out)
    }

    #[test]
    fn retained_held_for_a_suback_wait_with_what_came_after_them() {
        let mailbox = Mailbox::new(SessionId(1), 10, DropPolicy::Oldest, true);
        mailbox.set_online(true);
        mailbox.push(delivery(0, QoS::AtMostOnce));
        let (first, _) = mailbox.push_retained(true, || vec![delivery(1, QoS::AtLeastOnce)]);
        mailbox.push(delivery(2, QoS::AtMostOnce));
        let (second, _) = mailbox.push_retained(true, || vec![delivery(3, QoS::AtMostOnce)]);
        mailbox.push(delivery(4, QoS::AtMostOnce));
        assert!(first != 0 && second != 0 && first != second);
        assert_eq!(pop_all(&mailbox), vec![0], "only what came before the hold");
        mailbox.release_hold(first);
        assert_eq!(pop_all(&mailbox), vec![1, 2], "up to the second hold");
        mailbox.release_hold(second);
        assert_eq!(pop_all(&mailbox), vec![3, 4]);
    }

    #[test]
    fn unheld_or_empty_retained_take_no_hold_number() {
        let mailbox = Mailbox::new(SessionId(1), 10, DropPolicy::Oldest, true);
        assert_eq!(mailbox.push_retained(true, Vec::new), (0, 0));
        assert_eq!(
            mailbox.push_retained(false, || vec![delivery(1, QoS::AtMostOnce)]),
            (0, 0)
        );
        assert_eq!(pop_all(&mailbox), vec![1]);
    }

    #[test]
    fn holds_end_when_the_connection_changes_or_the_queue_is_taken() {
        let mailbox = Mailbox::new(SessionId(1), 10, DropPolicy::Oldest, true);
        mailbox.set_online(true);
        mailbox.push_retained(true, || vec![delivery(1, QoS::AtMostOnce)]);
        mailbox.set_online(false);
        mailbox.set_online(true);
        assert_eq!(
            pop_all(&mailbox),
            vec![1],
            "a SUBACK never sent holds nothing"
        );

        mailbox.push_retained(true, || vec![delivery(2, QoS::AtMostOnce)]);
        let taken: Vec<Delivery> = mailbox.take_all().into();
        assert!(taken.iter().all(|d| d.suback_hold == 0));
        let other = Mailbox::new(SessionId(2), 10, DropPolicy::Oldest, true);
        other.unpop(taken);
        assert_eq!(pop_all(&other), vec![2]);
    }

    #[test]
    fn retained_of_new_subscriptions_are_never_dropped_for_the_queue_bound() {
        let mailbox = Mailbox::new(SessionId(1), 2, DropPolicy::Oldest, true)
            .with_retained_backlog_limit(150);
        mailbox.set_online(true);
        mailbox.push(delivery(0, QoS::AtLeastOnce));
        let many = || (0..100).map(|n| delivery(n, QoS::AtLeastOnce)).collect();
        assert_eq!(mailbox.push_retained(false, many), (0, 0));
        assert_eq!(mailbox.len(), 101, "100 retained beyond a bound of 2");
        // A second subscription's retained join the backlog (nothing live
        // came since), up to its limit.
        let more = || (100..200).map(|n| delivery(n, QoS::AtLeastOnce)).collect();
        assert_eq!(mailbox.push_retained(false, more), (0, 50));
        // Live messages queued behind: the bound of 2 applies to them, and
        // drop-oldest takes 0 (before the backlog) and 200..=202.
        for n in 200..205 {
            mailbox.push(delivery(n, QoS::AtLeastOnce));
        }
        assert_eq!(mailbox.len(), 152);
        let mut got = Vec::new();
        while !mailbox.is_empty() {
            got.extend(pop_all(&mailbox));
        }
        let mut expected: Vec<u8> = (0..150).collect();
        expected.extend([203, 204]);
        assert_eq!(got, expected);
        assert_eq!(mailbox.queue.lock().bytes, 0);
    }

    #[test]
    fn taking_the_shared_ones_leaves_the_backlog_whole_and_in_place() {
        let mailbox = Mailbox::new(SessionId(1), 3, DropPolicy::Oldest, true);
        mailbox.set_online(true);
        let shared = |n| {
            let mut d = delivery(n, QoS::AtLeastOnce);
            d.share = Some(Arc::new(crate::message::ShareKey {
                group: "g".into(),
                filter: "t".into(),
            }));
            d
        };
        mailbox.push(shared(0));
        mailbox.push(delivery(1, QoS::AtLeastOnce));
        let many = || (10..20).map(|n| delivery(n, QoS::AtLeastOnce)).collect();
        mailbox.push_retained(false, many);
        mailbox.push(shared(2));
        let taken = mailbox.take_shared();
        assert_eq!(payloads(&taken), vec![0, 2]);
        assert_eq!(
            mailbox.queue.lock().bytes,
            2,
            "only the unshared one counted"
        );
        let mut got = Vec::new();
        while !mailbox.is_empty() {
            got.extend(pop_all(&mailbox));
        }
        let mut expected = vec![1];
        expected.extend(10..20);
        assert_eq!(
            got, expected,
            "all ten retained, after what came before them"
        );
    }

    #[test]
    fn retained_behind_live_messages_of_a_waiting_backlog_go_to_the_bounded_queue() {
        let mailbox = Mailbox::new(SessionId(1), 2, DropPolicy::Oldest, true);
        mailbox.set_online(true);
        mailbox.push_retained(false, || {
            (0..5).map(|n| delivery(n, QoS::AtLeastOnce)).collect()
        });
        mailbox.push(delivery(100, QoS::AtLeastOnce));
        let more = || (10..13).map(|n| delivery(n, QoS::AtLeastOnce)).collect();
        // Behind live 100: bounded by 2, so 100 and 10 make way.
        assert_eq!(mailbox.push_retained(false, more), (0, 2));
        let mut got = Vec::new();
        while !mailbox.is_empty() {
            got.extend(pop_all(&mailbox));
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4, 11, 12]);
    }

    #[test]
    fn take_all_keeps_the_backlog_in_its_place() {
        let mailbox = Mailbox::new(SessionId(1), 10, DropPolicy::Oldest, true);
        mailbox.set_online(true);
        mailbox.push(delivery(0, QoS::AtLeastOnce));
        mailbox.push_retained(false, || vec![delivery(1, QoS::AtLeastOnce)]);
        mailbox.push(delivery(2, QoS::AtLeastOnce));
        let taken: Vec<Delivery> = mailbox.take_all().into();
        assert_eq!(payloads(&taken), vec![0, 1, 2]);
        assert_eq!(mailbox.len(), 0);
    }

    #[test]
    fn hold_numbers_wrap_and_skip_zero() {
        let mailbox = Mailbox::new(SessionId(1), 10, DropPolicy::Oldest, true);
        {
            let mut queue = mailbox.queue.lock();
            queue.holds_issued = u16::MAX - 1;
            queue.holds_released = u16::MAX - 1;
        }
        let (a, _) = mailbox.push_retained(true, || vec![delivery(1, QoS::AtMostOnce)]);
        let (b, _) = mailbox.push_retained(true, || vec![delivery(2, QoS::AtMostOnce)]);
        assert_eq!((a, b), (u16::MAX, 1));
        assert!(pop_all(&mailbox).is_empty());
        mailbox.release_hold(a);
        assert_eq!(pop_all(&mailbox), vec![1]);
        mailbox.release_hold(b);
        assert_eq!(pop_all(&mailbox), vec![2]);
        mailbox.release_hold(a);
        mailbox.push_retained(true, || vec![delivery(3, QoS::AtMostOnce)]);
        assert!(
            pop_all(&mailbox).is_empty(),
            "an old release does not go back"
        );
    }
}
