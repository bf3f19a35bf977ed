//! Plain TCP listener.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tracing::{debug, info, warn};

use crate::connection::{self, Frontend};

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
    // Small MQTT packets must not wait for Nagle. Linux gives each
    // accepted socket the listener's TCP options, so setting it here spares
    // a setsockopt per connection (a test below holds Linux to it).
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections until the broker shuts down.
pub async fn serve(frontend: Arc<Frontend>, listener: TcpListener) {
    let broker = &frontend.broker;
    let local = listener.local_addr().ok();
    info!(addr = ?local, "listening for MQTT over TCP");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = broker.shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                // A socket that has not sent CONNECT yet costs a file and
                // a task: only so many may wait (silent sockets used to
                // take every file the process may open).
                if !connection::PendingConnect::admit(broker) {
                    debug!(%peer, "connection closed at accept: max_pending_connects reached");
                    continue;
                }
                // Inherited from the listener on Linux (see `bind`).
                #[cfg(not(target_os = "linux"))]
                let _ = stream.set_nodelay(true);
                broker
                    .connections
                    .spawn(connection::serve(frontend.clone(), stream, peer));
            }
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("its address");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("TCP_NODELAY readable"));
        drop(client);
    }
}
