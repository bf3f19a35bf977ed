//! Delivery to this node's subscribers: a message's matches in the tries,
//! selected (one delivery per session, one member per share group) and
//! queued in the mailboxes, one message or a run of them at a time.

use std::sync::Arc;

use smallvec::SmallVec;
use starling_codec::QoS;

use super::trie::{Matches, Subscriber};
use super::trie_slot::TrieGuard;
use super::{Router, Scope, first_level, shard_of};
use crate::message::{Delivery, Message, SessionId, ShareKey};
use crate::metrics::Metrics;
use crate::session::mailbox::{Mailbox, PushOutcome};

impl Router {
    /// Delivers a message to every matching local subscription: one delivery
    /// per session however many of its filters match (carrying all their
    /// Subscription Identifiers), one per matching shared group. Messages
    /// that came from another node go only here: they are never forwarded
    /// again. Returns the number of deliveries made.
    pub fn route_local(&self, message: &Arc<Message>, scope: Scope<'_>) -> usize {
        self.local_run().route(message, scope)
    }

    /// A [`LocalRun`]: routes a run of messages, keeping the tries' read
    /// locks from one message to the next (a run of one: until it is
    /// dropped).
    pub fn local_run(&self) -> LocalRun<'_> {
        LocalRun {
            router: self,
            held: None,
            gathered: None,
        }
    }

    /// A [`LocalRun`] that also gathers consecutive deliveries to one
    /// session and queues them under one lock of its mailbox, when the
    /// deliveries go elsewhere or the run ends. For the batches other
    /// nodes forward: a message is queued a little later (at most one
    /// batch), in the same order.
    pub fn gathering_run(&self) -> LocalRun<'_> {
        LocalRun {
            router: self,
            held: None,
            gathered: Some(Gathered::default()),
        }
    }

    /// Queues `message` for the matched subscriptions `scope` selects.
    pub(super) fn deliver(
        &self,
        message: &Arc<Message>,
        mut matches: Matches<'_>,
        scope: Scope<'_>,
        gathered: Option<&mut Gathered>,
    ) -> usize {
        select(&mut matches, scope);
        self.deliver_selected(message, &matches, gathered)
    }

    /// Queues `message` for `matches` as [`select`] left them.
    fn deliver_selected(
        &self,
        message: &Arc<Message>,
        matches: &Matches<'_>,
        mut gathered: Option<&mut Gathered>,
    ) -> usize {
        let mut delivered = 0;
        let subscribers = &matches.subscribers;
        let mut i = 0;
        while i < subscribers.len() {
            let session = subscribers[i].0;
            let mut end = i + 1;
            while end < subscribers.len() && subscribers[end].0 == session {
                end += 1;
            }
            if let Some(delivery) = merge_overlapping(message, &subscribers[i..end]) {
                let mailbox = &subscribers[i].1.mailbox;
                delivered += self.hand_over(mailbox, delivery, gathered.as_deref_mut());
            }
            i = end;
        }
        for group in &matches.groups {
            if let Some((_, member)) = group.pick(None) {
                let delivery = single_delivery(message, member, Some(group.key.clone()));
                delivered += self.hand_over(&member.mailbox, delivery, gathered.as_deref_mut());
            }
        }
        delivered
    }

    /// Queues `delivery` in `mailbox` now, or adds it to the run's
    /// `gathered` deliveries (then it counts as made).
    fn hand_over(
        &self,
        mailbox: &Arc<Mailbox>,
        delivery: Delivery,
        gathered: Option<&mut Gathered>,
    ) -> usize {
        match gathered {
            None => self.push(mailbox, delivery),
            Some(gathered) => {
                gathered.add(self, mailbox, delivery);
                1
            }
        }
    }

    /// Queues one delivery for one session, counting the outcome; returns 1
    /// when it was delivered.
    pub fn push(&self, mailbox: &Mailbox, delivery: Delivery) -> usize {
        let outcome = mailbox.push(delivery);
        self.count_push(outcome)
    }

    /// [`push`](Self::push)es every one of `deliveries` (left empty), in
    /// order, under one lock of the mailbox.
    fn push_all(&self, mailbox: &Mailbox, deliveries: &mut Vec<Delivery>) {
        mailbox.push_all(deliveries.drain(..), |outcome| {
            self.count_push(outcome);
        });
    }

    /// Counts a push's outcome; returns 1 if it counts as delivered.
    fn count_push(&self, outcome: PushOutcome) -> usize {
        match outcome {
            PushOutcome::Queued => {
                self.metrics.deliveries.inc();
                1
            }
            PushOutcome::QueuedDroppedOldest(dropped) => {
                self.metrics.deliveries.inc();
                Metrics::add(&self.metrics.dropped_queue_full, u64::from(dropped));
                1
            }
            PushOutcome::DroppedFull => {
                Metrics::inc(&self.metrics.dropped_queue_full);
                0
            }
            PushOutcome::DroppedOfflineQos0 => {
                Metrics::inc(&self.metrics.dropped_offline_qos0);
                0
            }
            // Delivered already: it counts as delivered.
            PushOutcome::Duplicate => 1,
        }
    }
}

