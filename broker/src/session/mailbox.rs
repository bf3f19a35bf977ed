//! A session's queue of messages not yet handed to its connection.
//!
//! The mailbox outlives connections: while the client is away it keeps
//! collecting (bounded), and the next connection drains it. Publishers push
//! under a per-session lock, so no lock is shared by all sessions on the
//! publish path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use starling_codec::QoS;
use tokio::sync::Notify;

use crate::config::DropPolicy;
use crate::message::{Delivery, SessionId};

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
}

#[derive(Debug)]
pub struct Mailbox {
    pub session_id: SessionId,
    queue: Mutex<VecDeque<Delivery>>,
    notify: Notify,
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
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            online: AtomicBool::new(false),
            max_queued,
            drop_policy,
            queue_qos0_offline,
        }
    }

    pub fn push(&self, delivery: Delivery) -> PushOutcome {
        let online = self.is_online();
        if !online && delivery.qos == QoS::AtMostOnce && !self.queue_qos0_offline {
            return PushOutcome::DroppedOfflineQos0;
        }
        let outcome = {
            let mut queue = self.queue.lock();
            if queue.len() >= self.max_queued {
                match self.drop_policy {
                    DropPolicy::Newest => return PushOutcome::DroppedFull,
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
        };
        if online {
            self.notify.notify_one();
        }
        outcome
    }

    /// Moves up to `max` deliveries from the front into `out`, stopping at
    /// the first QoS 1/2 delivery once `qos_room` of them have been taken
    /// (the inflight window). Order is kept: nothing overtakes a delivery
    /// that cannot be sent yet.
    pub fn pop_batch(&self, out: &mut Vec<Delivery>, max: usize, mut qos_room: usize) {
        let mut queue = self.queue.lock();
        while out.len() < max {
            match queue.front() {
                None => break,
                Some(front) if front.qos != QoS::AtMostOnce => {
                    if qos_room == 0 {
                        break;
                    }
                    qos_room -= 1;
                }
                Some(_) => {}
            }
            if let Some(delivery) = queue.pop_front() {
                out.push(delivery);
            }
        }
        if queue.is_empty() && queue.capacity() > SHRINK_ABOVE {
            *queue = VecDeque::new();
        }
    }

    /// Puts deliveries back at the front, in order (a connection that ended
    /// before sending them).
    pub fn unpop(&self, deliveries: Vec<Delivery>) {
        let mut queue = self.queue.lock();
        for delivery in deliveries.into_iter().rev() {
            queue.push_front(delivery);
        }
    }

    /// Empties the queue (a new session replaces the old one).
    pub fn take_all(&self) -> VecDeque<Delivery> {
        std::mem::take(&mut *self.queue.lock())
    }

    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().is_empty()
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Release);
        if online {
            self.notify.notify_one();
        }
    }

    /// Resolves when a push may have happened since the last call.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}
