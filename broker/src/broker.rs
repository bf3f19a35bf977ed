//! The broker's shared state, handed to every connection task.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::router::store::{Forwarder, LocalRouteStore, RouteStore};
use crate::session::registry::SessionRegistry;

pub struct Broker {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub router: Router,
    pub sessions: SessionRegistry,
    /// Cancelled when the broker shuts down: listeners stop accepting and
    /// connections say goodbye (MQTT 5: DISCONNECT 0x8B).
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
}

impl Broker {
    /// A single-node broker with the in-memory route store.
    pub fn new(config: Config) -> Arc<Broker> {
        Broker::with_routing(
            config,
            Arc::new(LocalRouteStore::default()),
            None,
            Arc::new(Metrics::default()),
        )
    }

    /// A broker whose router uses `store` for routes and, in a cluster,
    /// `forwarder` to reach other nodes.
    pub fn with_routing(
        config: Config,
        store: Arc<dyn RouteStore>,
        forwarder: Option<Arc<dyn Forwarder>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Broker> {
        Arc::new(Broker {
            router: Router::new(store, forwarder, metrics.clone()),
            sessions: SessionRegistry::default(),
            config,
            metrics,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        })
    }
}
