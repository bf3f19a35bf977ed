//! The broker's shared state, handed to every connection task.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::router::store::{LocalRouteStore, RouteStore};
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
        Broker::with_route_store(config, Arc::new(LocalRouteStore::default()))
    }

    pub fn with_route_store(config: Config, store: Arc<dyn RouteStore>) -> Arc<Broker> {
        let metrics = Arc::new(Metrics::default());
        Arc::new(Broker {
            router: Router::new(store, metrics.clone()),
            sessions: SessionRegistry::default(),
            config,
            metrics,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        })
    }
}
