//! The router: subscription index, shared groups, retained messages, and
//! the route store that tells the cluster what this node wants.
//!
//! The subscription trie is split into shards by the first topic level
//! (plus one shard for filters that start with a wildcard), so that a
//! publish takes two read locks that only subscribes to the same first
//! level ever write-lock: there is no broker-wide lock on the publish path.

pub mod gathered;
pub mod remote_cache;
pub mod retained;
pub mod store;
pub mod trie;
mod trie_slot;

use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use smallvec::SmallVec;
use starling_codec::QoS;
use starling_codec::topic::ParsedFilter;

use crate::message::{Delivery, ForwardTicket, Message, SessionId, ShareKey, Tracking};
use crate::metrics::Metrics;
use crate::node::NodeId;
use crate::session::mailbox::{Mailbox, PushOutcome};
use gathered::GatheredForwards;
use remote_cache::RemoteRouteCache;
use retained::RetainedStore;
use store::{Forwarder, RemoteRoutes, RetainedReplicator, RouteStore};

/// Where a message published here goes in a cluster, besides the nodes
/// with a matching plain route.
#[derive(Default)]
struct RoutePlan {
    /// Share groups whose message this node delivers itself.
    local_groups: Vec<Arc<ShareKey>>,
    /// Share groups whose message another node delivers.
    remote_groups: Vec<(NodeId, Arc<ShareKey>)>,
}

impl RoutePlan {
    /// Picks one node per matching share group among the nodes with members
    /// (this one included), spreading by the message's sequence number.
    fn choose_group_nodes(
        &mut self,
        seq: u64,
        local: &[Arc<ShareKey>],
        remote: &[(Arc<ShareKey>, Vec<NodeId>)],
    ) {
        // Remote groups that have members here too, chosen among with them.
        let mut also_local = vec![false; remote.len()];
        for key in local {
            let others: &[NodeId] = match remote
                .iter()
                .enumerate()
                .position(|(i, (k, _))| !also_local[i] && k == key)
            {
                Some(i) => {
                    also_local[i] = true;
                    &remote[i].1
                }
                None => &[],
            };
            let pick = (seq % (others.len() as u64 + 1)) as usize;
            match others.get(pick) {
                Some(node) => self.remote_groups.push((node.clone(), key.clone())),
                None => self.local_groups.push(key.clone()),
            }
        }
        for ((key, nodes), also_local) in remote.iter().zip(also_local) {
            if !also_local && !nodes.is_empty() {
                let node = nodes[(seq % nodes.len() as u64) as usize].clone();
                self.remote_groups.push((node, key.clone()));
            }
        }
    }

    /// Each target node once, with whether its plain subscriptions want the
    /// message and which share groups it serves.
    fn remote_targets(&self, plain_nodes: &[NodeId]) -> Vec<(NodeId, bool, Vec<Arc<ShareKey>>)> {
        let mut targets: Vec<(NodeId, bool, Vec<Arc<ShareKey>>)> = plain_nodes
            .iter()
            .map(|n| (n.clone(), true, Vec::new()))
            .collect();
        for (node, key) in &self.remote_groups {
            match targets.iter_mut().find(|t| t.0 == *node) {
                Some(target) => target.2.push(key.clone()),
                None => targets.push((node.clone(), false, vec![key.clone()])),
            }
        }
        targets
    }
}
use trie::{Matches, Subscriber};
use trie_slot::{TrieGuard, TrieSlot};

const SHARDS: usize = 16;

/// What became of a retained message given to [`Router::retain`].
#[derive(Debug)]
pub enum Retained {
    /// Stored; the ticket (when asked for) completes once every node of
    /// the cluster serves it.
    Stored(Option<Arc<crate::message::ForwardTicket>>),
    /// Not stored: the retained store is full.
    Refused,
}

