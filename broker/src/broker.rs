//! The broker's shared state, handed to every connection task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

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
    state: AtomicU8,
    /// Cluster mode: where sessions live. Set once at start-up.
    pub directory: std::sync::OnceLock<Arc<dyn crate::session::directory::SessionDirectory>>,
    /// Where idle connections wait without a task; started by the first
    /// one (`None`: it could not start).
    pub(crate) parking: std::sync::OnceLock<Option<crate::connection::parking::ParkingLot>>,
    /// What read buffers hold beyond their everyday size, broker-wide.
    pub read_budget: Arc<crate::connection::read_budget::ReadBudget>,
    /// Set while the process is above its memory watermark.
    pub memory: Arc<crate::memory::MemoryPressure>,
    /// The bounds of every session's mailbox, shared.
    pub mailbox_limits: Arc<crate::session::mailbox::MailboxLimits>,
}

/// Where a node is in its life (`/readyz`, the node record, the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Serving,
    /// Refusing new clients and sending the connected ones elsewhere.
    Draining,
    /// No client connection and no session left on the node.
    Drained,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Serving => "serving",
            NodeState::Draining => "draining",
            NodeState::Drained => "drained",
        }
    }
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
        let read_budget =
            crate::connection::read_budget::ReadBudget::new(config.max_read_buffer_bytes);
        let mailbox_limits = Arc::new(crate::session::mailbox::MailboxLimits {
            max_queued: config.max_queued_messages,
            max_queued_bytes: config.max_queued_bytes,
            // One subscription's retained messages are at most the store's.
            max_retained_backlog: config.max_retained_messages,
            drop_policy: config.queue_drop_policy,
            queue_qos0_offline: config.queue_qos0,
        });
        Arc::new(Broker {
            router: Router::new(store, forwarder, metrics.clone())
                .with_retained_limits(config.max_retained_messages, config.max_retained_bytes),
            sessions: SessionRegistry::default(),
            config,
            metrics,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            state: AtomicU8::new(NodeState::Serving as u8),
            directory: std::sync::OnceLock::new(),
            parking: std::sync::OnceLock::new(),
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
