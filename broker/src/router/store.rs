//! Where the cluster learns which node wants which filter.
//!
//! The router tells its [`RouteStore`] when a filter gains its first local
//! subscription and loses its last, and asks it which *other* nodes want a
//! topic. The single-node default keeps nothing remote; the cluster store
//! (etcd-backed) implements the same trait, so there is one router and one
//! publish path for both.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::gathered::GatheredForwards;
use crate::node::NodeId;

/// Which other nodes want a topic.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoteRoutes {
    /// Nodes with a matching plain route, each once.
    pub nodes: Vec<NodeId>,
    /// Share groups with a matching filter and members on other nodes,
    /// with those nodes.
    pub groups: Vec<(Arc<crate::message::ShareKey>, Vec<NodeId>)>,
}

impl RemoteRoutes {
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.groups.clear();
    }
}

pub trait RouteStore: Send + Sync + 'static {
    /// The first local subscription of `filter` (shared ones included) exists.
    fn add_route(&self, filter: &str);
    /// The last local subscription of `filter` is gone.
    fn remove_route(&self, filter: &str);
    /// Appends to `routes` the remote nodes that have a plain route
    /// matching `topic` (each once), and the share groups with a filter
    /// matching `topic` that have members on other nodes, with those nodes.
    fn remote_routes(&self, topic: &str, routes: &mut RemoteRoutes);
    /// Changes whenever what [`remote_routes`](Self::remote_routes) answers
    /// may change, so that an answer can be kept and reused while it stays
    /// the same. 0: answers must not be kept.
    fn remote_version(&self) -> u64 {
        0
    }
    /// The filters this node currently advertises.
    fn local_route_count(&self) -> usize;
    /// With route sync on (cluster): a ticket completed once every other
    /// node can route to these filters (route names as in `add_route`).
    /// `None`: nothing to wait for.
    fn sync(&self, _filters: &[String]) -> Option<Arc<crate::message::ForwardTicket>> {
        None
    }
}

/// What became of a message handed to a [`Forwarder`].
#[derive(Debug, Default)]
pub struct Forwarded {
    /// The link to the node is congested: the publisher should wait for
    /// [`Forwarder::drained`] before taking more.
    pub congested: bool,
    /// With [`crate::message::Tracking::Batch`]: the ticket to wait on.
    pub ticket: Option<Arc<crate::message::ForwardTicket>>,
}

/// Hands messages to other nodes (the cluster's peer links).
pub trait Forwarder: Send + Sync + 'static {
    /// Queues `message` for `node`; never blocks. A message that cannot be
    /// queued is dropped and counted by the forwarder.
    /// `plain`: deliver to the node's plain subscriptions; `groups`: the
    /// share groups the node was chosen for.
    /// `tracking` says what completes once the node acknowledged the
    /// message (or fails if it cannot get it): nothing, the message's own
    /// ticket, or the ticket of the batch it joins, which is returned
    /// (already failed if the message could not be queued).
    fn forward(
        &self,
        node: &NodeId,
        message: &crate::message::Message,
        plain: bool,
        groups: Vec<Arc<crate::message::ShareKey>>,
        tracking: crate::message::Tracking,
    ) -> Forwarded;
    /// Like [`forward`](Self::forward) for a message nobody waits on, but
    /// the message may only be encoded into `gathered`, to be queued by
    /// [`queue_gathered`](Self::queue_gathered) (or here, once `gathered`
    /// is full). Returns a node whose link is congested now. The default
    /// gathers nothing: it forwards at once.
    fn gather(
        &self,
        gathered: &mut GatheredForwards,
        node: &NodeId,
        message: &crate::message::Message,
        plain: bool,
        groups: Vec<Arc<crate::message::ShareKey>>,
    ) -> Option<NodeId> {
        let _ = gathered;
        let tracking = crate::message::Tracking::Untracked;
        let forwarded = self.forward(node, message, plain, groups, tracking);
        forwarded.congested.then(|| node.clone())
    }
    /// Queues what `gathered` holds on the links, leaving it empty; what
    /// cannot be queued is dropped and counted. Returns a node whose link
    /// is congested now.
    fn queue_gathered(&self, gathered: &mut GatheredForwards) -> Option<NodeId> {
        let _ = gathered.take();
        None
    }
    /// Resolves once the link to `node` is no longer congested (or gone).
    fn drained(&self, node: &NodeId) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
    /// Sends a delivery for one session that moved to `node`.
    fn redirect(&self, node: &NodeId, client_id: &Arc<str>, delivery: crate::message::Delivery);
}

/// The embedded single-node store: it only counts local routes. A count,
/// not a set of the filters: the router tells every first and last
/// subscription exactly once, and a set kept a third copy of each filter
/// (a 59 KB filter then cost 188 KB).
#[derive(Debug, Default)]
pub struct LocalRouteStore {
    routes: std::sync::atomic::AtomicUsize,
}

impl RouteStore for LocalRouteStore {
    fn add_route(&self, _filter: &str) {
        self.routes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn remove_route(&self, _filter: &str) {
        self.routes
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn remote_routes(&self, _topic: &str, _routes: &mut RemoteRoutes) {}

    fn local_route_count(&self) -> usize {
        self.routes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Shares retained messages with the other nodes (cluster mode).
pub trait RetainedReplicator: Send + Sync + 'static {
    /// A retained message was set (or cleared, with an empty payload) on
    /// this node; `store_here` puts it in this node's index, called while
    /// nothing the replicator applies from the cluster can interleave.
    /// With `want_ticket` (and route sync on), a ticket completed once
    /// every node's index holds the change (or the wait gave up).
    fn replicate(
        &self,
        message: &Arc<crate::message::Message>,
        store_here: &mut dyn FnMut(),
        want_ticket: bool,
    ) -> Option<Arc<crate::message::ForwardTicket>>;
}