pub struct Router {
    /// Read by every publish: sharded locks (see
    /// [`ReadMostly`](crate::read_mostly::ReadMostly)), skipped
    /// while empty (see [`TrieSlot`]).
    shards: Box<[TrieSlot]>,
    /// Filters whose first level is `+` or `#`: they can match any topic.
    wildcard: TrieSlot,
    retained: RwLock<RetainedStore>,
    /// (max_retained_messages, max_retained_bytes) for local publishes.
    retained_limits: (usize, usize),
    /// Held while a local retained message is checked and stored.
    retained_admission: parking_lot::Mutex<()>,
    store: Arc<dyn RouteStore>,
    /// Cluster mode: hands messages to the nodes the store says want them.
    forwarder: Option<Arc<dyn Forwarder>>,
    /// Cluster mode: shares retained messages with the other nodes. Set
    /// once at start-up, after the router exists.
    replicator: Option<Arc<dyn RetainedReplicator>>,
    metrics: Arc<Metrics>,
}

/// FNV-1a: a cheap, stable hash for picking a shard from a short level.
fn shard_of(first_level: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in first_level.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % SHARDS as u64) as usize
}

/// The route a subscription stands for: its filter, or
/// `$share/<group>/<filter>` for a member of a share group.
pub fn route_name(filter: &ParsedFilter<'_>) -> String {
    match filter.share_group {
        None => filter.filter.to_string(),
        Some(group) => format!("$share/{group}/{}", filter.filter),
    }
}

/// What a publishing connection keeps for routing its messages in a
/// cluster, from one publish to the next.
#[derive(Debug, Default)]
pub struct PublisherRouting {
    /// The remote routes of its last topic.
    routes: RemoteRouteCache,
    /// Forwards not queued on their links yet.
    forwards: GatheredForwards,
}

/// What routing a publish did.
#[derive(Debug, Default)]
pub struct Routed {
    /// Local deliveries plus target nodes (0: nobody wanted the message).
    pub delivered: usize,
    /// With tracking: completed once every target node acknowledged.
    pub ticket: Option<Arc<ForwardTicket>>,
    /// A node whose link is congested: the publisher should take nothing
    /// more until [`Router::forward_drained`] resolves.
    pub congested: Option<NodeId>,
}

/// A message to route. One published here comes owned, and goes behind
/// an `Arc` only when a subscriber on this node gets it: a message that
/// only goes to other nodes is encoded into their batches, and allocating,
/// copying and freeing it cost the forwarding node about 5 % of its CPU.
pub struct ToRoute {
    owned: Option<Message>,
    shared: Option<Arc<Message>>,
}

impl ToRoute {
    pub fn owned(message: Message) -> ToRoute {
        ToRoute {
            owned: Some(message),
            shared: None,
        }
    }

    pub fn shared(message: Arc<Message>) -> ToRoute {
        ToRoute {
            owned: None,
            shared: Some(message),
        }
    }

    fn get(&self) -> Option<&Message> {
        self.shared.as_deref().or(self.owned.as_ref())
    }

    /// The message behind its `Arc`, made now if it was not yet.
    fn share(&mut self) -> Option<&Arc<Message>> {
        if let Some(owned) = self.owned.take() {
            self.shared = Some(Arc::new(owned));
        }
        self.shared.as_ref()
    }
}

/// Which local subscriptions a message goes to.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every matching subscription, plain and shared (a single node).
    All,
    /// Plain subscriptions if `plain`, and only the listed share groups:
    /// in a cluster, each group's message goes to exactly one node.
    Selected {
        plain: bool,
        groups: &'a [Arc<ShareKey>],
    },
}

fn first_level(topic: &str) -> &str {
    starling_codec::topic::levels(topic).next().unwrap_or(topic)
}

impl Router {
    pub fn new(
        store: Arc<dyn RouteStore>,
        forwarder: Option<Arc<dyn Forwarder>>,
        metrics: Arc<Metrics>,
    ) -> Router {
        Router {
            forwarder,
            replicator: None,
            shards: (0..SHARDS).map(|_| TrieSlot::default()).collect(),
            wildcard: TrieSlot::default(),
            retained: RwLock::new(RetainedStore::default()),
            retained_limits: (usize::MAX, usize::MAX),
            retained_admission: parking_lot::Mutex::new(()),
            store,
            metrics,
        }
    }

