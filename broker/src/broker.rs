//! The broker's shared state, handed to every connection task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::node::NodeState;
use crate::router::Router;
use crate::router::store::{Forwarder, LocalRouteStore, RetainedReplicator, RouteStore};
use crate::session::directory::SessionDirectory;
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
    state: AtomicU8,
    /// Cluster mode: where sessions live.
    pub directory: Option<Arc<dyn SessionDirectory>>,
    /// What read buffers hold beyond their everyday size, broker-wide.
    pub read_budget: Arc<crate::resources::read_budget::ReadBudget>,
    /// Set while the process is above its memory watermark.
    pub memory: Arc<crate::resources::memory::MemoryPressure>,
    /// The bounds of every session's mailbox, shared.
    pub mailbox_limits: Arc<crate::session::mailbox::MailboxLimits>,
}

/// What a broker in a cluster reaches the other nodes through. Made by
/// the cluster before the broker (`Cluster::connect`, then
/// `Cluster::parts`), so the broker is whole from the start.
pub struct ClusterParts {
    /// Which other nodes want a topic; this node's routes for them.
    pub routes: Arc<dyn RouteStore>,
    /// Sends messages to other nodes.
    pub forwarder: Arc<dyn Forwarder>,
    /// Shares retained messages.
    pub retained: Arc<dyn RetainedReplicator>,
    /// Where the session of each client id is.
    pub directory: Arc<dyn SessionDirectory>,
}

impl Broker {
    /// A single-node broker: routes in memory, nobody to forward to.
    pub fn new(config: Config) -> Arc<Broker> {
        Broker::single(config, Arc::new(Metrics::default()))
    }

    /// A single-node broker counting in `metrics` (shared with what was
    /// made before it, such as the authenticator).
    pub fn single(config: Config, metrics: Arc<Metrics>) -> Arc<Broker> {
        Broker::build(config, None, metrics)
    }

    /// A broker that is one node of a cluster.
    pub fn clustered(config: Config, parts: ClusterParts, metrics: Arc<Metrics>) -> Arc<Broker> {
        Broker::build(config, Some(parts), metrics)
    }

    fn build(config: Config, cluster: Option<ClusterParts>, metrics: Arc<Metrics>) -> Arc<Broker> {
        let read_budget =
            crate::resources::read_budget::ReadBudget::new(config.limits.max_read_buffer_bytes);
        let mailbox_limits = Arc::new(crate::session::mailbox::MailboxLimits {
            max_queued: config.sessions.max_queued_messages,
            max_queued_bytes: config.sessions.max_queued_bytes,
            // One subscription's retained messages are at most the store's.
            max_retained_backlog: config.limits.max_retained_messages,
            drop_policy: config.sessions.queue_drop_policy,
            queue_qos0_offline: config.sessions.queue_qos0,
        });
        let limits = (
            config.limits.max_retained_messages,
            config.limits.max_retained_bytes,
        );
        let (router, directory) = match cluster {
            None => {
                let routes = Arc::new(LocalRouteStore::default());
                let router = Router::new(routes, None, metrics.clone());
                (router.with_retained_limits(limits.0, limits.1), None)
            }
            Some(parts) => {
                let router = Router::new(parts.routes, Some(parts.forwarder), metrics.clone())
                    .with_retained_limits(limits.0, limits.1)
                    .with_retained_replicator(parts.retained);
                (router, Some(parts.directory))
            }
        };
        Arc::new(Broker {
            router,
            sessions: SessionRegistry::default(),
            config,
            metrics,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            state: AtomicU8::new(NodeState::Serving as u8),
            directory,
            read_budget,
            memory: Arc::default(),
            mailbox_limits,
        })
    }

    pub fn state(&self) -> NodeState {
        match self.state.load(Ordering::Acquire) {
            0 => NodeState::Serving,
            1 => NodeState::Draining,
            _ => NodeState::Drained,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.state() != NodeState::Serving
    }

    /// Moves Serving -> Draining; false if the node was not serving.
    pub fn begin_drain(&self) -> bool {
        self.state
            .compare_exchange(
                NodeState::Serving as u8,
                NodeState::Draining as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    pub fn mark_drained(&self) {
        self.state
            .store(NodeState::Drained as u8, Ordering::Release);
    }
}
