//! Plain TCP listener.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::connection;

/// Binds `addr`; the returned listener is served by [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts connections until the broker shuts down.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener) {
    let local = listener.local_addr().ok();
    info!(addr = ?local, "listening for MQTT over TCP");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = broker.shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Small MQTT packets must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                broker
                    .connections
                    .spawn(connection::serve(broker.clone(), stream, peer));
            }
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