    /// Bounds what this node stores when its clients publish retained
    /// messages: at most `max_messages` topics and `max_bytes` of payload
    /// and topic. What other nodes store arrives regardless (the cluster's
    /// copy is the one that counts; each node applies the same limits to
    /// its own clients).
    pub fn with_retained_limits(mut self, max_messages: usize, max_bytes: usize) -> Router {
        self.retained_limits = (max_messages, max_bytes);
        self
    }

    /// Cluster mode: retained messages are shared through `replicator`.
    pub fn with_retained_replicator(mut self, replicator: Arc<dyn RetainedReplicator>) -> Router {
        self.replicator = Some(replicator);
        self
    }

    fn trie_for_filter(&self, filter: &str) -> &TrieSlot {
        match first_level(filter) {
            "+" | "#" => &self.wildcard,
            level => &self.shards[shard_of(level)],
        }
    }

    /// Adds or replaces a subscription; returns whether it existed before.
    pub fn subscribe(
        &self,
        filter: &ParsedFilter<'_>,
        session: SessionId,
        subscriber: Subscriber,
    ) -> bool {
        let change = self
            .trie_for_filter(filter.filter)
            .write(|trie| trie.insert(filter.filter, filter.share_group, session, subscriber));
        if change.route_edge {
            self.store.add_route(&route_name(filter));
        }
        change.existed
    }

    /// With route sync on (cluster): a ticket completed once every other
    /// node routes these filters (names from [`route_name`]) here.
    pub fn sync_routes(&self, routes: &[String]) -> Option<Arc<ForwardTicket>> {
        self.store.sync(routes)
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, filter: &ParsedFilter<'_>, session: SessionId) -> bool {
        let change = self
            .trie_for_filter(filter.filter)
            .write(|trie| trie.remove(filter.filter, filter.share_group, session));
        if change.route_edge {
            self.store.remove_route(&route_name(filter));
        }
        change.existed
    }

