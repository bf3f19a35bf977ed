//! The admin listener's HTTP server, bounded: clients hold at most
//! [`MAX_CONNECTIONS`] connections between them and [`MAX_PER_ADDRESS`]
//! from one address (so that one client cannot take the probes' place),
//! must send a request's head within [`HEADER_TIMEOUT`], and no connection
//! lives longer than [`CONNECTION_LIFETIME`]. `axum::serve` has none of
//! these bounds, so a few half-sent requests could hold the port (and the
//! node's readiness probe) for ever.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Admin connections open at once; more are closed at accept. Probes,
/// the operator and a dashboard need a handful.
pub const MAX_CONNECTIONS: usize = 64;
/// Admin connections one address may hold at once.
pub const MAX_PER_ADDRESS: usize = 8;
/// Time from a connection's start (or its previous response) to a
/// complete request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one admin connection, keep-alive included.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, app: axum::Router, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = Arc::new(Mutex::new(HashMap::<IpAddr, usize>::new()));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of files, most likely: wait instead of spinning.
                warn!(%error, "admin API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(address_slot) = AddressSlot::take(&per_address, peer.ip()) else {
            debug!(%peer, "admin API connection refused: {MAX_PER_ADDRESS} open from that address");
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "admin API connection refused: {MAX_CONNECTIONS} open already");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _address_slot = address_slot;
            let _ = stream.set_nodelay(true);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let deadline = tokio::time::sleep(CONNECTION_LIFETIME);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = deadline => debug!(%peer, "admin API connection closed: lived too long"),
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
            }
        });
    }
}

/// One of the connections an address holds, given back when dropped.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressSlot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, address: IpAddr) -> Option<AddressSlot> {
        let mut map = counts.lock();
        let held = map.entry(address).or_insert(0);
        if *held >= MAX_PER_ADDRESS {
            return None;
        }
        *held += 1;
        Some(AddressSlot {
            counts: counts.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(held) = map.get_mut(&self.address) {
            *held -= 1;
            if *held == 0 {
                map.remove(&self.address);
            }
        }
    }
}
