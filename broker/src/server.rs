//! Starting and stopping a broker: bind listeners, serve until a signal,
//! then shut down gracefully.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::cluster::{Cluster, OnDrainRequest};
use crate::config::Config;
use crate::connection::Frontend;
use crate::listener::tcp;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs a broker until SIGTERM or SIGINT, then shuts it down: listeners
/// close, v5 clients get DISCONNECT 0x8B, wills are published, and the
/// function returns once every connection ended (or the timeout passed).
/// In cluster mode the signal first drains the node, so that its clients
/// move to other nodes before it goes.
pub async fn run(config: Config) -> Result<(), ServerError> {
    crate::resources::open_files::raise_limit(&config);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    // Files first: a bad password file stops the broker before it joins
    // a cluster or listens.
    let auth = Authenticator::from_config(&config, metrics.clone())?;
    let (broker, cluster) = if config.cluster_mode() {
        let cluster = crate::cluster::Cluster::connect(&config, metrics.clone()).await?;
        let broker = Broker::clustered(config, cluster.parts(), metrics);
        (broker, Some(Arc::new(cluster)))
    } else {
        (Broker::single(config, metrics), None)
    };
    if let Some(cluster) = &cluster {
        cluster
            .start(&broker, drain_on_request(&broker, cluster))
            .await?;
    }
    let frontend = Frontend::new(broker.clone(), auth);
    if let Some(addr) = broker.config.admin.listen {
        crate::admin::serve(addr, frontend.clone(), cluster.clone())
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
    }
    start(&frontend).await?;
    wait_for_signal().await;
    if cluster.is_some() {
        info!("signal received: draining before shutdown");
        let patience = Duration::from_secs(broker.config.drain.shutdown_timeout_secs);
        crate::drain::drain(broker.clone(), cluster.clone(), patience).await;
    }
    info!("shutting down");
    shutdown(&broker).await;
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    Ok(())
}

/// A drain asked for by another node's `Drain` call.
fn drain_on_request(broker: &Arc<Broker>, cluster: &Arc<Cluster>) -> OnDrainRequest {
    let broker = broker.clone();
    // Weak: the cluster keeps this in its peer service.
    let cluster = Arc::downgrade(cluster);
    Arc::new(move || {
        crate::drain::start(
            broker.clone(),
            cluster.upgrade(),
            crate::drain::REQUESTED_DRAIN_PATIENCE,
        );
    })
}

/// Binds every listener and spawns its accept loop; clients are
/// admitted by the frontend's authenticator, whose files SIGHUP reads
/// again.
pub async fn start(frontend: &Arc<Frontend>) -> Result<(), ServerError> {
    let broker = &frontend.broker;
    let mut listeners = Vec::new();
    for addr in &broker.config.listeners.listen {
        let listener = tcp::bind(*addr).await.map_err(|source| ServerError::Bind {
            addr: *addr,
            source,
        })?;
        listeners.push(listener);
    }
    for listener in listeners {
        tokio::spawn(tcp::serve(frontend.clone(), listener));
    }
    #[cfg(unix)]
    {
        tokio::spawn(reload_on_sighup(frontend.clone()));
    }
    spawn_housekeeping(broker);
    tokio::spawn(crate::resources::memory::watch(
        broker.config.limits.memory_high_watermark_bytes,
        broker.memory.clone(),
        broker.metrics.clone(),
        broker.shutdown.clone(),
    ));
    Ok(())
}

/// Stops accepting, closes every connection and waits for them.
pub async fn shutdown(broker: &Arc<Broker>) {
    broker.shutdown.cancel();
    broker.connections.close();
    let timeout = Duration::from_secs(broker.config.drain.shutdown_timeout_secs);
    if tokio::time::timeout(timeout, broker.connections.wait())
        .await
        .is_err()
    {
        warn!("some connections did not close within the shutdown timeout");
    }
}

fn spawn_housekeeping(broker: &Arc<Broker>) {
    let broker = broker.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    broker.router.purge_expired_retained();
                }
                _ = broker.shutdown.cancelled() => break,
            }
        }
    });
}

/// Reads the authentication files again on every SIGHUP, until shutdown;
/// a file that cannot be used is logged and the loaded one kept.
#[cfg(unix)]
async fn reload_on_sighup(frontend: Arc<Frontend>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP: files are not reloaded");
        return;
    };
    let shutdown = frontend.broker.shutdown.clone();
    loop {
        tokio::select! {
            _ = hangups.recv() => {}
            _ = shutdown.cancelled() => return,
        }
        info!("SIGHUP: reloading");
        // Logged by the authenticator, either way.
        let _ = frontend.auth.reload();
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