    /// Number of distinct filters subscribed on this node.
    pub fn filter_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().filter_count())
            .sum::<usize>()
            + self.wildcard.read().filter_count()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Payload and topic bytes of the retained messages held here.
    pub fn retained_bytes(&self) -> usize {
        self.retained.read().bytes()
    }

    /// Stores (or clears) a retained message published on this node, and
    /// shares it with the cluster.
    ///
    /// Returns `Refused`, storing nothing, when the message would take the
    /// store past its limits (counted in `retained_refused`). With
    /// `want_ticket` in a cluster with route sync, the ticket of `Stored`
    /// completes once every node serves the message.
    pub fn retain(&self, message: Arc<Message>, want_ticket: bool) -> Retained {
        let (max_messages, max_bytes) = self.retained_limits;
        // The check and the store, one publisher at a time: concurrent
        // publishers of new topics must not all pass a check made before
        // any of them stored.
        let _admission = self.retained_admission.lock();
        if !self
            .retained
            .read()
            .admits(&message, max_messages, max_bytes)
        {
            Metrics::inc(&self.metrics.retained_refused);
            return Retained::Refused;
        }
        let mut store_here = || self.retained.write().set(message.clone());
        match &self.replicator {
            Some(replicator) => {
                Retained::Stored(replicator.replicate(&message, &mut store_here, want_ticket))
            }
            None => {
                store_here();
                Retained::Stored(None)
            }
        }
    }

    /// Stores (or clears) a retained message without sharing it: the
    /// cluster's copy arriving here.
    pub fn retain_local(&self, message: Arc<Message>) {
        self.retained.write().set(message);
    }

    /// Replaces every retained message with `store`'s (a
    /// resynchronisation with the cluster's copy), except those of the
    /// topics in `keep`, which stay as they are here (changed here, not in
    /// the copy yet). Returns the index replaced, for the caller to free.
    pub fn replace_retained(&self, mut store: RetainedStore, keep: &[&str]) -> RetainedStore {
        let mut current = self.retained.write();
        let now = Instant::now();
        for topic in keep {
            match current.get(topic, now) {
                Some(message) => store.set(message.clone()),
                None => store.remove(topic),
            }
        }
        current.replace_with(store)
    }

    /// Retained messages matching a (non-shared) filter.
    pub fn retained_matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        self.retained.read().matching(filter, Instant::now(), out);
    }

    /// A number that changes whenever a retained message is set or cleared.
    pub fn retained_version(&self) -> u64 {
        self.retained.read().version()
    }

    /// Brings retained messages read earlier up to date: each becomes its
    /// topic's current one, or goes if the topic has none now. `message`
    /// finds the message in an item.
    pub fn refresh_retained<T>(
        &self,
        items: &mut Vec<T>,
        message: impl Fn(&mut T) -> &mut Arc<Message>,
    ) {
        let store = self.retained.read();
        let now = Instant::now();
        items.retain_mut(|item| {
            let message = message(item);
            match store.get(&message.topic, now) {
                Some(current) => {
                    if !Arc::ptr_eq(current, message) {
                        *message = current.clone();
                    }
                    true
                }
                None => false,
            }
        });
    }

    pub fn purge_expired_retained(&self) -> usize {
        self.retained.write().purge_expired(Instant::now())
    }

    /// Delivers a message published on this node: to every matching local
    /// subscription and, in a cluster, once to every other node with a
    /// matching route. Each matching share group gets it exactly once in the
    /// whole cluster: one node among those with members is chosen for it.
    /// Returns the number of local deliveries plus target nodes (0 means
    /// nobody wanted it).
    pub fn route(&self, message: &Arc<Message>) -> usize {
        self.route_tracked(ToRoute::shared(message.clone()), false, None)
            .delivered
    }

    /// [`route`](Self::route), and with `track` a ticket that completes
    /// once every other node it was forwarded to acknowledged it. A
    /// publisher passes what it keeps for routing (the remote routes of
    /// its last topic, and the forwards it gathers: it must then
    /// [`queue_gathered`](Self::queue_gathered) before it waits).
    pub fn route_tracked(
        &self,
        mut message: ToRoute,
        track: bool,
        publisher: Option<&mut PublisherRouting>,
    ) -> Routed {
        let (cache, mut gathered) = match publisher {
            Some(p) => (Some(&mut p.routes), Some(&mut p.forwards)),
            None => (None, None),
        };
        let Some(forwarder) = &self.forwarder else {
            let local = match message.share() {
                Some(shared) => self.route_local(shared, Scope::All),
                None => 0,
            };
            return Routed {
                delivered: self.count_unwanted(local),
                ticket: None,
                congested: None,
            };
        };
        let Some(current) = message.get() else {
            return Routed::default();
        };
        let topic: &str = &current.topic;
        let mut uncached = RemoteRoutes::default();
        let remote = match cache {
            Some(cache) => cache.resolve(&*self.store, topic),
            None => {
                self.store.remote_routes(topic, &mut uncached);
                &uncached
            }
        };
        // One walk of the local tries serves both the share-group plan and
        // the local deliveries; the forwards go out after the locks.
        let (local, plan) = {
            let mut run = self.local_run();
            let mut matches = Matches::default();
            run.matches(topic, &mut matches);
            let mut plan = RoutePlan::default();
            if !remote.groups.is_empty() || !matches.groups.is_empty() {
                let local_groups: Vec<Arc<ShareKey>> =
                    matches.groups.iter().map(|g| g.key.clone()).collect();
                plan.choose_group_nodes(current.seq, &local_groups, &remote.groups);
            }
            // A message no subscriber here wants is never shared.
            let shared = match matches.is_empty() {
                true => None,
                false => message.share(),
            };
            let local = match shared {
                Some(shared) => self.deliver(
                    shared,
                    matches,
                    Scope::Selected {
                        plain: true,
                        groups: &plan.local_groups,
                    },
                    None,
                ),
                None => 0,
            };
            (local, plan)
        };
        let Some(message) = message.get() else {
            return Routed::default();
        };

        let mut congested = None;
        let mut send = |node: &NodeId, plain, groups, tracking: Tracking| {
            if let Some(gathered) = gathered.as_deref_mut() {
                if let Tracking::Untracked = tracking {
                    if let Some(node) = forwarder.gather(gathered, node, message, plain, groups) {
                        congested = Some(node);
                    }
                    return None;
                }
                // Behind what this publisher gathered before it.
                if let Some(node) = forwarder.queue_gathered(gathered) {
                    congested = Some(node);
                }
            }
            let forwarded = forwarder.forward(node, message, plain, groups, tracking);
            if forwarded.congested {
                congested = Some(node.clone());
            }
            forwarded.ticket
        };
        // One target node: the message waits on its batch's ticket. Several:
        // on a ticket of its own that each of them completes.
        let own_ticket =
            |targets: usize| (track && targets > 1).then(|| ForwardTicket::new(targets));
        let tracking = |own: &Option<Arc<ForwardTicket>>| match own {
            Some(ticket) => Tracking::Own(ticket.clone()),
            None if track => Tracking::Batch,
            None => Tracking::Untracked,
        };
        let (remote_count, ticket) = if plan.remote_groups.is_empty() {
            // The usual case, plain routes only: no list of targets to make.
            let own = own_ticket(remote.nodes.len());
            let mut batch = None;
            for node in &remote.nodes {
                batch = send(node, true, Vec::new(), tracking(&own));
            }
            (remote.nodes.len(), own.or(batch))
        } else {
            let targets = plan.remote_targets(&remote.nodes);
            let own = own_ticket(targets.len());
            let count = targets.len();
            let mut batch = None;
            for (node, plain, groups) in targets {
                batch = send(&node, plain, groups, tracking(&own));
            }
            (count, own.or(batch))
        };
        Routed {
            delivered: self.count_unwanted(local + remote_count),
            ticket,
            congested,
        }
    }

    /// Queues on their links the forwards `publisher` gathered; returns a
    /// node whose link is congested now.
    pub fn queue_gathered(&self, publisher: &mut PublisherRouting) -> Option<NodeId> {
        let forwarder = self.forwarder.as_ref()?;
        forwarder.queue_gathered(&mut publisher.forwards)
    }

    /// Cluster mode: messages may go to other nodes.
    pub fn is_clustered(&self) -> bool {
        self.forwarder.is_some()
    }

    /// Waits until the link to `node` takes messages again.
    pub fn forward_drained(
        &self,
        node: &NodeId,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>> {
        self.forwarder.as_ref().map(|f| f.drained(node))
    }

    fn count_unwanted(&self, delivered: usize) -> usize {
        if delivered == 0 {
            Metrics::inc(&self.metrics.dropped_no_subscribers);
        }
        delivered
    }

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
    fn deliver(
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

    /// Gives a shared-subscription delivery to another member of its group
    /// (its session ended with the message unacknowledged). Returns false
    /// when the group has no other member.
    pub fn redeliver_shared(
        &self,
        share: &ShareKey,
        mut delivery: Delivery,
        exclude: SessionId,
    ) -> bool {
        let trie = self.trie_for_filter(&share.filter).read();
        let mut matches = Matches::default();
        // The group's own filter as a topic would not match wildcard levels,
        // so look the group up by walking the message's topic instead.
        trie.matches(&delivery.message.topic, &mut matches);
        let Some(group) = matches.groups.iter().find(|g| *g.key == *share) else {
            return false;
        };
        let Some((id, member)) = group.pick(Some(exclude)) else {
            return false;
        };
        if *id == exclude {
            return false;
        }
        delivery.qos = delivery.message.qos.min(member.options.qos);
        delivery.subscription_ids = member.identifier.into_iter().collect();
        self.push(&member.mailbox, delivery) == 1
    }

    /// Redirects a delivery of a session that moved to `node` (cluster mode).
    pub fn redirect(&self, node: &NodeId, client_id: &Arc<str>, delivery: Delivery) {
        if let Some(forwarder) = &self.forwarder {
            forwarder.redirect(node, client_id, delivery);
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
    fn matches<'s>(&'s mut self, topic: &str, out: &mut Matches<'s>) {
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
struct Gathered {
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;

    use bytes::Bytes;
    use parking_lot::Mutex;
    use starling_codec::topic::parse_filter;
    use starling_codec::{MessageProperties, SubscriptionOptions};

    use super::*;
    use crate::config::DropPolicy;
    use crate::session::mailbox::Mailbox;
    use store::{Forwarded, LocalRouteStore};

    /// Another node wants every topic that starts with `remote/`.
    struct RemoteWantsRemote;

    impl RouteStore for RemoteWantsRemote {
        fn add_route(&self, _: &str) {}
        fn remove_route(&self, _: &str) {}
        fn remote_routes(&self, topic: &str, routes: &mut RemoteRoutes) {
            if topic.starts_with("remote/") {
                routes.nodes.push(NodeId::from("n2"));
            }
        }
        fn local_route_count(&self) -> usize {
            0
        }
    }

    /// Records the topics it is asked to forward.
    #[derive(Default)]
    struct Recording(Mutex<Vec<String>>);

    impl Forwarder for Recording {
        fn forward(
            &self,
            node: &NodeId,
            message: &Message,
            _: bool,
            _: Vec<Arc<ShareKey>>,
            _: Tracking,
        ) -> Forwarded {
            self.0.lock().push(format!("{node}:{}", &*message.topic));
            Forwarded::default()
        }
        fn drained(&self, _: &NodeId) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
            Box::pin(std::future::ready(()))
        }
        fn redirect(&self, _: &NodeId, _: &Arc<str>, _: Delivery) {}
    }

    fn message(topic: &str) -> Message {
        Message::new(
            topic.into(),
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            false,
            MessageProperties::default(),
            None,
        )
    }

    /// Subscribes a new session to each filter; returns its mailbox.
    fn subscribe(router: &Router, id: u64, filters: &[&str]) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox::new(SessionId(id), 100, DropPolicy::Oldest, true));
        for filter in filters {
            let Ok(parsed) = parse_filter(filter) else {
                panic!("{filter} is a valid filter");
            };
            let subscriber = trie::Subscriber {
                mailbox: mailbox.clone(),
                options: SubscriptionOptions::default(),
                identifier: None,
            };
            router.subscribe(&parsed, SessionId(id), subscriber);
        }
        mailbox
    }

    fn topics(mailbox: &Mailbox) -> Vec<String> {
        mailbox
            .take_all()
            .into_iter()
            .map(|d| d.message.topic.to_string())
            .collect()
    }

    #[test]
    fn a_message_published_here_goes_to_local_subscribers_and_other_nodes() {
        let forwarder = Arc::new(Recording::default());
        let router = Router::new(
            Arc::new(RemoteWantsRemote),
            Some(forwarder.clone()),
            Arc::default(),
        );
        let local = subscribe(&router, 1, &["+/both"]);

        let only_remote = router.route_tracked(ToRoute::owned(message("remote/a")), false, None);
        let both = router.route_tracked(ToRoute::owned(message("remote/both")), false, None);
        let only_local = router.route_tracked(ToRoute::owned(message("local/both")), false, None);
        let nobody = router.route_tracked(ToRoute::owned(message("local/a")), false, None);

        assert_eq!(
            [
                only_remote.delivered,
                both.delivered,
                only_local.delivered,
                nobody.delivered
            ],
            [1, 2, 1, 0]
        );
        assert_eq!(*forwarder.0.lock(), ["n2:remote/a", "n2:remote/both"]);
        assert_eq!(topics(&local), ["remote/both", "local/both"]);
    }

    #[test]
    fn a_run_routes_across_shards_and_lets_subscribes_in_once_dropped() {
        let router = Router::new(Arc::new(LocalRouteStore::default()), None, Arc::default());
        let first = subscribe(&router, 1, &["a/x", "+/y"]);
        let second = subscribe(&router, 2, &["b/#"]);
        assert_ne!(
            shard_of("a"),
            shard_of("b"),
            "the topics must switch shards"
        );

        let mut run = router.local_run();
        let mut delivered = 0;
        for topic in ["a/x", "b/y", "a/y", "b/z", "c/x"] {
            delivered += run.route(&Arc::new(message(topic)), Scope::All);
        }
        drop(run);

        assert_eq!(delivered, 5);
        assert_eq!(topics(&first), ["a/x", "b/y", "a/y"]);
        assert_eq!(topics(&second), ["b/y", "b/z"]);
        // The locks are gone with the run: a subscribe to either trie
        // goes through.
        let third = subscribe(&router, 3, &["c/#", "+/x"]);
        router.route(&Arc::new(message("c/x")));
        assert_eq!(topics(&third), ["c/x"]);
    }

    #[test]
    fn a_run_sees_a_trie_it_skipped_as_empty_once_it_has_a_filter() {
        let router = Router::new(Arc::new(LocalRouteStore::default()), None, Arc::default());
        let mut run = router.local_run();
        assert_eq!(run.route(&Arc::new(message("a/1")), Scope::All), 0);
        // Neither trie is locked by the run while empty, so this goes
        // through with the run still open.
        let late = subscribe(&router, 1, &["a/#"]);
        assert_eq!(run.route(&Arc::new(message("a/2")), Scope::All), 1);
        drop(run);
        assert_eq!(topics(&late), ["a/2"]);
    }

    #[test]
    fn a_gathering_run_queues_each_sessions_messages_in_order_by_the_end() {
        let metrics = Arc::new(Metrics::default());
        let router = Router::new(Arc::new(LocalRouteStore::default()), None, metrics.clone());
        let first = subscribe(&router, 1, &["a/#"]);
        let second = subscribe(&router, 2, &["b/#", "a/2"]);
        first.set_online(true);
        second.set_online(true);

        let mut run = router.gathering_run();
        for topic in ["a/1", "a/2", "b/1", "b/2", "a/3", "c/1", "b/3"] {
            run.route(&Arc::new(message(topic)), Scope::All);
        }
        // Runs of one session's deliveries are queued as the next session
        // comes up; the last run waits for the end (or an explicit call).
        assert_eq!(first.len(), 3, "a/1 and a/2, then a/3");
        assert_eq!(second.len(), 3, "a/2, then b/1 and b/2; b/3 still gathered");
        run.queue_gathered();
        assert_eq!(second.len(), 4);
        run.route(&Arc::new(message("a/4")), Scope::All);
        drop(run);

        assert_eq!(topics(&first), ["a/1", "a/2", "a/3", "a/4"]);
        assert_eq!(topics(&second), ["a/2", "b/1", "b/2", "b/3"]);
        assert_eq!(metrics.snapshot().deliveries, 8);
    }

    #[test]
    fn a_same_topic_run_matches_once_and_delivers_each_message_on_its_own() {
        let metrics = Arc::new(Metrics::default());
        let router = Router::new(Arc::new(LocalRouteStore::default()), None, metrics.clone());
        let own = Arc::new(Mailbox::new(SessionId(1), 100, DropPolicy::Oldest, true));
        let Ok(filter) = parse_filter("a/b") else {
            panic!("a valid filter");
        };
        let no_local = SubscriptionOptions {
            no_local: true,
            ..Default::default()
        };
        router.subscribe(
            &filter,
            SessionId(1),
            trie::Subscriber {
                mailbox: own.clone(),
                options: no_local,
                identifier: None,
            },
        );
        // Two filters matching one topic: one delivery per message.
        let other = subscribe(&router, 2, &["a/b", "a/#"]);

        let published = |payload: &'static [u8], publisher: Option<u64>| {
            let mut m = message("a/b");
            m.payload = Bytes::from_static(payload);
            m.publisher = publisher.map(SessionId);
            Arc::new(m)
        };
        let run = [
            published(b"1", None),
            published(b"2", Some(1)),
            published(b"3", Some(2)),
        ];
        let mut local = router.local_run();
        let delivered = local.route_same_topic("a/b", &run, Scope::All);
        let none = local.route_same_topic(
            "a/b",
            &run,
            Scope::Selected {
                plain: false,
                groups: &[],
            },
        );
        drop(local);

        assert_eq!((delivered, none), (5, 0));
        let payloads = |mailbox: &Mailbox| -> Vec<Bytes> {
            mailbox
                .take_all()
                .into_iter()
                .map(|d| d.message.payload.clone())
                .collect()
        };
        // No Local is looked at for each message: the session's own stays.
        assert_eq!(payloads(&own), [&b"1"[..], b"3"]);
        assert_eq!(payloads(&other), [&b"1"[..], b"2", b"3"]);
        assert_eq!(metrics.snapshot().deliveries, 5);
    }

    /// Gathers the topics of untracked forwards and records them when
    /// queued; what goes alone, [`Recording`] records.
    #[derive(Default)]
    struct GatheringRecorder(Recording);

    impl Forwarder for GatheringRecorder {
        fn forward(
            &self,
            node: &NodeId,
            message: &Message,
            plain: bool,
            groups: Vec<Arc<ShareKey>>,
            tracking: Tracking,
        ) -> Forwarded {
            self.0.forward(node, message, plain, groups, tracking)
        }
        fn gather(
            &self,
            gathered: &mut GatheredForwards,
            node: &NodeId,
            message: &Message,
            _: bool,
            _: Vec<Arc<ShareKey>>,
        ) -> Option<NodeId> {
            let gathering = gathered.for_node(node);
            gathering
                .entries
                .extend_from_slice(message.topic.as_bytes());
            gathering.entries.extend_from_slice(b" ");
            gathering.messages += 1;
            None
        }
        fn queue_gathered(&self, gathered: &mut GatheredForwards) -> Option<NodeId> {
            for gathering in gathered.take() {
                let entries = String::from_utf8_lossy(&gathering.entries).into_owned();
                let line = format!("gathered {}:{}", gathering.node, entries.trim_end());
                self.0.0.lock().push(line);
            }
            None
        }
        fn drained(&self, node: &NodeId) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
            self.0.drained(node)
        }
        fn redirect(&self, node: &NodeId, client_id: &Arc<str>, delivery: Delivery) {
            self.0.redirect(node, client_id, delivery)
        }
    }

    #[test]
    fn a_publishers_forwards_are_gathered_until_queued_and_a_tracked_one_waits_its_turn() {
        let forwarder = Arc::new(GatheringRecorder::default());
        let router = Router::new(
            Arc::new(RemoteWantsRemote),
            Some(forwarder.clone()),
            Arc::default(),
        );
        let mut publisher = PublisherRouting::default();
        for (topic, track) in [
            ("remote/a", false),
            ("remote/b", false),
            ("remote/c", true),
            ("remote/d", false),
        ] {
            let routed =
                router.route_tracked(ToRoute::owned(message(topic)), track, Some(&mut publisher));
            assert_eq!(routed.delivered, 1, "{topic} has a node that wants it");
        }
        assert_eq!(
            *forwarder.0.0.lock(),
            ["gathered n2:remote/a remote/b", "n2:remote/c"]
        );
        assert_eq!(router.queue_gathered(&mut publisher), None);
        let last = || forwarder.0.0.lock().last().cloned();
        assert_eq!(last().as_deref(), Some("gathered n2:remote/d"));
        // Without a publisher's state nothing is gathered.
        router.route_tracked(ToRoute::owned(message("remote/e")), false, None);
        assert_eq!(last().as_deref(), Some("n2:remote/e"));
    }

    #[test]
    fn refresh_takes_each_topics_current_retained_message() {
        let router = Router::new(Arc::new(LocalRouteStore::default()), None, Arc::default());
        let retained = |topic: &str, payload: &'static [u8]| {
            let mut m = message(topic);
            m.payload = Bytes::from_static(payload);
            m.retain = true;
            Arc::new(m)
        };
        router.retain(retained("a", b"1"), false);
        router.retain(retained("b", b"1"), false);
        router.retain(retained("c", b"1"), false);
        let mut read = Vec::new();
        router.retained_matching("+", &mut read);
        let version = router.retained_version();
        router.retain(retained("a", b"2"), false);
        router.retain(retained("b", b""), false);
        assert_ne!(router.retained_version(), version);
        router.refresh_retained(&mut read, |m| m);
        let mut now: Vec<(String, Vec<u8>)> = read
            .iter()
            .map(|m| (m.topic.to_string(), m.payload.to_vec()))
            .collect();
        now.sort();
        assert_eq!(
            now,
            [("a".into(), b"2".to_vec()), ("c".into(), b"1".to_vec())],
            "a replaced, b cleared, c unchanged"
        );
    }
}