/// Routes messages to local subscriptions ([`Router::route_local`] is a
/// run of one), keeping the two tries' read locks while consecutive
/// messages need the same ones. A peer's batch (up to 256 messages, mostly one first topic
/// level) then takes them once instead of per message: on the receiving
/// node, taking and releasing them was about 5 % of its CPU. Subscribes
/// to those tries wait until the run is dropped; hold it for one batch,
/// never across an `.await` (its guards are not `Send`).
pub struct LocalRun<'r> {
    router: &'r Router,
    /// The shard held, its guard, and the wildcard trie's.
    held: Option<HeldTries<'r>>,
    /// Deliveries not queued yet ([`Router::gathering_run`]).
    gathered: Option<Gathered>,
}

/// The shard of the topics routed, and the guards of its trie and the
/// wildcard one, each `None` when the trie was empty.
type HeldTries<'r> = (usize, Option<TrieGuard<'r>>, Option<TrieGuard<'r>>);

impl LocalRun<'_> {
    /// Delivers `message` to the local subscriptions `scope` selects;
    /// returns the number of deliveries made.
    pub fn route(&mut self, message: &Arc<Message>, scope: Scope<'_>) -> usize {
        self.route_same_topic(&message.topic, std::iter::once(message), scope)
    }

    /// Delivers each of `messages`, which share `topic` (all of them), to
    /// the local subscriptions `scope` selects, matching the topic once;
    /// returns the number of deliveries made. For a peer's batch, where one
    /// publisher's messages tend to come one after another.
    pub fn route_same_topic<'m>(
        &mut self,
        topic: &str,
        messages: impl IntoIterator<Item = &'m Arc<Message>>,
        scope: Scope<'_>,
    ) -> usize {
        let router = self.router;
        let mut matches = Matches::default();
        matching(router, &mut self.held, topic, &mut matches);
        select(&mut matches, scope);
        let mut delivered = 0;
        for message in messages {
            debug_assert_eq!(&*message.topic, topic);
            delivered += router.deliver_selected(message, &matches, self.gathered.as_mut());
        }
        delivered
    }

    /// Queues the deliveries gathered so far, so that a message queued
    /// some other way next stays behind them.
    pub fn queue_gathered(&mut self) {
        if let Some(gathered) = &mut self.gathered {
            gathered.queue(self.router);
        }
    }

    /// Appends to `out` every local subscription matching `topic`.
    pub(super) fn matches<'s>(&'s mut self, topic: &str, out: &mut Matches<'s>) {
        matching(self.router, &mut self.held, topic, out);
    }
}

impl Drop for LocalRun<'_> {
    fn drop(&mut self) {
        self.queue_gathered();
    }
}

