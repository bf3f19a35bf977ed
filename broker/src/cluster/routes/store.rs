//! The cluster route store: this node's filters become
//! `routes/<node>/<filter>` keys under its lease ([`LeasedKeys`]: batched,
//! coalesced, retried, rewritten under a new lease); other nodes' routes
//! come from the mirrored [`RouteIndex`]. Filters covered by a configured
//! aggregate pattern are advertised as that pattern ([`Aggregates`]).

use std::sync::Arc;

use crate::cluster::etcd::keys::Keys;
use crate::cluster::etcd::leased_keys::LeasedKeys;
use crate::cluster::routes::aggregation::{Advertise, Aggregates};
use crate::cluster::routes::index::RouteIndex;
use crate::cluster::routes::sync::RouteSync;
use crate::message::ForwardTicket;
use crate::node::NodeId;
use crate::router::store::{RemoteRoutes, RouteStore};

pub struct EtcdRouteStore {
    node: NodeId,
    keys: Keys,
    index: Arc<RouteIndex>,
    pub owned: Arc<LeasedKeys>,
    /// With route sync on.
    pub route_sync: Option<Arc<RouteSync>>,
    aggregates: Aggregates,
}

impl EtcdRouteStore {
    pub fn new(
        node: &str,
        keys: Keys,
        index: Arc<RouteIndex>,
        aggregates: Vec<String>,
        owned: Arc<LeasedKeys>,
        route_sync: Option<Arc<RouteSync>>,
    ) -> Arc<EtcdRouteStore> {
        Arc::new(EtcdRouteStore {
            node: NodeId::from(node),
            keys,
            index,
            owned,
            route_sync,
            aggregates: Aggregates::new(aggregates),
        })
    }

    /// Route changes not yet written to etcd.
    pub fn unwritten(&self) -> usize {
        self.owned.unwritten()
    }
}

impl RouteStore for EtcdRouteStore {
    fn add_route(&self, filter: &str) {
        let aggregated = self.aggregates.enter(filter, |pattern| {
            self.owned.insert(self.keys.route(&self.node, pattern));
        });
        if !aggregated {
            self.owned.insert(self.keys.route(&self.node, filter));
        }
    }

    fn remove_route(&self, filter: &str) {
        let aggregated = self.aggregates.leave(filter, |pattern| {
            self.owned.remove(self.keys.route(&self.node, pattern));
        });
        if !aggregated {
            self.owned.remove(self.keys.route(&self.node, filter));
        }
    }

    fn remote_routes(&self, topic: &str, routes: &mut RemoteRoutes) {
        self.index
            .matching(topic, &mut routes.nodes, &mut routes.groups);
    }

    fn remote_version(&self) -> u64 {
        self.index.version()
    }

    fn local_route_count(&self) -> usize {
        self.owned.len()
    }

    fn sync(&self, filters: &[String]) -> Option<Arc<ForwardTicket>> {
        let sync = self.route_sync.as_ref()?;
        let keys = filters
            .iter()
            .map(|filter| match self.aggregates.advertise(filter) {
                Advertise::Itself => self.keys.route(&self.node, filter),
                Advertise::Pattern(pattern) => self.keys.route(&self.node, pattern),
            })
            .collect();
        Some(sync.ticket(keys))
    }
}
