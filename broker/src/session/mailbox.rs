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

/// Capacity above which an emptied queue gives its memory back, so that a
/// burst does not leave every idle session holding a large buffer.
const SHRINK_ABOVE: usize = 64;

/// How a push went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    /// Queued, but the oldest message was dropped to make room.
    QueuedDroppedOldest,
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

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Delivery>,
    /// Boxed: almost always `None`, and every session has a mailbox.
    dedupe: Option<Box<Dedupe>>,
    /// The last hold number given to retained messages waiting for their
    /// SUBACK, and the last one released (sent). Numbers wrap and skip 0.
    holds_issued: u32,
    holds_released: u32,
}

impl Queue {
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
fn is_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[derive(Debug)]
pub struct Mailbox {
    pub session_id: SessionId,
    queue: Mutex<Queue>,
    /// Set by a push, cleared by the reader that notices it.
    mail: AtomicBool,
    reader: AtomicWaker,
    online: AtomicBool,
    max_queued: usize,
    drop_policy: DropPolicy,
    queue_qos0_offline: bool,
}

impl Mailbox {
    pub fn new(
        session_id: SessionId,
        max_queued: usize,
        drop_policy: DropPolicy,
        queue_qos0_offline: bool,
    ) -> Mailbox {
        Mailbox {
            session_id,
            queue: Mutex::new(Queue::default()),
            mail: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            online: AtomicBool::new(false),
            max_queued,
            drop_policy,
            queue_qos0_offline,
        }
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
        (!online && delivery.qos == QoS::AtMostOnce && !self.queue_qos0_offline)
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
        let queue = &mut guard.items;
        if queue.len() >= self.max_queued {
            match self.drop_policy {
                DropPolicy::Newest => PushOutcome::DroppedFull,
                DropPolicy::Oldest => {
                    queue.pop_front();
                    queue.push_back(delivery);
                    PushOutcome::QueuedDroppedOldest
                }
            }
        } else {
            queue.push_back(delivery);
            PushOutcome::Queued
        }
    }

    /// Queues the retained messages of a new subscription, made by `make`
    /// under the queue's lock, where the caller makes sure they are the
    /// current ones of their topics. A publisher stores its retained copy
    /// before it routes the message here, so a live message queued before is
    /// no newer than what `make` finds, and one routed after is queued
    /// after: on this node, a live message is never followed by an older
    /// retained value of its topic.
    ///
    /// With `hold`, the messages (and whatever is queued behind them) wait
    /// until [`release_hold`](Self::release_hold) with the returned number:
    /// the SUBACK they follow is not sent yet. Returns 0 when nothing was
    /// queued or nothing is held.
    pub fn push_retained(&self, hold: bool, make: impl FnOnce() -> Vec<Delivery>) -> u32 {
        let online = self.is_online();
        let mut number = 0;
        {
            let mut queue = self.queue.lock();
            let retained = make();
            if retained.is_empty() {
                return 0;
            }
            if hold {
                queue.holds_issued = match queue.holds_issued.wrapping_add(1) {
                    0 => 1,
                    n => n,
                };
                number = queue.holds_issued;
            }
            for mut delivery in retained {
                if self.dropped_offline(online, &delivery).is_none() {
                    delivery.suback_hold = number;
                    self.queue_locked(&mut queue, delivery);
                }
            }
        }
        if online {
            self.signal();
        }
        number
    }

    /// The SUBACK of hold `number` was sent: its retained messages may go.
    pub fn release_hold(&self, number: u32) {
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
            match guard.items.front() {
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
            if let Some(delivery) = guard.items.pop_front() {
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
            guard.items.push_front(delivery);
        }
    }

    /// Empties the queue (a new session replaces the old one, or the
    /// session moves). Holds end: their numbers mean nothing elsewhere.
    pub fn take_all(&self) -> VecDeque<Delivery> {
        let mut queue = self.queue.lock();
        queue.release_all_holds();
        let mut items = std::mem::take(&mut queue.items);
        for delivery in &mut items {
            delivery.suback_hold = 0;
        }
        items
    }

    pub fn len(&self) -> usize {
        self.queue.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().items.is_empty()
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
            crate::connection::reply_order::note_mail_wake();
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
        let first = mailbox.push_retained(true, || vec![delivery(1, QoS::AtLeastOnce)]);
        mailbox.push(delivery(2, QoS::AtMostOnce));
        let second = mailbox.push_retained(true, || vec![delivery(3, QoS::AtMostOnce)]);
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
        assert_eq!(mailbox.push_retained(true, Vec::new), 0);
        assert_eq!(
            mailbox.push_retained(false, || vec![delivery(1, QoS::AtMostOnce)]),
            0
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
    fn hold_numbers_wrap_and_skip_zero() {
        let mailbox = Mailbox::new(SessionId(1), 10, DropPolicy::Oldest, true);
        {
            let mut queue = mailbox.queue.lock();
            queue.holds_issued = u32::MAX - 1;
            queue.holds_released = u32::MAX - 1;
        }
        let a = mailbox.push_retained(true, || vec![delivery(1, QoS::AtMostOnce)]);
        let b = mailbox.push_retained(true, || vec![delivery(2, QoS::AtMostOnce)]);
        assert_eq!((a, b), (u32::MAX, 1));
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
