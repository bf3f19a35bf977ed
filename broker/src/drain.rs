//! Drain: how a node leaves without losing anything (DESIGN.md).
//!
//! The node stops being ready, announces `draining` in etcd, refuses new
//! connections (MQTT 5: CONNACK 0x9C with a Server Reference), and sends its
//! clients away at `drain_rate` per second (MQTT 5: DISCONNECT 0x9C). It
//! reports `drained` once no connection and no session is left on it.
//!
//! Not done yet: handing persistent sessions whose clients do not come back
//! to other nodes (AdoptSession). Until then such sessions keep the node in
//! `draining`, which is what the admin API reports.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::info;

use crate::broker::Broker;
use crate::cluster::Cluster;
use crate::session::registry::{Kick, SessionRegistry};

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
    info!(rate = broker.config.drain_rate, "draining");
    if let Some(cluster) = &cluster {
        cluster.set_state("draining");
    }
    let pace = Duration::from_secs_f64(1.0 / f64::from(broker.config.drain_rate));
    let mut ticker = tokio::time::interval(pace);
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        for slot in broker.sessions.all() {
            if SessionRegistry::kick(&slot, Kick::UseAnotherServer) {
                ticker.tick().await;
            }
        }
        let connections = broker.metrics.connections.load(Ordering::Relaxed);
        let sessions = broker.metrics.sessions.load(Ordering::Relaxed);
        if connections == 0 && sessions == 0 {
            broker.mark_drained();
            info!("drained");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            info!(
                connections,
                sessions, "drain did not finish within its patience"
            );
            return;
        }
        tokio::time::sleep(RECHECK).await;
    }
}
