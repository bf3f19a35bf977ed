//! Plain TCP listener.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tracing::{info, warn};

use crate::broker::Broker;
use crate::connection;

/// Connections the kernel queues before `accept`: a burst of connects
/// beyond the default of 128 would have its SYNs dropped and retried a
/// second later. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr`; the returned listener is served by [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Restarting on the same port must not wait for TIME_WAIT to clear.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
