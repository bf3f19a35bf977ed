//! Drain: how a node leaves without losing anything (docs/architecture.md,
//! "Cluster mode").
//!
//! 1. The node stops being ready, announces `draining` in etcd (other nodes
//!    stop choosing it for sessions) and refuses new connections (MQTT 5:
//!    CONNACK 0x9C with a Server Reference).
//! 2. It sends its clients away at `drain_rate` per second (MQTT 5:
//!    DISCONNECT 0x9C). A client that reconnects to another node takes its
//!    session from here (cluster takeover), in-flight messages included.
//! 3. After `drain_session_wait_secs`, persistent sessions whose clients did
//!    not come back are handed to serving nodes (`AdoptSession`), spread
//!    round-robin; each leaves a redirect stub here for the handover grace.
//! 4. It reports `drained` once no connection, no session and no stub is
//!    left: nothing unacknowledged remains on it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::cluster::Cluster;
use crate::cluster::directory::moves;
use crate::lifecycle::{self, WillOnMove};
use crate::node::NodeState;
use crate::session::registry::{Kick, Owner, SessionRegistry};

/// A drain asked for by an operator (admin API, `Drain` call) waits at most
/// this long for clients; SIGTERM uses `shutdown_timeout_secs`.
pub const REQUESTED_DRAIN_PATIENCE: Duration = Duration::from_secs(3600);

/// Sessions handed to other nodes at the same time.
const PARALLEL_HANDOVERS: usize = 32;

/// How often a drain re-checks whether everything has left.
const RECHECK: Duration = Duration::from_millis(100);

/// Drains the node; returns when it is drained or `patience` ran out.
/// Does nothing if a drain already started.
pub async fn drain(broker: Arc<Broker>, cluster: Option<Arc<Cluster>>, patience: Duration) {
    if broker.begin_drain() {
        run(broker, cluster, patience).await;
    }
}

/// Starts a drain in the background; false if one already started.
pub fn start(broker: Arc<Broker>, cluster: Option<Arc<Cluster>>, patience: Duration) -> bool {
    if !broker.begin_drain() {
        return false;
    }
    tokio::spawn(run(broker, cluster, patience));
    true
}

async fn run(broker: Arc<Broker>, cluster: Option<Arc<Cluster>>, patience: Duration) {
    info!(rate = broker.config.drain.rate, "draining");
    let started = tokio::time::Instant::now();
    if let Some(cluster) = &cluster {
        cluster.set_state(NodeState::Draining);
    }
    let pace = Duration::from_secs_f64(1.0 / f64::from(broker.config.drain.rate));
    let mut ticker = tokio::time::interval(pace);
    let session_wait = Duration::from_secs(broker.config.drain.session_wait_secs);
    let deadline = started + patience;
    let mut clients_gone_at = None;
    loop {
        for slot in broker.sessions.all() {
            if SessionRegistry::kick(&slot, Kick::UseAnotherServer) {
                ticker.tick().await;
            }
        }
        let connections = broker.metrics.connections.load(Ordering::Relaxed);
        let sessions = broker.metrics.sessions.load(Ordering::Relaxed);
        let handovers = broker.metrics.handovers_active.load(Ordering::Relaxed);
        if connections == 0 && sessions == 0 && handovers == 0 {
            broker.mark_drained();
            info!(seconds = started.elapsed().as_secs_f64(), "drained");
            return;
        }
        if connections == 0 {
            let since = *clients_gone_at.get_or_insert_with(tokio::time::Instant::now);
            if sessions > 0 && since.elapsed() >= session_wait {
                match &cluster {
                    Some(cluster) => hand_off_sessions(&broker, cluster).await,
                    None => {
                        // A single node has nowhere to send them.
                        info!(sessions, "persistent sessions remain; nowhere to hand them");
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(
                connections,
                sessions, handovers, "drain did not finish within its patience"
            );
            return;
        }
        tokio::time::sleep(RECHECK).await;
    }
}

/// Gives every offline session on this node to a serving node.
async fn hand_off_sessions(broker: &Arc<Broker>, cluster: &Cluster) {
    let targets = cluster.forwarder.serving_peers();
    if targets.is_empty() {
        warn!("no serving node to hand sessions to; waiting");
        return;
    }
    let offline: Vec<_> = broker
        .sessions
        .all()
        .into_iter()
        .filter(|slot| matches!(slot.inner.lock().owner, Owner::Offline { .. }))
        .collect();
    // Several at once: each is a round trip to the adopting node, which
    // registers the client in etcd.
    let mut handovers = JoinSet::new();
    for (i, slot) in offline.into_iter().enumerate() {
        if handovers.len() >= PARALLEL_HANDOVERS {
            handovers.join_next().await;
        }
        let to = targets[i % targets.len()].clone();
        let broker = broker.clone();
        let forwarder = cluster.forwarder.clone();
        handovers.spawn(async move {
            let client_id = &slot.client_id;
            let Some(moved) =
                lifecycle::give_away(&broker, client_id, to.clone(), WillOnMove::Keep).await
            else {
                return;
            };
            match moves::hand_to(&forwarder, &to, &moved).await {
                Ok(true) => debug!(%client_id, %to, "session handed over"),
                Ok(false) => {
                    info!(%client_id, %to, "the client already has a newer session there")
                }
                Err(error) => {
                    // Keep the session here and try again on the next round.
                    warn!(%client_id, %to, %error, "handing a session over failed");
                    lifecycle::adopt(&broker, moved).await;
                }
            }
        });
    }
    while handovers.join_next().await.is_some() {}
}