/// Appends to `out` every local subscription matching `topic`, from the
/// two tries that can hold them (the topic's shard and the wildcard one),
/// read-locked while `held` holds them.
fn matching<'s, 'r: 's>(
    router: &'r Router,
    held: &'s mut Option<HeldTries<'r>>,
    topic: &str,
    out: &mut Matches<'s>,
) {
    let shard = shard_of(first_level(topic));
    let still_fits = held.as_ref().is_some_and(|(held, shard_trie, wildcard)| {
        // A trie skipped as empty may have been subscribed to since (the
        // flag only: no lock may be taken here, see below).
        *held == shard
            && (shard_trie.is_some() || !router.shards[shard].is_occupied())
            && (wildcard.is_some() || !router.wildcard.is_occupied())
    });
    if !still_fits {
        // Both go, and come back in the order every publish takes them
        // (shard, then wildcard): taking a shard while holding the
        // wildcard lock could deadlock against a publish and two
        // waiting subscribes.
        *held = None;
    }
    let (_, shard_trie, wildcard) = held.get_or_insert_with(|| {
        let shard_trie = router.shards[shard].read_occupied();
        (shard, shard_trie, router.wildcard.read_occupied())
    });
    if let Some(trie) = shard_trie {
        trie.matches(topic, out);
    }
    if let Some(trie) = wildcard {
        trie.matches(topic, out);
    }
}

/// Consecutive deliveries to one mailbox, queued together: one lock of
/// the mailbox and one wake-up of its reader for the lot. On the node
/// that receives a fan-in, taking the subscriber's mailbox lock for every
/// message was about 5 % of its CPU.
#[derive(Default)]
pub(super) struct Gathered {
    mailbox: Option<Arc<Mailbox>>,
    deliveries: Vec<Delivery>,
}

impl Gathered {
    fn add(&mut self, router: &Router, mailbox: &Arc<Mailbox>, delivery: Delivery) {
        if !self
            .mailbox
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, mailbox))
        {
            self.queue(router);
            self.mailbox = Some(mailbox.clone());
        }
        self.deliveries.push(delivery);
    }

    /// Queues what was gathered.
    fn queue(&mut self, router: &Router) {
        if let Some(mailbox) = self.mailbox.take() {
            router.push_all(&mailbox, &mut self.deliveries);
        }
    }
}

/// Keeps of `matches` what `scope` selects, one session's subscriptions
/// next to each other (they make one delivery).
fn select(matches: &mut Matches<'_>, scope: Scope<'_>) {
    let (plain, groups) = match scope {
        Scope::All => (true, None),
        Scope::Selected { plain, groups } => (plain, Some(groups)),
    };
    if !plain {
        matches.subscribers.clear();
    }
    if let Some(selected) = groups {
        matches
            .groups
            .retain(|g| selected.iter().any(|k| **k == *g.key));
    }
    if matches.subscribers.len() > 1 {
        matches.subscribers.sort_unstable_by_key(|(id, _)| *id);
    }
}

/// Folds every subscription one session has that matched into one delivery
/// (MQTT 5.0 §3.3.4: highest QoS, all Subscription Identifiers). A
/// subscription with No Local set does not count for its own session's
/// messages.
fn merge_overlapping(
    message: &Arc<Message>,
    subs: &[(SessionId, &Subscriber)],
) -> Option<Delivery> {
    let mut qos: Option<QoS> = None;
    let mut retain = false;
    let mut ids: SmallVec<[u32; 1]> = SmallVec::new();
    for (session, sub) in subs {
        if sub.options.no_local && message.publisher == Some(*session) {
            continue;
        }
        let granted = message.qos.min(sub.options.qos);
        qos = Some(qos.map_or(granted, |q| q.max(granted)));
        retain |= sub.options.retain_as_published && message.retain;
        ids.extend(sub.identifier);
    }
    Some(Delivery {
        message: message.clone(),
        qos: qos?,
        retain,
        subscription_ids: ids,
        share: None,
        suback_hold: 0,
    })
}

fn single_delivery(
    message: &Arc<Message>,
    sub: &Subscriber,
    share: Option<Arc<ShareKey>>,
) -> Delivery {
    Delivery {
        message: message.clone(),
        qos: message.qos.min(sub.options.qos),
        retain: sub.options.retain_as_published && message.retain,
        subscription_ids: sub.identifier.into_iter().collect(),
        share,
        suback_hold: 0,
    }
}
