//! The router: subscription index, shared groups, retained messages, and
//! the route store that tells the cluster what this node wants.
//!
//! The subscription trie is split into shards by the first topic level
//! (plus one shard for filters that start with a wildcard), so that a
//! publish takes two read locks that only subscribes to the same first
//! level ever write-lock: there is no broker-wide lock on the publish path.
//!
//! - [`trie`] (behind a lock per shard, `trie_slot`): filters to
//!   subscribers and share groups;
//! - `local`: delivery to this node's subscribers, one message or a run;
//! - `plan`: which other nodes get a message, and for which share groups;
//! - [`store`]: the `RouteStore` and `Forwarder` the cluster implements,
//!   with a [`remote_cache`] of their answers per topic and the forwards a
//!   publisher [`gathered`];
//! - [`retained`]: the retained index.

pub mod gathered;
mod local;
pub use local::LocalRun;
mod plan;
pub mod remote_cache;
pub mod retained;
pub mod store;
pub mod trie;
mod trie_slot;

use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use starling_codec::topic::ParsedFilter;

use crate::message::{Delivery, ForwardTicket, Message, SessionId, ShareKey, Tracking};
use crate::metrics::Metrics;
use crate::node::NodeId;
use gathered::GatheredForwards;
use plan::RoutePlan;
use remote_cache::RemoteRouteCache;
use retained::RetainedStore;
use store::{Forwarder, RemoteRoutes, RetainedReplicator, RouteStore};
use trie::{Matches, Subscriber};
use trie_slot::TrieSlot;

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
}

#[cfg(test)]
mod tests;
